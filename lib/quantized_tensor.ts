/**
 * QuantizedTensor: a 2-D weight W [rows = out, cols = in] stored in a quantized format, blocks
 * running along each row (native/core/quant_formats.h has the layouts). The bytes live in one i32
 * Tensor of nbytes/4 words on the weight's device; dequantize() gives a float copy.
 *
 * Formats and where their definitions come from:
 *   int8        LLM.int8's weight storage (bitsandbytes int8_vectorwise_quant): per row s = absmax/127,
 *               q = round-half-away(x·127/absmax), x ≈ q·s.
 *   nf4, fp4    bitsandbytes' 4-bit formats (quantize_4bit; kNF4/kFP4 code books): blocks of 64 (or
 *               blockSize) with one f32 absmax, two codes per byte, the first in the high nibble;
 *               doubleQuant as bnb_4bit_use_double_quant (absmax − mean in 8 bits, blocks of 256).
 *   q8_0, q4_0, q4_k, q6_k
 *               ggml's block formats (ggml-common.h, quantize_row_*_ref): a GGUF tensor's bytes.
 */
import { DEVICES, Device, FloatDType, isFloatDType } from './dtype';
import { DTypeError, LoraRangeError, LoraTypeError, ShapeError, StateError, shapeStr } from './errors';
import { KernelSteps, runAsync, runSync, step } from './exec';
import { QuantFormatName, QuantLayoutInfo, QuantSpecArg, call } from './native';
import { QUANTIZED_BRAND, Tensor, describe, isQuantized, typedArrayKind } from './tensor';
import { checkBool, checkInt, checkOptions } from './validate';

export type { QuantFormatName } from './native';

/** The formats, in the order of native/core/quant_formats.h. */
export const QUANT_FORMATS: readonly QuantFormatName[] = ['int8', 'nf4', 'fp4', 'q8_0', 'q4_0', 'q4_k', 'q6_k'];

/** ggml formats have a fixed block (values per block). */
const GGML_BLOCK: Readonly<Record<string, number>> = { q8_0: 32, q4_0: 32, q4_k: 256, q6_k: 256 };

export interface QuantizeOptions {
  /** Values per block along a row: nf4/fp4 a power of two from 32 to 4096 (default 64); fixed by the format otherwise. */
  blockSize?: number;
  /** nf4/fp4 only: quantize the absmax values too (bnb_4bit_use_double_quant). */
  doubleQuant?: boolean;
}

export interface FromBytesOptions extends QuantizeOptions {
  device?: Device;
}


export function checkQuantFormat(v: unknown, name: string): QuantFormatName {
  if (typeof v !== 'string' || !QUANT_FORMATS.includes(v as QuantFormatName))
    throw new LoraTypeError(`${name}: unknown quantized format ${typeof v === 'string' ? `'${v}'` : describe(v)} (valid: ${QUANT_FORMATS.join(', ')})`);
  return v as QuantFormatName;
}

/** The spec of a [rows, cols] weight in `format`, checked here so that errors name the caller's arguments. */
export function quantSpec(format: QuantFormatName, rows: number, cols: number, opts: QuantizeOptions, what: string): QuantSpecArg {
  const o = checkOptions(opts, ['blockSize', 'doubleQuant'], 'opts');
  const doubleQuant = o.doubleQuant === undefined ? false : checkBool(o.doubleQuant, 'opts.doubleQuant');
  const is4bit = format === 'nf4' || format === 'fp4';
  if (doubleQuant && !is4bit) throw new LoraTypeError(`opts.doubleQuant: double quantisation is for nf4 and fp4 only, not ${format}`);
  const fixed = format === 'int8' ? cols : GGML_BLOCK[format];
  let blockSize = fixed ?? 64;
  if (o.blockSize !== undefined) {
    blockSize = checkInt(o.blockSize, 'opts.blockSize', 1);
    if (fixed !== undefined && blockSize !== fixed)
      throw new LoraRangeError(`opts.blockSize: ${format} ${format === 'int8' ? 'has one scale per row (block = cols = ' + cols + ')' : `blocks hold ${fixed} values`}, got ${blockSize}`);
    if (is4bit && (blockSize < 32 || blockSize > 4096 || (blockSize & (blockSize - 1)) !== 0))
      throw new LoraRangeError(`opts.blockSize: ${format} needs a power of two from 32 to 4096, got ${blockSize}`);
  }
  if (cols % blockSize !== 0) {
    const padded = Math.ceil(cols / blockSize) * blockSize;
    throw new ShapeError(
      `${what}: the input dimension ${cols} (shape ${shapeStr([rows, cols])}) is not a multiple of ${format}'s block size ${blockSize}; ` +
        `pad the columns with zeros to ${padded}${is4bit ? ' or pick a blockSize that divides it' : ''}`,
    );
  }
  return { format, rows, cols, blockSize, doubleQuant };
}

/** True for a QuantizedTensor (any realm); tensor.ts uses it to say what to call instead. */
export function isQuantizedTensor(v: unknown): v is QuantizedTensor {
  return isQuantized(v);
}

export class QuantizedTensor {
  readonly format: QuantFormatName;
  readonly shape: readonly [number, number];
  readonly blockSize: number;
  readonly doubleQuant: boolean;
  /** Bytes held, every scale and padding included (a multiple of 16). */
  readonly nbytes: number;
  readonly device: Device;
  readonly #spec: QuantSpecArg;
  readonly #layout: QuantLayoutInfo;
  #storage: Tensor | null;

  private constructor(storage: Tensor, spec: QuantSpecArg, layout: QuantLayoutInfo) {
    if (!Tensor.isTensor(storage)) throw new LoraTypeError('QuantizedTensor: create one with Tensor.quantize() or QuantizedTensor.fromBytes()');
    this.#storage = storage;
    this.#spec = Object.freeze({ ...spec });
    this.#layout = layout;
    this.format = spec.format;
    this.shape = Object.freeze([spec.rows, spec.cols]) as readonly [number, number];
    this.blockSize = spec.blockSize;
    this.doubleQuant = spec.doubleQuant;
    this.nbytes = layout.nbytes;
    this.device = storage.device;
    Object.defineProperty(this, QUANTIZED_BRAND, { value: true });
  }

  /** w (a float [rows, cols] tensor) quantized in `format`, on w's device. */
  static quantize(w: Tensor, format: QuantFormatName, opts: QuantizeOptions = {}): QuantizedTensor {
    return runSync(quantizeSteps(w, format, opts));
  }

  /** quantize() with the work on a libuv thread; w is busy until it settles. */
  static quantizeAsync(w: Tensor, format: QuantFormatName, opts: QuantizeOptions = {}): Promise<QuantizedTensor> {
    return runAsync(quantizeSteps(w, format, opts));
  }

  /**
   * A QuantizedTensor over a copy of `bytes` in the layout of `format` (bytes() gives them; a ggml
   * format also takes a GGUF tensor's data as it is, which may lack the final 16-byte padding; its
   * shape is [rows, cols] = GGUF's [ne1, ne0]).
   */
  static fromBytes(format: QuantFormatName, shape: readonly number[], bytes: Uint8Array, opts: FromBytesOptions = {}): QuantizedTensor {
    const f = checkQuantFormat(format, 'format');
    const [rows, cols] = checkShape2(shape, 'shape');
    const o = checkOptions(opts, ['blockSize', 'doubleQuant', 'device'], 'opts');
    const device = o.device ?? 'cpu';
    if (!DEVICES.includes(device as Device)) throw new LoraTypeError(`opts.device: expected 'cpu' or 'cuda', got ${String(device)}`);
    if (typedArrayKind(bytes) !== 'Uint8Array') throw new LoraTypeError(`bytes: expected a Uint8Array, got ${describe(bytes)}`);
    const spec = quantSpec(f, rows, cols, { blockSize: o.blockSize as number | undefined, doubleQuant: o.doubleQuant as boolean | undefined }, 'shape');
    const layout = quantLayout(spec);
    const dataOnly = f in GGML_BLOCK && bytes.length === layout.dataBytes;
    if (bytes.length !== layout.nbytes && !dataOnly)
      throw new ShapeError(
        `bytes: ${f} ${shapeStr([rows, cols])}${spec.doubleQuant ? ' with doubleQuant' : ''} takes ${layout.nbytes} bytes` +
          `${f in GGML_BLOCK ? ` (or its ${layout.dataBytes} data bytes)` : ''}, got ${bytes.length}`,
      );
    const words = new Uint8Array(layout.nbytes);
    words.set(bytes);
    const storage = Tensor.from(new Int32Array(words.buffer), [layout.nbytes / 4], { dtype: 'i32', device: device as Device });
    return new QuantizedTensor(storage, spec, layout);
  }

  /** True for real QuantizedTensors. */
  static isQuantizedTensor(v: unknown): v is QuantizedTensor {
    return isQuantizedTensor(v);
  }

  /** Bytes per weight, scales included (nf4 with blocks of 64: 0.5625). */
  get bytesPerWeight(): number {
    return this.nbytes / (this.shape[0] * this.shape[1]);
  }

  get numel(): number {
    return this.shape[0] * this.shape[1];
  }

  get disposed(): boolean {
    return this.#storage === null;
  }

  /** @internal The spec the native ops take. */
  get spec(): QuantSpecArg {
    return this.#spec;
  }

  /** @internal The i32 tensor holding the bytes; throws once disposed. */
  get storage(): Tensor {
    if (!this.#storage) throw new StateError(`${this.describe()}: used after dispose()`);
    return this.#storage;
  }

  /** A float [rows, cols] copy of the values the bytes stand for (f32 by default). */
  dequantize(opts: { dtype?: FloatDType } = {}): Tensor {
    return runSync(this.dequantizeSteps(opts));
  }

  /** dequantize() with the work on a libuv thread. */
  dequantizeAsync(opts: { dtype?: FloatDType } = {}): Promise<Tensor> {
    return runAsync(this.dequantizeSteps(opts));
  }

  /** @internal The body of dequantize(), for layers that run it among other steps. */
  *dequantizeSteps(opts: { dtype?: FloatDType } = {}): KernelSteps<Tensor> {
    const o = checkOptions(opts, ['dtype'], 'opts');
    const dtype = o.dtype ?? 'f32';
    if (!isFloatDType(dtype as FloatDType)) throw new DTypeError(`opts.dtype: expected f32, f16 or bf16, got ${String(dtype)}`);
    const out = Tensor.empty(this.shape, { dtype: dtype as FloatDType, device: this.device });
    try {
      yield step('dequantize', this.storage.handle, this.#spec, out.handle);
    } catch (e) {
      out.dispose();
      throw e;
    }
    return out;
  }

  /** The dequantised values as f32. */
  toFloat32Array(): Float32Array {
    const t = this.dequantize();
    try {
      return t.toFloat32Array();
    } finally {
      t.dispose();
    }
  }

  /** A copy of the bytes (the layout of native/core/quant_formats.h), e.g. for saving; fromBytes reads them back. */
  bytes(): Uint8Array {
    const words = this.storage.toInt32Array();
    return new Uint8Array(words.buffer, words.byteOffset, words.byteLength);
  }

  /** A copy on another device (same bytes). */
  to(target: Device | { device?: Device }): QuantizedTensor {
    const device = typeof target === 'string' ? target : (checkOptions(target, ['device'], 'opts').device as Device | undefined) ?? this.device;
    if (!DEVICES.includes(device)) throw new LoraTypeError(`device: expected 'cpu' or 'cuda', got ${String(device)}`);
    return new QuantizedTensor(this.storage.to({ device }), this.#spec, this.#layout);
  }

  clone(): QuantizedTensor {
    return this.to(this.device);
  }

  /** Frees the bytes now; further use throws StateError, a second dispose is a no-op. */
  dispose(): void {
    this.#storage?.dispose();
    this.#storage = null;
  }

  toString(): string {
    return `QuantizedTensor(${this.describe()}, ${this.bytesPerWeight.toFixed(4)} B/weight, ${this.device}${this.disposed ? ', disposed' : ''})`;
  }

  private describe(): string {
    const block = this.format === 'int8' ? 'per row' : `block ${this.blockSize}`;
    return `${this.format} ${shapeStr(this.shape)}, ${block}${this.doubleQuant ? ', double quant' : ''}`;
  }

  /** @internal Wraps freshly quantized storage. */
  static adoptStorage(storage: Tensor, spec: QuantSpecArg): QuantizedTensor {
    return new QuantizedTensor(storage, spec, quantLayout(spec));
  }
}

/** The byte layout of a checked spec (native quant_layout: one definition for every backend). */
export function quantLayout(spec: QuantSpecArg): QuantLayoutInfo {
  return call((b) => b.quantLayout(spec));
}

function checkShape2(shape: unknown, name: string): [number, number] {
  if (!Array.isArray(shape) || shape.length !== 2 || !shape.every((d) => Number.isSafeInteger(d) && d >= 1))
    throw new ShapeError(`${name}: a quantized weight is 2-D [out, in] with positive sizes, got ${Array.isArray(shape) ? shapeStr(shape) : describe(shape)}`);
  return [shape[0], shape[1]];
}

function* quantizeSteps(w: Tensor, format: QuantFormatName, opts: QuantizeOptions): KernelSteps<QuantizedTensor> {
  if (isQuantizedTensor(w)) throw new DTypeError(`w: already a QuantizedTensor (${w.format}); call .dequantize() first to re-quantize it`);
  if (!Tensor.isTensor(w)) throw new LoraTypeError(`w: expected a Tensor, got ${describe(w)}`);
  if (w.disposed) throw new StateError('w: the tensor was disposed');
  if (!isFloatDType(w.dtype)) throw new DTypeError(`w: quantize takes a float tensor (f32, f16, bf16), got ${w.dtype}`);
  if (w.shape.length !== 2) throw new ShapeError(`w: quantize takes a 2-D weight [out, in], got shape ${shapeStr(w.shape)}`);
  const f = checkQuantFormat(format, 'format');
  const spec = quantSpec(f, w.shape[0], w.shape[1], opts, 'w');
  const layout = quantLayout(spec);
  // zeros, not empty: the padding between sections must read the same on every device.
  const storage = Tensor.zeros([layout.nbytes / 4], { dtype: 'i32', device: w.device });
  try {
    yield step('quantize', w.handle, spec, storage.handle);
  } catch (e) {
    storage.dispose();
    throw e;
  }
  return QuantizedTensor.adoptStorage(storage, spec);
}

/** Tensor.quantize (attached below; tensor.ts does not import this module, which keeps the import graph acyclic). */
export function quantize(w: Tensor, format: QuantFormatName, opts: QuantizeOptions = {}): QuantizedTensor {
  return QuantizedTensor.quantize(w, format, opts);
}

declare module './tensor' {
  // eslint-disable-next-line @typescript-eslint/no-namespace
  namespace Tensor {
    /** w (a float [rows, cols] tensor) quantized in `format` on w's device (QuantizedTensor.quantize). */
    let quantize: (w: Tensor, format: QuantFormatName, opts?: QuantizeOptions) => QuantizedTensor;
  }
}
(Tensor as unknown as { quantize: typeof quantize }).quantize = quantize;
