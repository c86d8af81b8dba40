#!/usr/bin/env node
// Streams on cuda: four independent LoRA layers (bf16, 4096 -> 4096, r 16) run together with
// forwardAsync, all on the default stream against one stream each; wall time per round of four
// forwards (µs, median of 5 loops of 50 rounds, each loop ended by cuda.synchronize()).
//   node bench/gpu_streams.js
'use strict';
const { performance } = require('perf_hooks');
const { Tensor, LoraLinear, cuda } = require('../dist');

const D = 4096, LAYERS = 4;
const rnd = (n, s) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898 + s) * 0.05);
const layers = Array.from({ length: LAYERS }, (_, i) => {
  const W = Tensor.from(rnd(D * D, i), [D, D], { dtype: 'bf16', device: 'cuda' });
  return new LoraLinear({ weight: W }).addAdapter('a', { r: 16, dtype: 'bf16', initLoraWeights: false, seed: i + 1 }).eval();
});
const streams = layers.map(() => cuda.createStream());

async function round(xs) {
  const ys = await Promise.all(layers.map((l, i) => l.forwardAsync(xs[i])));
  ys.forEach((y) => y.dispose());
}

async function timeRounds(xs) {
  for (let i = 0; i < 5; i++) await round(xs);
  cuda.synchronize();
  const per = [];
  for (let rep = 0; rep < 5; rep++) {
    const t0 = performance.now();
    for (let i = 0; i < 50; i++) await round(xs);
    cuda.synchronize();
    per.push(((performance.now() - t0) * 1000) / 50);
  }
  return per.sort((a, b) => a - b)[2];
}

(async () => {
  for (const n of [1, 16, 512, 4096]) {
    const xs = layers.map((_, i) => Tensor.from(rnd(n * D, 10 + i), [n, D], { dtype: 'bf16', device: 'cuda' }));
    layers.forEach((l) => (l.stream = null));
    const one = await timeRounds(xs);
    layers.forEach((l, i) => (l.stream = streams[i]));
    const own = await timeRounds(xs);
    console.log(`n ${n}: 4 layers on the default stream ${one.toFixed(1)} us per round, one stream each ${own.toFixed(1)} us (${(one / own).toFixed(2)}x)`);
    xs.forEach((x) => x.dispose());
  }
  streams.forEach((s) => s.dispose());
})();
