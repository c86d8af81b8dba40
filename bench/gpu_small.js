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
// No adapter: the forward is the base alone through lorakit's own path (decode kernel for n <= 16).
const bare = Ws.map((W) => new LoraLinear({ weight: W }).eval());
// Device-event median over 200 calls, and the host's own time per call in the same loops (when
// the two agree, the row is bound by the host: validation, allocation and launches).
const { timeCalls } = require('./gpu_timing');
const hostUs = [];
function timed(fn, sets) {
  const t = timeCalls((i) => fn(sets[i % 4]), 200);
  hostUs.push(t.host);
  return t.dev;
}
const rows = [];
for (const n of [1, 2, 4, 8, 16, 64, 512]) {
  const x = Tensor.from(rnd(n * d, 9), [n, d], { dtype: 'bf16', device: 'cuda' });
  const y = Tensor.empty([n, d], { dtype: 'bf16', device: 'cuda' });
  const base = timed((W) => cuda.baseGemm(x, W, y), Ws);
  const fwd = timed((l) => l.forward(x).dispose(), layers);
  const noLora = timed((l) => l.forward(x).dispose(), bare);
  const [hBase, hFwd, hNo] = hostUs.splice(0, 3);
  rows.push(`n=${n} base ${base.toFixed(1)} us (host ${hBase.toFixed(1)}), lorakit forward ${fwd.toFixed(1)} us (host ${hFwd.toFixed(1)}) (${(fwd / base).toFixed(2)}x), without adapters ${noLora.toFixed(1)} us (host ${hNo.toFixed(1)})`);
}
console.log(`decode rows limit ${process.env.LORAKIT_CUDA_DECODE_ROWS ?? 'default'}:\n` + rows.join('\n'));
