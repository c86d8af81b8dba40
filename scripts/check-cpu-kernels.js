#!/usr/bin/env node
/**
 * Plain-Node conformance check of the CPU kernels against float64 references, for machines where
 * jest cannot run (the GPU host, whose CPU has AVX-512/AMX). Same kinds of cases as
 * test/cpu_kernels.test.ts. Run once per path (portable, avx2, avx512, avx512bf16, amx, amx-emulated):
 * LORAKIT_CPU_PATH=amx node scripts/check-cpu-kernels.js
 * Exits 1 on any failure, 3 when LORAKIT_CPU_PATH names a path that is not the one in use (this CPU
 * lacks it, or the name is misspelt: the addon then falls back to the best path, which must not pass).
 */
'use strict';
const { Tensor, LoraLinear, kernels, backendInfo, setNumThreads } = require('../dist');

function rnd(n, seed, scale = 1) {
  let s = seed >>> 0 || 1;
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    a[i] = ((s / 4294967296) * 2 - 1) * scale;
  }
  return a;
}
function rand(shape, seed, dtype = 'f32', scale = 1) {
  const t = Tensor.from(rnd(shape.reduce((a, b) => a * b, 1), seed, scale), shape, { dtype });
  return { t, v: t.toFloat32Array() };
}
function mm(m, n, k, a, b) {
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let p = 0; p < k; p++) { const av = a(i, p); for (let j = 0; j < n; j++) c[i * n + j] += av * b(p, j); }
  return c;
}
function relErr(a, r) { let x = 0, y = 0; for (let i = 0; i < r.length; i++) { x += (a[i] - r[i]) ** 2; y += r[i] ** 2; } return Math.sqrt(x) / Math.max(Math.sqrt(y), 1e-30); }
const tolFor = (dt) => (dt === 'f32' ? 1e-5 : dt === 'bf16' ? 6e-3 : 8e-4);

const info = backendInfo();
const forced = process.env.LORAKIT_CPU_PATH;
console.log(`path ${info.cpuPath} (available ${info.cpuPaths.join(',')}, forced ${forced || '-'}), ${info.threads} threads`);
if (forced && info.cpuPath !== forced) {
  const why = info.cpuPaths.includes(forced) ? 'is available but was not used' : `is not available here or is misspelt (paths: ${info.cpuPaths.join(', ')}, amx-emulated)`;
  console.log(`FAIL: LORAKIT_CPU_PATH=${forced} ${why}; the kernels ran on ${info.cpuPath}`);
  process.exit(3);
}
let failures = 0;
function check(name, err, tol) {
  const ok = err <= tol;
  if (!ok) failures++;
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}: rel err ${err.toExponential(2)} (tol ${tol})`);
}

const FWD = [
  [1, 300, 259, [1, 3], false, 'f32', 'f32', true], [1, 300, 259, [4], true, 'f32', 'bf16', false],
  [1, 37, 70, [2], false, 'bf16', 'f16', true], [7, 33, 17, [1], false, 'f32', 'f32', true],
  [97, 300, 259, [5, 2], false, 'f32', 'f32', true], [97, 300, 259, [3], true, 'f32', 'bf16', true],
  [50, 64, 96, [8], false, 'bf16', 'bf16', true], [97, 300, 259, [16], false, 'bf16', 'bf16', false],
  [200, 520, 300, [4], true, 'bf16', 'bf16', true], [70, 1030, 70, [2], false, 'bf16', 'bf16', false],
  [33, 270, 40, [16], false, 'f16', 'f16', false],
  [500, 40, 33, [1], false, 'f32', 'f32', false],
];
for (const [n, inF, outF, rs, fifo, xt, wt, bias] of FWD) {
  const x = rand([n, inF], 1, xt), W = rand(fifo ? [inF, outF] : [outF, inF], 2, wt, 0.2), b = bias ? rand([outF], 3) : null;
  const ads = rs.map((r, i) => ({ A: rand([r, inF], 10 + i, 'f32', 0.3), B: rand([outF, r], 20 + i, 'f32', 0.3), s: 0.5 + i }));
  const y = kernels.loraLinearForward(x.t, W.t, { bias: b ? b.t : null, fanInFanOut: fifo, adapters: ads.map((a) => ({ loraA: a.A.t, loraB: a.B.t, scaling: a.s })) });
  const wAt = fifo ? (k, j) => W.v[k * outF + j] : (k, j) => W.v[j * inF + k];
  const ref = mm(n, outF, inF, (i, k) => x.v[i * inF + k], wAt);
  for (let i = 0; i < n; i++) for (let j = 0; j < outF; j++) ref[i * outF + j] += b ? b.v[j] : 0;
  rs.forEach((r, a) => {
    const u = mm(n, r, inF, (i, k) => x.v[i * inF + k], (k, q) => ads[a].A.v[q * inF + k]);
    const d = mm(n, outF, r, (i, q) => u[i * r + q], (q, j) => ads[a].B.v[j * r + q]);
    for (let i = 0; i < ref.length; i++) ref[i] += ads[a].s * d[i];
  });
  check(`forward n=${n} in=${inF} out=${outF} r=${rs} fifo=${fifo} x=${xt} W=${wt}`, relErr(y.toFloat32Array(), ref), tolFor(xt));
}

for (const [n, inF, outF, rs, fifo, wt] of [[1, 70, 45, [1], false, 'f32'], [5, 70, 45, [3, 1], true, 'f32'], [101, 260, 270, [4, 2], false, 'bf16'], [31, 33, 300, [16], true, 'f16']]) {
  const x = rand([n, inF], 5), W = rand(fifo ? [inF, outF] : [outF, inF], 6, wt, 0.2);
  const layer = new LoraLinear({ weight: W.t, fanInFanOut: fifo });
  const names = rs.map((_, i) => `a${i}`);
  rs.forEach((r, i) => layer.addAdapter(names[i], { r, loraAlpha: 2 * r + i, initLoraWeights: false, seed: 40 + i }));
  layer.setAdapter(names); layer.train(); layer.forward(x.t).dispose();
  const dy = rand([n, outF], 7);
  const { dx, grads } = layer.backward(dy.t);
  const wAt = fifo ? (k, j) => W.v[k * outF + j] : (k, j) => W.v[j * inF + k];
  const dxRef = mm(n, inF, outF, (i, j) => dy.v[i * outF + j], (j, k) => wAt(k, j));
  names.forEach((name, a) => {
    const r = rs[a], A = layer.loraA.get(name).toFloat32Array(), B = layer.loraB.get(name).toFloat32Array(), s = layer.scaling.get(name);
    const g = mm(n, r, outF, (i, j) => s * dy.v[i * outF + j], (j, q) => B[j * r + q]);
    const gA = mm(n, inF, r, (i, q) => g[i * r + q], (q, k) => A[q * inF + k]);
    for (let i = 0; i < dxRef.length; i++) dxRef[i] += gA[i];
    const u = mm(n, r, inF, (i, k) => x.v[i * inF + k], (k, q) => A[q * inF + k]);
    check(`backward dB ${name} n=${n} W=${wt}`, relErr(grads.get(name).loraB.toFloat32Array(), mm(outF, r, n, (j, i) => s * dy.v[i * outF + j], (i, q) => u[i * r + q])), 1e-5);
    check(`backward dA ${name} n=${n} W=${wt}`, relErr(grads.get(name).loraA.toFloat32Array(), mm(r, inF, n, (q, i) => g[i * r + q], (i, k) => x.v[i * inF + k])), 1e-5);
  });
  check(`backward dx n=${n} in=${inF} out=${outF} fifo=${fifo} W=${wt}`, relErr(dx.toFloat32Array(), dxRef), 1e-5);
}

for (const [rows, cols, r, fifo, wt] of [[1, 1, 1, false, 'f32'], [37, 301, 3, false, 'f32'], [300, 41, 64, true, 'f32'], [129, 77, 5, false, 'bf16'], [65, 130, 2, true, 'f16']]) {
  const inF = fifo ? rows : cols, outF = fifo ? cols : rows;
  const W = rand([rows, cols], 8, wt), A = rand([r, inF], 9, 'f32', 0.5), B = rand([outF, r], 10, 'f32', 0.5);
  const out = Tensor.zeros([rows, cols], { dtype: wt });
  kernels.mergeAdapter(W.t, { loraA: A.t, loraB: B.t, scaling: 0.75 }, { fanInFanOut: fifo, out });
  const delta = mm(outF, inF, r, (o, q) => B.v[o * r + q], (q, i) => A.v[q * inF + i]);
  const ref = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) ref[i * cols + j] = W.v[i * cols + j] + 0.75 * (fifo ? delta[j * inF + i] : delta[i * cols + j]);
  check(`merge ${rows}x${cols} r=${r} fifo=${fifo} ${wt}`, relErr(out.toFloat32Array(), ref), tolFor(wt));
}

// merge / unmerge, element by element: W ± s·B·A rounded once into the output dtype (within the f32
// accumulation bound), on shapes crossing the fused kernel's row tiles, 16-column panels and blocks.
const FMT = { f32: [23, -126], bf16: [7, -126], f16: [10, -14] };
function ulpOf(x, dt) { const [man, emin] = FMT[dt]; const e = x === 0 ? emin : Math.max(emin, Math.floor(Math.log2(Math.abs(x)))); return 2 ** (e - man); }
function roundOnce(x, dt) { const u = ulpOf(x, dt), t = x / u, f = Math.floor(t), d = t - f; const y = (d > 0.5 || (d === 0.5 && f % 2 !== 0) ? f + 1 : f) * u; return y === 0 ? 0 : y; }
function oneRounding(got, w, A, B, rows, cols, r, fifo, ot, s) {
  const inF = fifo ? rows : cols;
  let worst = 0, exact = 0;
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) {
    const o = fifo ? j : i, k = fifo ? i : j, e = i * cols + j;
    let d = 0, mag = 0;
    for (let q = 0; q < r; q++) { const t = B[o * r + q] * A[q * inF + k]; d += t; mag += Math.abs(t); }
    const ref = w[e] + s * d;
    worst = Math.max(worst, Math.abs(got[e] - ref) / (ulpOf(got[e], ot) / 2 + 2 ** -24 * (r + 2) * (Math.abs(w[e]) + Math.abs(s) * mag)));
    if (got[e] === roundOnce(ref, ot)) exact++;
  }
  return { worst, exactShare: exact / got.length };
}
for (const [rows, cols, r, fifo, wt, ot, ft, inPlace] of [
  [37, 300, 1, false, 'bf16', 'bf16', 'f32', false], [37, 300, 5, true, 'bf16', 'bf16', 'f32', true],
  [37, 300, 17, false, 'bf16', 'bf16', 'f32', true], [37, 300, 64, true, 'bf16', 'bf16', 'f32', false],
  [37, 300, 1, true, 'f16', 'f16', 'f32', true], [37, 300, 5, false, 'f16', 'f16', 'f32', false],
  [37, 300, 17, true, 'f16', 'f16', 'f32', false], [37, 300, 64, false, 'f16', 'f16', 'f32', true],
  [29, 1100, 64, false, 'bf16', 'bf16', 'bf16', true], [50, 45, 9, true, 'f16', 'f16', 'f16', false],
  [7, 15, 3, false, 'bf16', 'bf16', 'f32', false], [1, 1, 1, true, 'bf16', 'bf16', 'f32', true],
  [37, 300, 17, false, 'f32', 'f32', 'f32', true], [37, 300, 64, true, 'f32', 'f32', 'bf16', false],
  [37, 300, 5, false, 'bf16', 'f32', 'f32', false], [37, 300, 5, true, 'f32', 'bf16', 'f32', false],
]) {
  const inF = fifo ? rows : cols, outF = fifo ? cols : rows;
  const W = rand([rows, cols], 31 + r, wt), A = rand([r, inF], 32 + r, ft, 0.5), B = rand([outF, r], 33 + r, ft, 0.5);
  const out = inPlace ? W.t : Tensor.zeros([rows, cols], { dtype: ot });
  const s = 0.6875, ad = { loraA: A.t, loraB: B.t, scaling: s };
  kernels.mergeAdapter(W.t, ad, { fanInFanOut: fifo, out });
  const merged = out.toFloat32Array();
  const name = `${rows}x${cols} r=${r} fifo=${fifo} ${wt}->${ot} factors ${ft} ${inPlace ? 'in place' : 'out of place'}`;
  for (const [what, got, base, sg] of [['merge', merged, W.v, s], ['unmerge', null, merged, -s]]) {
    if (what === 'unmerge') kernels.unmergeAdapter(out, ad, { fanInFanOut: fifo });
    const m = oneRounding(got || out.toFloat32Array(), base, A.v, B.v, rows, cols, r, fifo, ot, sg);
    check(`${what} one rounding ${name} (worst error / bound)`, m.worst, 1);
    if (ot !== 'f32') check(`${what} share not equal to the float64 value rounded once ${name}`, 1 - m.exactShare, 0.01);
  }
}

{ // non-finite factors: NaN (any payload) and infinity reach W where the float64 reference has them
  const wideNaN = new Float32Array(new Uint32Array([0x7fffffff, 0xffffffff]).buffer);
  for (const dt of ['bf16', 'f16', 'f32']) for (const fifo of [false, true]) {
    const rows = 19, cols = 70, r = 3, inF = fifo ? rows : cols, outF = fifo ? cols : rows;
    const a = rnd(r * inF, 8, 0.5), b = rnd(outF * r, 9, 0.5);
    a[inF + 5] = wideNaN[0]; b[7 * r + 2] = wideNaN[1]; a[2 * inF + 11] = Infinity;
    const W = rand([rows, cols], 10, dt), A = Tensor.from(a, [r, inF]), B = Tensor.from(b, [outF, r]);
    kernels.mergeAdapter(W.t, { loraA: A, loraB: B, scaling: 0.5 }, { fanInFanOut: fifo });
    const got = W.t.toFloat32Array(), av = A.toFloat32Array(), bv = B.toFloat32Array();
    let bad = 0;
    for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) {
      const o = fifo ? j : i, k = fifo ? i : j;
      let d = 0;
      for (let q = 0; q < r; q++) d += bv[o * r + q] * av[q * inF + k];
      const ref = W.v[i * cols + j] + 0.5 * d, g = got[i * cols + j];
      if (Number.isNaN(ref) ? !Number.isNaN(g) : !Number.isFinite(ref) ? g !== ref : !Number.isFinite(g)) bad++;
    }
    check(`merge non-finite factors ${dt} fifo=${fifo}: elements whose NaN/infinity differs from float64`, bad, 0);
  }
}

{ // thread count does not change results
  const x = rand([130, 300], 11), W = rand([259, 300], 12, 'bf16'), xb = rand([130, 300], 13, 'bf16');
  setNumThreads(1);
  const a1 = kernels.loraLinearForward(x.t, W.t).toFloat32Array(), b1 = kernels.loraLinearForward(xb.t, W.t).toFloat32Array();
  setNumThreads(3);
  const a3 = kernels.loraLinearForward(x.t, W.t).toFloat32Array(), b3 = kernels.loraLinearForward(xb.t, W.t).toFloat32Array();
  setNumThreads(0);
  const same = Buffer.from(a1.buffer).equals(Buffer.from(a3.buffer)) && Buffer.from(b1.buffer).equals(Buffer.from(b3.buffer));
  check('results identical for 1 and 3 threads', same ? 0 : 1, 0);
}
console.log(failures ? `${failures} FAILED` : 'all passed');
process.exit(failures ? 1 : 0);
