#!/usr/bin/env node
// A few exact merges and unmerges of one [d_out, 4096] layer on cuda (r 16, ‖ΔW‖/‖W‖ ≈ 5%), for a
// kernel profiler: ncu --kernel-name regex:chain_kernel node bench/gpu_exact_one.js [dtype] [d_out]
'use strict';
const { Tensor, LoraLinear, cuda } = require('../dist');
const { randn, sumSq, scaleForRelDelta } = require('./gpu_data');

const dtype = process.argv[2] || 'bf16';
const dOut = Number(process.argv[3] || 4096);
const w = randn(dOut * 4096, 7, 0.02);
const layer = new LoraLinear({ weight: Tensor.from(w, [dOut, 4096], { dtype, device: 'cuda' }) });
layer.addAdapter('a', { r: 16, loraAlpha: 16, dtype, initLoraWeights: false, seed: 31 });
layer.setScale('a', scaleForRelDelta(layer, 'a', sumSq(w), 0.05));
for (let k = 0; k < 3; k++) {
  layer.merge({ adapterNames: ['a'] });
  layer.unmerge();
}
cuda.synchronize();
console.log(`${dtype} [${dOut}, 4096]: 3 exact merges and unmerges done`);
