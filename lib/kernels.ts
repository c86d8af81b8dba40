/**
 * Typed access to the native kernels for callers that manage their own tensors. Each function
 * validates its arguments before the native call (which validates again). The *Async forms run the
 * same steps on a libuv thread and return Promises.
 */
import { mixedDtypes, requireCallDtype } from './backend';
import { Device } from './dtype';
import { DTypeError, LoraTypeError, ShapeError, shapeStr } from './errors';
import { KernelSteps, runAsync, runSync, step } from './exec';
import { LoadedAddonInfo, loadedAddon } from './load_addon';
import { BackendInfo, NativeTensorHandle, call } from './native';
import { Tensor, describe, requireFloatTensor } from './tensor';
import { checkBool, checkInt, checkOptions, checkScale } from './validate';

export interface KernelAdapter {
  loraA: Tensor;
  loraB: Tensor;
  scaling: number;
}

export interface LinearForwardOptions {
  bias?: Tensor | null;
  fanInFanOut?: boolean;
  adapters?: KernelAdapter[];
}

export interface MergeAdapterOptions {
  fanInFanOut?: boolean;
  out?: Tensor;
}

function linearDims(W: Tensor, fanInFanOut: boolean): { inF: number; outF: number } {
  if (W.shape.length !== 2) throw new ShapeError(`weight: expected 2 dimensions, got shape ${shapeStr(W.shape)}`);
  if (W.shape[0] < 1 || W.shape[1] < 1)
    throw new ShapeError(`weight: in_features and out_features must be at least 1, got shape ${shapeStr(W.shape)}`);
  return fanInFanOut ? { inF: W.shape[0], outF: W.shape[1] } : { inF: W.shape[1], outF: W.shape[0] };
}

function checkAdapter(a: unknown, where: string, inF: number, outF: number, device: Device): KernelAdapter {
  if (a === null || typeof a !== 'object') throw new LoraTypeError(`${where}: expected {loraA, loraB, scaling}, got ${describe(a)}`);
  const ad = a as KernelAdapter;
  requireFloatTensor(ad.loraA, `${where}.loraA`, device);
  requireFloatTensor(ad.loraB, `${where}.loraB`, device);
  checkScale(ad.scaling, `${where}.scaling`);
  const r = ad.loraA.shape[0];
  if (ad.loraA.shape.length !== 2 || ad.loraA.shape[1] !== inF || r < 1)
    throw new ShapeError(`${where}.loraA: expected shape [r, ${inF}] with r >= 1, got ${shapeStr(ad.loraA.shape)}`);
  if (ad.loraB.shape.length !== 2 || ad.loraB.shape[0] !== outF || ad.loraB.shape[1] !== r)
    throw new ShapeError(`${where}.loraB: expected shape [${outF}, ${r}], got ${shapeStr(ad.loraB.shape)}`);
  return ad;
}

/** The device of a call is the weight's; every tensor must be there (some backends also need one dtype). */
function weightDevice(weight: Tensor): Device {
  return weight instanceof Tensor ? weight.device : 'cpu';
}

function* forwardSteps(x: Tensor, weight: Tensor, opts: LinearForwardOptions): KernelSteps<Tensor> {
  const o = checkOptions(opts, ['bias', 'fanInFanOut', 'adapters'], 'opts') as LinearForwardOptions;
  requireFloatTensor(weight, 'weight', weightDevice(weight));
  const dev = weight.device;
  requireFloatTensor(x, 'x', dev);
  requireCallDtype(dev, x.dtype, weight.dtype, 'x');
  const fifo = o.fanInFanOut === undefined ? false : checkBool(o.fanInFanOut, 'opts.fanInFanOut');
  const { inF, outF } = linearDims(weight, fifo);
  if (x.shape.length === 0 || x.shape[x.shape.length - 1] !== inF)
    throw new ShapeError(`x: expected shape [..., ${inF}], got ${shapeStr(x.shape)}`);
  const bias = o.bias ?? null;
  if (bias !== null) {
    requireFloatTensor(bias, 'opts.bias', dev);
    if (bias.shape.length !== 1 || bias.shape[0] !== outF)
      throw new ShapeError(`opts.bias: expected shape [${outF}], got ${shapeStr(bias.shape)}`);
  }
  if (o.adapters !== undefined && !Array.isArray(o.adapters))
    throw new LoraTypeError(`opts.adapters: expected an array of {loraA, loraB, scaling}, got ${describe(o.adapters)}`);
  const adapters = (o.adapters ?? []).map((a, i) => checkAdapter(a, `opts.adapters[${i}]`, inF, outF, dev));
  const lead = x.shape.slice(0, -1);
  const y = Tensor.empty([...lead, outF], { dtype: x.dtype, device: dev });
  try {
    // Every shrink and the fused forward in one call (the backend keeps u in its scratch).
    yield step('loraForward', x.handle, weight.handle, bias ? bias.handle : null, fifo,
      adapters.map((a): [NativeTensorHandle, NativeTensorHandle, number, null] => [a.loraA.handle, a.loraB.handle, a.scaling, null]), y.handle);
  } catch (e) {
    y.dispose();
    throw e;
  }
  return y;
}

function* mergeSteps(weight: Tensor, adapter: KernelAdapter, opts: MergeAdapterOptions, sign: 1 | -1): KernelSteps<Tensor> {
  const o = checkOptions(opts, ['fanInFanOut', 'out'], 'opts') as MergeAdapterOptions;
  requireFloatTensor(weight, 'weight', weightDevice(weight));
  const dev = weight.device;
  const fifo = o.fanInFanOut === undefined ? false : checkBool(o.fanInFanOut, 'opts.fanInFanOut');
  const { inF, outF } = linearDims(weight, fifo);
  const a = checkAdapter(adapter, 'adapter', inF, outF, dev);
  const out = o.out ?? weight;
  requireFloatTensor(out, 'opts.out', dev);
  requireCallDtype(dev, out.dtype, weight.dtype, 'opts.out');
  if (a.loraA.dtype !== a.loraB.dtype && !mixedDtypes(dev))
    throw new DTypeError(`adapter: on ${dev}, loraA (${a.loraA.dtype}) and loraB (${a.loraB.dtype}) must share a dtype`);
  if (out.shape.join() !== weight.shape.join())
    throw new ShapeError(`opts.out: expected shape ${shapeStr(weight.shape)}, got ${shapeStr(out.shape)}`);
  yield step('mergeDelta', weight.handle, a.loraA.handle, a.loraB.handle, sign * a.scaling, fifo, out.handle);
  return out;
}

/** y = x·Wᵀ + b + Σ scaling·(x·Aᵀ)·Bᵀ in one pass (no dropout). */
export function loraLinearForward(x: Tensor, weight: Tensor, opts: LinearForwardOptions = {}): Tensor {
  return runSync(forwardSteps(x, weight, opts));
}

/** loraLinearForward on a libuv thread; the inputs are busy (no dispose, no writes) until it settles. */
export function loraLinearForwardAsync(x: Tensor, weight: Tensor, opts: LinearForwardOptions = {}): Promise<Tensor> {
  return runAsync(forwardSteps(x, weight, opts));
}

/** out = W + scaling·ΔW (ΔW = B·A in W's layout); out defaults to W itself (in-place merge). */
export function mergeAdapter(weight: Tensor, adapter: KernelAdapter, opts: MergeAdapterOptions = {}): Tensor {
  return runSync(mergeSteps(weight, adapter, opts, 1));
}

export function mergeAdapterAsync(weight: Tensor, adapter: KernelAdapter, opts: MergeAdapterOptions = {}): Promise<Tensor> {
  return runAsync(mergeSteps(weight, adapter, opts, 1));
}

/** W -= scaling·ΔW (in place, or into opts.out). */
export function unmergeAdapter(weight: Tensor, adapter: KernelAdapter, opts: MergeAdapterOptions = {}): Tensor {
  return runSync(mergeSteps(weight, adapter, opts, -1));
}

export function unmergeAdapterAsync(weight: Tensor, adapter: KernelAdapter, opts: MergeAdapterOptions = {}): Promise<Tensor> {
  return runAsync(mergeSteps(weight, adapter, opts, -1));
}

/** The native backends, the CPU path, and which addon binary was loaded (addonPath, loadedFrom). */
export function backendInfo(): BackendInfo & LoadedAddonInfo {
  const info = call((b) => b.backendInfo());
  return { ...info, ...(loadedAddon() as LoadedAddonInfo) };
}

/** How the CPU GEMM reads f32 weights, as `lorakit info` and the bench header say it ('' where it packs them). */
export function gemmWInPlaceLabel(g: BackendInfo['gemmBlocks']): string {
  if (!g.wInPlace) return '';
  return g.wInPlaceTimed ? '; f32 W read in place where faster (timed per call shape)' : '; f32 W read in place';
}

/** Sets the CPU thread-pool size (0 restores the default); returns the new size. */
export function setNumThreads(n: number): number {
  checkInt(n, 'n', 0, 256);
  return call((b) => b.setNumThreads(n));
}

export const kernels = {
  loraLinearForward,
  loraLinearForwardAsync,
  mergeAdapter,
  mergeAdapterAsync,
  unmergeAdapter,
  unmergeAdapterAsync,
  backendInfo,
  setNumThreads,
};
