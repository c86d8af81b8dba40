#!/usr/bin/env node
/**
 * Training benchmarks, each a ratio against a reference measured in the same run:
 *  1. the fused native AdamW step vs the same update as a plain JS loop over Float32Arrays
 *     (adapter-sized parameters: LoRA r=16 on q/v of a 32-layer, 2048-wide model = 4.2M values);
 *  2. the demo (`npm run demo` defaults): merged and unmerged inference time over the base's.
 * Results go to bench/results/train-<date>.json.
 *
 * usage: node bench/train.js   (run `npm run build:ts` first)
 */
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const root = path.join(__dirname, '..');
const lk = require(root);
const { runDemo } = require(path.join(root, 'dist', 'demo', 'run.js'));
const { machineInfo } = require(path.join(root, 'dist', 'bench', 'machine.js'));

function median(xs) {
  const s = xs.slice().sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function jsAdamW(p, g, m, v, t, lr, b1, b2, eps, wd) {
  const bc1 = 1 - b1 ** t;
  const bc2s = Math.sqrt(1 - b2 ** t);
  for (let i = 0; i < p.length; i++) {
    p[i] *= 1 - lr * wd;
    m[i] = b1 * m[i] + (1 - b1) * g[i];
    v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
    p[i] -= (lr / bc1) * (m[i] / (Math.sqrt(v[i]) / bc2s + eps));
  }
}

async function main() {
  const n = 32 * 2 * 2 * 16 * 2048; // 32 layers × {q, v} × {A, B} × r=16 × 2048
  const rng = new lk.Rng(1);
  const init = rng.fillNormal(new Float32Array(n), 0, 0.02);
  const grad = rng.fillNormal(new Float32Array(n), 0, 1);
  const param = new lk.Parameter('lora_A.default.weight', 'lora_A', 'default', lk.Tensor.from(init, [n]));
  param.accumulateGrad(lk.Tensor.from(grad, [n]));
  const opt = new lk.AdamW([param]);
  const p = init.slice(), m = new Float32Array(n), v = new Float32Array(n);
  const tn = [], tj = [];
  for (let s = 1; s <= 12; s++) {
    let t0 = performance.now();
    opt.step();
    tn.push(performance.now() - t0);
    t0 = performance.now();
    jsAdamW(p, grad, m, v, s, 1e-3, 0.9, 0.999, 1e-8, 0.01);
    tj.push(performance.now() - t0);
  }
  const nativeMs = median(tn.slice(2));
  const jsMs = median(tj.slice(2));
  const bytes = n * 4 * 5; // read p, g, m, v; write p, m, v ≈ 7 streams, 5 of them distinct arrays
  console.log(`AdamW step on ${n} values: native ${nativeMs.toFixed(2)} ms, plain JS ${jsMs.toFixed(2)} ms (${(jsMs / nativeMs).toFixed(2)}x)`);

  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-bench-'));
  const d = await runDemo({ outDir: out, png: false, progress: false, log: () => {} });
  fs.rmSync(out, { recursive: true, force: true });
  console.log(`demo: ${d.losses.length} steps in ${d.trainSeconds.toFixed(1)} s, loss ${d.lossDrop.toFixed(0)}x lower; ` +
    `merged/base ${(d.timingMs.merged / d.timingMs.base).toFixed(3)}, unmerged/base ${(d.timingMs.unmerged / d.timingMs.baseBesideUnmerged).toFixed(3)}`);

  const mi = machineInfo();
  const result = {
    date: new Date().toISOString(),
    machine: `${mi.cpuModel}, ${mi.logicalCpus} cpus, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB RAM, ${mi.isa.join('+')}, ${mi.platform}, node ${process.version}`,
    loadAverage: os.loadavg(),
    command: 'node bench/train.js',
    adamw: { values: n, nativeMs, plainJsMs: jsMs, speedup: jsMs / nativeMs, nativeGBps: bytes / nativeMs / 1e6 },
    demo: {
      steps: d.losses.length,
      trainSeconds: d.trainSeconds,
      lossDrop: d.lossDrop,
      timingMs: d.timingMs,
      mergedOverBase: d.timingMs.merged / d.timingMs.base,
      unmergedOverBase: d.timingMs.unmerged / d.timingMs.baseBesideUnmerged,
      mergeRelErr: d.mergeRelErr,
    },
  };
  const dir = path.join(__dirname, 'results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `train-${result.date.slice(0, 10)}.json`);
  fs.writeFileSync(file + '.tmp', JSON.stringify(result, null, 2) + '\n');
  fs.renameSync(file + '.tmp', file);
  console.log(`wrote ${path.relative(root, file)}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
