#!/usr/bin/env node
// The one-pass sm_90 LoRA GEMM against cuBLASLt, bf16, d_in = 4096: per shape, the bare cuBLASLt
// base GEMM, a LoraLinear with no adapter (the base alone through the path in use), the LoRA
// forward, and forward + backward against the base's forward + dx. Run it once per path:
//   LORAKIT_CUDA_GEMM=sm90 node bench/gpu_sm90.js     (the one-pass kernel wherever it applies)
//   LORAKIT_CUDA_GEMM=cublas node bench/gpu_sm90.js   (two cuBLASLt GEMMs per LoRA product)
//   node bench/gpu_sm90.js                            (the default: the faster of the two per shape)
//   --base: only the base GEMM, cuBLASLt against the layer without adapters (LORAKIT_SM90_CLUSTER,
//   LORAKIT_SM90_GROUP tune the sm_90 kernel's cluster size and tile order)
// Device µs per call, medians of 5 loops over 4 rotating weight sets (W not resident in L2).
'use strict';
const lk = require('../dist');
const { timeCalls } = require('./gpu_timing');
const { Tensor, LoraLinear, cuda } = lk;

const quick = process.argv.includes('--quick');
const baseOnly = process.argv.includes('--base'); // the base GEMM alone, both paths
const D_IN = 4096;
const D_OUT = quick ? [4096] : [4096, 14336];
const NS = quick ? [4096] : [512, 4096, 16384];
const RS = quick ? [16] : [8, 16, 64];
const SETS = 4;

const { randn, dev } = require('./gpu_data');
const iters = (n, dOut) => Math.max(8, Math.min(200, Math.round(4e11 / (n * dOut * D_IN))));

function main() {
  if (!cuda.isAvailable()) throw new Error('no usable CUDA device: ' + JSON.stringify(lk.backendInfo()));
  const mode = process.env.LORAKIT_CUDA_GEMM || 'default';
  console.log(`# ${new Date().toISOString()} ${lk.backendInfo().cudaDevice} LORAKIT_CUDA_GEMM=${mode} ${JSON.stringify(cuda.kernelStats())}`);
  console.log('| d_out | n | r | cuBLASLt base | layer, no adapter | lora fwd | fwd/base | base+dx | fwd+bwd | fb/(base+dx) |');
  console.log('|---|---|---|---|---|---|---|---|---|---|');
  let seed = 1;
  for (const dOut of D_OUT) {
    const Ws = Array.from({ length: SETS }, () => dev(randn(dOut * D_IN, seed++, 0.02), [dOut, D_IN]));
    for (const n of NS) {
      const x = dev(randn(n * D_IN, seed++, 1), [n, D_IN]);
      const dy = dev(randn(n * dOut, seed++, 1), [n, dOut]);
      const y = Tensor.empty([n, dOut], { dtype: 'bf16', device: 'cuda' });
      const dx = Tensor.empty([n, D_IN], { dtype: 'bf16', device: 'cuda' });
      const it = iters(n, dOut);
      const base = timeCalls((i) => cuda.baseGemm(x, Ws[i % SETS], y), it).dev;
      const baseDx = timeCalls((i) => { cuda.baseGemm(x, Ws[i % SETS], y); cuda.baseGemm(dy, Ws[i % SETS], dx, true); }, it).dev;
      const plain = Ws.map((W) => new LoraLinear({ weight: W }).eval());
      const plainFwd = timeCalls((i) => plain[i % SETS].forward(x).dispose(), it).dev;
      let plainFb = NaN;
      if (baseOnly) {
        plain.forEach((l) => l.train());
        plainFb = timeCalls((i) => { const l = plain[i % SETS]; l.forward(x).dispose(); l.backward(dy).dx.dispose(); }, it).dev;
      }
      plain.forEach((l) => l.dispose());
      if (baseOnly) console.log(`| ${dOut} | ${n} | - | ${base.toFixed(1)} | ${plainFwd.toFixed(1)} | - | ${(plainFwd / base).toFixed(3)} | ${baseDx.toFixed(1)} | ${plainFb.toFixed(1)} (no adapter) | ${(plainFb / baseDx).toFixed(3)} |`);
      for (const r of baseOnly ? [] : RS) {
        const layers = Ws.map((W) => new LoraLinear({ weight: W }).addAdapter('default', { r, loraAlpha: 2 * r, dtype: 'bf16', initLoraWeights: false, seed: 3 }));
        layers.forEach((l) => l.eval());
        const fwd = timeCalls((i) => layers[i % SETS].forward(x).dispose(), it).dev;
        layers.forEach((l) => l.train());
        const fb = timeCalls((i) => {
          const l = layers[i % SETS];
          l.forward(x).dispose();
          const g = l.backward(dy);
          g.dx.dispose();
          for (const a of g.grads.values()) { a.loraA.dispose(); a.loraB.dispose(); }
        }, it).dev;
        layers.forEach((l) => l.dispose());
        const f = (v) => v.toFixed(1);
        console.log(`| ${dOut} | ${n} | ${r} | ${f(base)} | ${f(plainFwd)} | ${f(fwd)} | ${(fwd / base).toFixed(3)} | ${f(baseDx)} | ${f(fb)} | ${(fb / baseDx).toFixed(3)} |`);
      }
      [x, dy, y, dx].forEach((t) => t.dispose());
    }
    Ws.forEach((W) => W.dispose());
    cuda.emptyCache();
  }
  console.log(`# kernelStats after: ${JSON.stringify(cuda.kernelStats())}`);
}

main();
