/**
 * GgufReader: a GGUF v3 (and v2, same layout) file read with positioned reads; the header is parsed
 * and validated on open, tensor data only when asked, so a file of many GB never sits in memory.
 *
 * Hand-written: of the npm packages, @huggingface/gguf (0.4.6) parses the metadata and tensor
 * infos of local or remote files but neither decodes tensor data nor writes files, and `gguf`
 * (1.0.7) validates metadata only; lorakit needs positioned reads, the block codecs and a
 * streaming writer together, with typed errors naming the bad field.
 *
 * Validated: magic, version, counts against what the rest of the file can hold, string lengths,
 * value and tensor type ids, array nesting (≤ 8 deep), duplicate keys and tensor names, names
 * under 64 bytes, n_dims ≤ 4, element counts, rows that are whole blocks, general.alignment (u32,
 * a power of two), offsets that are aligned, inside the data section and not overlapping.
 */
import * as fs from 'fs';
import { LoraRangeError, LoraTypeError, StateError } from '../errors';
import { dequantize, dequantizeAsync } from './codecs';
import { FileCursor, readFully } from './cursor';
import { DEQUANTIZABLE, GgmlTypeInfo, ggmlType, typeName } from './ggml_types';
import { GgufArray, GgufKV, GgufValue, GgufValueType, MIN_SIZE, TYPED_ARRAYS, VALUE_TYPES } from './metadata';

export const GGUF_MAGIC = 0x46554747; // "GGUF" little-endian
export const DEFAULT_ALIGNMENT = 32;
const MAX_DEPTH = 8;
const MAX_STRING = 1 << 28;
const MAX_NAME = 63; // ggml's GGML_MAX_NAME is 64 with the NUL
const MAX_DIMS = 4;

export interface GgufTensorInfo {
  readonly name: string;
  /** ggml order: ne[0] is the contiguous (row) dimension. */
  readonly ne: readonly number[];
  /** numpy / PyTorch order (ne reversed): a linear weight is [out, in]. */
  readonly shape: readonly number[];
  readonly type: number;
  readonly typeName: string;
  /** Byte offset relative to the data section. */
  readonly offset: number;
  readonly nbytes: number;
  readonly numel: number;
}

function readValue(c: FileCursor, type: GgufValueType, field: string, depth: number): GgufValue {
  switch (type) {
    case 'u8':
      return c.u8(field);
    case 'i8':
      return (c.u8(field) << 24) >> 24;
    case 'bool': {
      const b = c.u8(field);
      if (b > 1) throw new LoraRangeError(`${c.source}: ${field} is a bool of value ${b} (must be 0 or 1)`);
      return b === 1;
    }
    case 'string':
      return c.string(field, MAX_STRING);
    case 'u64':
      return c.u64(field);
    case 'array':
      return readArray(c, field, depth + 1);
    default: {
      const size = MIN_SIZE[type];
      const b = c.bytes(size, field);
      if (type === 'u16') return b.readUInt16LE(0);
      if (type === 'i16') return b.readInt16LE(0);
      if (type === 'u32') return b.readUInt32LE(0);
      if (type === 'i32') return b.readInt32LE(0);
      if (type === 'f32') return b.readFloatLE(0);
      if (type === 'f64') return b.readDoubleLE(0);
      return b.readBigInt64LE(0);
    }
  }
}

function valueType(c: FileCursor, field: string): GgufValueType {
  const id = c.u32(field);
  const t = VALUE_TYPES[id];
  if (t === undefined) throw new LoraTypeError(`${c.source}: ${field} is ${id}, not a GGUF value type (0-12)`);
  return t;
}

function readArray(c: FileCursor, field: string, depth: number): GgufArray {
  if (depth > MAX_DEPTH) throw new LoraRangeError(`${c.source}: ${field}: arrays nested deeper than ${MAX_DEPTH} levels`);
  const itemType = valueType(c, `${field} element type`);
  const size = MIN_SIZE[itemType];
  const n = c.count(`${field} element count`, Math.floor(Math.max(0, c.remaining - 8) / size), `${itemType} elements`);
  if (itemType in TYPED_ARRAYS) {
    const Ctor = TYPED_ARRAYS[itemType as keyof typeof TYPED_ARRAYS];
    const bytes = Buffer.from(c.bytes(n * size, field)); // a copy: aligned and independent of the window
    return { itemType, items: new Ctor(bytes.buffer, bytes.byteOffset, n) };
  }
  const items: Array<GgufValue> = [];
  for (let i = 0; i < n; i++) items.push(readValue(c, itemType, `${field}[${i}]`, depth));
  return { itemType, items: items as GgufArray['items'] };
}

export class GgufReader {
  readonly version: number;
  readonly fileSize: number;
  readonly alignment: number;
  /** Absolute file offset of the data section. */
  readonly dataStart: number;
  /** Key → entry, in file order. */
  readonly metadata: Map<string, GgufKV>;
  /** Tensor infos in file order. */
  readonly tensors: readonly GgufTensorInfo[];
  readonly #byName = new Map<string, GgufTensorInfo>();
  #fd: number | null;

  /** Opens `path` and validates its header; tensor data is read only when asked for. */
  constructor(readonly path: string) {
    if (typeof path !== 'string' || path.length === 0) throw new LoraTypeError('path: expected a .gguf file path');
    let st: fs.Stats;
    try {
      st = fs.statSync(path);
    } catch {
      throw new LoraRangeError(`path: no such file: ${path}`);
    }
    if (st.isDirectory()) throw new LoraRangeError(`path: ${path} is a directory, expected a .gguf file`);
    this.fileSize = st.size;
    this.#fd = fs.openSync(path, 'r');
    try {
      const c = new FileCursor(this.#fd, st.size, path);
      const magic = c.u32('magic');
      if (magic !== GGUF_MAGIC) throw new LoraTypeError(`${path}: magic is 0x${magic.toString(16).padStart(8, '0')}, not "GGUF": not a GGUF file`);
      this.version = c.u32('version');
      if (this.version !== 2 && this.version !== 3)
        throw new LoraRangeError(`${path}: version is ${this.version}; lorakit reads GGUF versions 2 and 3${this.version > 0xffff ? ' (a big-endian file?)' : ''}`);
      const nTensors = c.count('tensor_count', Math.floor(Math.max(0, c.remaining - 8) / 24), 'tensor infos');
      const nKV = c.count('metadata_kv_count', Math.floor(c.remaining / 14), 'key/value entries');
      this.metadata = new Map();
      for (let i = 0; i < nKV; i++) {
        const key = c.string(`metadata[${i}] key`, 1 << 16);
        if (key.length === 0) throw new LoraRangeError(`${path}: metadata[${i}] key is empty`);
        if (this.metadata.has(key)) throw new LoraRangeError(`${path}: metadata key '${key}' appears twice`);
        const type = valueType(c, `metadata['${key}'] value type`);
        this.metadata.set(key, { type, value: readValue(c, type, `metadata['${key}']`, 0) });
      }
      const al = this.metadata.get('general.alignment');
      if (al !== undefined && al.type !== 'u32') throw new LoraTypeError(`${path}: metadata['general.alignment'] must be a u32, is a ${al.type}`);
      this.alignment = al === undefined ? DEFAULT_ALIGNMENT : (al.value as number);
      if (this.alignment === 0 || (this.alignment & (this.alignment - 1)) !== 0) throw new LoraRangeError(`${path}: metadata['general.alignment'] is ${this.alignment}, not a power of two`);
      const infos: GgufTensorInfo[] = [];
      for (let i = 0; i < nTensors; i++) {
        const info = readTensorInfo(c, i);
        if (this.#byName.has(info.name)) throw new LoraRangeError(`${path}: tensor name '${info.name}' appears twice (tensor_infos[${i}])`);
        this.#byName.set(info.name, info);
        infos.push(info);
      }
      c.align(this.alignment);
      this.dataStart = c.pos;
      this.tensors = infos;
      this.#checkOffsets();
    } catch (e) {
      fs.closeSync(this.#fd);
      this.#fd = null;
      throw e;
    }
  }

  #checkOffsets(): void {
    const dataSize = this.fileSize - this.dataStart;
    for (const t of this.tensors) {
      if (t.offset % this.alignment !== 0) throw new LoraRangeError(`${this.path}: tensor '${t.name}' offset ${t.offset} is not a multiple of the alignment (${this.alignment})`);
      if (t.offset + t.nbytes > dataSize)
        throw new LoraRangeError(`${this.path}: tensor '${t.name}' (${t.nbytes} bytes at data offset ${t.offset}) runs past the end of the file (data section of ${Math.max(0, dataSize)} bytes)`);
    }
    const sorted = this.tensors.filter((t) => t.nbytes > 0).sort((a, b) => a.offset - b.offset);
    for (let i = 1; i < sorted.length; i++)
      if (sorted[i].offset < sorted[i - 1].offset + sorted[i - 1].nbytes) throw new LoraRangeError(`${this.path}: tensors '${sorted[i - 1].name}' and '${sorted[i].name}' overlap`);
  }

  get names(): string[] {
    return this.tensors.map((t) => t.name);
  }

  has(name: string): boolean {
    return this.#byName.has(name);
  }

  tensor(name: string): GgufTensorInfo {
    const t = this.#byName.get(name);
    if (!t) throw new LoraRangeError(`name: no tensor '${name}' in ${this.path}`);
    return t;
  }

  /** A metadata value, or undefined when the key is absent. */
  get(key: string): GgufValue | undefined {
    return this.metadata.get(key)?.value;
  }

  /** A string value; throws naming the key when it is absent (unless a fallback is given) or not a string. */
  getString(key: string, fallback?: string): string {
    const e = this.metadata.get(key);
    if (e === undefined && fallback !== undefined) return fallback;
    if (e === undefined) throw new LoraRangeError(`${this.path}: metadata key '${key}' is missing`);
    if (e.type !== 'string') throw new LoraTypeError(`${this.path}: metadata['${key}'] is a ${e.type}, expected a string`);
    return e.value as string;
  }

  /** A numeric value as a JS number (64-bit integers must be safe). */
  getNumber(key: string, fallback?: number): number {
    const e = this.metadata.get(key);
    if (e === undefined && fallback !== undefined) return fallback;
    if (e === undefined) throw new LoraRangeError(`${this.path}: metadata key '${key}' is missing`);
    if (typeof e.value === 'bigint') {
      if (e.value > BigInt(Number.MAX_SAFE_INTEGER) || e.value < -BigInt(Number.MAX_SAFE_INTEGER)) throw new LoraRangeError(`${this.path}: metadata['${key}'] = ${e.value} is not a safe integer`);
      return Number(e.value);
    }
    if (typeof e.value !== 'number') throw new LoraTypeError(`${this.path}: metadata['${key}'] is a ${e.type}, expected a number`);
    return e.value;
  }

  /** The tensor's raw bytes, one positioned read. */
  bytes(name: string): Uint8Array {
    return this.range(name, 0, this.tensor(name).nbytes);
  }

  /** Bytes [begin, end) of a tensor's data, for copying large tensors in chunks. */
  range(name: string, begin: number, end: number): Uint8Array {
    const t = this.tensor(name);
    if (!(Number.isSafeInteger(begin) && Number.isSafeInteger(end) && begin >= 0 && begin <= end && end <= t.nbytes))
      throw new LoraRangeError(`range: [${begin}, ${end}) is outside tensor '${name}' (${t.nbytes} bytes)`);
    const buf = new Uint8Array(end - begin);
    readFully(this.#open(), buf, this.dataStart + t.offset + begin, this.path, `tensor '${name}'`);
    return buf;
  }

  /** Rows [row0, row0 + rows) of a tensor (rows of ne[0] values) as f32, dequantized. */
  rowsFloat32(name: string, row0: number, rows: number): Float32Array {
    const { type, bytes, n } = this.#rows(name, row0, rows);
    return dequantize(type, bytes, n);
  }

  /** rowsFloat32 with the decoding on libuv's pool (the read itself is one positioned read). */
  rowsFloat32Async(name: string, row0: number, rows: number): Promise<Float32Array> {
    const { type, bytes, n } = this.#rows(name, row0, rows);
    return dequantizeAsync(type, bytes, n);
  }

  /** The raw bytes of rows [row0, row0 + rows) (whole rows are whole blocks). */
  rowsBytes(name: string, row0: number, rows: number): Uint8Array {
    return this.#rows(name, row0, rows).bytes;
  }

  #rows(name: string, row0: number, rows: number): { type: number; bytes: Uint8Array; n: number } {
    const t = this.tensor(name);
    const info = this.#decodable(t);
    const n0 = t.ne.length > 0 ? t.ne[0] : 1;
    const total = n0 === 0 ? 0 : t.numel / n0;
    if (!(Number.isSafeInteger(row0) && Number.isSafeInteger(rows) && row0 >= 0 && rows >= 0 && row0 + rows <= total))
      throw new LoraRangeError(`rows: [${row0}, ${row0 + rows}) is outside tensor '${name}' (${total} rows)`);
    const rowBytes = (n0 / info.blockSize) * info.typeSize;
    return { type: t.type, bytes: this.range(name, row0 * rowBytes, (row0 + rows) * rowBytes), n: rows * n0 };
  }

  /** The whole tensor as f32, dequantized. */
  float32(name: string): Float32Array {
    const t = this.tensor(name);
    this.#decodable(t);
    return dequantize(t.type, this.bytes(name), t.numel);
  }

  close(): void {
    if (this.#fd !== null) fs.closeSync(this.#fd);
    this.#fd = null;
  }

  #decodable(t: GgufTensorInfo): GgmlTypeInfo {
    if (!DEQUANTIZABLE.has(t.type)) throw new LoraTypeError(`${this.path}: tensor '${t.name}' is ${t.typeName}, which lorakit cannot dequantize (F32, F16, BF16, F64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)`);
    return ggmlType(t.type)!;
  }

  #open(): number {
    if (this.#fd === null) throw new StateError(`${this.path}: reader is closed`);
    return this.#fd;
  }
}

function readTensorInfo(c: FileCursor, i: number): GgufTensorInfo {
  const at = `tensor_infos[${i}]`;
  const name = c.string(`${at} name`, 1 << 16);
  if (name.length === 0) throw new LoraRangeError(`${c.source}: ${at} name is empty`);
  if (Buffer.byteLength(name) > MAX_NAME) throw new LoraRangeError(`${c.source}: ${at} name '${name.slice(0, 80)}' is ${Buffer.byteLength(name)} bytes; ggml allows at most ${MAX_NAME}`);
  const field = `tensor '${name}'`;
  const nDims = c.u32(`${field} n_dims`);
  if (nDims > MAX_DIMS) throw new LoraRangeError(`${c.source}: ${field} n_dims is ${nDims}; ggml allows at most ${MAX_DIMS}`);
  const ne: number[] = [];
  let numel = 1;
  for (let d = 0; d < nDims; d++) {
    const v = c.u64(`${field} ne[${d}]`);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new LoraRangeError(`${c.source}: ${field} ne[${d}] = ${v} is too large`);
    ne.push(Number(v));
    numel *= Number(v);
  }
  if (!Number.isSafeInteger(numel)) throw new LoraRangeError(`${c.source}: ${field} has ne [${ne.join(', ')}]: too many elements`);
  const type = c.u32(`${field} type`);
  const info = ggmlType(type);
  if (!info) throw new LoraTypeError(`${c.source}: ${field} type is ${type}, not a ggml type id`);
  const n0 = ne.length > 0 ? ne[0] : 1;
  if (n0 % info.blockSize !== 0) throw new LoraRangeError(`${c.source}: ${field} ne[0] = ${n0} is not a whole number of ${info.name} blocks (${info.blockSize} values each)`);
  const nbytes = n0 === 0 ? 0 : (numel / info.blockSize) * info.typeSize;
  if (!Number.isSafeInteger(nbytes)) throw new LoraRangeError(`${c.source}: ${field} (${info.name}, ne [${ne.join(', ')}]) is too large`);
  const off = c.u64(`${field} offset`);
  if (off > BigInt(Number.MAX_SAFE_INTEGER)) throw new LoraRangeError(`${c.source}: ${field} offset ${off} runs past the end of the file`);
  return { name, ne, shape: [...ne].reverse(), type, typeName: typeName(type), offset: Number(off), nbytes, numel };
}
