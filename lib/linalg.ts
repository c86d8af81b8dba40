/**
 * Small dense float64 linear algebra: thin SVD (one-sided Jacobi) and thin QR (Householder).
 * Hand-written because lorakit takes no numeric dependency and these are needed only off the hot
 * path, on adapter-sized matrices (weighted 'svd' adapters, pissa/olora init of one layer). They
 * are O(m·n·min(m,n)) per sweep in plain JS: fine up to a few hundred rows/columns, slow for
 * 4096×4096 weights.
 */

/** A row-major float64 matrix. */
export interface Mat {
  rows: number;
  cols: number;
  data: Float64Array;
}

export function mat(rows: number, cols: number, data?: ArrayLike<number>): Mat {
  const d = new Float64Array(rows * cols);
  if (data) {
    if (data.length !== rows * cols) throw new RangeError(`mat: ${data.length} values for ${rows}×${cols}`);
    for (let i = 0; i < d.length; i++) d[i] = data[i];
  }
  return { rows, cols, data: d };
}

export function transpose(a: Mat): Mat {
  const t = mat(a.cols, a.rows);
  for (let i = 0; i < a.rows; i++) for (let j = 0; j < a.cols; j++) t.data[j * a.rows + i] = a.data[i * a.cols + j];
  return t;
}

/** c = a·b */
export function matmul(a: Mat, b: Mat): Mat {
  if (a.cols !== b.rows) throw new RangeError(`matmul: ${a.rows}×${a.cols} by ${b.rows}×${b.cols}`);
  const c = mat(a.rows, b.cols);
  for (let i = 0; i < a.rows; i++)
    for (let p = 0; p < a.cols; p++) {
      const v = a.data[i * a.cols + p];
      if (v === 0) continue;
      const brow = p * b.cols;
      const crow = i * b.cols;
      for (let j = 0; j < b.cols; j++) c.data[crow + j] += v * b.data[brow + j];
    }
  return c;
}

export interface Svd {
  /** [m, k] with orthonormal columns (k = min(m, n)). */
  U: Mat;
  /** k singular values, descending. */
  S: Float64Array;
  /** [k, n] with orthonormal rows. */
  Vt: Mat;
}

/** Thin SVD a = U·diag(S)·Vt by one-sided Jacobi rotations (accurate to about 1e-15 relative). */
export function svd(a: Mat): Svd {
  if (a.rows < a.cols) {
    const t = svd(transpose(a));
    return { U: transpose(t.Vt), S: t.S, Vt: transpose(t.U) };
  }
  const m = a.rows;
  const n = a.cols;
  // Work on columns: G = a (m×n, column-major copy), V = I (n×n, column-major).
  const G = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) G[j * m + i] = a.data[i * n + j];
  const V = new Float64Array(n * n);
  for (let j = 0; j < n; j++) V[j * n + j] = 1;
  for (let sweep = 0; sweep < 60; sweep++) {
    let off = 0;
    for (let p = 0; p < n - 1; p++)
      for (let q = p + 1; q < n; q++) {
        let alpha = 0;
        let beta = 0;
        let gamma = 0;
        for (let i = 0; i < m; i++) {
          const x = G[p * m + i];
          const y = G[q * m + i];
          alpha += x * x;
          beta += y * y;
          gamma += x * y;
        }
        if (gamma === 0 || Math.abs(gamma) <= 1e-15 * Math.sqrt(alpha * beta)) continue;
        off = Math.max(off, Math.abs(gamma) / Math.sqrt(alpha * beta));
        const zeta = (beta - alpha) / (2 * gamma);
        const t = Math.sign(zeta || 1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const c = 1 / Math.sqrt(1 + t * t);
        const s = c * t;
        for (let i = 0; i < m; i++) {
          const x = G[p * m + i];
          const y = G[q * m + i];
          G[p * m + i] = c * x - s * y;
          G[q * m + i] = s * x + c * y;
        }
        for (let i = 0; i < n; i++) {
          const x = V[p * n + i];
          const y = V[q * n + i];
          V[p * n + i] = c * x - s * y;
          V[q * n + i] = s * x + c * y;
        }
      }
    if (off < 1e-15) break;
  }
  const norms = new Float64Array(n);
  for (let j = 0; j < n; j++) {
    let s = 0;
    for (let i = 0; i < m; i++) s += G[j * m + i] ** 2;
    norms[j] = Math.sqrt(s);
  }
  const order = [...norms.keys()].sort((x, y) => norms[y] - norms[x]);
  const U = mat(m, n);
  const S = new Float64Array(n);
  const Vt = mat(n, n);
  order.forEach((j, k) => {
    S[k] = norms[j];
    for (let i = 0; i < m; i++) U.data[i * n + k] = norms[j] > 0 ? G[j * m + i] / norms[j] : 0;
    for (let i = 0; i < n; i++) Vt.data[k * n + i] = V[j * n + i];
  });
  completeZeroColumns(U, S);
  return { U, S, Vt };
}

/** Columns of U for zero singular values are made orthonormal to the rest (Gram-Schmidt on unit vectors). */
function completeZeroColumns(U: Mat, S: Float64Array): void {
  const m = U.rows;
  const k = U.cols;
  const tiny = (S[0] || 1) * 1e-300;
  let seed = 0;
  for (let j = 0; j < k; j++) {
    if (S[j] > tiny) continue;
    for (; seed < m; seed++) {
      const v = new Float64Array(m);
      v[seed] = 1;
      for (let c = 0; c < k; c++) {
        if (c === j || (S[c] <= tiny && c > j)) continue;
        let d = 0;
        for (let i = 0; i < m; i++) d += U.data[i * k + c] * v[i];
        for (let i = 0; i < m; i++) v[i] -= d * U.data[i * k + c];
      }
      let nv = 0;
      for (let i = 0; i < m; i++) nv += v[i] * v[i];
      nv = Math.sqrt(nv);
      if (nv > 1e-8) {
        for (let i = 0; i < m; i++) U.data[i * k + j] = v[i] / nv;
        seed++;
        break;
      }
    }
  }
}

export interface Qr {
  /** [m, k], orthonormal columns (k = min(m, n)). */
  Q: Mat;
  /** [k, n], upper triangular. */
  R: Mat;
}

/** Thin QR by Householder reflections (LAPACK geqrf's sign convention: R's diagonal may be negative). */
export function qr(a: Mat): Qr {
  const m = a.rows;
  const n = a.cols;
  const k = Math.min(m, n);
  const R = mat(m, n, a.data);
  const vs: Float64Array[] = [];
  for (let j = 0; j < k; j++) {
    let norm = 0;
    for (let i = j; i < m; i++) norm += R.data[i * n + j] ** 2;
    norm = Math.sqrt(norm);
    const v = new Float64Array(m);
    if (norm === 0) {
      vs.push(v);
      continue;
    }
    const x0 = R.data[j * n + j];
    const alpha = x0 >= 0 ? -norm : norm;
    for (let i = j; i < m; i++) v[i] = R.data[i * n + j];
    v[j] -= alpha;
    let vn = 0;
    for (let i = j; i < m; i++) vn += v[i] * v[i];
    vn = Math.sqrt(vn);
    if (vn === 0) {
      vs.push(new Float64Array(m));
      continue;
    }
    for (let i = j; i < m; i++) v[i] /= vn;
    vs.push(v);
    for (let c = j; c < n; c++) {
      let d = 0;
      for (let i = j; i < m; i++) d += v[i] * R.data[i * n + c];
      for (let i = j; i < m; i++) R.data[i * n + c] -= 2 * d * v[i];
    }
  }
  // Q = H_0 … H_{k-1} applied to the first k columns of I.
  const Q = mat(m, k);
  for (let j = 0; j < k; j++) Q.data[j * k + j] = 1;
  for (let j = k - 1; j >= 0; j--) {
    const v = vs[j];
    for (let c = 0; c < k; c++) {
      let d = 0;
      for (let i = j; i < m; i++) d += v[i] * Q.data[i * k + c];
      if (d !== 0) for (let i = j; i < m; i++) Q.data[i * k + c] -= 2 * d * v[i];
    }
  }
  const Rk = mat(k, n);
  for (let i = 0; i < k; i++) for (let j = i; j < n; j++) Rk.data[i * n + j] = R.data[i * n + j];
  return { Q, R: Rk };
}
