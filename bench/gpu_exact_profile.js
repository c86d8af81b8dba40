#!/usr/bin/env node
// Exact merge against today's merge on the GPU, in one run: per-call device time of loops of
// calls over SETS layers (distinct weights, so W does not sit in L2) for today's merge
// (kernels.mergeAdapter / unmergeAdapter), exact merge, exact unmerge and switchMerged (swap), and
// host wall time of one call + sync; [d_out, 4096] layers, r = 16, the adapter scaled to
// ‖ΔW‖/‖W‖ = 5%. exact/today speed = today µs / exact µs (the target: ≥ 80%).
//   node bench/gpu_exact_profile.js [--dout 4096,14336] [--dtypes bf16,f16,f32] [--sets 8] [--reps 7] [--out DIR]
'use strict';
const fs = require('fs');
const path = require('path');
const { performance } = require('perf_hooks');
const lk = require('../dist');
const { Tensor, LoraLinear, cuda, kernels } = lk;
const { randn, sumSq, scaleForRelDelta } = require('./gpu_data');

const args = process.argv.slice(2);
const opt = (name, def) => (args.includes(name) ? args[args.indexOf(name) + 1] : def);
const douts = opt('--dout', '4096,14336').split(',').map(Number);
const dtypes = opt('--dtypes', 'bf16,f16,f32').split(',');
const SETS = Number(opt('--sets', '8'));
const REPS = Number(opt('--reps', '7'));
const outDir = opt('--out', null);
const D_IN = 4096, R = 16;

const median = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
function hostOne(fn) {
  const t = [];
  for (let k = 0; k < 11; k++) {
    cuda.synchronize();
    const t0 = performance.now();
    fn();
    cuda.synchronize();
    t.push((performance.now() - t0) * 1000);
  }
  return median(t);
}

const rows = [];
for (const dOut of douts) {
  const w = randn(dOut * D_IN, 7, 0.02);
  const ww = sumSq(w);
  for (const dtype of dtypes) {
    const res0 = {};
    const Ws = Array.from({ length: SETS }, () => Tensor.from(w, [dOut, D_IN], { dtype, device: 'cuda' }));
    const layers = Ws.map((W) => new LoraLinear({ weight: W }));
    for (const [name, seed] of [['a', 31], ['b', 32]]) {
      layers.forEach((l) => l.addAdapter(name, { r: R, loraAlpha: R, dtype, initLoraWeights: false, seed }));
      res0[name] = scaleForRelDelta(layers[0], name, ww, 0.05);  // printed: a non-finite or zero ‖ΔW‖ would show here
      layers.forEach((l) => l.setScale(name, res0[name]));
    }
    const ads = layers.map((l) => ({ loraA: l.loraA.get('a'), loraB: l.loraB.get('a'), scaling: l.scaling.get('a') }));
    // Today's merge + unmerge drift their W toward values that round-trip: timed on copies, never on the
    // weights the exact path merges (which would then need several times fewer corrections).
    const Wp = Ws.map((W) => W.clone());
    // warm-up: every path once per set
    for (let s = 0; s < SETS; s++) {
      kernels.mergeAdapter(Wp[s], ads[s]);
      kernels.unmergeAdapter(Wp[s], ads[s]);
      layers[s].merge({ adapterNames: ['a'] });
      layers[s].switchMerged(['b']);
      layers[s].unmerge();
    }
    cuda.synchronize();
    const res = { d_out: dOut, dtype, scale_a: res0.a, scale_b: res0.b };
    const plainM = [], plainU = [], exM = [], exU = [], sw = [];
    for (let k = 0; k < REPS; k++) {
      const one = (fn) => (cuda.timeMs(() => { for (let s = 0; s < SETS; s++) fn(s); }) * 1000) / SETS;
      plainM.push(one((s) => kernels.mergeAdapter(Wp[s], ads[s])));
      plainU.push(one((s) => kernels.unmergeAdapter(Wp[s], ads[s])));
      exM.push(one((s) => layers[s].merge({ adapterNames: ['a'] })));
      sw.push(one((s) => layers[s].switchMerged([layers[s].mergedAdapters[0] === 'a' ? 'b' : 'a'])));
      exU.push(one((s) => layers[s].unmerge()));
    }
    Object.assign(res, { plain_merge_us: median(plainM), plain_unmerge_us: median(plainU), exact_merge_us: median(exM), exact_unmerge_us: median(exU), swap_us: median(sw) });
    res.plain_us = (res.plain_merge_us + res.plain_unmerge_us) / 2;
    const l = layers[0];
    res.host_plain_us = hostOne(() => kernels.mergeAdapter(Wp[1], ads[1]));
    res.host_exact_pair_us = hostOne(() => { l.merge({ adapterNames: ['a'] }); l.unmerge(); });
    // What the exact merge did to W (expected ‖ΔW‖/‖W‖ ≈ 0.05): a check that the delta is applied.
    const before = l.weight.toFloat32Array();
    l.merge({ adapterNames: ['a'] });
    res.side_bits = (l.mergeSideInfoBytes * 8) / l.weight.numel;
    const after = l.weight.toFloat32Array();
    let dn = 0, bn = 0;
    for (let i = 0; i < before.length; i++) { dn += (after[i] - before[i]) ** 2; bn += before[i] ** 2; }
    res.applied_rel_delta = Math.sqrt(dn / bn);
    l.unmerge();
    res.merge_speed = res.plain_us / res.exact_merge_us;
    res.unmerge_speed = res.plain_us / res.exact_unmerge_us;
    const f = (v) => v.toFixed(1);
    console.log(`${dtype} [${dOut}, ${D_IN}]: today merge ${f(res.plain_merge_us)} / unmerge ${f(res.plain_unmerge_us)} µs; exact merge ${f(res.exact_merge_us)} µs (${(100 * res.merge_speed).toFixed(0)}%), exact unmerge ${f(res.exact_unmerge_us)} µs (${(100 * res.unmerge_speed).toFixed(0)}%), swap ${f(res.swap_us)} µs; one call + sync: today ${f(res.host_plain_us)}, exact merge+unmerge ${f(res.host_exact_pair_us)} µs; side ${res.side_bits.toFixed(3)} bits/weight; applied ‖ΔW‖/‖W‖ ${res.applied_rel_delta.toFixed(4)} (scale ${res.scale_a.toPrecision(3)})`);
    rows.push(res);
    layers.forEach((x) => x.dispose());
    Ws.forEach((W) => W.dispose());
    Wp.forEach((W) => W.dispose());
    cuda.emptyCache();
  }
}
const info = lk.backendInfo();
console.log(`# ${info.cudaDevice}; per call = median over ${REPS} loops of ${SETS} calls on ${SETS} distinct layers; LORAKIT_EXACT_MIN_BLOCKS=${process.env.LORAKIT_EXACT_MIN_BLOCKS || '(default)'} LORAKIT_EXACT_STAGE=${process.env.LORAKIT_EXACT_STAGE || '(default: staged)'}`);
if (outDir) {
  fs.mkdirSync(outDir, { recursive: true });
  const tag = (process.env.LORAKIT_EXACT_MIN_BLOCKS ? `-minb${process.env.LORAKIT_EXACT_MIN_BLOCKS}` : '') + (process.env.LORAKIT_EXACT_STAGE === '0' ? '-unstaged' : '');
  fs.writeFileSync(path.join(outDir, `gpu-exact-profile${tag}.json`), JSON.stringify({ device: info.cudaDevice, date: new Date().toISOString(), sets: SETS, reps: REPS, rows }, null, 1));
}
