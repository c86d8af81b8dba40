#!/usr/bin/env node
/**
 * DoRA forward cost on the CPU as a ratio to plain LoRA on the same layer and input, measured in one
 * run (peft users report DoRA 2-5x slower than LoRA): in eval (W, A, B frozen: the weight norm is
 * cached) and in training mode (A rewritten before each DoRA call, as an optimizer step would, so the
 * norm's W·Aᵀ pass is paid each time). Build dist/ first: npx tsc -p tsconfig.json.
 * Times are process CPU time (process.cpuUsage, all threads), medians of several runs: on a shared
 * machine CPU time is far steadier than wall time.
 * Usage: node bench/dora.js [--threads N] [--out bench/results/<file>.md]
 */
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { LoraLinear, Tensor, backendInfo, setNumThreads } = require('../dist');

const thrIdx = process.argv.indexOf('--threads');
if (thrIdx > 0) setNumThreads(Number(process.argv[thrIdx + 1]));

function median(xs) {
  const s = xs.slice().sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Median CPU milliseconds of fn over reps runs (after one warm-up). */
function cpuTime(fn, reps) {
  fn();
  const ts = [];
  for (let i = 0; i < reps; i++) {
    const c = process.cpuUsage();
    fn();
    const d = process.cpuUsage(c);
    ts.push((d.user + d.system) / 1e3);
  }
  return median(ts);
}

function rand(n, seed) {
  let s = seed >>> 0 || 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    out[i] = (s / 4294967296) * 2 - 1;
  }
  return out;
}

const CASES = [
  { out: 1024, in: 1024, n: 16, r: 16, reps: 7 },
  { out: 4096, in: 4096, n: 8, r: 16, reps: 5 },
  { out: 2048, in: 2048, n: 512, r: 16, reps: 3 },
  { out: 4096, in: 4096, n: 256, r: 16, reps: 3 },
];

const rows = [];
for (const c of CASES) {
  const W = Tensor.from(rand(c.out * c.in, 1).map((v) => v * 0.02), [c.out, c.in]);
  const x = Tensor.from(rand(c.n * c.in, 2), [c.n, c.in]);
  const plain = new LoraLinear({ weight: W }).eval();
  plain.addAdapter('p', { r: c.r, initLoraWeights: false, seed: 3 });
  const dora = new LoraLinear({ weight: W }).eval();
  dora.addAdapter('d', { r: c.r, initLoraWeights: false, seed: 3, useDora: true });
  const tPlain = cpuTime(() => plain.forward(x).dispose(), c.reps);
  const tDora = cpuTime(() => dora.forward(x).dispose(), c.reps);
  plain.train();
  dora.train();
  const A = dora.loraA.get('d');
  const tPlainTrain = cpuTime(() => plain.forward(x).dispose(), c.reps);
  const tDoraTrain = cpuTime(() => {
    A.copyFrom(A); // a write, as an optimizer step: the cached norm is recomputed
    dora.forward(x).dispose();
  }, c.reps);
  const tNorm = cpuTime(() => dora.doraWeightNorm('d').dispose(), c.reps);
  plain.dispose();
  dora.dispose();
  rows.push({ ...c, tPlain, tDora, tPlainTrain, tDoraTrain, tNorm });
  W.dispose();
  x.dispose();
}

const info = backendInfo();
const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
const lines = [
  `# DoRA vs LoRA forward on the CPU: ${new Date().toISOString()}`,
  '',
  `Machine: ${cpu}, ${os.cpus().length} logical CPUs shared with other jobs (load average ${os.loadavg()[0].toFixed(1)}), ` +
    `lorakit threads ${info.threads}, CPU path ${info.cpuPath}, Node ${process.version}.`,
  `Command: \`node bench/dora.js ${process.argv.slice(2).join(' ')}\` (f32, median CPU time per forward call).`,
  '',
  '| out×in | n | r | LoRA eval ms | DoRA eval ms | DoRA / LoRA eval | LoRA train ms | DoRA train ms | DoRA / LoRA train | norm alone ms |',
  '|---|---|---|---|---|---|---|---|---|---|',
  ...rows.map(
    (r) =>
      `| ${r.out}×${r.in} | ${r.n} | ${r.r} | ${r.tPlain.toFixed(1)} | ${r.tDora.toFixed(1)} | ${(r.tDora / r.tPlain).toFixed(2)} | ` +
      `${r.tPlainTrain.toFixed(1)} | ${r.tDoraTrain.toFixed(1)} | ${(r.tDoraTrain / r.tPlainTrain).toFixed(2)} | ${r.tNorm.toFixed(1)} |`,
  ),
  '',
  'DoRA forward = u = x·Aᵀ, the LoRA GEMM (x·Wᵀ + s·u·Bᵀ, the adapter as a K extension) and y = k⊙pre + b in one pass;',
  'eval reuses the cached weight norm; training (A rewritten before each call) recomputes it: one W·Aᵀ pass with',
  '‖W‖² cached per W, + O(out·r²). "norm alone" is doraWeightNorm (uncached: its own ‖W‖² and W·Aᵀ passes).',
  '',
];
const text = lines.join('\n');
process.stdout.write(text);
const outIdx = process.argv.indexOf('--out');
if (outIdx > 0) {
  const file = process.argv[outIdx + 1];
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, text);
  fs.renameSync(tmp, file);
}
