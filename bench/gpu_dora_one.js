#!/usr/bin/env node
// A few forwards of one [d_out, 4096] bf16 layer, plain LoRA then DoRA (r 16), for a kernel profiler.
// Training mode (default) rewrites A before each DoRA call, so the norm is recomputed; eval caches it.
//   ncu --kernel-name regex:decode_tc --launch-skip 2 --launch-count 6 node bench/gpu_dora_one.js 14336
//   ncu --kernel-name regex:lora_gemm_sm90 --metrics gpu__time_duration.sum node bench/gpu_dora_one.js 4096 eval 4096
//   (eval at n 4096 runs the sm_90 GEMM with k as its column scale; scale_columns only in its first call's path race)
'use strict';
const { Tensor, LoraLinear, cuda } = require('../dist');
const { randn } = require('./gpu_data');

const dOut = Number(process.argv[2] || 14336);
const mode = process.argv[3] === 'eval' ? 'eval' : 'train';
const n = Number(process.argv[4] || 16);
const W = Tensor.from(randn(dOut * 4096, 7, 0.02), [dOut, 4096], { dtype: 'bf16', device: 'cuda' });
const x = Tensor.from(randn(n * 4096, 8, 1), [n, 4096], { dtype: 'bf16', device: 'cuda' });
const make = (useDora) => {
  const l = new LoraLinear({ weight: W }).addAdapter('a', { r: 16, loraAlpha: 32, dtype: 'bf16', initLoraWeights: false, seed: 3, useDora });
  return mode === 'eval' ? l.eval() : l.train();
};
const lora = make(false);
const dora = make(true);
for (let k = 0; k < 4; k++) lora.forward(x).dispose();
for (let k = 0; k < 4; k++) {
  if (mode === 'train') {
    const A = dora.loraA.get('a');
    A.copyFrom(A);
  }
  dora.forward(x).dispose();
}
cuda.synchronize();
console.log(`[${dOut}, 4096] n ${n} ${mode}: 4 LoRA and 4 DoRA forwards done`);
