#!/usr/bin/env node
// A few training-mode forwards at n = 16 of one [d_out, 4096] bf16 layer, plain LoRA then DoRA (r 16,
// A rewritten before each DoRA call so the norm is recomputed), for a kernel profiler:
//   ncu --kernel-name regex:decode_tc --launch-skip 2 --launch-count 6 node bench/gpu_dora_one.js [d_out]
'use strict';
const { Tensor, LoraLinear, cuda } = require('../dist');
const { randn } = require('./gpu_data');

const dOut = Number(process.argv[2] || 14336);
const W = Tensor.from(randn(dOut * 4096, 7, 0.02), [dOut, 4096], { dtype: 'bf16', device: 'cuda' });
const x = Tensor.from(randn(16 * 4096, 8, 1), [16, 4096], { dtype: 'bf16', device: 'cuda' });
const make = (useDora) => new LoraLinear({ weight: W }).addAdapter('a', { r: 16, loraAlpha: 32, dtype: 'bf16', initLoraWeights: false, seed: 3, useDora }).train();
const lora = make(false);
const dora = make(true);
for (let k = 0; k < 4; k++) lora.forward(x).dispose();
for (let k = 0; k < 4; k++) {
  const A = dora.loraA.get('a');
  A.copyFrom(A);
  dora.forward(x).dispose();
}
cuda.synchronize();
console.log(`[${dOut}, 4096] n 16: 4 LoRA and 4 DoRA training forwards done`);
