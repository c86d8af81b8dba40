#!/usr/bin/env node
/**
 * Two builds of the addon against each other on one CPU kernel: the same cases run in child
 * processes that load each addon in turn (LORAKIT_NATIVE_PATH), the order alternating every round,
 * so both builds see the same machine load. Each child times every case (best of --reps calls) and
 * hashes its output bytes; the builds must agree bit for bit on every case (exit 1 otherwise).
 * Prints best and median over the rounds per case and build, and B's best as a ratio of A's.
 *
 *   node bench/addon_ab.js --a old.node --b new.node --kernel merge|gemv_rows|quant_gemv
 *        [--rounds 5] [--reps 5] [--out file]
 * Kernels: merge (mergeAdapter, W f32 / bf16 / f16 with odd rows and columns), gemv_rows
 * (loraLinearForward over a few rows: f32 and bf16 W with f32 x, bf16·bf16), quant_gemv
 * (quantLoraForward at n = 1 and 4 over q4_0, nf4 and q4_k, x f32 and bf16). LORAKIT_CPU_PATH picks the
 * path as usual (the children inherit it).
 */
'use strict';
const { spawnSync } = require('child_process');
const crypto = require('crypto');
const fs = require('fs');
const os = require('os');

function arg(name, def) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
}

// ---- child: run the cases of one kernel on the addon it was started with ----
function child(kernel, reps) {
  const lk = require('../dist');
  const { call } = require('../dist/native');
  const gauss = (n, seed, std) => new lk.Rng(seed).fillNormal(new Float32Array(n), 0, std);
  const tensor = (shape, seed, dtype, std = 1) => lk.Tensor.from(gauss(shape.reduce((a, b) => a * b, 1), seed, std), shape, { dtype });
  const cases = [];
  if (kernel === 'merge') {
    // rows 2047 = 255 blocks of 8 (6 on AVX2/NEON) + 4 + 2 + 1; cols 2050 = 128 panels + a 2-column tail
    for (const wt of ['f32', 'bf16', 'f16'])
      for (const [rows, cols, r] of [[2047, 2050, 16], [1031, 4103, 64], [37, 301, 3]]) {
        const W = tensor([rows, cols], 1, wt, 0.05);
        const A = tensor([r, cols], 2, 'f32', 0.05);
        const B = tensor([rows, r], 3, 'f32', 0.05);
        const out = lk.Tensor.zeros([rows, cols], { dtype: wt });
        cases.push({ name: `merge W ${wt} ${rows}x${cols} r=${r}`, out, run: () => lk.kernels.mergeAdapter(W, { loraA: A, loraB: B, scaling: 0.75 }, { out }) });
      }
  } else if (kernel === 'gemv_rows') {
    for (const [xt, wt] of [['f32', 'f32'], ['f32', 'bf16'], ['bf16', 'bf16']])
      for (const n of xt === 'bf16' ? [1, 4, 16] : [4, 16])
        for (const k of [4096, 4100]) {
          const x = tensor([n, k], 4, xt);
          const W = tensor([4096, k], 5, wt, 0.02);
          const A = tensor([16, k], 6, 'f32', 0.02);
          const B = tensor([4096, 16], 7, 'f32', 0.02);
          let out;
          cases.push({
            name: `gemv_rows x ${xt} W ${wt} n=${n} k=${k}`,
            get out() { return out; },
            run: () => {
              if (out) out.dispose();
              out = lk.kernels.loraLinearForward(x, W, { bias: null, fanInFanOut: false, adapters: [{ loraA: A, loraB: B, scaling: 2 }] });
            },
          });
        }
  } else if (kernel === 'quant_gemv') {
    // cols 4160: 130 q4_0 blocks a row, 16 chunks of 8 and 2 left (the blocks one by one / in a pair)
    for (const [format, colsList] of [['q4_0', [4096, 4160]], ['nf4', [4096, 4160]], ['q4_k', [4096]]])
      for (const cols of colsList) {
        const rows = 4096;
        const spec = { format, rows, cols, blockSize: { q4_0: 32, nf4: 64, q4_k: 256 }[format], doubleQuant: false };
        const L = call((b) => b.quantLayout(spec));
        const q = lk.Tensor.zeros([L.nbytes / 4], { dtype: 'i32' });
        const w = tensor([rows, cols], 8, 'f32', 0.02);
        call((b) => b.quantize(w.handle, spec, q.handle));
        for (const xt of ['f32', 'bf16'])
          for (const n of [1, 4]) {
            const x = tensor([n, cols], 9, xt);
            const A = tensor([16, cols], 10, xt, 0.02);
            const B = tensor([rows, 16], 11, xt, 0.02);
            const out = lk.Tensor.zeros([n, rows], { dtype: xt });
            cases.push({
              name: `quant_gemv ${format} ${rows}x${cols} x ${xt} n=${n}`,
              out,
              run: () => call((b) => b.quantLoraForward(x.handle, q.handle, spec, null, [[A.handle, B.handle, 2, null]], out.handle)),
            });
          }
      }
  } else {
    throw new Error(`--kernel: merge, gemv_rows or quant_gemv, not ${kernel}`);
  }
  const res = [];
  for (const c of cases) {
    c.run();  // warm-up
    let best = Infinity;
    for (let i = 0; i < reps; i++) {
      const t0 = process.hrtime.bigint();
      c.run();
      best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e6);
    }
    const bytes = Buffer.from(c.out.toFloat32Array().buffer);
    res.push({ name: c.name, ms: best, hash: crypto.createHash('sha256').update(bytes).digest('hex').slice(0, 16) });
  }
  process.stdout.write(JSON.stringify({ path: lk.backendInfo().cpuPath, addon: lk.backendInfo().addonPath, res }));
}

if (process.env.LORAKIT_AB_CHILD) {
  child(process.env.LORAKIT_AB_CHILD, Number(process.env.LORAKIT_AB_REPS));
  process.exit(0);
}

// ---- parent ----
const A = arg('a'), B = arg('b'), kernel = arg('kernel');
const rounds = Number(arg('rounds', 5)), reps = Number(arg('reps', 5));
if (!A || !B || !kernel) {
  console.error('usage: node bench/addon_ab.js --a old.node --b new.node --kernel merge|gemv_rows|quant_gemv [--rounds 5] [--reps 5] [--out file]');
  process.exit(2);
}
const lines = [];
const say = (s) => {
  lines.push(s);
  console.log(s);
};
say(`# addon A/B, ${new Date().toISOString()}, kernel ${kernel}`);
say(`machine: ${os.cpus()[0].model}, ${os.cpus().length} logical CPUs; load average at start ${os.loadavg().map((v) => v.toFixed(2)).join(' ')}`);
say(`command: ${process.env.LORAKIT_CPU_PATH ? `LORAKIT_CPU_PATH=${process.env.LORAKIT_CPU_PATH} ` : ''}node bench/addon_ab.js ${process.argv.slice(2).join(' ')}`);
say(`A = ${A}\nB = ${B}`);
const times = { A: {}, B: {} };
const hashes = { A: {}, B: {} };
let path = '';
for (let round = 0; round < rounds; round++) {
  for (const which of round % 2 ? ['B', 'A'] : ['A', 'B']) {
    const file = which === 'A' ? A : B;
    const r = spawnSync(process.execPath, [__filename], {
      env: { ...process.env, LORAKIT_NATIVE_PATH: file, LORAKIT_AB_CHILD: kernel, LORAKIT_AB_REPS: String(reps) },
      encoding: 'utf8',
      maxBuffer: 1 << 24,
    });
    if (r.status !== 0) throw new Error(`child on ${file} failed: ${r.stderr}`);
    const out = JSON.parse(r.stdout);
    path = out.path;
    for (const c of out.res) {
      (times[which][c.name] ||= []).push(c.ms);
      if (hashes[which][c.name] && hashes[which][c.name] !== c.hash) throw new Error(`${which} ${c.name}: output differs between rounds`);
      hashes[which][c.name] = c.hash;
    }
  }
}
say(`cpu path ${path}; ${rounds} rounds (A, B order alternating), best of ${reps} calls per case and round`);
const stats = (t) => {
  const s = [...t].sort((a, b) => a - b);
  return { best: s[0], median: s[s.length >> 1] };
};
let same = true;
for (const name of Object.keys(times.A)) {
  const a = stats(times.A[name]), b = stats(times.B[name]);
  const eq = hashes.A[name] === hashes.B[name];
  same &&= eq;
  say(`${name.padEnd(44)} A ${a.best.toFixed(3)} (med ${a.median.toFixed(3)}) ms  B ${b.best.toFixed(3)} (med ${b.median.toFixed(3)}) ms  B/A best ${(b.best / a.best).toFixed(3)} med ${(b.median / a.median).toFixed(3)}  ${eq ? 'bits equal' : 'BITS DIFFER'}`);
}
say(`load average at end ${os.loadavg().map((v) => v.toFixed(2)).join(' ')}; outputs ${same ? 'bit-identical on every case' : 'DIFFER'}`);
const outFile = arg('out');
if (outFile) fs.appendFileSync(outFile, lines.join('\n') + '\n\n');
process.exit(same ? 0 : 1);
