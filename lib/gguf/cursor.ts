/**
 * A forward cursor over a file read with positioned reads through a small window, so a GGUF header
 * of any size is parsed without reading the file whole. Every read names the field it is for; a
 * read past the end of the file throws a LoraRangeError saying which field and where.
 */
import * as fs from 'fs';
import { LoraRangeError } from '../errors';

const WINDOW = 1 << 20;

export function readFully(fd: number, buf: Uint8Array, position: number, source: string, what: string): void {
  let off = 0;
  while (off < buf.length) {
    const n = fs.readSync(fd, buf, off, buf.length - off, position + off);
    if (n === 0) throw new LoraRangeError(`${source}: ${what}: unexpected end of file at byte ${position + off}`);
    off += n;
  }
}

export class FileCursor {
  pos = 0;
  #buf = Buffer.alloc(0);
  #bufStart = 0;

  constructor(readonly fd: number, readonly fileSize: number, readonly source: string) {}

  get remaining(): number {
    return this.fileSize - this.pos;
  }

  /** Makes n bytes at pos available in the window; returns their offset in it. */
  #need(n: number, field: string): number {
    if (n > this.fileSize - this.pos) throw new LoraRangeError(`${this.source}: ${field} (${n} bytes at byte ${this.pos}) runs past the end of the file (${this.fileSize} bytes)`);
    if (this.pos >= this.#bufStart && this.pos + n <= this.#bufStart + this.#buf.length) return this.pos - this.#bufStart;
    const len = Math.min(Math.max(n, WINDOW), this.fileSize - this.pos);
    this.#buf = Buffer.alloc(len);
    this.#bufStart = this.pos;
    readFully(this.fd, this.#buf, this.pos, this.source, field);
    return 0;
  }

  u8(field: string): number {
    const o = this.#need(1, field);
    this.pos += 1;
    return this.#buf[o];
  }

  u32(field: string): number {
    const o = this.#need(4, field);
    this.pos += 4;
    return this.#buf.readUInt32LE(o);
  }

  u64(field: string): bigint {
    const o = this.#need(8, field);
    this.pos += 8;
    return this.#buf.readBigUInt64LE(o);
  }

  /** A u64 that must be a safe integer no larger than `max` (a count or a length). */
  count(field: string, max: number, unit: string): number {
    const v = this.u64(field);
    if (v > BigInt(max)) throw new LoraRangeError(`${this.source}: ${field} is ${v}, more than the ${unit} the rest of the file (${this.remaining} bytes) can hold (at most ${max})`);
    return Number(v);
  }

  /** n bytes at pos as a view of the window (valid until the next read) or a fresh buffer. */
  bytes(n: number, field: string): Buffer {
    const o = this.#need(n, field);
    this.pos += n;
    return this.#buf.subarray(o, o + n);
  }

  string(field: string, maxLen: number): string {
    const len = this.count(`${field} length`, Math.min(maxLen, this.remaining - 8), 'bytes');
    return this.bytes(len, field).toString('utf8');
  }

  align(alignment: number): void {
    this.pos = Math.ceil(this.pos / alignment) * alignment;
  }
}
