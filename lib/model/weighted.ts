/**
 * add_weighted_adapter on one layer, from the adapters' A and B factors (peft's formulas, the new
 * adapter's scaling is 1): 'cat' stacks them, so B·A = Σ wᵢ·sᵢ·Bᵢ·Aᵢ exactly; 'linear' sums
 * √(wᵢ·sᵢ)-weighted factors (cross terms included, as peft); 'svd' is the rank-k truncated SVD of
 * Σ wᵢ·sᵢ·Bᵢ·Aᵢ, computed through QR of the stacked factors so no dense out×in matrix is built.
 */
import { AdapterError, LoraRangeError, LoraTypeError } from '../errors';
import { LoraLayer } from '../layers/lora_layer';
import { checkOptions } from '../validate';

export type CombinationType = 'cat' | 'linear' | 'svd';

export interface WeightedAdapterOptions {
  /** peft's default is 'svd'. */
  combinationType?: CombinationType;
  /** Rank of the 'svd' result (default: the largest rank among the adapters). */
  svdRank?: number;
}

interface Factor {
  A: Float64Array; // [r, in] row-major
  B: Float64Array; // [out, r] row-major
  r: number;
}

/** Layers that implement their own combination (by kind) are used as they are. */
interface WeightedCapable {
  addWeightedAdapter(adapters: string[], weights: number[], newName: string, opts: WeightedAdapterOptions): unknown;
}

export function addWeightedAdapterToLayer(
  layer: LoraLayer,
  adapters: string[],
  weights: number[],
  newName: string,
  opts: WeightedAdapterOptions,
  moduleName: string,
): void {
  const o = checkOptions(opts, ['combinationType', 'svdRank'], 'opts') as WeightedAdapterOptions;
  const type = o.combinationType ?? 'svd';
  if (type !== 'cat' && type !== 'linear' && type !== 'svd') throw new LoraTypeError(`opts.combinationType: expected 'cat', 'linear' or 'svd', got ${String(type)}`);
  weights.forEach((w, i) => {
    if (typeof w !== 'number' || !Number.isFinite(w)) throw new LoraTypeError(`weights[${i}]: expected a finite number`);
  });
  const own = layer as unknown as Partial<WeightedCapable>;
  if (typeof own.addWeightedAdapter === 'function') {
    own.addWeightedAdapter(adapters, weights, newName, o);
    return;
  }
  const inF = layer.inFeatures;
  const outF = layer.outFeatures;
  const used = adapters.map((a, i) => ({ a, w: weights[i] })).filter(({ a }) => layer.adapterNames.includes(a));
  const f: Array<Factor & { ws: number }> = used.map(({ a, w }) => ({
    A: Float64Array.from(layer.loraA.get(a)!.toFloat32Array()),
    B: Float64Array.from(layer.loraB.get(a)!.toFloat32Array()),
    r: layer.r.get(a)!,
    ws: w * layer.scaling.get(a)!,
  }));
  let A: Float64Array;
  let B: Float64Array;
  let r: number;
  if (type === 'cat') {
    r = f.reduce((s, x) => s + x.r, 0);
    A = new Float64Array(r * inF);
    B = new Float64Array(outF * r);
    let off = 0;
    for (const x of f) {
      for (let i = 0; i < x.r * inF; i++) A[off * inF + i] = x.ws * x.A[i];
      for (let o2 = 0; o2 < outF; o2++) for (let j = 0; j < x.r; j++) B[o2 * r + off + j] = x.B[o2 * x.r + j];
      off += x.r;
    }
  } else if (type === 'linear') {
    r = f[0].r;
    if (f.some((x) => x.r !== r)) throw new AdapterError(`adapters: 'linear' needs adapters of one rank; module '${moduleName}' has ranks ${f.map((x) => x.r).join(', ')}`);
    if (f.some((x) => x.ws < 0)) throw new LoraRangeError(`weights: 'linear' needs weight·scaling >= 0 (it takes square roots); use 'cat' or 'svd' for negative weights`);
    A = new Float64Array(r * inF);
    B = new Float64Array(outF * r);
    for (const x of f) {
      const k = Math.sqrt(x.ws);
      for (let i = 0; i < A.length; i++) A[i] += k * x.A[i];
      for (let i = 0; i < B.length; i++) B[i] += k * x.B[i];
    }
  } else {
    r = o.svdRank ?? Math.max(...f.map((x) => x.r));
    if (!Number.isInteger(r) || r < 1) throw new LoraRangeError(`opts.svdRank: expected a positive integer, got ${String(o.svdRank)}`);
    ({ A, B } = truncatedSvd(f, inF, outF, r));
  }
  layer.addAdapter(newName, { r, loraAlpha: r, initLoraWeights: true, seed: 0 });
  layer.loraA.get(newName)!.copyFrom(A);
  layer.loraB.get(newName)!.copyFrom(B);
}

/** Thin QR (modified Gram-Schmidt) of an m×n column set given as columns; returns Q (m×n) and R (n×n). */
function qr(cols: Float64Array[], m: number): { Q: Float64Array[]; R: Float64Array } {
  const n = cols.length;
  const Q = cols.map((c) => Float64Array.from(c));
  const R = new Float64Array(n * n);
  for (let j = 0; j < n; j++) {
    for (let i = 0; i < j; i++) {
      let d = 0;
      for (let k = 0; k < m; k++) d += Q[i][k] * Q[j][k];
      R[i * n + j] = d;
      for (let k = 0; k < m; k++) Q[j][k] -= d * Q[i][k];
    }
    let norm = 0;
    for (let k = 0; k < m; k++) norm += Q[j][k] * Q[j][k];
    norm = Math.sqrt(norm);
    R[j * n + j] = norm;
    if (norm > 0) for (let k = 0; k < m; k++) Q[j][k] /= norm;
    else Q[j].fill(0);
  }
  return { Q, R };
}

/** One-sided Jacobi SVD of an n×n matrix (row-major): M = U·diag(S)·Vᵀ, S descending. */
function jacobiSvd(M: Float64Array, n: number): { U: Float64Array; S: Float64Array; V: Float64Array } {
  const W = Float64Array.from(M);
  const V = new Float64Array(n * n);
  for (let i = 0; i < n; i++) V[i * n + i] = 1;
  for (let sweep = 0; sweep < 60; sweep++) {
    let off = 0;
    for (let p = 0; p < n - 1; p++) {
      for (let q = p + 1; q < n; q++) {
        let a = 0, b = 0, c = 0;
        for (let k = 0; k < n; k++) {
          a += W[k * n + p] * W[k * n + p];
          b += W[k * n + q] * W[k * n + q];
          c += W[k * n + p] * W[k * n + q];
        }
        if (Math.abs(c) <= 1e-15 * Math.sqrt(a * b) || c === 0) continue;
        off = Math.max(off, Math.abs(c) / Math.sqrt(a * b));
        const zeta = (b - a) / (2 * c);
        const t = Math.sign(zeta || 1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const cs = 1 / Math.sqrt(1 + t * t);
        const sn = cs * t;
        for (let k = 0; k < n; k++) {
          const wp = W[k * n + p], wq = W[k * n + q];
          W[k * n + p] = cs * wp - sn * wq;
          W[k * n + q] = sn * wp + cs * wq;
          const vp = V[k * n + p], vq = V[k * n + q];
          V[k * n + p] = cs * vp - sn * vq;
          V[k * n + q] = sn * vp + cs * vq;
        }
      }
    }
    if (off < 1e-15) break;
  }
  const S = new Float64Array(n);
  for (let j = 0; j < n; j++) {
    let s = 0;
    for (let k = 0; k < n; k++) s += W[k * n + j] * W[k * n + j];
    S[j] = Math.sqrt(s);
  }
  const order = [...S.keys()].sort((x, y) => S[y] - S[x]);
  const U = new Float64Array(n * n);
  const Vs = new Float64Array(n * n);
  const Ss = new Float64Array(n);
  order.forEach((j, jj) => {
    Ss[jj] = S[j];
    for (let k = 0; k < n; k++) {
      U[k * n + jj] = S[j] > 0 ? W[k * n + j] / S[j] : 0;
      Vs[k * n + jj] = V[k * n + j];
    }
  });
  return { U, S: Ss, V: Vs };
}

function truncatedSvd(f: Array<Factor & { ws: number }>, inF: number, outF: number, k: number): { A: Float64Array; B: Float64Array } {
  // ΔW = Bc·Ac with Bc = [wᵢsᵢBᵢ] (out×R) and Ac = [Aᵢ] (R×in).
  const bCols: Float64Array[] = [];
  const aCols: Float64Array[] = []; // columns of Acᵀ = rows of Ac
  for (const x of f) {
    for (let j = 0; j < x.r; j++) {
      const col = new Float64Array(outF);
      for (let o = 0; o < outF; o++) col[o] = x.ws * x.B[o * x.r + j];
      bCols.push(col);
      aCols.push(x.A.slice(j * inF, (j + 1) * inF));
    }
  }
  const R = bCols.length;
  const qb = qr(bCols, outF);
  const qa = qr(aCols, inF);
  const M = new Float64Array(R * R); // R_B · R_Aᵀ
  for (let i = 0; i < R; i++) for (let j = 0; j < R; j++) {
    let s = 0;
    for (let t = 0; t < R; t++) s += qb.R[i * R + t] * qa.R[j * R + t];
    M[i * R + j] = s;
  }
  const { U, S, V } = jacobiSvd(M, R);
  const A = new Float64Array(k * inF);
  const B = new Float64Array(outF * k);
  for (let c = 0; c < Math.min(k, R); c++) {
    for (let t = 0; t < R; t++) {
      const u = U[t * R + c] * S[c];
      const v = V[t * R + c];
      if (u !== 0) for (let o = 0; o < outF; o++) B[o * k + c] += qb.Q[t][o] * u;
      if (v !== 0) for (let i = 0; i < inF; i++) A[c * inF + i] += qa.Q[t][i] * v;
    }
  }
  return { A, B };
}
