#!/usr/bin/env node
// Merge on cuda (bf16 W [d_out, 4096], bf16 factors): device time per in-place merge/unmerge
// against the HBM roofline of reading and writing W once (copy bandwidth measured in the same
// run), and the host time per call (to see whether a row is launch-bound). Set
// LORAKIT_CUDA_MERGE=simt to time the CUDA-core kernel instead of the tensor-core one.
//   node bench/gpu_merge.js [--d-out 4096,14336] [--r 8,16,64]
'use strict';
const { Tensor, kernels, cuda } = require('../dist');
const { timeCalls: timed } = require('./gpu_timing');

const arg = (name, def) => {
  const i = process.argv.indexOf(name);
  return i < 0 ? def : process.argv[i + 1].split(',').map(Number);
};
const D_IN = 4096;
const D_OUTS = arg('--d-out', [4096, 14336]);
const RANKS = arg('--r', [8, 16, 64]);
const rnd = (n, s, scale) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898 + s) * scale);

const a = Tensor.empty([1 << 29], { dtype: 'bf16', device: 'cuda' });
const b = Tensor.empty([1 << 29], { dtype: 'bf16', device: 'cuda' });
const copy = timed(() => b.copyFrom(a), 20);
const copyTbps = (4 * (1 << 29)) / (copy.dev * 1e-6) / 1e12;
a.dispose();
b.dispose();
const kernel = process.env.LORAKIT_CUDA_MERGE === 'simt' ? 'simt' : 'tensor-core';
const rows = [];
for (const dOut of D_OUTS) {
  // Four weights so that W does not sit in L2 between calls.
  const Ws = [0, 1, 2, 3].map((s) => Tensor.from(rnd(dOut * D_IN, s, 0.02), [dOut, D_IN], { dtype: 'bf16', device: 'cuda' }));
  for (const r of RANKS) {
    const ad = Ws.map((_, s) => ({
      loraA: Tensor.from(rnd(r * D_IN, s + 10, 0.02), [r, D_IN], { dtype: 'bf16', device: 'cuda' }),
      loraB: Tensor.from(rnd(dOut * r, s + 20, 0.02), [dOut, r], { dtype: 'bf16', device: 'cuda' }),
      scaling: 2,
    }));
    const t = timed((i) => ((i >> 2) & 1 ? kernels.unmergeAdapter : kernels.mergeAdapter)(Ws[i % 4], ad[i % 4]), 200);
    const roofUs = (4 * dOut * D_IN) / (copyTbps * 1e12) * 1e6;
    rows.push({ kernel, d_out: dOut, d_in: D_IN, r, device_us: t.dev, host_us: t.host, roofline_us: roofUs, share: roofUs / t.dev });
    ad.forEach((x) => { x.loraA.dispose(); x.loraB.dispose(); });
  }
  Ws.forEach((W) => W.dispose());
  cuda.emptyCache();
}
console.log(`# merge on cuda (${kernel} kernel), bf16, d_in ${D_IN}; copy roofline ${copyTbps.toFixed(2)} TB/s; ${new Date().toISOString()}; ${require('../dist').backendInfo().cudaDevice}`);
console.log('| kernel | d_out | r | device µs | host µs/call | roofline µs | % of roofline |\n|---|---|---|---|---|---|---|');
for (const q of rows)
  console.log(`| ${q.kernel} | ${q.d_out} | ${q.r} | ${q.device_us.toFixed(1)} | ${q.host_us.toFixed(1)} | ${q.roofline_us.toFixed(1)} | ${(100 * q.share).toFixed(1)} |`);
console.log(JSON.stringify({ copyTbps, rows }));
