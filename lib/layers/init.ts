/**
 * Adapter initialisers, as peft's LoraLayer.reset_lora_parameters / pissa_init / olora_init. Pure:
 * they take sizes, a generator or the base weight's values and return flat factor arrays; the
 * layers turn them into tensors of their shapes and dtype.
 */
import { LoraRangeError } from '../errors';
import { Mat, mat, qr, svd } from '../linalg';
import { Rng } from '../rng';

/**
 * true: A kaiming-uniform, B = 0; 'gaussian': A ~ N(0, 1/r), B = 0; false: both random; 'pissa' and
 * 'olora' (LoraLinear): A and B from an SVD / QR of W, and W is rewritten so the output is unchanged.
 */
export type InitLoraWeights = boolean | 'gaussian' | 'pissa' | 'olora';

/**
 * Linear and conv factors: A [r, fanIn] is kaiming_uniform(a=√5) = U(±1/√fanIn) (nn.Linear's and
 * nn.Conv2d's default) or N(0, 1/r) for 'gaussian'; B [out, bCols] is 0, or U(±1/√bCols) when init
 * is false (the default init of B as a module with bCols inputs: r, or r/groups for a grouped conv).
 */
export function kaimingFactors(
  r: number,
  fanIn: number,
  outF: number,
  bCols: number,
  init: InitLoraWeights,
  rng: Rng,
): { a: Float32Array; b: Float32Array } {
  const a = new Float32Array(r * fanIn);
  const b = new Float32Array(outF * bCols);
  if (init === 'gaussian') rng.fillNormal(a, 0, 1 / r);
  else rng.fillUniform(a, -1 / Math.sqrt(fanIn), 1 / Math.sqrt(fanIn));
  if (init === false) rng.fillUniform(b, -1 / Math.sqrt(bCols), 1 / Math.sqrt(bCols));
  return { a, b };
}

/** peft's Embedding init: A [r, num] = 0 and B [dim, r] ~ N(0, 1); init false draws A ~ N(0, 1) too (after B). */
export function embeddingFactors(r: number, num: number, dim: number, init: InitLoraWeights, rng: Rng): { a: Float32Array; b: Float32Array } {
  const a = new Float32Array(r * num);
  const b = new Float32Array(dim * r);
  rng.fillNormal(b, 0, 1);
  if (init === false) rng.fillNormal(a, 0, 1);
  return { a, b };
}

/**
 * peft's pissa_init / olora_init on W in [out, in] layout (float64): pissa takes the top-r SVD
 * (A = √(S/s)·Vᵀ, B = U·√(S/s)), olora the thin QR (B = Q[:, :r], A = R[:r]). w is the stored weight
 * ([in, out] when fanInFanOut). Returns W as [out, in] too, for residualWeight.
 */
export function weightInitFactors(
  kind: 'pissa' | 'olora',
  w: Float32Array,
  outF: number,
  inF: number,
  fanInFanOut: boolean,
  r: number,
  scaling: number,
): { W: Mat; a: Float64Array; b: Float64Array } {
  if (r > Math.min(outF, inF)) throw new LoraRangeError(`opts.r: '${kind}' needs r <= min(out, in) = ${Math.min(outF, inF)}, got ${r}`);
  if (!(scaling > 0)) throw new LoraRangeError(`opts.loraAlpha: '${kind}' needs a positive scaling, got ${scaling}`);
  const W = mat(outF, inF);
  for (let o = 0; o < outF; o++) for (let i = 0; i < inF; i++) W.data[o * inF + i] = fanInFanOut ? w[i * outF + o] : w[o * inF + i];
  const a = new Float64Array(r * inF);
  const b = new Float64Array(outF * r);
  if (kind === 'pissa') {
    const f = svd(W);
    const k = f.S.length;
    for (let j = 0; j < r; j++) {
      const root = Math.sqrt(f.S[j] / scaling);
      for (let i = 0; i < inF; i++) a[j * inF + i] = root * f.Vt.data[j * inF + i];
      for (let o = 0; o < outF; o++) b[o * r + j] = f.U.data[o * k + j] * root;
    }
  } else {
    const f = qr(W);
    const k = f.Q.cols;
    for (let j = 0; j < r; j++) {
      for (let i = 0; i < inF; i++) a[j * inF + i] = f.R.data[j * inF + i];
      for (let o = 0; o < outF; o++) b[o * r + j] = f.Q.data[o * k + j];
    }
  }
  return { W, a, b };
}

/**
 * W − s·B·A in W's storage layout (float64), computed with A [r, in] and B [out, r] as stored
 * (after rounding to their dtype), so that W' + s·B·A equals W up to W's own rounding.
 */
export function residualWeight(W: Mat, A: Float32Array, B: Float32Array, scaling: number, fanInFanOut: boolean): Float64Array {
  const outF = W.rows;
  const inF = W.cols;
  const r = A.length / inF;
  const out = new Float64Array(outF * inF);
  for (let o = 0; o < outF; o++)
    for (let i = 0; i < inF; i++) {
      let d = 0;
      for (let j = 0; j < r; j++) d += B[o * r + j] * A[j * inF + i];
      out[fanInFanOut ? i * outF + o : o * inF + i] = W.data[o * inF + i] - scaling * d;
    }
  return out;
}
