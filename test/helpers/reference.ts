/** Plain float64 reference implementations used to check the native kernels. */
export function randomArray(n: number, seed: number, scale = 1): Float32Array {
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

/** C[m, n] = A[m, k] · B[k, n] with element accessors. */
export function matmul(
  m: number,
  n: number,
  k: number,
  a: (i: number, p: number) => number,
  b: (p: number, j: number) => number,
): Float64Array {
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) s += a(i, p) * b(p, j);
      c[i * n + j] = s;
    }
  return c;
}

/** y = x·Wᵀ + b + Σ s·(x·Aᵀ)·Bᵀ in float64, W [out, in]. */
export function loraLinearRef(
  x: Float32Array,
  n: number,
  inF: number,
  outF: number,
  W: Float32Array,
  bias: Float32Array | null,
  adapters: Array<{ A: Float32Array; B: Float32Array; r: number; s: number }>,
): Float64Array {
  const y = matmul(n, outF, inF, (i, p) => x[i * inF + p], (p, j) => W[j * inF + p]);
  for (let i = 0; i < n; i++) for (let j = 0; j < outF; j++) y[i * outF + j] += bias ? bias[j] : 0;
  for (const a of adapters) {
    const u = matmul(n, a.r, inF, (i, p) => x[i * inF + p], (p, j) => a.A[j * inF + p]);
    const d = matmul(n, outF, a.r, (i, p) => u[i * a.r + p], (p, j) => a.B[j * a.r + p]);
    for (let i = 0; i < y.length; i++) y[i] += a.s * d[i];
  }
  return y;
}
