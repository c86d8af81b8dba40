#!/usr/bin/env node
// Small-batch forward on cuda (bf16, d_in = d_out = 4096, r = 16): the decode kernel against the
// cuBLASLt path for n = 1..16, to place the switch between them. Run twice:
//   node bench/gpu_small.js; LORAKIT_CUDA_DECODE_ROWS=0 node bench/gpu_small.js
'use strict';
const { Tensor, LoraLinear, cuda } = require('../dist');

const d = 4096;
const rnd = (n, s) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898 + s) * 0.5);
const Ws = [0, 1, 2, 3].map((s) => Tensor.from(rnd(d * d, s), [d, d], { dtype: 'bf16', device: 'cuda' }));
const layers = Ws.map((W) => new LoraLinear({ weight: W }).addAdapter('a', { r: 16, dtype: 'bf16', initLoraWeights: false, seed: 1 }).eval());
function timed(fn, sets) {
  for (const s of sets) fn(s);
  cuda.synchronize();
  const out = [];
  for (let rep = 0; rep < 5; rep++) out.push((cuda.timeMs(() => { for (let i = 0; i < 200; i++) fn(sets[i % 4]); }) * 1000) / 200);
  return out.sort((a, b) => a - b)[2];
}
const rows = [];
for (const n of [1, 2, 4, 8, 16]) {
  const x = Tensor.from(rnd(n * d, 9), [n, d], { dtype: 'bf16', device: 'cuda' });
  const y = Tensor.empty([n, d], { dtype: 'bf16', device: 'cuda' });
  const base = timed((W) => cuda.baseGemm(x, W, y), Ws);
  const fwd = timed((l) => l.forward(x).dispose(), layers);
  rows.push(`n=${n} base ${base.toFixed(1)} us, lorakit forward ${fwd.toFixed(1)} us (${(fwd / base).toFixed(2)}x)`);
}
console.log(`decode rows limit ${process.env.LORAKIT_CUDA_DECODE_ROWS ?? 16}:\n` + rows.join('\n'));
