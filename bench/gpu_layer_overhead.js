#!/usr/bin/env node
// Where the time goes between the bare base GEMM (cuda.baseGemm into a preallocated y) and the
// same GEMM through a LoraLinear with no adapter (y allocated per call): device and host µs per
// call, allocator counters, and the GC count (run with --trace-gc to see them).
'use strict';
const lk = require('../dist');
const { timeCalls } = require('./gpu_timing');
const { Tensor, LoraLinear, cuda } = lk;
const dev = (n, shape) => Tensor.from(new Float32Array(n).map((_, i) => Math.sin(i) * 0.02), shape, { dtype: 'bf16', device: 'cuda' });
for (const [n, dOut] of [[4096, 4096], [16384, 4096], [4096, 14336]]) {
  const Ws = [0, 1, 2, 3].map(() => dev(dOut * 4096, [dOut, 4096]));
  const x = dev(n * 4096, [n, 4096]);
  const y = Tensor.empty([n, dOut], { dtype: 'bf16', device: 'cuda' });
  const layers = Ws.map((W) => new LoraLinear({ weight: W }).eval());
  const base = timeCalls((i) => cuda.baseGemm(x, Ws[i % 4], y), 20);
  const m0 = cuda.memoryStats();
  const plain = timeCalls((i) => layers[i % 4].forward(x).dispose(), 20);
  const m1 = cuda.memoryStats();
  const keep = timeCalls((i) => { const o = layers[i % 4].forward(x); o.dispose(); }, 20);
  const into = timeCalls((i) => cuda.baseGemm(x, Ws[i % 4], Tensor.empty([n, dOut], { dtype: 'bf16', device: 'cuda' })), 20);
  console.log(JSON.stringify({ n, dOut, base, plain, keep, baseIntoFresh: into, memBefore: m0, memAfter: m1 }));
  layers.forEach((l) => l.dispose());
  [...Ws, x, y].forEach((t) => t.dispose());
  cuda.emptyCache();
}
