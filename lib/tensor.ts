/**
 * Tensor: a contiguous, row-major array in native memory. JS holds a handle; data crosses the
 * boundary only by explicit copies (from, toFloat32Array, copyFrom), except for a tensor made by
 * wrap(), which uses a typed array's own memory. Memory is reported to V8 and freed by dispose()
 * or garbage collection.
 */
import { DEVICES, DTYPES, Device, DType, isFloatDType } from './dtype';
import { DTypeError, LoraTypeError, ShapeError, StateError, shapeStr } from './errors';
import { NativeTensorHandle, call } from './native';
import { checkOptions, checkShape, numelOf } from './validate';

export interface TensorOptions {
  dtype?: DType;
  device?: Device;
}

export type TensorData = Float32Array | Float64Array | number[] | Uint16Array | Int32Array | BigInt64Array;

/** The typed arrays Tensor.wrap takes: each is a dtype's own memory layout. */
export type WrappableData = Float32Array | Uint16Array | Int32Array | BigInt64Array;

const WRAP_DTYPE: Readonly<Record<string, DType | undefined>> = { Float32Array: 'f32', Int32Array: 'i32', BigInt64Array: 'i64', Uint16Array: undefined };

function checkDType(d: unknown, name: string): DType {
  if (!DTYPES.includes(d as DType)) throw new DTypeError(`${name}: expected one of ${DTYPES.join(', ')}, got ${String(d)}`);
  return d as DType;
}

function checkDevice(d: unknown, name: string): Device {
  if (!DEVICES.includes(d as Device)) throw new LoraTypeError(`${name}: expected 'cpu' or 'cuda', got ${String(d)}`);
  return d as Device;
}

/**
 * The typed-array kind ('Float32Array', ...) by its toStringTag: unlike instanceof, this works for
 * arrays made in another realm (vm contexts, jest, worker-transferred views).
 */
export function typedArrayKind(v: unknown): string | undefined {
  if (!ArrayBuffer.isView(v) || v instanceof DataView) return undefined;
  return (v as unknown as { [Symbol.toStringTag]: string })[Symbol.toStringTag];
}

function defaultDType(data: TensorData): DType | undefined {
  const kind = typedArrayKind(data);
  if (kind === 'Int32Array') return 'i32';
  if (kind === 'BigInt64Array') return 'i64';
  if (kind === 'Uint16Array') return undefined; // bit patterns: the caller must say f16 or bf16
  return 'f32';
}

export class Tensor {
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly device: Device;
  #handle: NativeTensorHandle | null;
  #wrapped = false;

  private constructor(handle: NativeTensorHandle, shape: number[], dtype: DType, device: Device) {
    // Only the factories construct Tensors; from JS, `new Tensor()` gets a typed error, not a broken object.
    if (!handle || typeof handle.read !== 'function' || !Array.isArray(shape))
      throw new LoraTypeError('Tensor: create tensors with Tensor.zeros() or Tensor.from()');
    this.#handle = handle;
    this.shape = Object.freeze(shape);
    this.dtype = dtype;
    this.device = device;
  }

  /** A zero-filled tensor. */
  static zeros(shape: readonly number[], opts?: TensorOptions): Tensor {
    const o = checkOptions(opts, ['dtype', 'device'], 'opts');
    const s = checkShape(shape, 'shape');
    const dtype = checkDType(o.dtype ?? 'f32', 'opts.dtype');
    const device = checkDevice(o.device ?? 'cpu', 'opts.device');
    const h = call((b) => new b.NativeTensor(dtype, s, device));
    return new Tensor(h, s, dtype, device);
  }

  /**
   * @internal A tensor whose values are unspecified (zeros on the cpu, uninitialised on cuda):
   * for outputs that a kernel overwrites entirely, which saves a memset pass on the GPU.
   */
  static empty(shape: readonly number[], opts?: TensorOptions): Tensor {
    const o = checkOptions(opts, ['dtype', 'device'], 'opts');
    const s = checkShape(shape, 'shape');
    const dtype = checkDType(o.dtype ?? 'f32', 'opts.dtype');
    const device = checkDevice(o.device ?? 'cpu', 'opts.device');
    const h = call((b) => new b.NativeTensor(dtype, s, device, false));
    return new Tensor(h, s, dtype, device);
  }

  /**
   * A tensor holding a copy of `data` (Tensor.wrap shares the array instead). Float32Array, Float64Array and number[] fill float tensors
   * (f32 by default; f16/bf16 round once); Uint16Array holds f16/bf16 bit patterns (give the
   * dtype); Int32Array and BigInt64Array fill i32/i64 index tensors.
   */
  static from(data: TensorData, shape: readonly number[], opts?: TensorOptions): Tensor {
    const o = checkOptions(opts, ['dtype', 'device'], 'opts');
    const s = checkShape(shape, 'shape');
    if (Array.isArray(data)) {
      data.forEach((v, i) => {
        if (typeof v !== 'number') throw new LoraTypeError(`data[${i}]: expected a number, got ${typeof v}`);
      });
      data = Float64Array.from(data);
    }
    if (typedArrayKind(data) === undefined)
      throw new LoraTypeError('data: expected Float32Array, Float64Array, number[], Uint16Array, Int32Array or BigInt64Array');
    const dtype = o.dtype !== undefined ? checkDType(o.dtype, 'opts.dtype') : defaultDType(data);
    if (dtype === undefined)
      throw new DTypeError("data: a Uint16Array holds f16 or bf16 bit patterns; pass opts.dtype 'f16' or 'bf16'");
    checkDataMatches(data, dtype, 'data');
    const n = numelOf(s);
    if (data.length !== n)
      throw new ShapeError(`data: has ${data.length} elements but shape ${shapeStr(s)} needs ${n}${resizedHint(data)}`);
    const t = Tensor.empty(s, { dtype, device: checkDevice(o.device ?? 'cpu', 'opts.device') });
    call(() => t.handle.write(data as Exclude<TensorData, number[]>));
    return t;
  }

  /**
   * A cpu tensor over `data` itself, without a copy: kernels read and write the array, so
   * merge() and unmerge() change the weights another library holds, in place. The tensor keeps
   * the array alive. Float32Array is f32; Uint16Array holds f16/bf16 bit patterns (give
   * opts.dtype); Int32Array is i32, BigInt64Array i64. If the array's buffer is detached or shrunk
   * later, every use of the tensor throws StateError (never touching freed memory). The async
   * forms refuse a tensor wrapping an ArrayBuffer, which JS could detach while the work runs; one
   * on a SharedArrayBuffer (never detached, never shrunk) works with them too.
   */
  static wrap(data: WrappableData, shape: readonly number[], opts?: { dtype?: DType }): Tensor {
    const o = checkOptions(opts, ['dtype'], 'opts');
    const s = checkShape(shape, 'shape');
    const kind = typedArrayKind(data);
    if (kind === undefined || !Object.hasOwn(WRAP_DTYPE, kind))
      throw new LoraTypeError(`data: Tensor.wrap takes a Float32Array, Uint16Array (f16/bf16 bits), Int32Array or BigInt64Array, got ${describe(data)}${kind === 'Float64Array' ? ' (use Tensor.from, which converts and copies)' : ''}`);
    const own = WRAP_DTYPE[kind];
    const dtype = o.dtype !== undefined ? checkDType(o.dtype, 'opts.dtype') : own;
    if (dtype === undefined)
      throw new DTypeError("data: a Uint16Array holds f16 or bf16 bit patterns; pass opts.dtype 'f16' or 'bf16'");
    const fits = kind === 'Uint16Array' ? dtype === 'f16' || dtype === 'bf16' : dtype === own;
    if (!fits) throw new DTypeError(`opts.dtype: a ${kind} holds ${own ?? 'f16 or bf16'} values, not ${dtype} (wrap never converts; Tensor.from does)`);
    checkViewUsable(data, 'data');
    const n = numelOf(s);
    if (data.length !== n)
      throw new ShapeError(`data: has ${data.length} elements but shape ${shapeStr(s)} needs ${n}${resizedHint(data)}`);
    const h = call((b) => new b.NativeTensor(data, dtype, s));
    const t = new Tensor(h, s, dtype, 'cpu');
    t.#wrapped = true;
    return t;
  }

  /** True for a tensor made by Tensor.wrap (its memory is a typed array's). */
  get wrapped(): boolean {
    return this.#wrapped;
  }

  /** @internal A Tensor around a handle that a kernel created (an exact merge's record, i32 [words]). */
  static adopt(handle: NativeTensorHandle, shape: readonly number[], dtype: DType, device: Device): Tensor {
    return new Tensor(handle, [...shape], dtype, device);
  }

  get numel(): number {
    return numelOf(this.shape);
  }

  get disposed(): boolean {
    return this.#handle === null;
  }

  /** True for real Tensors only (not objects that merely inherit Tensor.prototype). */
  static isTensor(v: unknown): v is Tensor {
    return typeof v === 'object' && v !== null && #handle in v;
  }

  /**
   * @internal How many native writes the tensor's memory has seen (copyFrom, kernels writing it,
   * optimizer steps); -1 for a wrapped array, whose memory JS may change without a call. Caches
   * derived from a tensor (the DoRA weight norm) compare it to tell when it changed.
   */
  get version(): number {
    return this.handle.version();
  }

  /** @internal The native handle; throws if the tensor was disposed. */
  get handle(): NativeTensorHandle {
    if (!this.#handle) throw new StateError(`tensor ${shapeStr(this.shape)} ${this.dtype}: used after dispose()`);
    return this.#handle;
  }

  /** A copy of the values as f32 (float tensors only). */
  toFloat32Array(): Float32Array {
    this.requireFloat('toFloat32Array');
    return call(() => this.handle.read('f32'));
  }

  /** A copy of the raw bit patterns of an f16/bf16 tensor. */
  toUint16Array(): Uint16Array {
    if (this.dtype !== 'f16' && this.dtype !== 'bf16')
      throw new DTypeError(`toUint16Array: needs an f16 or bf16 tensor, this one is ${this.dtype}`);
    return call(() => this.handle.read('bits'));
  }

  toInt32Array(): Int32Array {
    if (this.dtype !== 'i32') throw new DTypeError(`toInt32Array: needs an i32 tensor, this one is ${this.dtype}`);
    return call(() => this.handle.read('i32'));
  }

  toBigInt64Array(): BigInt64Array {
    if (this.dtype !== 'i64') throw new DTypeError(`toBigInt64Array: needs an i64 tensor, this one is ${this.dtype}`);
    return call(() => this.handle.read('i64'));
  }

  /** Overwrites the values in place from a typed array or tensor with the same number of elements. */
  copyFrom(src: Float32Array | Float64Array | Uint16Array | Int32Array | BigInt64Array | Tensor): this {
    if (Tensor.isTensor(src)) {
      if (src.disposed) throw new StateError('src: the tensor was disposed');
      if (src.numel !== this.numel)
        throw new ShapeError(`src: has ${src.numel} elements (shape ${shapeStr(src.shape)}) but this tensor has ${this.numel} (shape ${shapeStr(this.shape)})`);
      if (isFloatDType(src.dtype) !== isFloatDType(this.dtype) || (!isFloatDType(src.dtype) && src.dtype !== this.dtype))
        throw new DTypeError(`src: cannot copy a ${src.dtype} tensor into a ${this.dtype} tensor`);
      call((b) => b.convert(src.handle, this.handle));
      return this;
    }
    if (typedArrayKind(src) === undefined) throw new LoraTypeError(`src: expected a typed array or a Tensor, got ${describe(src)}`);
    checkDataMatches(src, this.dtype, 'src');
    if (src.length !== this.numel)
      throw new ShapeError(`src: has ${src.length} elements but this tensor has shape ${shapeStr(this.shape)} (${this.numel})${resizedHint(src)}`);
    call(() => this.handle.write(src));
    return this;
  }

  /** A converted copy (new dtype and/or device). */
  to(opts: TensorOptions): Tensor {
    const o = checkOptions(opts, ['dtype', 'device'], 'opts');
    const dtype = o.dtype !== undefined ? checkDType(o.dtype, 'opts.dtype') : this.dtype;
    const device = o.device !== undefined ? checkDevice(o.device, 'opts.device') : this.device;
    const out = Tensor.empty(this.shape, { dtype, device });
    try {
      out.copyFrom(this);
    } catch (e) {
      out.dispose();
      throw e;
    }
    return out;
  }

  clone(): Tensor {
    return this.to({});
  }

  /** Frees the native memory now. Further use throws StateError; a second dispose is a no-op. */
  dispose(): void {
    if (!this.#handle) return;
    call(() => this.#handle!.dispose());
    this.#handle = null;
  }

  toString(): string {
    return `Tensor(${shapeStr(this.shape)}, ${this.dtype}, ${this.device}${this.disposed ? ', disposed' : ''})`;
  }

  private requireFloat(op: string): void {
    if (!isFloatDType(this.dtype)) throw new DTypeError(`${op}: needs a float tensor, this one is ${this.dtype}`);
  }
}

function checkDataMatches(data: ArrayBufferView, dtype: DType, name: string): void {
  const kind = typedArrayKind(data);
  const ok =
    (isFloatDType(dtype) && (kind === 'Float32Array' || kind === 'Float64Array')) ||
    ((dtype === 'f16' || dtype === 'bf16') && kind === 'Uint16Array') ||
    (dtype === 'i32' && kind === 'Int32Array') ||
    (dtype === 'i64' && (kind === 'BigInt64Array' || kind === 'Int32Array'));
  if (!ok) throw new LoraTypeError(`${name}: a ${kind ?? 'DataView'} cannot fill a ${dtype} tensor`);
  checkViewUsable(data, name);
}

/** Detached buffers read as empty; say so instead of reporting a confusing length mismatch. */
function checkViewUsable(data: ArrayBufferView, name: string): void {
  const buf = data.buffer;
  if (data.byteLength === 0 && Object.prototype.toString.call(buf) === '[object ArrayBuffer]') {
    try {
      new Uint8Array(buf, 0, 0);
    } catch {
      throw new LoraTypeError(`${name}: the ArrayBuffer is detached (transferred or released)`);
    }
  }
}

/** Appended to length errors: a view of a shrunk resizable buffer reads as shorter or empty. */
function resizedHint(data: ArrayBufferView): string {
  const buf = data.buffer as ArrayBufferLike & { resizable?: boolean; growable?: boolean };
  return buf.resizable || buf.growable ? ` (its buffer is resizable and now holds ${buf.byteLength} bytes)` : '';
}

/** Throws unless t is a live float tensor on the given device; returns it. */
export function requireFloatTensor(t: unknown, name: string, device: Device = 'cpu'): Tensor {
  if (isQuantized(t)) {
    const hint = name.endsWith('weight') ? ' (LoraLinear takes a QuantizedTensor as its weight; this layer does not)' : '';
    throw new DTypeError(`${name}: expected a float Tensor, got a QuantizedTensor (${(t as { format: string }).format}): call .dequantize() for a float copy${hint}`);
  }
  if (!Tensor.isTensor(t)) throw new LoraTypeError(`${name}: expected a Tensor, got ${describe(t)}`);
  if (t.disposed) throw new StateError(`${name}: the tensor was disposed`);
  if (!isFloatDType(t.dtype)) throw new DTypeError(`${name}: expected a float tensor (f32, f16, bf16), got ${t.dtype}`);
  if (t.device !== device) throw new LoraTypeError(`${name}: expected a ${device} tensor, got ${t.device}`);
  return t;
}

/** The brand of QuantizedTensors: quantized_tensor.ts imports this module, so tensor.ts knows them by it. */
export const QUANTIZED_BRAND = Symbol.for('lorakit.QuantizedTensor');

/** A QuantizedTensor (any realm). */
export function isQuantized(v: unknown): boolean {
  return typeof v === 'object' && v !== null && (v as Record<symbol, unknown>)[QUANTIZED_BRAND] === true;
}

export function describe(v: unknown): string {
  if (isQuantized(v)) return `a QuantizedTensor (${(v as { format: string }).format})`;
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (ArrayBuffer.isView(v)) return `a ${v.constructor.name}`;
  return typeof v === 'object' ? `an object (${(v as object).constructor?.name ?? 'Object'})` : typeof v;
}
