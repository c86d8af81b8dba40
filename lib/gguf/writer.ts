/**
 * GgufStreamWriter: writes a GGUF v3 file tensor by tensor. The header (magic, version, counts,
 * metadata, tensor infos) is fixed up front, padded with zeros to `general.alignment` (32 unless the
 * metadata sets it), then each tensor's bytes follow in declared order, each padded to the alignment,
 * so every offset is a multiple of it (ggml's docs/gguf.md). The file goes to a temporary name
 * and is renamed into place on commit (lib/io/atomic.ts); abort() or an error leaves no file.
 *
 * Hand-written for the reasons in reader.ts (no npm package streams GGUF tensor data).
 */
import { existsSync } from 'fs';
import { dirname, resolve } from 'path';
import { LoraRangeError, LoraTypeError, StateError } from '../errors';
import { AtomicWriter } from '../io/atomic';
import { typedArrayKind } from '../tensor';
import { quantize } from './codecs';
import { tensorBytes, typeName } from './ggml_types';
import { ByteSink, GgufKV, encodeKV } from './metadata';
import { DEFAULT_ALIGNMENT, GGUF_MAGIC } from './reader';

export interface GgufTensorSpec {
  name: string;
  /** ggml type id (GGML.F32, GGML.Q8_0, ...). */
  type: number;
  /** numpy / PyTorch order (outermost first); stored reversed as ggml's ne. */
  shape: readonly number[];
}

const pad = (n: number, a: number) => Math.ceil(n / a) * a;

function checkSpec(s: GgufTensorSpec, i: number): number {
  if (s === null || typeof s !== 'object' || typeof s.name !== 'string' || !Array.isArray(s.shape))
    throw new LoraTypeError(`tensors[${i}]: expected { name: string, type: ggml type id, shape: number[] }`);
  if (s.name.length === 0 || Buffer.byteLength(s.name) > 63) throw new LoraRangeError(`tensors[${i}].name: '${s.name}' must be 1-63 bytes (ggml's limit)`);
  if (s.shape.length > 4 || s.shape.some((d) => !Number.isSafeInteger(d) || d < 0)) throw new LoraRangeError(`tensors[${i}].shape: [${s.shape.join(', ')}] must be at most 4 non-negative integers`);
  return tensorBytes(s.type, [...s.shape].reverse(), `tensors[${i}] '${s.name}'`);
}

/** The header bytes (unpadded) and each tensor's data offset for the given layout. */
export function serializeGgufHeader(metadata: Iterable<[string, GgufKV]>, specs: readonly GgufTensorSpec[]): { head: Buffer; offsets: number[]; sizes: number[]; alignment: number } {
  if (metadata === null || typeof metadata !== 'object' || typeof (metadata as Iterable<unknown>)[Symbol.iterator] !== 'function') throw new LoraTypeError('metadata: expected an iterable of [key, { type, value }] pairs');
  if (!Array.isArray(specs)) throw new LoraTypeError('tensors: expected an array of { name, type, shape }');
  const entries = [...metadata];
  entries.forEach((e, i) => {
    if (!Array.isArray(e) || e.length !== 2) throw new LoraTypeError(`metadata[${i}]: expected a [key, { type, value }] pair`);
  });
  const keys = new Set<string>();
  let alignment = DEFAULT_ALIGNMENT;
  for (const [k, e] of entries) {
    if (keys.has(k)) throw new LoraRangeError(`metadata: key '${k}' given twice`);
    keys.add(k);
    if (k === 'general.alignment') {
      if (e?.type !== 'u32' || typeof e.value !== 'number' || e.value <= 0 || (e.value & (e.value - 1)) !== 0)
        throw new LoraRangeError(`metadata['general.alignment']: must be a u32 power of two`);
      alignment = e.value;
    }
  }
  const names = new Set<string>();
  const sizes = specs.map((s, i) => {
    const n = checkSpec(s, i);
    if (names.has(s.name)) throw new LoraRangeError(`tensors[${i}].name: '${s.name}' is declared twice`);
    names.add(s.name);
    return n;
  });
  const sink = new ByteSink();
  sink.u32(GGUF_MAGIC);
  sink.u32(3);
  sink.u64(specs.length);
  sink.u64(entries.length);
  for (const [k, e] of entries) encodeKV(sink, k, e);
  const offsets: number[] = [];
  let off = 0;
  specs.forEach((s, i) => {
    sink.string(s.name);
    sink.u32(s.shape.length);
    for (let d = s.shape.length - 1; d >= 0; d--) sink.u64(s.shape[d]);
    sink.u32(s.type);
    sink.u64(off);
    offsets.push(off);
    off += pad(sizes[i], alignment);
  });
  return { head: sink.result(), offsets, sizes, alignment };
}

export class GgufStreamWriter {
  readonly #specs: GgufTensorSpec[];
  readonly #sizes: number[];
  readonly #alignment: number;
  readonly #out: AtomicWriter;
  #next = 0;
  #pending = 0;

  constructor(readonly path: string, metadata: Iterable<[string, GgufKV]>, tensors: readonly GgufTensorSpec[]) {
    if (!Array.isArray(tensors)) throw new LoraTypeError('tensors: expected an array of { name, type, shape }');
    this.#specs = tensors.map((s) => ({ name: s?.name, type: s?.type, shape: Array.isArray(s?.shape) ? [...s.shape] : s?.shape }));
    const { head, sizes, alignment } = serializeGgufHeader(metadata, this.#specs);
    this.#sizes = sizes;
    this.#alignment = alignment;
    if (typeof path !== 'string' || path.length === 0) throw new LoraTypeError('path: expected an output .gguf path');
    const parent = dirname(resolve(path));
    if (!existsSync(parent)) throw new LoraRangeError(`out: directory ${parent} does not exist`);
    this.#out = new AtomicWriter(path);
    try {
      this.#out.write(head);
      this.#padTo(alignment);
      if (this.#specs.length > 0) this.#skipEmpty();
    } catch (e) {
      this.#out.abort();
      throw e;
    }
  }

  /** The tensor write() expects next (undefined when all are written). */
  get nextName(): string | undefined {
    return this.#specs[this.#next]?.name;
  }

  get bytesWritten(): number {
    return this.#out.position;
  }

  #padTo(alignment: number): void {
    const n = pad(this.#out.position, alignment) - this.#out.position;
    if (n > 0) this.#out.write(new Uint8Array(n));
  }

  /** Zero-byte tensors need no write() call. */
  #skipEmpty(): void {
    while (this.#next < this.#specs.length && this.#sizes[this.#next] === 0) this.#next++;
  }

  /** Writes the next tensor's bytes whole or in chunks (chunks must add up to its byte size). */
  write(name: string, bytes: Uint8Array): void {
    const spec = this.#specs[this.#next];
    if (!spec) throw new StateError(`write: all ${this.#specs.length} tensors are already written ('${name}' is extra)`);
    if (spec.name !== name) throw new StateError(`write: expected tensor '${spec.name}' next (header order), got '${name}'`);
    if (typedArrayKind(bytes) !== 'Uint8Array') throw new LoraTypeError(`write: tensor '${name}': expected a Uint8Array`);
    if (this.#pending === 0) this.#pending = this.#sizes[this.#next];
    if (bytes.byteLength > this.#pending)
      throw new LoraRangeError(`write: tensor '${name}' (${typeName(spec.type)} [${spec.shape.join(', ')}]) takes ${this.#sizes[this.#next]} bytes; got ${bytes.byteLength - this.#pending} too many`);
    this.#out.write(bytes);
    this.#pending -= bytes.byteLength;
    if (this.#pending === 0) {
      this.#padTo(this.#alignment);
      this.#next++;
      this.#skipEmpty();
    }
  }

  /** Encodes f32 values in the tensor's declared type and writes them (whole rows of blocks per call). */
  writeFloat32(name: string, values: Float32Array): void {
    const spec = this.#specs[this.#next];
    if (!spec || spec.name !== name) return this.write(name, new Uint8Array(0)); // reports the order error
    this.write(name, quantize(spec.type, values));
  }

  commit(): void {
    if (this.#next !== this.#specs.length) {
      this.abort();
      throw new StateError(`commit: only ${this.#next} of ${this.#specs.length} tensors were written (next: '${this.nextName}')`);
    }
    this.#out.commit();
  }

  abort(): void {
    this.#out.abort();
  }
}
