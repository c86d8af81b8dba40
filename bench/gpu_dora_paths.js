#!/usr/bin/env node
// Which GEMM path a DoRA eval forward takes on cuda and what it costs, against the plain LoRA
// forward of the same layer: bf16, d_in 4096, r 16, n ∈ {16, 512, 4096}, d_out ∈ {4096, 14336}. Run
// it under LORAKIT_CUDA_GEMM=cublas|sm90 (forced) or unset (timed once per shape). Prints device-event
// medians per call and the sm_90 kernel's launches in the DoRA loop (5 = only the one-time timing).
'use strict';
const { LoraLinear, cuda } = require('../dist');
const { timeCalls } = require('./gpu_timing');
const { randn, dev } = require('./gpu_data');

let seed = 1;
const env = `LORAKIT_CUDA_GEMM=${process.env.LORAKIT_CUDA_GEMM ?? '(auto)'}`;
for (const dOut of [4096, 14336]) {
  const Ws = [0, 1, 2, 3].map(() => dev(randn(dOut * 4096, seed++, 0.02), [dOut, 4096]));
  for (const n of [16, 512, 4096]) {
    const x = dev(randn(n * 4096, seed++, 1), [n, 4096]);
    const make = (useDora) => Ws.map((W) => new LoraLinear({ weight: W }).addAdapter('a', { r: 16, loraAlpha: 32, dtype: 'bf16', initLoraWeights: false, seed: 3, useDora }).eval());
    const lora = make(false);
    const dora = make(true);
    const tl = timeCalls((i) => lora[i % 4].forward(x).dispose(), 30).dev;
    const l0 = cuda.kernelStats().sm90GemmLaunches;
    const td = timeCalls((i) => dora[i % 4].forward(x).dispose(), 30).dev;
    const calls = cuda.kernelStats().sm90GemmLaunches - l0;
    console.log(`${env} d_out ${dOut} n ${n}: LoRA ${tl.toFixed(1)} µs, DoRA ${td.toFixed(1)} µs (${(td / tl).toFixed(3)}x), sm90 launches in the DoRA loop: ${calls}`);
    [...lora, ...dora].forEach((l) => l.dispose());
    x.dispose();
  }
  Ws.forEach((W) => W.dispose());
  cuda.emptyCache();
}
