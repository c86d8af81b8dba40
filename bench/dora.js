#!/usr/bin/env node
/**
 * DoRA forward cost on the CPU as a ratio to plain LoRA on the same layer and input, measured in one
 * run (peft users report DoRA 2-5x slower than LoRA). Build dist/ first: npx tsc -p tsconfig.json.
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
  const tNorm = cpuTime(() => dora.doraWeightNorm('d').dispose(), c.reps);
  rows.push({ ...c, tPlain, tDora, tNorm });
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
  `Command: \`node bench/dora.js ${process.argv.slice(2).join(' ')}\` (f32, eval mode, median CPU time per call).`,
  '',
  '| out×in | n | r | LoRA fwd CPU ms | DoRA fwd CPU ms | DoRA / LoRA | norm alone CPU ms |',
  '|---|---|---|---|---|---|---|',
  ...rows.map(
    (r) =>
      `| ${r.out}×${r.in} | ${r.n} | ${r.r} | ${r.tPlain.toFixed(1)} | ${r.tDora.toFixed(1)} | ${(r.tDora / r.tPlain).toFixed(2)} | ${r.tNorm.toFixed(1)} |`,
  ),
  '',
  'DoRA forward = the LoRA GEMM with A\'s r rows stacked under x (so W·Aᵀ for the norm comes from the same pass',
  'over W) + one ‖W‖² row pass + O(out·r²). "norm alone" is doraWeightNorm (its own W·Aᵀ GEMM + ‖W‖²).',
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
