/**
 * Merges a LoRA adapter (a peft directory or a llama.cpp LoRA GGUF) into a GGUF base, streamed:
 * each targeted weight is read in row chunks (about 8 MiB of f32), dequantized, merged in f32 as
 * W + scale·s·B·A (peft's merge; s = α/r or rsLoRA's α/√r, B's rows in the base's Q/K order) by the
 * native merge kernel (one native call per chunk: decode, merge, encode), and encoded in the output type; every other tensor is copied byte for byte
 * (or converted when --outtype asks for another type). Peak memory is a chunk plus the adapter.
 * `outtype: 'same'` re-quantizes a merged tensor to its own type (the K-quants with lorakit's
 * one-pass quantizer, README: GGUF and node-llama-cpp); an F64 weight, which ggml cannot multiply anyway, becomes F32.
 */
import * as fs from 'fs';
import { LoraRangeError, LoraTypeError } from '../errors';
import { disposeAdapter, readAdapterAsync } from '../model/adapter_io';
import { readGgufLora } from './adapter_from_gguf';
import { mergeRowsAsync, quantizeAsync } from './codecs';
import { GgufOutType, OUT_TYPES, checkOutType, rowChunks, storageType } from './convert_model';
import { GGML, QUANTIZABLE } from './ggml_types';
import { LoraPair, baseInfoFromGguf, peftToPairs } from './lora_map';
import { GgufKV, kv } from './metadata';
import { GgufReader, GgufTensorInfo } from './reader';
import { GgufStreamWriter } from './writer';

export interface GgufMergeOptions {
  /** The GGUF base. */
  base: string;
  /** A peft adapter directory or a llama.cpp LoRA adapter (.gguf). */
  adapter: string;
  out: string;
  /** Output type of 2-D weights: 'same' (default) keeps each tensor's type. */
  outtype?: 'same' | GgufOutType;
  /** Multiplies the adapter's scaling (peft's set_scale, llama.cpp's user scale). */
  scale?: number;
  onProgress?: (done: number, total: number, name: string) => void;
  warn?: (message: string) => void;
}

export interface GgufMergeResult {
  out: string;
  tensors: number;
  merged: string[];
  /** Tensors copied byte for byte. */
  copied: number;
  bytesWritten: number;
}

const COPY_CHUNK = 16 << 20;

async function loadPairs(opts: GgufMergeOptions, reader: GgufReader, warn: (m: string) => void): Promise<LoraPair[]> {
  const base = baseInfoFromGguf(reader);
  if (typeof opts.adapter !== 'string' || !fs.existsSync(opts.adapter)) throw new LoraRangeError(`adapter: ${String(opts.adapter)} does not exist`);
  if (fs.statSync(opts.adapter).isFile()) return readGgufLora(opts.adapter, base, warn).pairs;
  const a = await readAdapterAsync(opts.adapter, warn);
  try {
    return peftToPairs(a, base, opts.adapter);
  } finally {
    disposeAdapter(a);
  }
}

/** The type each tensor is written in. */
function outputType(t: GgufTensorInfo, targeted: boolean, outtype: 'same' | GgufOutType): number {
  if (outtype !== 'same' && t.shape.length >= 2) return storageType(t.shape, outtype);
  if (!targeted || QUANTIZABLE.has(t.type)) return t.type;
  // the merge is computed in f32, so F32 loses nothing of it; any other type was refused when read
  return GGML.F32;
}

function transpose(x: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = x[i * cols + j];
  return out;
}

/** Merges an adapter into a GGUF base, writing a new GGUF. */
export async function mergeGguf(opts: GgufMergeOptions): Promise<GgufMergeResult> {
  if (opts === null || typeof opts !== 'object') throw new LoraTypeError('opts: expected { base, adapter, out }');
  if (typeof opts.out !== 'string' || opts.out.length === 0) throw new LoraTypeError('out: expected an output .gguf path');
  const outtype = opts.outtype === undefined || opts.outtype === 'same' ? 'same' : checkOutType(opts.outtype);
  const scale = opts.scale ?? 1;
  if (typeof scale !== 'number' || !Number.isFinite(scale)) throw new LoraTypeError(`scale: expected a finite number, got ${String(opts.scale)}`);
  const warn = opts.warn ?? ((m: string) => console.warn(m));
  const reader = new GgufReader(opts.base);
  try {
    if (fs.existsSync(opts.out) && fs.realpathSync(opts.out) === fs.realpathSync(opts.base)) throw new LoraRangeError(`out: ${opts.out} is the base file itself; write the merge elsewhere`);
    const pairs = new Map((await loadPairs(opts, reader, warn)).map((p) => [p.base, p]));
    const meta: Array<[string, GgufKV]> = [...reader.metadata].map(([k, e]) => [k, k === 'general.file_type' && outtype !== 'same' ? kv.u32(OUT_TYPES[outtype].fileType) : e]);
    if (outtype !== 'same' && !reader.metadata.has('general.file_type')) meta.push(['general.file_type', kv.u32(OUT_TYPES[outtype].fileType)]);
    const specs = reader.tensors.map((t) => ({ name: t.name, type: outputType(t, pairs.has(t.name), outtype), shape: t.shape }));
    const w = new GgufStreamWriter(opts.out, meta, specs);
    let copied = 0;
    try {
      for (let i = 0; i < reader.tensors.length; i++) {
        const t = reader.tensors[i];
        const type = specs[i].type;
        const p = pairs.get(t.name);
        const cols = t.ne.length ? t.ne[0] : 1;
        const rows = cols === 0 ? 0 : t.numel / cols;
        if (!p && type === t.type) {
          for (let off = 0; off < t.nbytes; off += COPY_CHUNK) w.write(t.name, reader.range(t.name, off, Math.min(t.nbytes, off + COPY_CHUNK)));
          copied++;
        } else if (!p) {
          for (const [r0, r1] of rowChunks(rows, cols)) w.write(t.name, await quantizeAsync(type, await reader.rowsFloat32Async(t.name, r0, r1 - r0)));
        } else {
          // W + s·L·R with L = lora_b, R = lora_a; token_embd: L = lora_a [n_vocab, r], R = lora_bᵀ
          const R = p.embedding ? transpose(p.b, p.bShape[0], p.r) : p.a;
          const L = p.embedding ? p.a : p.b;
          const chunks = [...rowChunks(rows, cols)];
          const start = ([r0, r1]: [number, number]) =>
            mergeRowsAsync(t.type, reader.rowsBytes(t.name, r0, r1 - r0), r1 - r0, cols, R, L.subarray(r0 * p.r, r1 * p.r), p.scaling * scale, type);
          // chunk k+1 is read and merged on the pool while chunk k is written
          let pending = start(chunks[0]);
          for (let k = 0; k < chunks.length; k++) {
            const merged = await pending;
            if (k + 1 < chunks.length) pending = start(chunks[k + 1]);
            w.write(t.name, merged);
          }
        }
        opts.onProgress?.(i + 1, reader.tensors.length, t.name);
        await new Promise((r) => setImmediate(r));
      }
      w.commit();
    } catch (e) {
      w.abort();
      throw e;
    }
    return { out: opts.out, tensors: reader.tensors.length, merged: [...pairs.keys()], copied, bytesWritten: fs.statSync(opts.out).size };
  } finally {
    reader.close();
  }
}
