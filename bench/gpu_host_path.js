#!/usr/bin/env node
// Host µs per call of a LoraLinear forward on cuda, split by stage (bf16, d_in 4096, d_out 4096 and
// 14336, r 16, n 1/16/512, 4 rotating weight sets): the bare base GEMM (cuda.baseGemm into a
// preallocated y), a cuda Tensor.empty + dispose, the native loraForward call alone (no lib/),
// layer.forward into opts.out, layer.forward with a fresh y; then, where the build has it, the
// same with graph replay on. Each row: host µs (the loop's wall time, no sync) and device µs
// (events around the loop); when they agree the row is bound by the host. Stages this build
// lacks (opts.out, setGraphReplay) are reported as n/a, so the same file runs on older commits.
//   node bench/gpu_host_path.js [--d-out 4096,14336] [--json FILE]
'use strict';
const fs = require('fs');
const lk = require('../dist');
const { native } = require('../dist/native');
const { timeCalls } = require('./gpu_timing');
const { Tensor, LoraLinear, cuda } = lk;

const args = process.argv.slice(2);
const jsonOut = args.includes('--json') ? args[args.indexOf('--json') + 1] : null;
const dOuts = args.includes('--d-out') ? args[args.indexOf('--d-out') + 1].split(',').map(Number) : [4096, 14336];
const D_IN = 4096;
const R = 16;
// One pool of values (an LCG: Math.sin per element took seconds at 14336 x 4096), sliced per tensor.
const POOL = new Float32Array(Math.max(...dOuts) * D_IN + 8);
for (let i = 0, s = 12345; i < POOL.length; i++) {
  s = (Math.imul(s, 1103515245) + 12345) >>> 0;
  POOL[i] = (s / 4294967296 - 0.5) * 0.04;
}
const dev = (shape, s) => {
  const n = shape.reduce((a, b) => a * b, 1);
  return Tensor.from(POOL.subarray(s, s + n), shape, { dtype: 'bf16', device: 'cuda' });
};
const b = native();
const hasGraphs = typeof cuda.setGraphReplay === 'function';
const results = [];
const fmt = (t) => (t ? `${t.host.toFixed(1).padStart(6)} ${t.dev.toFixed(1).padStart(6)}` : '   n/a    n/a');

console.log(`# ${lk.backendInfo().cudaDevice}; host / device µs per call (median of 5 loops of 200)`);
console.log('d_out     n |  base GEMM    | empty+dispose | native call   | forward(out)  | forward       | native+graph  | fwd(out)+graph | forward+graph | fwd/base dev (graph)');
for (const dOut of dOuts) {
  const Ws = [0, 1, 2, 3].map((s) => dev([dOut, D_IN], s));
  const layers = Ws.map((W) => new LoraLinear({ weight: W }).addAdapter('a', { r: R, loraAlpha: 2 * R, dtype: 'bf16', initLoraWeights: false, seed: 1 }).eval());
  const AB = layers.map((l) => [[l.loraA.get('a').handle, l.loraB.get('a').handle, l.scaling.get('a'), null]]);
  for (const n of [1, 16, 512]) {
    const x = dev([n, D_IN], 9);
    const y = Tensor.empty([n, dOut], { dtype: 'bf16', device: 'cuda' });
    let outOk = true;
    try {
      layers[0].forward(x, { out: y });
    } catch {
      outOk = false;
    }
    const t = (fn) => timeCalls(fn, 200);
    const stages = () => ({
      native: t((i) => b.loraForward(x.handle, Ws[i % 4].handle, null, false, AB[i % 4], y.handle)),
      forwardOut: outOk ? t((i) => layers[i % 4].forward(x, { out: y })) : null,
      forward: t((i) => layers[i % 4].forward(x).dispose()),
    });
    if (hasGraphs) cuda.setGraphReplay(false);
    const row = {
      dOut,
      n,
      base: t((i) => cuda.baseGemm(x, Ws[i % 4], y)),
      empty: t(() => Tensor.empty([n, dOut], { dtype: 'bf16', device: 'cuda' }).dispose()),
      ...stages(),
    };
    if (hasGraphs) {
      cuda.setGraphReplay(true);
      const g = stages();
      row.graph = g;
      row.graphStats = cuda.kernelStats();
      cuda.setGraphReplay(false);
    }
    results.push(row);
    const best = row.graph ? row.graph.forward : row.forward;
    console.log(
      `${String(dOut).padStart(5)} ${String(n).padStart(5)} | ${fmt(row.base)} | ${fmt(row.empty)} | ${fmt(row.native)} | ${fmt(row.forwardOut)} | ${fmt(row.forward)} | ` +
        `${fmt(row.graph?.native)} | ${fmt(row.graph?.forwardOut)} | ${fmt(row.graph?.forward)} | ${(row.forward.dev / row.base.dev).toFixed(2)}x (${(best.dev / row.base.dev).toFixed(2)}x)`,
    );
    x.dispose();
    y.dispose();
  }
  layers.forEach((l) => l.dispose());
  Ws.forEach((W) => W.dispose());
  cuda.emptyCache();
}
if (hasGraphs) console.log('graph stats: ' + JSON.stringify(cuda.kernelStats()));
if (jsonOut) fs.writeFileSync(jsonOut, JSON.stringify({ device: lk.backendInfo().cudaDevice, results }, null, 1));
