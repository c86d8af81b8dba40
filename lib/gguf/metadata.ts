/**
 * GGUF metadata values: the 13 value types of the v3 format (ggml's docs/gguf.md), a typed JS form
 * for them, helpers to build entries, and their little-endian encoding. Numeric arrays are held as
 * typed arrays (a 150k-entry score list is one Float32Array, not 150k numbers); 64-bit integers are
 * bigints so they round-trip exactly.
 */
import { LoraRangeError, LoraTypeError } from '../errors';
import { typedArrayKind } from '../tensor';

export const VALUE_TYPES = ['u8', 'i8', 'u16', 'i16', 'u32', 'i32', 'f32', 'bool', 'string', 'array', 'u64', 'i64', 'f64'] as const;
export type GgufValueType = (typeof VALUE_TYPES)[number];

export type GgufNumberArray =
  | Uint8Array | Int8Array | Uint16Array | Int16Array | Uint32Array | Int32Array | Float32Array | Float64Array | BigUint64Array | BigInt64Array;

export interface GgufArray {
  readonly itemType: GgufValueType;
  readonly items: GgufNumberArray | boolean[] | string[] | GgufArray[];
}

export type GgufValue = number | bigint | boolean | string | GgufArray;

export interface GgufKV {
  readonly type: GgufValueType;
  readonly value: GgufValue;
}

/** Element sizes of the fixed-size types; the smallest encoding of a string (8) and an array (12). */
export const MIN_SIZE: Record<GgufValueType, number> = { u8: 1, i8: 1, u16: 2, i16: 2, u32: 4, i32: 4, f32: 4, bool: 1, string: 8, array: 12, u64: 8, i64: 8, f64: 8 };

export const TYPED_ARRAYS = {
  u8: Uint8Array, i8: Int8Array, u16: Uint16Array, i16: Int16Array, u32: Uint32Array, i32: Int32Array, f32: Float32Array, f64: Float64Array,
  u64: BigUint64Array, i64: BigInt64Array,
} as const;

const INT_RANGE: Record<string, [number, number]> = { u8: [0, 255], i8: [-128, 127], u16: [0, 65535], i16: [-32768, 32767], u32: [0, 2 ** 32 - 1], i32: [-(2 ** 31), 2 ** 31 - 1] };

/** Builders for metadata entries: kv.u32(3), kv.str('llama'), kv.arr('f32', [0, 1]). */
export const kv = {
  u8: (v: number): GgufKV => ({ type: 'u8', value: v }),
  i8: (v: number): GgufKV => ({ type: 'i8', value: v }),
  u16: (v: number): GgufKV => ({ type: 'u16', value: v }),
  i16: (v: number): GgufKV => ({ type: 'i16', value: v }),
  u32: (v: number): GgufKV => ({ type: 'u32', value: v }),
  i32: (v: number): GgufKV => ({ type: 'i32', value: v }),
  f32: (v: number): GgufKV => ({ type: 'f32', value: v }),
  f64: (v: number): GgufKV => ({ type: 'f64', value: v }),
  u64: (v: bigint | number): GgufKV => ({ type: 'u64', value: BigInt(v) }),
  i64: (v: bigint | number): GgufKV => ({ type: 'i64', value: BigInt(v) }),
  bool: (v: boolean): GgufKV => ({ type: 'bool', value: v }),
  str: (v: string): GgufKV => ({ type: 'string', value: v }),
  /** An array of one element type; numbers become the matching typed array. */
  arr: (itemType: GgufValueType, items: ArrayLike<number> | ArrayLike<bigint> | boolean[] | string[] | GgufArray[]): GgufKV => ({ type: 'array', value: array(itemType, items) }),
};

export function array(itemType: GgufValueType, items: ArrayLike<number> | ArrayLike<bigint> | boolean[] | string[] | GgufArray[]): GgufArray {
  if (itemType in TYPED_ARRAYS && !ArrayBuffer.isView(items)) {
    const Ctor = TYPED_ARRAYS[itemType as keyof typeof TYPED_ARRAYS];
    const list = Array.from(items as ArrayLike<number | bigint>);
    return { itemType, items: (itemType === 'u64' || itemType === 'i64' ? new Ctor(list.map((x) => BigInt(x)) as never) : new Ctor(list as never)) as GgufNumberArray };
  }
  return { itemType, items: items as GgufArray['items'] };
}

// ---- encoding -------------------------------------------------------------------------------

/** Appends little-endian values to a growing byte buffer. */
export class ByteSink {
  #buf = Buffer.alloc(1 << 16);
  #len = 0;

  get length(): number {
    return this.#len;
  }

  reserve(n: number): Buffer {
    if (this.#len + n > this.#buf.length) {
      const next = Buffer.alloc(Math.max(this.#buf.length * 2, this.#len + n));
      this.#buf.copy(next, 0, 0, this.#len);
      this.#buf = next;
    }
    const view = this.#buf.subarray(this.#len, this.#len + n);
    this.#len += n;
    return view;
  }

  u32(v: number): void {
    this.reserve(4).writeUInt32LE(v, 0);
  }

  u64(v: number | bigint): void {
    this.reserve(8).writeBigUInt64LE(BigInt(v), 0);
  }

  bytes(b: Uint8Array): void {
    this.reserve(b.byteLength).set(b);
  }

  string(s: string): void {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.bytes(b);
  }

  result(): Buffer {
    return this.#buf.subarray(0, this.#len);
  }
}

function checkNumber(type: GgufValueType, v: unknown, where: string): void {
  if (type === 'u64' || type === 'i64') {
    if (typeof v !== 'bigint') throw new LoraTypeError(`${where}: a ${type} value must be a bigint, got ${typeof v}`);
    const ok = type === 'u64' ? v >= 0n && v < 2n ** 64n : v >= -(2n ** 63n) && v < 2n ** 63n;
    if (!ok) throw new LoraRangeError(`${where}: ${v} does not fit ${type}`);
    return;
  }
  if (typeof v !== 'number') throw new LoraTypeError(`${where}: a ${type} value must be a number, got ${typeof v}`);
  const range = INT_RANGE[type];
  if (range && !(Number.isInteger(v) && v >= range[0] && v <= range[1])) throw new LoraRangeError(`${where}: ${v} is not a ${type}`);
}

function encodeScalar(sink: ByteSink, type: GgufValueType, v: GgufValue, where: string): void {
  switch (type) {
    case 'string':
      if (typeof v !== 'string') throw new LoraTypeError(`${where}: expected a string, got ${typeof v}`);
      sink.string(v);
      return;
    case 'bool':
      if (typeof v !== 'boolean') throw new LoraTypeError(`${where}: expected a boolean, got ${typeof v}`);
      sink.reserve(1)[0] = v ? 1 : 0;
      return;
    case 'array':
      encodeArray(sink, v, where);
      return;
    default: {
      checkNumber(type, v, where);
      const b = sink.reserve(MIN_SIZE[type]);
      const n = v as number;
      if (type === 'u8') b.writeUInt8(n);
      else if (type === 'i8') b.writeInt8(n);
      else if (type === 'u16') b.writeUInt16LE(n);
      else if (type === 'i16') b.writeInt16LE(n);
      else if (type === 'u32') b.writeUInt32LE(n);
      else if (type === 'i32') b.writeInt32LE(n);
      else if (type === 'f32') b.writeFloatLE(n);
      else if (type === 'f64') b.writeDoubleLE(n);
      else if (type === 'u64') b.writeBigUInt64LE(v as bigint);
      else b.writeBigInt64LE(v as bigint);
    }
  }
}

function encodeArray(sink: ByteSink, v: GgufValue, where: string): void {
  if (v === null || typeof v !== 'object' || !('itemType' in v) || !('items' in v)) throw new LoraTypeError(`${where}: expected { itemType, items }`);
  const t = v.itemType;
  if (!VALUE_TYPES.includes(t)) throw new LoraTypeError(`${where}.itemType: unknown GGUF value type '${String(t)}'`);
  const items = v.items;
  sink.u32(VALUE_TYPES.indexOf(t));
  sink.u64(items.length);
  if (t in TYPED_ARRAYS) {
    const Ctor = TYPED_ARRAYS[t as keyof typeof TYPED_ARRAYS];
    if (typedArrayKind(items) === Ctor.name) {
      const ta = items as GgufNumberArray;
      sink.bytes(new Uint8Array(ta.buffer, ta.byteOffset, ta.byteLength)); // little-endian hosts only (as Node's targets)
      return;
    }
  }
  for (let i = 0; i < items.length; i++) encodeScalar(sink, t, items[i] as GgufValue, `${where}[${i}]`);
}

/** Appends one key/value entry (key string, u32 type, value). */
export function encodeKV(sink: ByteSink, key: string, entry: GgufKV): void {
  if (typeof key !== 'string' || key.length === 0) throw new LoraTypeError('metadata: keys must be non-empty strings');
  if (entry === null || typeof entry !== 'object' || !VALUE_TYPES.includes(entry.type)) throw new LoraTypeError(`metadata['${key}']: expected { type, value } with a GGUF value type`);
  sink.string(key);
  sink.u32(VALUE_TYPES.indexOf(entry.type));
  encodeScalar(sink, entry.type, entry.value, `metadata['${key}']`);
}

/** A short human-readable form of a value (for inspect and error messages). */
export function formatValue(v: GgufValue, max = 80): string {
  let s: string;
  if (typeof v === 'object') {
    const head = Array.from(v.items.slice(0, 6) as ArrayLike<unknown>, (x) => (typeof x === 'object' && x !== null ? formatValue(x as GgufArray, 30) : JSON.stringify(typeof x === 'bigint' ? String(x) : x)));
    s = `${v.itemType}[${v.items.length}] [${head.join(', ')}${v.items.length > 6 ? ', …' : ''}]`;
  } else s = typeof v === 'string' ? JSON.stringify(v) : String(v);
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}
