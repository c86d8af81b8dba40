/**
 * peft's add_weighted_adapter for one layer: a new adapter (scaling 1) from weighted sources.
 * 'cat' is exactly Σ wᵢ·sᵢ·Bᵢ·Aᵢ (rank Σ rᵢ); 'svd' is its truncated SVD (float64); 'linear' (equal
 * ranks) sums the factors, A = Σ sign·√|wᵢ·sᵢ|·Aᵢ and B = Σ √|wᵢ·sᵢ|·Bᵢ, which has cross terms, as in
 * peft. DoRA sources are refused (peft's result for them is not the weighted sum).
 */
import { FloatDType } from '../dtype';
import { AdapterError, LoraTypeError } from '../errors';
import { mat, matmul, qr, svd, transpose } from '../linalg';
import { Tensor } from '../tensor';
import { checkFinite, checkInt, checkOptions } from '../validate';

export type CombinationType = 'svd' | 'linear' | 'cat';

export interface WeightedAdapterOptions {
  /** peft's default is 'svd'. */
  combinationType?: CombinationType;
  /** Rank of the 'svd' combination (default: the largest source rank). */
  svdRank?: number;
}

/** The adapter maps of a layer, read-only (LoraLayer's public getters). */
export interface WeightedSources {
  readonly r: ReadonlyMap<string, number>;
  readonly scaling: ReadonlyMap<string, number>;
  readonly loraA: ReadonlyMap<string, Tensor>;
  readonly loraB: ReadonlyMap<string, Tensor>;
  readonly useDora: ReadonlyMap<string, boolean>;
}

/** The layer's own checks, run in peft's argument order. */
export interface WeightedChecks {
  /** Throws a typed error naming argName unless the layer has the adapter. */
  requireAdapter(name: unknown, argName: string): string;
  /** Throws unless newName is free. */
  checkNewName(): void;
  /** Why the layer cannot combine adapters, or null. */
  unsupported: string | null;
}

/** Checks the arguments and returns the combined factors, shaped, typed and placed (device) like the first source's, and their rank. */
export function weightedAdapterFactors(
  layer: WeightedSources,
  checks: WeightedChecks,
  adapters: readonly string[],
  weights: readonly number[],
  opts: WeightedAdapterOptions,
): { r: number; A: Tensor; B: Tensor } {
  const o = checkOptions(opts, ['combinationType', 'svdRank'], 'opts') as WeightedAdapterOptions;
  if (!Array.isArray(adapters) || adapters.length === 0) throw new LoraTypeError('adapters: expected a non-empty array of adapter names');
  adapters.forEach((n, i) => checks.requireAdapter(n, `adapters[${i}]`));
  if (!Array.isArray(weights) || weights.length !== adapters.length)
    throw new LoraTypeError(`weights: expected an array of ${adapters.length} numbers (one per adapter)`);
  weights.forEach((w, i) => checkFinite(w, `weights[${i}]`));
  checks.checkNewName();
  let kind = o.combinationType ?? 'svd';
  if (kind !== 'svd' && kind !== 'linear' && kind !== 'cat')
    throw new LoraTypeError(`opts.combinationType: expected 'svd', 'linear' or 'cat', got ${String(kind)}`);
  const dora = adapters.filter((n) => layer.useDora.get(n));
  if (dora.length > 0) throw new AdapterError(`adapters: DoRA adapter(s) ${dora.join(', ')} cannot be combined (the result would not be the weighted sum)`);
  if (checks.unsupported) throw new AdapterError(`addWeightedAdapter: ${checks.unsupported}`);
  if (adapters.length === 1) kind = 'linear'; // as peft: one source is always combined linearly
  const ranks = adapters.map((n) => layer.r.get(n)!);
  const A0 = layer.loraA.get(adapters[0])!;
  const B0 = layer.loraB.get(adapters[0])!;
  const outDim = B0.shape[0];
  const inDim = A0.numel / ranks[0];
  const As = adapters.map((n) => layer.loraA.get(n)!.toFloat32Array());
  const Bs = adapters.map((n) => layer.loraB.get(n)!.toFloat32Array());
  const ws = adapters.map((n, i) => weights[i] * layer.scaling.get(n)!);
  let rNew: number;
  let f: { a: Float64Array; b: Float64Array };
  if (kind === 'cat') {
    rNew = ranks.reduce((x, y) => x + y, 0);
    f = catFactors(As, Bs, ranks, ws, outDim, inDim);
  } else if (kind === 'linear') {
    if (new Set(ranks).size !== 1)
      throw new AdapterError(`opts.combinationType: 'linear' needs adapters of equal rank, got ranks ${ranks.join(', ')} (use 'cat' or 'svd')`);
    rNew = ranks[0];
    f = linearFactors(As, Bs, ws);
  } else {
    const maxRank = Math.min(outDim, inDim);
    rNew = o.svdRank === undefined ? Math.min(Math.max(...ranks), maxRank) : checkInt(o.svdRank, 'opts.svdRank', 1, maxRank);
    f = truncatedSvdOfSum(As, Bs, ranks, ws, outDim, inDim, rNew);
  }
  const dtype = A0.dtype as FloatDType;
  const device = A0.device; // the layer's: a cuda layer's new adapter must live on cuda too
  const A = Tensor.from(f.a, [rNew, ...A0.shape.slice(1)], { dtype, device });
  let B: Tensor;
  try {
    B = Tensor.from(f.b, [outDim, rNew, ...B0.shape.slice(2)], { dtype, device });
  } catch (e) {
    A.dispose();
    throw e;
  }
  return { r: rNew, A, B };
}

/** A = [wᵢ·Aᵢ] stacked on rows, B = [Bᵢ] side by side: B·A = Σ wᵢ·Bᵢ·Aᵢ exactly. */
export function catFactors(As: Float32Array[], Bs: Float32Array[], ranks: number[], ws: number[], outDim: number, inDim: number): { a: Float64Array; b: Float64Array } {
  const R = ranks.reduce((x, y) => x + y, 0);
  const a = new Float64Array(R * inDim);
  const b = new Float64Array(outDim * R);
  let off = 0;
  ranks.forEach((r, i) => {
    for (let k = 0; k < r * inDim; k++) a[off * inDim + k] = ws[i] * As[i][k];
    for (let row = 0; row < outDim; row++) for (let k = 0; k < r; k++) b[row * R + off + k] = Bs[i][row * r + k];
    off += r;
  });
  return { a, b };
}

/** peft's 'linear': A = Σ sign(wᵢ)·√|wᵢ|·Aᵢ, B = Σ √|wᵢ|·Bᵢ (equal ranks). */
export function linearFactors(As: Float32Array[], Bs: Float32Array[], ws: number[]): { a: Float64Array; b: Float64Array } {
  const a = new Float64Array(As[0].length);
  const b = new Float64Array(Bs[0].length);
  ws.forEach((w, i) => {
    const root = Math.sqrt(Math.abs(w));
    const sign = w < 0 ? -1 : 1;
    for (let k = 0; k < a.length; k++) a[k] += sign * root * As[i][k];
    for (let k = 0; k < b.length; k++) b[k] += root * Bs[i][k];
  });
  return { a, b };
}

/**
 * Rank-k truncated SVD of Σ wᵢ·Bᵢ·Aᵢ (float64). With Bc = [wᵢ·Bᵢ] (out×R) and Ac = [Aᵢ] (R×in),
 * Bc = Qb·Rb and Acᵀ = Qa·Ra give Bc·Ac = Qb·(Rb·Raᵀ)·Qaᵀ, so only an R×R SVD is needed and no dense
 * out×in matrix is formed (dense fallback when R exceeds out or in).
 */
export function truncatedSvdOfSum(
  As: Float32Array[],
  Bs: Float32Array[],
  ranks: number[],
  ws: number[],
  outDim: number,
  inDim: number,
  k: number,
): { a: Float64Array; b: Float64Array } {
  const R = ranks.reduce((x, y) => x + y, 0);
  const a = new Float64Array(k * inDim);
  const b = new Float64Array(outDim * k);
  if (R > Math.min(outDim, inDim)) {
    const delta = mat(outDim, inDim);
    ranks.forEach((r, i) => {
      const d = matmul(mat(outDim, r, Bs[i]), mat(r, inDim, As[i]));
      for (let j = 0; j < d.data.length; j++) delta.data[j] += ws[i] * d.data[j];
    });
    const f = svd(delta);
    const kk = f.S.length;
    a.set(f.Vt.data.subarray(0, k * inDim));
    for (let row = 0; row < outDim; row++) for (let j = 0; j < k; j++) b[row * k + j] = f.U.data[row * kk + j] * f.S[j];
    return { a, b };
  }
  const Bc = mat(outDim, R);
  const AcT = mat(inDim, R);
  let off = 0;
  ranks.forEach((r, i) => {
    for (let row = 0; row < outDim; row++) for (let j = 0; j < r; j++) Bc.data[row * R + off + j] = ws[i] * Bs[i][row * r + j];
    for (let j = 0; j < r; j++) for (let c = 0; c < inDim; c++) AcT.data[c * R + off + j] = As[i][j * inDim + c];
    off += r;
  });
  const qb = qr(Bc);
  const qa = qr(AcT);
  const f = svd(matmul(qb.R, transpose(qa.R))); // R×R
  const left = matmul(qb.Q, f.U); // out×R
  const right = matmul(f.Vt, transpose(qa.Q)); // R×in
  for (let row = 0; row < outDim; row++) for (let j = 0; j < k; j++) b[row * k + j] = left.data[row * R + j] * f.S[j];
  a.set(right.data.subarray(0, k * inDim));
  return { a, b };
}

/** addWeightedAdapter refuses lora_bias sources: peft's combination drops or mixes the biases (peft #3761). */
export function loraBiasSources(adapters: readonly unknown[], loraBBias: ReadonlyMap<string, unknown>): string | null {
  const withBias = Array.isArray(adapters) ? adapters.filter((a): a is string => typeof a === 'string' && loraBBias.has(a)) : [];
  return withBias.length ? `adapter(s) ${withBias.join(', ')} have a lora_B bias, which a weighted combination cannot carry` : null;
}
