#!/usr/bin/env node
/**
 * Exact merge on the CPU against today's (peft's) merge on the same layer, in one run: per dtype,
 * the best and median wall time of peft merge, exact merge, exact unmerge, swap (switchMerged),
 * exact unmerge + merge and peft unmerge + merge, every op timed in alternation with the others so
 * that all see the same machine load; then the side information in bits per weight for small and
 * large deltas (‖ΔW‖/‖W‖ = 1% and 10%). Each op is timed as wall time and as the process's CPU
 * time: on a shared machine a thread pool's barrier can wait a whole time slice for a preempted
 * worker, so the CPU time (the work done, with --threads 1 by default) is the steadier comparison.
 * Writes bench/results/exact-merge-<date>-<machine>.txt.
 *
 *   node bench/exact_merge.js [--d 4096] [--r 16] [--rounds 15] [--dtypes f32,f16,bf16] [--threads 1]
 */
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const lk = require('../dist');

function arg(name, def) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
}
const D = Number(arg('d', 4096));
const R = Number(arg('r', 16));
const ROUNDS = Number(arg('rounds', 15));
const DTYPES = arg('dtypes', 'f32,f16,bf16').split(',');
lk.setNumThreads(Number(arg('threads', 1)));

function uniform(n, seed, scale) {
  let s = seed >>> 0 || 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    out[i] = ((s / 4294967296) * 2 - 1) * scale;
  }
  return out;
}

/** A LoraLinear [d, d] with adapters a and b whose ‖ΔW‖/‖W‖ is rel. */
function makeLayer(dtype, rel) {
  const w = uniform(D * D, 1, 0.02 * Math.sqrt(3));
  const layer = new lk.LoraLinear({ weight: lk.Tensor.from(w, [D, D], { dtype }) });
  let ww = 0;
  for (let i = 0; i < w.length; i++) ww += w[i] * w[i];
  for (const [name, seed] of [['a', 2], ['b', 3]]) {
    layer.addAdapter(name, { r: R, loraAlpha: R, initLoraWeights: false, seed });
    const dlt = layer.getDeltaWeight(name);
    const d = dlt.toFloat32Array();
    dlt.dispose();
    let dd = 0;
    for (let i = 0; i < d.length; i++) dd += d[i] * d[i];
    layer.setScale(name, rel / Math.sqrt(dd / ww));
  }
  return layer;
}

const now = () => Number(process.hrtime.bigint()) / 1e6;
const cpuNow = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};
function stats(t) {
  t.sort((a, b) => a - b);
  return { best: t[0], median: t[t.length >> 1] };
}

function measure(dtype) {
  // peft's ops on a layer of their own: its unmerge leaves W drifted (round(round(W + Δ) − Δ)),
  // and the exact merge of such a W needs ~5 times fewer corrections than of a fresh one, which
  // would flatter the exact rows. Both layers start from the same W and adapters.
  const layer = makeLayer(dtype, 0.05);
  const peft = makeLayer(dtype, 0.05);
  const keys = ['peftMerge', 'exactMerge', 'exactUnmerge', 'swap', 'exactUnmergeMerge', 'peftUnmergeMerge'];
  const t = Object.fromEntries(keys.map((k) => [k, []]));
  const c = Object.fromEntries(keys.map((k) => [k, []]));
  const lap = (key, fn) => {
    const t0 = now();
    const c0 = cpuNow();
    fn();
    t[key].push(now() - t0);
    c[key].push(cpuNow() - c0);
  };
  for (let round = -1; round < ROUNDS; round++) {
    // peft: merge, then (untimed) unmerge back; its unmerge drifts W, which does not change the timing
    lap('peftMerge', () => peft.merge({ adapterNames: ['a'], exact: false }));
    peft.unmerge();
    lap('exactMerge', () => layer.merge({ adapterNames: ['a'] }));
    lap('swap', () => layer.switchMerged(['b']));
    lap('exactUnmergeMerge', () => {
      layer.unmerge();
      layer.merge({ adapterNames: ['a'] });
    });
    lap('exactUnmerge', () => layer.unmerge());
    peft.merge({ adapterNames: ['a'], exact: false });
    lap('peftUnmergeMerge', () => {
      peft.unmerge();
      peft.merge({ adapterNames: ['b'], exact: false });
    });
    peft.unmerge();
    if (round < 0) for (const k of keys) t[k].length = c[k].length = 0; // warm-up round
  }
  for (const l of [layer, peft]) {
    l.dispose();
    l.weight.dispose();
  }
  const s = {};
  for (const k of keys) s[k] = { wall: stats(t[k]), cpu: stats(c[k]) };
  return s;
}

function sideInfo(dtype, rel) {
  const layer = makeLayer(dtype, rel);
  layer.merge({ adapterNames: ['a'] });
  const bits = (layer.mergeSideInfoBytes * 8) / (D * D);
  layer.unmerge();
  layer.dispose();
  layer.weight.dispose();
  return bits;
}

const info = lk.backendInfo();
const lines = [];
const out = (l) => {
  lines.push(l);
  console.log(l);
};
out(`exact merge vs today's merge, LoraLinear [${D}, ${D}] r=${R}, ‖ΔW‖/‖W‖ = 5% (timing), ${new Date().toISOString()}`);
out(`cpu: ${os.cpus()[0].model} (${os.cpus().length} CPUs), path ${info.cpuPath}, ${info.threads} threads, load ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}`);
out(`best / median of ${ROUNDS} rounds (each op timed in turn with the others); speed = peft merge time / op time`);
out('');
out('dtype  op                   wall best  wall median  cpu best  cpu median   speed vs peft merge (wall best, cpu best)');
for (const dtype of DTYPES) {
  const s = measure(dtype);
  const row = (name, key, passes) => {
    const v = s[key];
    const ref = s.peftMerge;
    const f = (x) => x.toFixed(2).padStart(9);
    const pct = (a, b) => `${((passes * a) / b * 100).toFixed(0).padStart(4)}%`;
    out(`${dtype.padEnd(6)} ${name.padEnd(20)} ${f(v.wall.best)}  ${f(v.wall.median)}  ${f(v.cpu.best)}  ${f(v.cpu.median)}   ${pct(ref.wall.best, v.wall.best)}  ${pct(ref.cpu.best, v.cpu.best)}${passes > 1 ? `  (of ${passes} peft merges)` : ''}`);
  };
  row('peft merge (today)', 'peftMerge', 1);
  row('exact merge', 'exactMerge', 1);
  row('exact unmerge', 'exactUnmerge', 1);
  row('swap (switchMerged)', 'swap', 1);
  row('exact unmerge+merge', 'exactUnmergeMerge', 2);
  row('peft unmerge+merge', 'peftUnmergeMerge', 2);
}
out('');
out('side information (mergeSideInfoBytes · 8 / weights), one adapter:');
for (const dtype of DTYPES)
  out(`${dtype.padEnd(6)} small delta (1%): ${sideInfo(dtype, 0.01).toFixed(3)} bits/weight; large delta (10%): ${sideInfo(dtype, 0.1).toFixed(3)} bits/weight`);

const dir = path.join(__dirname, 'results');
fs.mkdirSync(dir, { recursive: true });
const slug = os.cpus()[0].model.replace(/[^A-Za-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 40);
const file = path.join(dir, `exact-merge-${new Date().toISOString().slice(0, 10)}-${slug}.txt`);
const tmp = `${file}.tmp-${process.pid}`;
fs.writeFileSync(tmp, lines.join('\n') + '\n');
fs.renameSync(tmp, file);
console.log(`\nwritten: ${path.relative(process.cwd(), file)}`);
