#!/usr/bin/env node
// Mixed-adapter batches on cuda (bf16, d_in 4096, 4 adapters of r = 16, one per row round-robin):
// device and host µs per forward against the same layer's forward without adapters (the base
// GEMM), for the segmented kernels or the per-adapter path (the default picks by rows). Compare:
//   LORAKIT_CUDA_MIXED=segmented node bench/gpu_mixed.js; LORAKIT_CUDA_MIXED=per-adapter node bench/gpu_mixed.js
'use strict';
const { Tensor, LoraLinear } = require('../dist');
const { timeCalls } = require('./gpu_timing');

const D_IN = 4096, R = 16, ADAPTERS = 4;
const rnd = (n, s) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898 + s) * 0.05);
const mode = process.env.LORAKIT_CUDA_MIXED || 'auto (segmented up to 2048 rows)';
console.log(`mode ${mode}`);
for (const dOut of [4096, 14336]) {
  const W = Tensor.from(rnd(dOut * D_IN, 1), [dOut, D_IN], { dtype: 'bf16', device: 'cuda' });
  const layer = new LoraLinear({ weight: W });
  const names = Array.from({ length: ADAPTERS }, (_, a) => `a${a}`);
  names.forEach((name, a) => layer.addAdapter(name, { r: R, dtype: 'bf16', initLoraWeights: false, seed: a + 1 }));
  layer.eval();
  const bare = new LoraLinear({ weight: W }).eval();
  for (const n of [16, 512, 4096]) {
    const x = Tensor.from(rnd(n * D_IN, 2), [n, D_IN], { dtype: 'bf16', device: 'cuda' });
    const rows = Array.from({ length: n }, (_, i) => names[i % ADAPTERS]);
    const base = timeCalls(() => bare.forward(x).dispose(), 100);
    const mixed = timeCalls(() => layer.forward(x, { adapterNames: rows }).dispose(), 100);
    console.log(`d_out ${dOut} n ${n}: base ${base.dev.toFixed(1)} us (host ${base.host.toFixed(1)}), mixed ${mixed.dev.toFixed(1)} us (host ${mixed.host.toFixed(1)}): ${(mixed.dev / base.dev).toFixed(2)}x`);
    x.dispose();
  }
}
