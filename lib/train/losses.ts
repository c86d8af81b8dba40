/**
 * Losses with their gradients with respect to the prediction: { loss, grad }, where grad has the
 * prediction's shape, dtype and device and can go straight into a layer's backward(). The values
 * are read to the host and summed in f64 (losses are small next to the layers' GEMMs).
 */
import { DTypeError, LoraRangeError, LoraTypeError, ShapeError, shapeStr } from '../errors';
import { Tensor, requireFloatTensor } from '../tensor';
import { checkFinite, checkInt, checkOptions } from '../validate';

export interface LossResult {
  loss: number;
  /** dLoss/dPrediction, same shape and dtype as the prediction. */
  grad: Tensor;
}

export type Reduction = 'mean' | 'sum';

function checkReduction(v: unknown, name: string): Reduction {
  if (v === undefined) return 'mean';
  if (v !== 'mean' && v !== 'sum') throw new LoraTypeError(`${name}: expected 'mean' or 'sum', got ${String(v)}`);
  return v;
}

/** Mean squared error: mean((pred − target)²) (or the sum). */
export function mseLoss(pred: Tensor, target: Tensor | Float32Array, opts: { reduction?: Reduction } = {}): LossResult {
  requireFloatTensor(pred, 'pred', pred instanceof Tensor ? pred.device : 'cpu');
  const o = checkOptions(opts, ['reduction'], 'opts');
  const reduction = checkReduction(o.reduction, 'opts.reduction');
  let t: Float32Array;
  if (target instanceof Tensor) {
    requireFloatTensor(target, 'target', pred.device);
    if (target.shape.length !== pred.shape.length || target.shape.some((d, i) => d !== pred.shape[i]))
      throw new ShapeError(`target: expected shape ${shapeStr(pred.shape)} (pred's), got ${shapeStr(target.shape)}`);
    t = target.toFloat32Array();
  } else if (Object.prototype.toString.call(target) === '[object Float32Array]') {
    // (not instanceof: arrays read back from the addon may belong to another realm)
    if (target.length !== pred.numel)
      throw new ShapeError(`target: has ${target.length} elements but pred ${shapeStr(pred.shape)} has ${pred.numel}`);
    t = target;
  } else throw new LoraTypeError('target: expected a Tensor or a Float32Array');
  const p = pred.toFloat32Array();
  const n = p.length;
  const g = new Float64Array(n);
  const k = reduction === 'mean' ? 1 / Math.max(1, n) : 1;
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const d = p[i] - t[i];
    sum += d * d;
    g[i] = 2 * d * k;
  }
  return { loss: sum * k, grad: Tensor.from(g, pred.shape, { dtype: pred.dtype, device: pred.device }) };
}

export interface CrossEntropyOptions {
  /** Targets equal to this are skipped (default -100, as torch). */
  ignoreIndex?: number;
  /** Mixes the one-hot target with the uniform distribution (torch's label_smoothing). */
  labelSmoothing?: number;
  reduction?: Reduction;
}

function readTargets(targets: Tensor | Int32Array | number[], rows: number): Int32Array | Float64Array {
  let t: Int32Array | Float64Array;
  if (targets instanceof Tensor) {
    if (targets.dtype === 'i32') t = targets.toInt32Array();
    else if (targets.dtype === 'i64') t = Float64Array.from(targets.toBigInt64Array(), (v) => Number(v));
    else throw new DTypeError(`targets: expected an i32 or i64 tensor of class indices, got ${targets.dtype}`);
  } else if (Object.prototype.toString.call(targets) === '[object Int32Array]') t = targets as Int32Array;
  else if (Array.isArray(targets)) t = Float64Array.from(targets);
  else throw new LoraTypeError('targets: expected an Int32Array, a number[] or an i32/i64 Tensor of class indices');
  if (t.length !== rows) throw new ShapeError(`targets: expected ${rows} class indices (one per row of logits), got ${t.length}`);
  return t;
}

/**
 * Cross-entropy on unnormalised logits [..., C] with integer class targets (one per row), as
 * torch's F.cross_entropy. Uses log-sum-exp with the row maximum subtracted, so large logits do
 * not overflow. grad = (softmax − smoothed one-hot) / (number of counted rows, for 'mean').
 * If every target is ignored the loss and the gradient are 0 (torch gives NaN).
 */
export function crossEntropyLoss(logits: Tensor, targets: Tensor | Int32Array | number[], opts: CrossEntropyOptions = {}): LossResult {
  requireFloatTensor(logits, 'logits', logits instanceof Tensor ? logits.device : 'cpu');
  const o = checkOptions(opts, ['ignoreIndex', 'labelSmoothing', 'reduction'], 'opts') as CrossEntropyOptions;
  if (logits.shape.length < 1 || logits.shape[logits.shape.length - 1] < 1)
    throw new ShapeError(`logits: expected shape [..., classes] with classes >= 1, got ${shapeStr(logits.shape)}`);
  const ignore = o.ignoreIndex === undefined ? -100 : checkInt(o.ignoreIndex, 'opts.ignoreIndex', Number.MIN_SAFE_INTEGER);
  const eps = checkFinite(o.labelSmoothing ?? 0, 'opts.labelSmoothing');
  if (eps < 0 || eps > 1) throw new LoraRangeError(`opts.labelSmoothing: expected 0 <= value <= 1, got ${eps}`);
  const reduction = checkReduction(o.reduction, 'opts.reduction');
  const C = logits.shape[logits.shape.length - 1];
  const rows = logits.numel / C;
  const t = readTargets(targets, rows);
  const x = logits.toFloat32Array();
  const g = new Float64Array(x.length);
  let total = 0;
  let counted = 0;
  for (let r = 0; r < rows; r++) {
    const cls = t[r];
    if (cls === ignore) continue;
    if (!Number.isInteger(cls) || cls < 0 || cls >= C)
      throw new LoraRangeError(`targets[${r}]: expected a class index in [0, ${C - 1}] or ignoreIndex ${ignore}, got ${cls}`);
    const off = r * C;
    let max = -Infinity;
    for (let c = 0; c < C; c++) max = Math.max(max, x[off + c]);
    let s = 0;
    for (let c = 0; c < C; c++) s += Math.exp(x[off + c] - max);
    // Everything relative to the row maximum: lse − x_c = log s − (x_c − max).
    const logS = Math.log(s);
    let meanShifted = 0;
    for (let c = 0; c < C; c++) meanShifted += x[off + c] - max;
    meanShifted /= C;
    total += (1 - eps) * (logS - (x[off + cls] - max)) + eps * (logS - meanShifted);
    for (let c = 0; c < C; c++) g[off + c] = Math.exp(x[off + c] - max) / s - eps / C;
    g[off + cls] -= 1 - eps;
    counted++;
  }
  const k = reduction === 'mean' ? (counted > 0 ? 1 / counted : 0) : 1;
  if (k !== 1) for (let i = 0; i < g.length; i++) g[i] *= k;
  return { loss: total * k, grad: Tensor.from(g, logits.shape, { dtype: logits.dtype, device: logits.device }) };
}
