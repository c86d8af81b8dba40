#!/usr/bin/env node
// Where an exact merge's time goes on the GPU: host wall time per call (with a sync after each
// call) against device time of loops of calls, for 4096×4096 layers of each dtype, the adapter
// scaled to ‖ΔW‖/‖W‖ = 5%. Run under `nsys profile --stats=true` for the kernel breakdown.
//   node bench/gpu_exact_profile.js [--iters 50]
'use strict';
const { performance } = require('perf_hooks');
const lk = require('../dist');
const { Tensor, LoraLinear, cuda, kernels } = lk;
const { randn } = require('./gpu_data');

const iters = Number(process.argv.includes('--iters') ? process.argv[process.argv.indexOf('--iters') + 1] : 50);
const D = 4096, R = 16;
for (const dtype of ['bf16', 'f16', 'f32']) {
  const w = randn(D * D, 1, 0.02);
  const W = Tensor.from(w, [D, D], { dtype, device: 'cuda' });
  const l = new LoraLinear({ weight: W });
  let ww = 0;
  for (let i = 0; i < w.length; i++) ww += w[i] * w[i];
  for (const [name, seed] of [['a', 31], ['b', 32]]) {
    l.addAdapter(name, { r: R, loraAlpha: R, dtype, initLoraWeights: false, seed });
    const dv = l.getDeltaWeight(name).toFloat32Array();
    let dd = 0;
    for (let i = 0; i < dv.length; i++) dd += dv[i] * dv[i];
    l.setScale(name, 0.05 / Math.sqrt(dd / ww));
  }
  const ad = { loraA: Tensor.from(randn(R * D, 5, 0.02), [R, D], { dtype, device: 'cuda' }), loraB: Tensor.from(randn(D * R, 6, 0.02), [D, R], { dtype, device: 'cuda' }), scaling: 1 };
  let k = 0;
  const plain = () => (k++ & 1 ? kernels.unmergeAdapter : kernels.mergeAdapter)(W, ad);
  const exact = () => (k++ & 1 ? l.unmerge() : l.merge({ adapterNames: ['a'] }));
  const swap = () => l.switchMerged([l.mergedAdapters[0] === 'a' ? 'b' : 'a']);
  const res = {};
  for (const [name, fn] of [['plain', plain], ['exact', exact], ['swap', swap]]) {
    if (name === 'swap') { if (l.merged) l.unmerge(); l.merge({ adapterNames: ['a'] }); }
    k = 0;
    for (let i = 0; i < 6; i++) fn();
    cuda.synchronize();
    const devUs = (cuda.timeMs(() => { for (let i = 0; i < iters; i++) fn(); }) * 1000) / iters;
    const host = [];
    for (let i = 0; i < 20; i++) { cuda.synchronize(); const t0 = performance.now(); fn(); cuda.synchronize(); host.push((performance.now() - t0) * 1000); }
    host.sort((a, b) => a - b);
    res[name] = `${devUs.toFixed(1)} µs/call (loop), ${host[10].toFixed(1)} µs (one call + sync, median)`;
    if (name === 'swap' || name === 'exact') { if (l.merged) l.unmerge(); }
  }
  l.merge({ adapterNames: ['a'] });
  const bits = (l.mergeSideInfoBytes * 8) / W.numel;
  l.unmerge();
  console.log(`${dtype}: plain ${res.plain}; exact ${res.exact}; swap ${res.swap}; side ${bits.toFixed(3)} bits/weight`);
  l.dispose();
  W.dispose();
  ad.loraA.dispose();
  ad.loraB.dispose();
}
