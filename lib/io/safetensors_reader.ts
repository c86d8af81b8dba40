/**
 * SafetensorsReader: reads a safetensors file tensor by tensor with positioned reads on an open
 * file descriptor, so a checkpoint of many GB is never held in memory at once.
 */
import * as fs from 'fs';
import { LoraRangeError, LoraTypeError, StateError } from '../errors';
import { Tensor } from '../tensor';
import { MAX_HEADER, SafetensorsEntry, SafetensorsHeader, parseHeader } from './safetensors';
import { float32FromBytes, tensorFromBytes } from './tensor_bytes';

function readFully(fd: number, buf: Uint8Array, position: number, source: string): void {
  let off = 0;
  while (off < buf.length) {
    const n = fs.readSync(fd, buf, off, buf.length - off, position + off);
    if (n === 0) throw new LoraRangeError(`${source}: unexpected end of file at byte ${position + off}`);
    off += n;
  }
}

function openForReading(path: string, argName: string): { fd: number; size: number } {
  if (typeof path !== 'string' || path.length === 0) throw new LoraTypeError(`${argName}: expected a file path`);
  let st: fs.Stats;
  try {
    st = fs.statSync(path);
  } catch {
    throw new LoraRangeError(`${argName}: no such file: ${path}`);
  }
  if (st.isDirectory()) throw new LoraRangeError(`${argName}: ${path} is a directory, expected a .safetensors file`);
  return { fd: fs.openSync(path, 'r'), size: st.size };
}

export class SafetensorsReader {
  readonly header: SafetensorsHeader;
  readonly fileSize: number;
  #fd: number | null;

  /** Opens `path` and validates its header; nothing else is read until asked for. */
  constructor(readonly path: string) {
    const { fd, size } = openForReading(path, 'path');
    this.#fd = fd;
    this.fileSize = size;
    try {
      const lenBuf = Buffer.alloc(8);
      if (size < 8) throw new LoraRangeError(`${path} is not a safetensors file: too short (${size} bytes; a safetensors file starts with an 8-byte header length)`);
      readFully(fd, lenBuf, 0, path);
      const n = lenBuf.readBigUInt64LE(0);
      const len = n > BigInt(MAX_HEADER) || n > BigInt(size) ? 0 : Number(n);
      const head = Buffer.alloc(8 + len);
      lenBuf.copy(head, 0);
      if (len > 0) readFully(fd, head.subarray(8), 8, path);
      this.header = parseHeader(head, size, path); // reports a bad length itself
    } catch (e) {
      fs.closeSync(fd);
      this.#fd = null;
      throw e;
    }
  }

  get names(): string[] {
    return [...this.header.entries.keys()];
  }

  get metadata(): Record<string, string> {
    return this.header.metadata;
  }

  has(name: string): boolean {
    return this.header.entries.has(name);
  }

  entry(name: string): SafetensorsEntry {
    const e = this.header.entries.get(name);
    if (!e) throw new LoraRangeError(`name: no tensor '${name}' in ${this.path}`);
    return e;
  }

  /** The tensor's raw bytes, read with one positioned read. */
  bytes(name: string): Uint8Array {
    const e = this.entry(name);
    return this.range(name, 0, e.dataOffsets[1] - e.dataOffsets[0]);
  }

  /** Bytes [begin, end) of a tensor's data, for copying large tensors in chunks. */
  range(name: string, begin: number, end: number): Uint8Array {
    const e = this.entry(name);
    const size = e.dataOffsets[1] - e.dataOffsets[0];
    if (!(begin >= 0 && begin <= end && end <= size)) throw new LoraRangeError(`range: [${begin}, ${end}) is outside tensor '${name}' (${size} bytes)`);
    const buf = new Uint8Array(end - begin);
    readFully(this.requireOpen(), buf, this.header.dataStart + e.dataOffsets[0] + begin, this.path);
    return buf;
  }

  /** A native Tensor in the file's dtype (F32, F16, BF16, I32, I64). */
  tensor(name: string): Tensor {
    const e = this.entry(name);
    return tensorFromBytes(this.bytes(name), e.dtype, e.shape, `${this.path}: tensor '${name}'`);
  }

  /** A tensor's values as f32 (F32, F16, BF16, F64). */
  float32(name: string): Float32Array {
    return float32FromBytes(this.bytes(name), this.entry(name).dtype, `${this.path}: tensor '${name}'`);
  }

  close(): void {
    if (this.#fd !== null) fs.closeSync(this.#fd);
    this.#fd = null;
  }

  private requireOpen(): number {
    if (this.#fd === null) throw new StateError(`${this.path}: reader is closed`);
    return this.#fd;
  }
}
