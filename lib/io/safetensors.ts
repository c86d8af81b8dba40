/**
 * safetensors reading, hand-written: the format is a tiny header (u64 length + JSON) over raw
 * little-endian bytes, and no maintained npm reader covers validation, 16-bit dtypes and native
 * tensors together. The header is validated before any tensor is touched.
 */
import * as fs from 'fs';
import { LoraRangeError, LoraTypeError } from '../errors';
import { Tensor } from '../tensor';
import { ELEMENT_SIZE, SAFETENSORS_TO_DTYPE } from './tensor_bytes';

export type SafetensorsDType = 'F32' | 'F16' | 'BF16' | 'I32' | 'I64' | 'F64' | 'I16' | 'I8' | 'U8' | 'BOOL' | string;

export interface SafetensorsEntry {
  dtype: SafetensorsDType;
  shape: number[];
  /** Byte range [begin, end) relative to the start of the data section. */
  dataOffsets: [number, number];
}

export interface SafetensorsHeader {
  entries: Map<string, SafetensorsEntry>;
  metadata: Record<string, string>;
  /** Absolute file offset of the data section. */
  dataStart: number;
}

export const MAX_HEADER = 100 * 1024 * 1024;

export { ELEMENT_SIZE, SAFETENSORS_TO_DTYPE };

/** What a file that is not safetensors seems to be, from its first bytes ('' when unknown). */
function formatGuess(head: Buffer): string {
  const magic = head.subarray(0, 4).toString('latin1');
  if (magic === 'GGUF') return 'it is a GGUF file (lorakit convert and lorakit merge read it); ';
  if (magic === 'PK\x03\x04') return "it is a zip archive (PyTorch's torch.save format, .bin/.pt: re-save with safetensors); ";
  if (head[0] === 0x80 && head[1] >= 2 && head[1] <= 5) return 'it is a Python pickle (an old PyTorch .bin: re-save with safetensors); ';
  if (head[0] === 0x7b || head[0] === 0x3c || head[0] === 0x23) return 'it looks like a text file; ';
  return '';
}

/** Parses and validates a header; `fileSize` bounds the offsets. */
export function parseHeader(head: Buffer, fileSize: number, source = 'file'): SafetensorsHeader {
  if (!Buffer.isBuffer(head)) throw new LoraTypeError(`head: expected a Buffer, got ${typeof head}`);
  if (!Number.isSafeInteger(fileSize) || fileSize < 0) throw new LoraRangeError(`fileSize: expected a non-negative integer, got ${fileSize}`);
  if (head.length < 8 || fileSize < 8) throw new LoraRangeError(`${source} is not a safetensors file: too short (a safetensors file starts with an 8-byte header length)`);
  const n = head.readBigUInt64LE(0);
  // A wrong file (a pickle, a GGUF, text) fails here: its first 8 bytes make no sensible header length.
  if (n > BigInt(MAX_HEADER))
    throw new LoraRangeError(`${source} is not a safetensors file: ${formatGuess(head)}its first 8 bytes give a header length of ${n}, which exceeds the ${MAX_HEADER}-byte limit`);
  const len = Number(n);
  if (8 + len > fileSize)
    throw new LoraRangeError(`${source} is not a safetensors file: ${formatGuess(head)}its first 8 bytes give a header length of ${len}, which runs past the end of the file (${fileSize} bytes)`);
  if (head.length < 8 + len) throw new LoraRangeError(`${source}: header truncated`);
  let json: unknown;
  try {
    json = JSON.parse(head.subarray(8, 8 + len).toString('utf8'));
  } catch (e) {
    // A header that does not even start as JSON means another kind of file, not a damaged one.
    const what = head[8] === 0x7b || head[8] === 0x5b ? `${source}:` : `${source} is not a safetensors file:`;
    throw new LoraTypeError(`${what} header is not valid JSON (${(e as Error).message})`);
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new LoraTypeError(`${source}: header must be a JSON object`);
  const dataStart = 8 + len;
  const dataSize = fileSize - dataStart;
  const entries = new Map<string, SafetensorsEntry>();
  let metadata: Record<string, string> = {};
  for (const [name, raw] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new LoraTypeError(`${source}: __metadata__ must be an object of strings`);
      for (const [k, v] of Object.entries(raw)) if (typeof v !== 'string') throw new LoraTypeError(`${source}: __metadata__.${k} must be a string`);
      metadata = raw as Record<string, string>;
      continue;
    }
    const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (!e || typeof e !== 'object') throw new LoraTypeError(`${source}: tensor '${name}' entry must be an object`);
    if (typeof e.dtype !== 'string' || !Object.hasOwn(ELEMENT_SIZE, e.dtype)) throw new LoraTypeError(`${source}: tensor '${name}' has unknown dtype ${String(e.dtype)}`);
    if (!Array.isArray(e.shape) || e.shape.some((d) => !Number.isSafeInteger(d) || d < 0))
      throw new LoraTypeError(`${source}: tensor '${name}' has an invalid shape`);
    const off = e.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || off.some((d) => !Number.isSafeInteger(d) || d < 0) || off[0] > off[1])
      throw new LoraTypeError(`${source}: tensor '${name}' has invalid data_offsets`);
    if (off[1] > dataSize) throw new LoraRangeError(`${source}: tensor '${name}' data_offsets [${off[0]}, ${off[1]}] run past the data section (${dataSize} bytes)`);
    const shape = e.shape as number[];
    const numel = shape.reduce((a, b) => a * b, 1);
    const bytes = numel * ELEMENT_SIZE[e.dtype];
    if (bytes !== off[1] - off[0])
      throw new LoraRangeError(`${source}: tensor '${name}' has ${off[1] - off[0]} bytes but shape [${shape.join(', ')}] of ${e.dtype} needs ${bytes}`);
    entries.set(name, { dtype: e.dtype, shape, dataOffsets: [off[0], off[1]] });
  }
  const sorted = [...entries.entries()].sort((a, b) => a[1].dataOffsets[0] - b[1].dataOffsets[0]);
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i][1].dataOffsets[0] < sorted[i - 1][1].dataOffsets[1])
      throw new LoraRangeError(`${source}: tensors '${sorted[i - 1][0]}' and '${sorted[i][0]}' overlap`);
  }
  return { entries, metadata, dataStart };
}

/** A safetensors file read fully into memory (for small files; see the streaming reader for large ones). */
export class SafetensorsFile {
  readonly header: SafetensorsHeader;
  readonly #buf: Buffer;

  constructor(buf: Buffer, source = 'buffer') {
    if (!Buffer.isBuffer(buf)) throw new LoraTypeError(`buf: expected a Buffer, got ${typeof buf}`);
    this.#buf = buf;
    this.header = parseHeader(buf, buf.length, source);
  }

  static read(path: string): SafetensorsFile {
    return new SafetensorsFile(fs.readFileSync(path), path);
  }

  get names(): string[] {
    return [...this.header.entries.keys()];
  }

  get metadata(): Record<string, string> {
    return this.header.metadata;
  }

  entry(name: string): SafetensorsEntry {
    const e = this.header.entries.get(name);
    if (!e) throw new LoraRangeError(`name: no tensor '${name}' in this file (has: ${this.names.slice(0, 20).join(', ')})`);
    return e;
  }

  /** The raw little-endian bytes of a tensor (a copy, aligned). */
  bytes(name: string): Uint8Array {
    const e = this.entry(name);
    const start = this.header.dataStart + e.dataOffsets[0];
    return new Uint8Array(this.#buf.subarray(start, this.header.dataStart + e.dataOffsets[1]));
  }

  /** A tensor as f32 values (F32, F16, BF16; F64 is narrowed). */
  float32(name: string): Float32Array {
    const e = this.entry(name);
    const raw = this.bytes(name);
    const n = e.shape.reduce((a, b) => a * b, 1);
    switch (e.dtype) {
      case 'F32':
        return new Float32Array(raw.buffer, raw.byteOffset, n);
      case 'F64':
        return Float32Array.from(new Float64Array(raw.buffer, raw.byteOffset, n));
      case 'F16':
      case 'BF16': {
        const t = Tensor.from(new Uint16Array(raw.buffer, raw.byteOffset, n), e.shape, { dtype: e.dtype === 'F16' ? 'f16' : 'bf16' });
        try {
          return t.toFloat32Array();
        } finally {
          t.dispose();
        }
      }
      default:
        throw new LoraTypeError(`name: tensor '${name}' has dtype ${e.dtype}, not a float type`);
    }
  }

  /** A tensor as 16-bit patterns (F16, BF16, or I16 holding bf16 bits). */
  uint16(name: string): Uint16Array {
    const e = this.entry(name);
    if (ELEMENT_SIZE[e.dtype] !== 2) throw new LoraTypeError(`name: tensor '${name}' has dtype ${e.dtype}, not a 16-bit type`);
    const raw = this.bytes(name);
    return new Uint16Array(raw.buffer, raw.byteOffset, raw.byteLength / 2);
  }

  /** An I64 tensor. */
  int64(name: string): BigInt64Array {
    const e = this.entry(name);
    if (e.dtype !== 'I64') throw new LoraTypeError(`name: tensor '${name}' has dtype ${e.dtype}, not I64`);
    const raw = this.bytes(name);
    return new BigInt64Array(raw.buffer, raw.byteOffset, raw.byteLength / 8);
  }

  /** A native Tensor with the file's dtype (F32, F16, BF16, I32, I64). */
  tensor(name: string): Tensor {
    const e = this.entry(name);
    const dtype = SAFETENSORS_TO_DTYPE[e.dtype];
    if (!dtype) throw new LoraTypeError(`name: tensor '${name}' has dtype ${e.dtype}, which lorakit tensors do not hold`);
    const raw = this.bytes(name);
    switch (dtype) {
      case 'f32':
        return Tensor.from(new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4), e.shape);
      case 'f16':
      case 'bf16':
        return Tensor.from(new Uint16Array(raw.buffer, raw.byteOffset, raw.byteLength / 2), e.shape, { dtype });
      case 'i32':
        return Tensor.from(new Int32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4), e.shape);
      case 'i64':
        return Tensor.from(new BigInt64Array(raw.buffer, raw.byteOffset, raw.byteLength / 8), e.shape);
    }
  }
}
