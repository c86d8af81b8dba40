/**
 * safetensors writing: the header (u64 length + JSON padded with spaces to 8 bytes, as the Rust
 * crate does) then the tensors' bytes in header order. Files are written atomically; the
 * streaming writer takes one tensor at a time, so a large file never sits in memory.
 */
import { LoraRangeError, LoraTypeError, StateError, shapeStr } from '../errors';
import { Tensor } from '../tensor';
import { AtomicWriter, writeFileAtomic } from './atomic';
import { ELEMENT_SIZE, tensorToBytes } from './tensor_bytes';

export interface TensorSpec {
  name: string;
  dtype: string;
  shape: readonly number[];
}

export interface RawTensor {
  dtype: string;
  shape: readonly number[];
  bytes: Uint8Array;
}

function byteSize(spec: TensorSpec): number {
  const size = ELEMENT_SIZE[spec.dtype];
  if (size === undefined || !Object.hasOwn(ELEMENT_SIZE, spec.dtype)) throw new LoraTypeError(`tensor '${spec.name}': unknown safetensors dtype ${spec.dtype}`);
  return spec.shape.reduce((a, b) => a * b, 1) * size;
}

/** The header bytes for tensors laid out in the given order. */
export function serializeHeader(specs: readonly TensorSpec[], metadata: Record<string, string> = {}): Buffer {
  if (!Array.isArray(specs)) throw new LoraTypeError('specs: expected an array of { name, dtype, shape }');
  specs.forEach((s, i) => {
    if (s === null || typeof s !== 'object' || typeof s.name !== 'string' || typeof s.dtype !== 'string' || !Array.isArray(s.shape) || s.shape.some((d: unknown) => !Number.isSafeInteger(d) || (d as number) < 0))
      throw new LoraTypeError(`specs[${i}]: expected { name: string, dtype: string, shape: non-negative integers }`);
  });
  if (metadata === null || typeof metadata !== 'object') throw new LoraTypeError('metadata: expected an object of strings');
  const json: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) {
    for (const [k, v] of Object.entries(metadata)) if (typeof v !== 'string') throw new LoraTypeError(`metadata.${k}: must be a string`);
    json.__metadata__ = metadata;
  }
  let offset = 0;
  for (const s of specs) {
    if (s.name === '__metadata__' || Object.hasOwn(json, s.name)) throw new LoraRangeError(`tensor name '${s.name}' is reserved or duplicated`);
    const n = byteSize(s);
    json[s.name] = { dtype: s.dtype, shape: [...s.shape], data_offsets: [offset, offset + n] };
    offset += n;
  }
  const text = Buffer.from(JSON.stringify(json), 'utf8');
  const padded = Math.ceil(text.length / 8) * 8;
  const head = Buffer.alloc(8 + padded, 0x20);
  head.writeBigUInt64LE(BigInt(padded), 0);
  text.copy(head, 8);
  return head;
}

/**
 * Writes a safetensors file tensor by tensor: the names, dtypes and shapes are fixed up front (the
 * header comes first), then write() is called once per tensor in that order, then commit().
 */
export class SafetensorsStreamWriter {
  readonly #specs: TensorSpec[];
  readonly #out: AtomicWriter;
  #next = 0;
  #pendingBytes = 0; // bytes still owed for the current tensor (chunked writes)

  constructor(readonly path: string, specs: readonly TensorSpec[], metadata: Record<string, string> = {}) {
    this.#specs = specs.map((s) => ({ name: s.name, dtype: s.dtype, shape: [...s.shape] }));
    const head = serializeHeader(this.#specs, metadata);
    this.#out = new AtomicWriter(path);
    try {
      this.#out.write(head);
    } catch (e) {
      this.#out.abort();
      throw e;
    }
  }

  /** The name of the tensor write() expects next (undefined when all are written). */
  get nextName(): string | undefined {
    return this.#specs[this.#next]?.name;
  }

  /** Writes the next tensor whole, or a chunk of it (chunks must add up to its byte size). */
  write(name: string, bytes: Uint8Array): void {
    const spec = this.#specs[this.#next];
    if (!spec) throw new StateError(`write: all ${this.#specs.length} tensors are already written ('${name}' is extra)`);
    if (spec.name !== name) throw new StateError(`write: expected tensor '${spec.name}' next (header order), got '${name}'`);
    if (this.#pendingBytes === 0) this.#pendingBytes = byteSize(spec);
    if (bytes.byteLength > this.#pendingBytes)
      throw new LoraRangeError(`write: tensor '${name}' ${spec.dtype} ${shapeStr(spec.shape)} takes ${byteSize(spec)} bytes; got ${bytes.byteLength - this.#pendingBytes} too many`);
    this.#out.write(bytes);
    this.#pendingBytes -= bytes.byteLength;
    if (this.#pendingBytes === 0) this.#next++;
  }

  /** Writes a Tensor (its dtype and shape must match the spec). */
  writeTensor(name: string, t: Tensor): void {
    const spec = this.#specs[this.#next];
    const { dtype, bytes } = tensorToBytes(t);
    if (spec && spec.name === name && (spec.dtype !== dtype || spec.shape.join() !== t.shape.join()))
      throw new LoraRangeError(`writeTensor: '${name}' was declared ${spec.dtype} ${shapeStr(spec.shape)}, got ${dtype} ${shapeStr(t.shape)}`);
    this.write(name, bytes);
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

/** Writes named tensors (Tensors or raw bytes) to one safetensors file atomically, in the given order. */
export function writeSafetensors(
  path: string,
  tensors: Map<string, Tensor | RawTensor> | Record<string, Tensor | RawTensor>,
  metadata: Record<string, string> = {},
): void {
  const entries = tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors);
  const specs: TensorSpec[] = entries.map(([name, t]) => (t instanceof Tensor ? { name, dtype: dtypeOf(t), shape: t.shape } : { name, dtype: t.dtype, shape: t.shape }));
  const w = new SafetensorsStreamWriter(path, specs, metadata);
  try {
    entries.forEach(([name, t], i) => {
      const bytes = t instanceof Tensor ? tensorToBytes(t).bytes : t.bytes;
      if (bytes.byteLength !== byteSize(specs[i]))
        throw new LoraRangeError(`tensor '${name}': ${bytes.byteLength} bytes given but ${specs[i].dtype} ${shapeStr(specs[i].shape)} needs ${byteSize(specs[i])}`);
      w.write(name, bytes);
    });
    w.commit();
  } catch (e) {
    w.abort();
    throw e;
  }
}

/**
 * writeSafetensors with the file I/O on libuv's pool (the Promise settles after fsync and rename).
 * Tensors are copied out one at a time as the writes reach them.
 */
export async function writeSafetensorsAsync(
  path: string,
  tensors: Map<string, Tensor | RawTensor> | Record<string, Tensor | RawTensor>,
  metadata: Record<string, string> = {},
): Promise<void> {
  const entries = tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors);
  const specs: TensorSpec[] = entries.map(([name, t]) => (t instanceof Tensor ? { name, dtype: dtypeOf(t), shape: t.shape } : { name, dtype: t.dtype, shape: t.shape }));
  const head = serializeHeader(specs, metadata);
  function* chunks(): Generator<Uint8Array> {
    yield head;
    for (let i = 0; i < entries.length; i++) {
      const [name, t] = entries[i];
      const bytes = t instanceof Tensor ? tensorToBytes(t).bytes : t.bytes;
      if (bytes.byteLength !== byteSize(specs[i]))
        throw new LoraRangeError(`tensor '${name}': ${bytes.byteLength} bytes given but ${specs[i].dtype} ${shapeStr(specs[i].shape)} needs ${byteSize(specs[i])}`);
      yield bytes;
    }
  }
  await writeFileAtomic(path, chunks());
}

function dtypeOf(t: Tensor): string {
  return { f32: 'F32', f16: 'F16', bf16: 'BF16', i32: 'I32', i64: 'I64' }[t.dtype];
}
