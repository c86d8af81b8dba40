#!/usr/bin/env node
// g = s·dy·B and dB = s·dyᵀ·u of the LoRA backward on cuda (bf16 dy, one adapter in bf16, d_in
// 4096): device µs per native linearBackward call that computes only those two (no dA, no dx),
// fused (lora_grad.cu, one read of dy) against two cuBLASLt GEMMs, and the default choice.
// LORAKIT_CUDA_GRAD is read once per process, so this script runs itself once per mode in a child
// process and prints all three and the ratio; `node bench/gpu_grad.js --child` times the mode of
// its own environment.
// dy of 4 MB and 32 MB (n 512/4096 at d_out 4096) can stay in the H200's 50 MB L2 between calls.
'use strict';
const { spawnSync } = require('child_process');

const D_IN = 4096;
const OUTS = [4096, 14336];
const RANKS = [8, 16, 32, 64];
const ROWS = [512, 4096, 16384];

// bf16 bit patterns of uniform values in [-1, 1): a 64 Ki-value random block repeated.
function bf16Bits(n, seed) {
  const block = new Uint16Array(1 << 16);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < block.length; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    f[0] = (s / 4294967296) * 2 - 1;
    block[i] = u[0] >>> 16;
  }
  const out = new Uint16Array(n);
  for (let i = 0; i < n; i += block.length) out.set(block.subarray(0, Math.min(block.length, n - i)), i);
  return out;
}

function child() {
  const { Tensor } = require('../dist');
  const { native } = require('../dist/native');
  const { timeCalls } = require('./gpu_timing');
  const bf = (shape, seed) => Tensor.from(bf16Bits(shape[0] * shape[1], seed), shape, { dtype: 'bf16', device: 'cuda' });
  const b = native();
  for (const outF of OUTS) {
    const W = Tensor.zeros([outF, D_IN], { dtype: 'bf16', device: 'cuda' }); // shape only: no dx is asked for
    for (const n of ROWS) {
      const dy = bf([n, outF], 1);
      const xa = Tensor.zeros([n, D_IN], { dtype: 'bf16', device: 'cuda' }); // shape only: no dA is asked for
      for (const r of RANKS) {
        const A = bf([r, D_IN], 2);
        const B = bf([outF, r], 3);
        const u = bf([n, r], 4);
        const dB = Tensor.zeros([outF, r], { dtype: 'bf16', device: 'cuda' });
        const term = { xa: xa.handle, u: u.handle, A: A.handle, B: B.handle, scale: 2, p: 0, seed: 0, stream: 0, dA: null, dB: dB.handle };
        const iters = n * outF > 1e8 ? 20 : 100;
        const t = timeCalls(() => b.linearBackward(dy.handle, W.handle, false, [term], null), iters);
        console.log(JSON.stringify({ outF, n, r, dev: t.dev, host: t.host }));
        for (const x of [A, B, u, dB]) x.dispose();
      }
      dy.dispose();
      xa.dispose();
    }
    W.dispose();
  }
}

function parent() {
  const modes = ['fused', 'gemm', 'default'];
  const res = {};
  for (const mode of modes) {
    const env = { ...process.env, LORAKIT_CUDA_GRAD: mode };
    if (mode === 'default') delete env.LORAKIT_CUDA_GRAD;
    const c = spawnSync(process.execPath, [__filename, '--child'], {
      env,
      encoding: 'utf8',
      maxBuffer: 16 << 20,
    });
    if (c.status !== 0) throw new Error(`child (${mode}) failed: ${c.stderr}`);
    res[mode] = c.stdout.trim().split('\n').map((l) => JSON.parse(l));
  }
  const { backendInfo } = require('../dist');
  console.log(`# g + dB of one adapter (bf16, d_in ${D_IN}), device µs per call (host µs in brackets); ${new Date().toISOString()}, ${backendInfo().cudaDevice}`);
  console.log('# d_out      n   r |    fused (host) |     gemm (host) | gemm/fused | fused dy GB/s | default (unset)');
  res.fused.forEach((f, i) => {
    const g = res.gemm[i];
    const d = res.default[i];
    const gbs = (f.n * f.outF * 2) / (f.dev * 1e3);
    console.log(
      `${String(f.outF).padStart(7)} ${String(f.n).padStart(6)} ${String(f.r).padStart(3)} | ${f.dev.toFixed(1).padStart(8)} (${f.host.toFixed(1).padStart(5)}) | ${g.dev.toFixed(1).padStart(8)} (${g.host.toFixed(1).padStart(5)}) | ${(g.dev / f.dev).toFixed(2).padStart(9)}x | ${gbs.toFixed(0).padStart(13)} | ${d.dev.toFixed(1).padStart(8)}`,
    );
  });
}

if (process.argv.includes('--child')) child();
else parent();
