#!/usr/bin/env node
// Host cost of one LoraLinear call on the cpu backend at tiny shapes (d 64, r 4, n 1), where the
// kernels take well under a microsecond: what remains is lib/ + N-API per call. Prints µs per call
// (median of 7 loops) for the stages a forward goes through.
//   node bench/host_path_cpu.js [--iters N]
'use strict';
const { performance } = require('perf_hooks');
const { Tensor, LoraLinear } = require('../dist');
const { call } = require('../dist/native');

const args = process.argv.slice(2);
const iters = args.includes('--iters') ? Number(args[args.indexOf('--iters') + 1]) : 20000;
const d = 64;
const rnd = (n, s) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898 + s) * 0.5);
const W = Tensor.from(rnd(d * d, 1), [d, d]);
const x = Tensor.from(rnd(d, 2), [1, d]);
const y = Tensor.empty([1, d]);
const layer = new LoraLinear({ weight: W }).addAdapter('a', { r: 4, initLoraWeights: false, seed: 1 }).eval();
const bare = new LoraLinear({ weight: W }).eval();
const A = layer.loraA.get('a');
const B = layer.loraB.get('a');

function time(fn) {
  for (let i = 0; i < 2000; i++) fn();
  const out = [];
  for (let rep = 0; rep < 7; rep++) {
    const t0 = performance.now();
    for (let i = 0; i < iters; i++) fn();
    out.push(((performance.now() - t0) * 1000) / iters);
  }
  out.sort((a, b) => a - b);
  return out[3];
}

const rows = {
  'native loraForward into y (no lib/)': time(() => call((b) => b.loraForward(x.handle, W.handle, null, false, [[A.handle, B.handle, 1, null]], y.handle))),
  'Tensor.empty + dispose': time(() => Tensor.empty([1, d]).dispose()),
  'layer.forward (no adapter)': time(() => bare.forward(x).dispose()),
  'layer.forward (1 adapter)': time(() => layer.forward(x).dispose()),
  'layer.forward (1 adapter, opts.out)': time(() => layer.forward(x, { out: y })),
};
for (const [k, v] of Object.entries(rows)) if (!Number.isNaN(v)) console.log(`${k.padEnd(40)} ${v.toFixed(2)} us`);
