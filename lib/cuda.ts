/**
 * The CUDA backend's extras: availability, streams and synchronisation, device timers for benchmarks,
 * allocator and kernel statistics, the bare base GEMM (the benchmarks' reference) and fused optimizer steps
 * for adapter parameters (the device-independent adamwStep/sgdStep ops, with checks for cuda tensors). Tensors themselves move with `Tensor.to({ device: 'cuda' })`.
 */
import { DTypeError, LoraRangeError, LoraTypeError, ShapeError, StateError, shapeStr } from './errors';
import { onStream, runOp } from './exec';
import { CudaKernelStats, call } from './native';
import { Tensor, requireFloatTensor } from './tensor';
import { checkBool, checkFinite, checkInt, checkOptions } from './validate';

/** True when the addon has the CUDA backend and a GPU is usable. */
export function isAvailable(): boolean {
  return call((b) => b.backendInfo()).usable.includes('cuda');
}

/** Waits for all queued GPU work on every stream; asynchronous kernel errors surface here. */
export function synchronize(): void {
  call((b) => b.cudaSynchronize());
}

/**
 * A CUDA stream of its own: work on different streams may overlap on the GPU. Give one to a layer
 * (`layer.stream = s`) or run code on it with `cuda.withStream(s, fn)`. Tensors can be shared
 * freely: lorakit records which streams used each block of memory and makes a stream wait (with
 * events, not host syncs) for the others where their uses conflict.
 */
export class CudaStream {
  #id: number;

  /** @internal use cuda.createStream() */
  constructor(id: number) {
    this.#id = id;
  }

  /** The native stream id; StateError once disposed. */
  get id(): number {
    if (this.#id === 0) throw new StateError('stream: the cuda stream was disposed');
    return this.#id;
  }

  get disposed(): boolean {
    return this.#id === 0;
  }

  /** Waits for the work queued on this stream. */
  synchronize(): void {
    const id = this.id;
    call((b) => b.cudaStreamSynchronize(id));
  }

  /** Waits for its work, then hands the stream back for reuse; further use throws StateError. */
  dispose(): void {
    if (this.#id === 0) return;
    const id = this.#id;
    this.#id = 0;
    call((b) => b.cudaStreamRelease(id));
  }

  toString(): string {
    return this.disposed ? 'CudaStream(disposed)' : `CudaStream(${this.#id})`;
  }
}

/** A new stream (TypeError in builds without CUDA, StateError without a GPU). */
export function createStream(): CudaStream {
  return new CudaStream(call((b) => b.cudaStreamCreate()));
}

export function checkStream(s: unknown, name: string): CudaStream {
  if (!(s instanceof CudaStream)) throw new LoraTypeError(`${name}: expected a CudaStream from cuda.createStream()`);
  if (s.disposed) throw new StateError(`${name}: the cuda stream was disposed`);
  return s;
}

/** A stream for work whose tensors live on `device`: only cuda work runs on a stream. */
export function checkStreamFor(s: unknown, name: string, device: string, owner: string): CudaStream {
  const stream = checkStream(s, name);
  if (device !== 'cuda') throw new LoraTypeError(`${name}: only cuda ${owner}s run on a stream; this ${owner}'s weight is on the ${device}`);
  return stream;
}

/**
 * Runs fn with its cuda work on the stream (layers with a stream of their own keep theirs). For
 * synchronous code: work queued after an await inside fn goes back to the caller's stream.
 */
export function withStream<T>(stream: CudaStream, fn: () => T): T {
  const id = checkStream(stream, 'stream').id;
  if (typeof fn !== 'function') throw new LoraTypeError('fn: expected a function');
  return onStream(id, fn);
}

/** Times GPU work queued by fn with device events (ms), after it completes. */
export function timeMs(fn: () => void): number {
  call((b) => b.cudaTimerStart());
  fn();
  return call((b) => b.cudaTimerStop());
}

/**
 * The caching allocator's state: bytes held by live tensors and scratch, bytes cached for reuse,
 * and `deviceMallocs`, the cudaMalloc calls it has made so far (each a miss of the cache: a loop
 * whose count keeps growing allocates fresh device memory every call).
 */
export function memoryStats(): { allocatedBytes: number; cachedBytes: number; deviceMallocs: number } {
  return call((b) => b.cudaMemoryStats());
}

/**
 * Which GPU kernels this process can use and has used: `sm90GemmUsable` (the one-pass Hopper
 * LoRA GEMM, on a cc 9.0 GPU), `sm90GemmLaunches` (its launches so far), and graph replay's
 * counters (setGraphReplay).
 */
export function kernelStats(): CudaKernelStats {
  return call((b) => b.cudaKernelStats());
}

/**
 * Graph replay (off by default; LORAKIT_CUDA_GRAPHS=1 turns it on at load): a LoraLinear forward
 * repeated with the same tensors (x, weights, y or opts.out: same memory), shapes and scales is
 * captured into a CUDA graph on its second call and replayed with one launch from then on,
 * which removes most of the host work of small batches. Tensors' contents may change between
 * calls (a replay reads them); anything else is a new graph (64 kept, least recently used
 * dropped). Results are bitwise those of the direct calls. Off also frees the cached graphs.
 */
export function setGraphReplay(on: boolean): void {
  checkBool(on, 'on');
  call((b) => b.cudaSetGraphReplay(on));
}

/** Returns cached blocks of the caching allocator to the driver. */
export function emptyCache(): void {
  call((b) => b.cudaEmptyCache());
}

function sameShape(a: Tensor, b: Tensor, an: string, bn: string): void {
  if (a.shape.join() !== b.shape.join()) throw new ShapeError(`${bn}: expected the shape of ${an} ${shapeStr(a.shape)}, got ${shapeStr(b.shape)}`);
}

function f32State(t: Tensor, name: string): void {
  if (t.dtype !== 'f32') throw new DTypeError(`${name}: optimizer state must be f32, got ${t.dtype}`);
}

/**
 * y = x·Wᵀ with cuBLASLt and nothing else (W [out, in]): what the fused LoRA forward is measured
 * against. With inputGrad, the backward's dx = dy·W instead (x is dy [n, out], y is dx [n, in]).
 */
export function baseGemm(x: Tensor, weight: Tensor, y: Tensor, inputGrad = false): Tensor {
  requireFloatTensor(x, 'x', 'cuda');
  requireFloatTensor(weight, 'weight', 'cuda');
  requireFloatTensor(y, 'y', 'cuda');
  if (weight.shape.length !== 2) throw new ShapeError(`weight: expected 2 dimensions, got shape ${shapeStr(weight.shape)}`);
  if (x.dtype !== weight.dtype || y.dtype !== weight.dtype)
    throw new DTypeError(`x, y: expected the weight's dtype ${weight.dtype}, got ${x.dtype} and ${y.dtype}`);
  checkBool(inputGrad, 'inputGrad');
  call((b) => b.cudaBaseGemm(x.handle, weight.handle, y.handle, inputGrad));
  return y;
}

export interface CudaAdamWOptions {
  lr?: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
  /** 1 on the first step (bias correction). */
  step: number;
}

/**
 * One AdamW step in place, as torch.optim.AdamW (decoupled weight decay, bias correction):
 * p ← p·(1 − lr·wd); m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²; p ← p − lr/(1−β₁ᵗ)·m/(√v/√(1−β₂ᵗ) + ε).
 * Defaults are PyTorch's (lr 1e-3, betas 0.9/0.999, eps 1e-8, weight decay 0.01). State is f32.
 */
export function adamwStep(param: Tensor, grad: Tensor, expAvg: Tensor, expAvgSq: Tensor, opts: CudaAdamWOptions): void {
  const o = checkOptions(opts, ['lr', 'beta1', 'beta2', 'eps', 'weightDecay', 'step'], 'opts');
  for (const [t, n] of [[param, 'param'], [grad, 'grad'], [expAvg, 'expAvg'], [expAvgSq, 'expAvgSq']] as const) requireFloatTensor(t, n, 'cuda');
  sameShape(param, grad, 'param', 'grad');
  sameShape(param, expAvg, 'param', 'expAvg');
  sameShape(param, expAvgSq, 'param', 'expAvgSq');
  f32State(expAvg, 'expAvg');
  f32State(expAvgSq, 'expAvgSq');
  const h = {
    lr: checkFinite(o.lr ?? 1e-3, 'opts.lr'),
    beta1: checkFinite(o.beta1 ?? 0.9, 'opts.beta1'),
    beta2: checkFinite(o.beta2 ?? 0.999, 'opts.beta2'),
    eps: checkFinite(o.eps ?? 1e-8, 'opts.eps'),
    weightDecay: checkFinite(o.weightDecay ?? 0.01, 'opts.weightDecay'),
    step: checkInt(o.step, 'opts.step', 1),
  };
  if (h.beta1 < 0 || h.beta1 >= 1 || h.beta2 < 0 || h.beta2 >= 1) throw new LoraRangeError('opts.beta1/beta2: expected values in [0, 1)');
  runOp('adamwStep', param.handle, grad.handle, expAvg.handle, expAvgSq.handle, null, h.lr, h.beta1, h.beta2, h.eps, h.weightDecay, h.step);
}

export interface CudaSgdOptions {
  lr: number;
  momentum?: number;
  dampening?: number;
  weightDecay?: number;
  nesterov?: boolean;
  /** True on the first step: the momentum buffer starts as the gradient (PyTorch). */
  firstStep?: boolean;
}

/** One SGD step in place, as torch.optim.SGD; momentumBuffer (f32) is needed when momentum ≠ 0. */
export function sgdStep(param: Tensor, grad: Tensor, momentumBuffer: Tensor | null, opts: CudaSgdOptions): void {
  const o = checkOptions(opts, ['lr', 'momentum', 'dampening', 'weightDecay', 'nesterov', 'firstStep'], 'opts');
  requireFloatTensor(param, 'param', 'cuda');
  requireFloatTensor(grad, 'grad', 'cuda');
  sameShape(param, grad, 'param', 'grad');
  const h = {
    lr: checkFinite(o.lr, 'opts.lr'),
    momentum: checkFinite(o.momentum ?? 0, 'opts.momentum'),
    dampening: checkFinite(o.dampening ?? 0, 'opts.dampening'),
    weightDecay: checkFinite(o.weightDecay ?? 0, 'opts.weightDecay'),
    nesterov: o.nesterov === undefined ? false : checkBool(o.nesterov, 'opts.nesterov'),
    firstStep: o.firstStep === undefined ? false : checkBool(o.firstStep, 'opts.firstStep'),
  };
  if (h.momentum !== 0) {
    if (!momentumBuffer) throw new LoraRangeError('momentumBuffer: required when opts.momentum != 0');
    requireFloatTensor(momentumBuffer, 'momentumBuffer', 'cuda');
    sameShape(param, momentumBuffer, 'param', 'momentumBuffer');
    f32State(momentumBuffer, 'momentumBuffer');
  }
  const buf = h.momentum !== 0 ? momentumBuffer!.handle : null;
  runOp('sgdStep', param.handle, grad.handle, buf, null, h.lr, h.momentum, h.dampening, h.nesterov, h.weightDecay, h.firstStep);
}

export const cuda = { isAvailable, synchronize, createStream, withStream, timeMs, memoryStats, kernelStats, setGraphReplay, emptyCache, baseGemm, adamwStep, sgdStep };
