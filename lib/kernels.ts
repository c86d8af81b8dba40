/**
 * Typed access to the native kernels for callers that manage their own tensors. Each function
 * validates its arguments before the native call (which validates again).
 */
import { Device } from './dtype';
import { DTypeError, ShapeError, shapeStr } from './errors';
import { BackendInfo, call } from './native';
import { Tensor, requireFloatTensor } from './tensor';
import { checkFinite, checkInt } from './validate';

export interface KernelAdapter {
  loraA: Tensor;
  loraB: Tensor;
  scaling: number;
}

function linearDims(W: Tensor, fanInFanOut: boolean): { inF: number; outF: number } {
  if (W.shape.length !== 2) throw new ShapeError(`weight: expected 2 dimensions, got shape ${shapeStr(W.shape)}`);
  return fanInFanOut ? { inF: W.shape[0], outF: W.shape[1] } : { inF: W.shape[1], outF: W.shape[0] };
}

function checkAdapter(a: KernelAdapter, i: number, inF: number, outF: number, device: Device): void {
  requireFloatTensor(a.loraA, `adapters[${i}].loraA`, device);
  requireFloatTensor(a.loraB, `adapters[${i}].loraB`, device);
  checkFinite(a.scaling, `adapters[${i}].scaling`);
  const r = a.loraA.shape[0];
  if (a.loraA.shape.length !== 2 || a.loraA.shape[1] !== inF)
    throw new ShapeError(`adapters[${i}].loraA: expected shape [r, ${inF}], got ${shapeStr(a.loraA.shape)}`);
  if (a.loraB.shape.length !== 2 || a.loraB.shape[0] !== outF || a.loraB.shape[1] !== r)
    throw new ShapeError(`adapters[${i}].loraB: expected shape [${outF}, ${r}], got ${shapeStr(a.loraB.shape)}`);
}

/** y = x·Wᵀ + b + Σ scaling·(x·Aᵀ)·Bᵀ in one pass (no dropout). */
export function loraLinearForward(
  x: Tensor,
  weight: Tensor,
  opts: { bias?: Tensor | null; fanInFanOut?: boolean; adapters?: KernelAdapter[] } = {},
): Tensor {
  requireFloatTensor(weight, 'weight', weight instanceof Tensor ? weight.device : 'cpu');
  const dev = weight.device;
  requireFloatTensor(x, 'x', dev);
  if (dev === 'cuda' && x.dtype !== weight.dtype)
    throw new DTypeError(`x: on cuda, expected the weight's dtype ${weight.dtype}, got ${x.dtype}`);
  const fifo = opts.fanInFanOut ?? false;
  const { inF, outF } = linearDims(weight, fifo);
  if (x.shape.length === 0 || x.shape[x.shape.length - 1] !== inF)
    throw new ShapeError(`x: expected shape [..., ${inF}], got ${shapeStr(x.shape)}`);
  const adapters = opts.adapters ?? [];
  adapters.forEach((a, i) => checkAdapter(a, i, inF, outF, dev));
  if (opts.bias) requireFloatTensor(opts.bias, 'opts.bias', dev);
  const lead = x.shape.slice(0, -1);
  const uType = dev === 'cuda' ? x.dtype : 'f32';
  const us = adapters.map((a) => Tensor.empty([...lead, a.loraA.shape[0]], { dtype: uType, device: dev }));
  const y = Tensor.empty([...lead, outF], { dtype: x.dtype, device: dev });
  try {
    adapters.forEach((a, i) => call((b) => b.shrink(x.handle, a.loraA.handle, us[i].handle)));
    call((b) =>
      b.linearForward(x.handle, weight.handle, opts.bias ? opts.bias.handle : null, fifo,
        adapters.map((a, i) => [us[i].handle, a.loraB.handle, a.scaling]), y.handle),
    );
  } catch (e) {
    y.dispose();
    throw e;
  } finally {
    us.forEach((u) => u.dispose());
  }
  return y;
}

/** out = W + scaling·ΔW (ΔW = B·A in W's layout); out defaults to W itself (in-place merge). */
export function mergeAdapter(weight: Tensor, adapter: KernelAdapter, opts: { fanInFanOut?: boolean; out?: Tensor } = {}): Tensor {
  requireFloatTensor(weight, 'weight', weight instanceof Tensor ? weight.device : 'cpu');
  const fifo = opts.fanInFanOut ?? false;
  const { inF, outF } = linearDims(weight, fifo);
  checkAdapter(adapter, 0, inF, outF, weight.device);
  const out = opts.out ?? weight;
  requireFloatTensor(out, 'opts.out', weight.device);
  if (weight.device === 'cuda' && out.dtype !== weight.dtype)
    throw new DTypeError(`opts.out: on cuda, expected the weight's dtype ${weight.dtype}, got ${out.dtype}`);
  if (weight.device === 'cuda' && adapter.loraA.dtype !== adapter.loraB.dtype)
    throw new DTypeError(`adapter: on cuda, loraA (${adapter.loraA.dtype}) and loraB (${adapter.loraB.dtype}) must share a dtype`);
  if (out.shape.join() !== weight.shape.join())
    throw new ShapeError(`opts.out: expected shape ${shapeStr(weight.shape)}, got ${shapeStr(out.shape)}`);
  call((b) => b.mergeDelta(weight.handle, adapter.loraA.handle, adapter.loraB.handle, adapter.scaling, fifo, out.handle));
  return out;
}

/** W -= scaling·ΔW in place. */
export function unmergeAdapter(weight: Tensor, adapter: KernelAdapter, opts: { fanInFanOut?: boolean } = {}): Tensor {
  return mergeAdapter(weight, { ...adapter, scaling: -checkFinite(adapter.scaling, 'adapter.scaling') }, opts);
}

export function backendInfo(): BackendInfo {
  return call((b) => b.backendInfo());
}

/** Sets the CPU thread-pool size (0 restores the default); returns the new size. */
export function setNumThreads(n: number): number {
  checkInt(n, 'n', 0, 256);
  return call((b) => b.setNumThreads(n));
}

export const kernels = { loraLinearForward, mergeAdapter, unmergeAdapter, backendInfo, setNumThreads };
