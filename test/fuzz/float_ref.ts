/** Float64 reference helpers for the fuzz: rounding to the 16-bit storage types and small GEMMs. */
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** v → f32 → bf16, round to nearest even (as the native store). */
export function roundBf16(v: number): number {
  f32[0] = v;
  let u = u32[0];
  if ((u & 0x7fffffff) > 0x7f800000) return NaN;
  u = (u + 0x7fff + ((u >>> 16) & 1)) >>> 0;
  u32[0] = (u & 0xffff0000) >>> 0;
  return f32[0];
}

/** v → f32 → f16, round to nearest even. */
export function roundF16(v: number): number {
  const x = Math.fround(v);
  if (Number.isNaN(x)) return NaN;
  const a = Math.abs(x);
  if (a >= 65520) return Math.sign(x) * Infinity;
  const q = a < 2 ** -14 ? 2 ** -24 : 2 ** (Math.floor(Math.log2(a)) - 10);
  const r = a / q;
  let n = Math.floor(r);
  const d = r - n;
  if (d > 0.5 || (d === 0.5 && n % 2 === 1)) n++;
  return Math.sign(x) * n * q;
}

export function roundTo(dtype: string, v: number): number {
  return dtype === 'f32' ? Math.fround(v) : dtype === 'bf16' ? roundBf16(v) : dtype === 'f16' ? roundF16(v) : v;
}

/** Relative error ‖got − ref‖ / max(‖ref‖, tiny). */
export function relErr(got: ArrayLike<number>, ref: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < ref.length; i++) {
    num += (got[i] - ref[i]) ** 2;
    den += ref[i] ** 2;
  }
  return Math.sqrt(num) / Math.max(Math.sqrt(den), 1e-30);
}

/** C[m, n] = Σ_k a(i, k)·b(k, j). */
export function gemm(m: number, n: number, k: number, a: (i: number, p: number) => number, b: (p: number, j: number) => number): Float64Array {
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) s += a(i, p) * b(p, j);
      c[i * n + j] = s;
    }
  return c;
}

/** Output tolerance (relative, norm-wise) for results stored in `dtype` after f32 accumulation. */
export function tolFor(dtype: string): number {
  return dtype === 'bf16' ? 1.2e-2 : dtype === 'f16' ? 2e-3 : 2e-5;
}
