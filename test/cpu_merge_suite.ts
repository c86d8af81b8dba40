/**
 * merge / unmerge on the CPU against a float64 reference, element by element: every output is the
 * exact W ± s·B·A rounded once into the output dtype (within the f32 accumulation error), never
 * rounded twice. Shapes cross the kernel's edges: rows not a multiple of the 6/8-row register tiles
 * or the 24-row blocks, columns not a multiple of the 16-column panels, r = 1 to 64, both layouts,
 * in place and out of place, 16-bit and f32 factors, mixed W/out dtypes (the staging path).
 * Imported by cpu_kernels.test.ts, so that CI runs it once per dispatch path the CPU has
 * (LORAKIT_CPU_PATH) with the other kernel checks.
 */
import { FloatDType, Tensor, kernels } from '../lib';
import { randomArray } from './helpers/reference';

/** Mantissa bits (without the implicit one) and the smallest normal exponent of each dtype. */
const FORMAT: Record<FloatDType, { man: number; emin: number }> = {
  f32: { man: 23, emin: -126 },
  bf16: { man: 7, emin: -126 },
  f16: { man: 10, emin: -14 },
};

/** Spacing of dtype's values around x (subnormal spacing below the normal range). */
function ulp(x: number, dt: FloatDType): number {
  const { man, emin } = FORMAT[dt];
  const e = x === 0 ? emin : Math.max(emin, Math.floor(Math.log2(Math.abs(x))));
  return 2 ** (e - man);
}

/** x (float64) rounded to nearest-even into dtype: the one rounding a correct merge does. */
function roundOnce(x: number, dt: FloatDType): number {
  const u = ulp(x, dt);
  const t = x / u;
  const f = Math.floor(t);
  const d = t - f;
  const n = d > 0.5 || (d === 0.5 && f % 2 !== 0) ? f + 1 : f;
  const y = n * u;
  return y === 0 ? 0 : y;
}

interface Case {
  rows: number;
  cols: number;
  r: number;
  fifo: boolean;
  wt: FloatDType;
  ot: FloatDType;
  ft: FloatDType;
  inPlace: boolean;
}

const cases: Case[] = [];
for (const wt of ['bf16', 'f16'] as FloatDType[])
  for (const r of [1, 5, 17, 64])
    for (const fifo of [false, true])
      cases.push({ rows: 37, cols: 300, r, fifo, wt, ot: wt, ft: 'f32', inPlace: (r + (fifo ? 1 : 0)) % 2 === 0 });
cases.push(
  { rows: 37, cols: 300, r: 5, fifo: false, wt: 'bf16', ot: 'bf16', ft: 'f32', inPlace: true },
  { rows: 37, cols: 300, r: 17, fifo: true, wt: 'f16', ot: 'f16', ft: 'f32', inPlace: false },
  // Wide rows at r = 64 cross the 1024-column blocks; 16-bit factors take the converting packs.
  { rows: 29, cols: 1100, r: 64, fifo: false, wt: 'bf16', ot: 'bf16', ft: 'bf16', inPlace: true },
  { rows: 50, cols: 45, r: 9, fifo: true, wt: 'f16', ot: 'f16', ft: 'f16', inPlace: false },
  { rows: 7, cols: 15, r: 3, fifo: false, wt: 'bf16', ot: 'bf16', ft: 'f32', inPlace: false },
  // Tall enough for merge_delta's 48-row blocks on up to 8 threads (a 17-row last block).
  { rows: 1553, cols: 70, r: 7, fifo: false, wt: 'bf16', ot: 'bf16', ft: 'f32', inPlace: true },
  { rows: 1, cols: 1, r: 1, fifo: true, wt: 'bf16', ot: 'bf16', ft: 'f32', inPlace: true },
  { rows: 37, cols: 300, r: 17, fifo: false, wt: 'f32', ot: 'f32', ft: 'f32', inPlace: true },
  { rows: 37, cols: 300, r: 64, fifo: true, wt: 'f32', ot: 'f32', ft: 'bf16', inPlace: false },
  // Mixed dtypes: the f32 staging tile.
  { rows: 37, cols: 300, r: 5, fifo: false, wt: 'bf16', ot: 'f32', ft: 'f32', inPlace: false },
  { rows: 37, cols: 300, r: 5, fifo: true, wt: 'f32', ot: 'bf16', ft: 'f32', inPlace: false },
  { rows: 37, cols: 300, r: 17, fifo: false, wt: 'f16', ot: 'bf16', ft: 'f32', inPlace: false },
);

/**
 * Checks out = round_ot(w + sign·s·ΔW) element by element: within half an ulp of the output dtype
 * plus the f32 accumulation bound (r + 2 roundings of at most |w| + Σ|terms|), and bit-equal to the
 * float64 value rounded once for all but a few near-ties.
 */
function expectOneRounding(got: Float32Array, w: Float32Array, A: Float32Array, B: Float32Array, c: Case, s: number,
  skip: Set<number> = new Set()) {
  const inF = c.fifo ? c.rows : c.cols;
  let exact = 0;
  let worst = 0;
  for (let i = 0; i < c.rows; i++)
    for (let j = 0; j < c.cols; j++) {
      const o = c.fifo ? j : i; // output feature
      const k = c.fifo ? i : j; // input feature
      let d = 0;
      let mag = 0;
      for (let q = 0; q < c.r; q++) {
        const t = B[o * c.r + q] * A[q * inF + k];
        d += t;
        mag += t < 0 ? -t : t;
      }
      const e = i * c.cols + j;
      if (skip.has(e)) continue;
      const ref = w[e] + s * d;
      const bound = ulp(got[e], c.ot) / 2 + 2 ** -24 * (c.r + 2) * (Math.abs(w[e]) + Math.abs(s) * mag);
      worst = Math.max(worst, Math.abs(got[e] - ref) / bound);
      if (got[e] === roundOnce(ref, c.ot)) exact++;
    }
  expect(worst).toBeLessThanOrEqual(1);
  // In f32 the accumulation error is an ulp-scale share of the result, so only the bound applies.
  if (c.ot !== 'f32') expect(exact / (got.length - skip.size)).toBeGreaterThanOrEqual(0.99);
}

describe('merge / unmerge: each element is W ± s·B·A rounded once', () => {
  test.each(cases)('W $rows x $cols $wt -> $ot, r=$r fifo=$fifo factors $ft in place=$inPlace', (c) => {
    const inF = c.fifo ? c.rows : c.cols;
    const outF = c.fifo ? c.cols : c.rows;
    const n = c.rows * c.cols;
    const W = Tensor.from(randomArray(n, 31 + c.r, 1), [c.rows, c.cols], { dtype: c.wt });
    const A = Tensor.from(randomArray(c.r * inF, 32 + c.r, 0.5), [c.r, inF], { dtype: c.ft });
    const B = Tensor.from(randomArray(outF * c.r, 33 + c.r, 0.5), [outF, c.r], { dtype: c.ft });
    const s = 0.6875; // 11/16: exact in every dtype, so the reference sees the scale the kernel sees
    const adapter = { loraA: A, loraB: B, scaling: s };
    const w0 = W.toFloat32Array();
    const a = A.toFloat32Array();
    const b = B.toFloat32Array();
    const target = c.inPlace ? W : Tensor.zeros([c.rows, c.cols], { dtype: c.ot });
    try {
      kernels.mergeAdapter(W, adapter, { fanInFanOut: c.fifo, out: target });
      const merged = target.toFloat32Array();
      expectOneRounding(merged, w0, a, b, c, s);
      if (!c.inPlace) expect(Buffer.from(W.toFloat32Array().buffer).equals(Buffer.from(w0.buffer))).toBe(true);
      // Unmerge in place is the same pass with -s on what the merge stored.
      kernels.unmergeAdapter(target, adapter, { fanInFanOut: c.fifo });
      expectOneRounding(target.toFloat32Array(), merged, a, b, { ...c, wt: c.ot }, -s);
    } finally {
      W.dispose();
      A.dispose();
      B.dispose();
      if (!c.inPlace) target.dispose();
    }
  });

  test('non-finite factors (NaN of any payload, infinities) give NaN and infinity where float64 does', () => {
    // A NaN whose payload fills the mantissa would carry into the sign in the fast bf16 rounding;
    // non-finite factors must take the path that rounds NaNs as f32_to_bf16 does.
    const wideNaN = new Float32Array(new Uint32Array([0x7fffffff, 0xffffffff]).buffer);
    for (const dt of ['bf16', 'f16', 'f32'] as FloatDType[])
      for (const fifo of [false, true]) {
        const rows = 19;
        const cols = 70;
        const r = 3;
        const inF = fifo ? rows : cols;
        const outF = fifo ? cols : rows;
        const a = randomArray(r * inF, 8, 0.5);
        const b = randomArray(outF * r, 9, 0.5);
        a[1 * inF + 5] = wideNaN[0]; // input feature 5
        b[7 * r + 2] = wideNaN[1]; // output feature 7
        a[2 * inF + 11] = Infinity; // input feature 11: +-inf, or NaN where it meets output 7
        const W = Tensor.from(randomArray(rows * cols, 10, 1), [rows, cols], { dtype: dt });
        const A = Tensor.from(a, [r, inF]);
        const B = Tensor.from(b, [outF, r]);
        const w0 = W.toFloat32Array();
        const av = A.toFloat32Array();
        const bv = B.toFloat32Array();
        kernels.mergeAdapter(W, { loraA: A, loraB: B, scaling: 0.5 }, { fanInFanOut: fifo });
        const got = W.toFloat32Array();
        const skip = new Set<number>();
        for (let i = 0; i < rows; i++)
          for (let j = 0; j < cols; j++) {
            const o = fifo ? j : i;
            const k = fifo ? i : j;
            let d = 0;
            for (let q = 0; q < r; q++) d += bv[o * r + q] * av[q * inF + k];
            const ref = w0[i * cols + j] + 0.5 * d;
            if (Number.isFinite(ref)) continue;
            skip.add(i * cols + j);
            if (Number.isNaN(ref)) expect(got[i * cols + j]).toBeNaN();
            else expect(got[i * cols + j]).toBe(ref);
          }
        expect(skip.size).toBeGreaterThan(rows); // a NaN row or column and an infinite one
        const c: Case = { rows, cols, r, fifo, wt: dt, ot: dt, ft: 'f32', inPlace: true };
        expectOneRounding(got, w0, av, bv, c, 0.5, skip);
        W.dispose();
        A.dispose();
        B.dispose();
      }
  });

  test('NaN and infinity in W stay NaN and infinity; finite neighbours are rounded once', () => {
    for (const dt of ['bf16', 'f16', 'f32'] as FloatDType[]) {
      const rows = 13;
      const cols = 40;
      const w = randomArray(rows * cols, 5, 1);
      w[3] = NaN;
      w[cols + 17] = Infinity;
      w[5 * cols + 39] = -Infinity;
      const W = Tensor.from(w, [rows, cols], { dtype: dt });
      const A = Tensor.from(randomArray(4 * cols, 6, 0.5), [4, cols]);
      const B = Tensor.from(randomArray(rows * 4, 7, 0.5), [rows, 4]);
      const w0 = W.toFloat32Array();
      kernels.mergeAdapter(W, { loraA: A, loraB: B, scaling: 1 });
      const got = W.toFloat32Array();
      expect(got[3]).toBeNaN();
      expect(got[cols + 17]).toBe(Infinity);
      expect(got[5 * cols + 39]).toBe(-Infinity);
      const c: Case = { rows, cols, r: 4, fifo: false, wt: dt, ot: dt, ft: 'f32', inPlace: true };
      expectOneRounding(got, w0, A.toFloat32Array(), B.toFloat32Array(), c, 1, new Set([3, cols + 17, 5 * cols + 39]));
      W.dispose();
      A.dispose();
      B.dispose();
    }
  });

  test('bf16 results in the subnormal range round as f32_to_bf16 does (no flush to zero), next to normal rows', () => {
    // Factors a·2^-60 and b·2^-75 with small integers a, b: every product, partial sum and W + ΔW is
    // a multiple of 2^-135 below 2^-124, exact in f32, so the one rounding is the whole error. Rows
    // i % 4 == 3 hold normal weights, so subnormal and normal rows share the kernels' row blocks.
    const ints = (n: number, seed: number, max: number) => Array.from(randomArray(n, seed, 1), (v) => Math.round(v * max));
    for (const fifo of [false, true]) {
      const rows = 37;
      const cols = 316; // 9 pairs of 16-column panels, a single panel and a 12-column tail
      const r = 3;
      const inF = fifo ? rows : cols;
      const outF = fifo ? cols : rows;
      const w = Float32Array.from(ints(rows * cols, 21, 127), (k, e) =>
        Math.floor(e / cols) % 4 === 3 ? 1 + k / 128 : k * 2 ** -133);
      const a = Float32Array.from(ints(r * inF, 22, 15), (k) => k * 2 ** -60);
      const b = Float32Array.from(ints(outF * r, 23, 15), (k) => k * 2 ** -75);
      const W = Tensor.from(w, [rows, cols], { dtype: 'bf16' });
      const A = Tensor.from(a, [r, inF]);
      const B = Tensor.from(b, [outF, r]);
      try {
        const w0 = W.toFloat32Array();
        kernels.mergeAdapter(W, { loraA: A, loraB: B, scaling: 1 }, { fanInFanOut: fifo });
        const got = W.toFloat32Array();
        let subnormal = 0;
        let wrong = 0;
        for (let i = 0; i < rows; i++)
          for (let j = 0; j < cols; j++) {
            const o = fifo ? j : i;
            const k = fifo ? i : j;
            let d = 0;
            for (let q = 0; q < r; q++) d += b[o * r + q] * a[q * inF + k];
            const ref = w0[i * cols + j] + d;
            if (ref !== 0 && Math.abs(ref) < 2 ** -126) subnormal++;
            if (got[i * cols + j] !== roundOnce(ref, 'bf16')) wrong++;
          }
        expect(subnormal).toBeGreaterThan(rows * cols / 2);
        expect(wrong).toBe(0);
      } finally {
        W.dispose();
        A.dispose();
        B.dispose();
      }
    }
  });
});
