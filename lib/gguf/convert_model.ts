/**
 * A Hugging Face checkpoint (config.json + safetensors, sharded or not) → a GGUF base llama.cpp
 * loads, as llama.cpp's convert_hf_to_gguf.py does for llama, mistral, qwen2, qwen3, gemma, gemma2
 * and phi3: llama.cpp's tensor names, Q/K rows permuted where its rope needs it, Gemma's norms as
 * w + 1, the hyperparameter and tokenizer keys. Tensors are streamed in row chunks (about 16 MiB of
 * f32 at a time), so memory stays bounded whatever the model's size. 1-D tensors stay F32; 2-D
 * ones are written in `outtype` (rows that are not whole blocks fall back to F16, as llama.cpp's
 * converter does).
 */
import * as fs from 'fs';
import * as path from 'path';
import { AdapterError, LoraRangeError, LoraTypeError } from '../errors';
import { Checkpoint } from '../io/checkpoint';
import { float32FromBytes, ELEMENT_SIZE } from '../io/tensor_bytes';
import { ArchSpec, archOf, ggufTensorName, hparamKeys, hparamsOf, isIgnoredHfTensor, permuteHeads, permuteRows } from './arch';
import { quantizeAsync } from './codecs';
import { GGML, ggmlType } from './ggml_types';
import { GgufKV, kv } from './metadata';
import { tokenizerKeys } from './tokenizer';
import { GgufStreamWriter, GgufTensorSpec } from './writer';

export type GgufOutType = 'f32' | 'f16' | 'bf16' | 'q8_0' | 'q4_0';
export const OUT_TYPES: Record<GgufOutType, { type: number; fileType: number }> = {
  f32: { type: GGML.F32, fileType: 0 }, f16: { type: GGML.F16, fileType: 1 }, bf16: { type: GGML.BF16, fileType: 32 },
  q8_0: { type: GGML.Q8_0, fileType: 7 }, q4_0: { type: GGML.Q4_0, fileType: 2 },
};

export interface ConvertModelOptions {
  /** A Hugging Face model directory (config.json and model.safetensors or shards with their index). */
  model: string;
  /** The .gguf file to write. */
  out: string;
  /** Type of 2-D weights (default f16, as llama.cpp's converter). */
  outtype?: GgufOutType;
  onProgress?: (done: number, total: number, name: string) => void;
  warn?: (message: string) => void;
}

export interface ConvertResult {
  architecture: string;
  tensors: number;
  bytesWritten: number;
  out: string;
}

export const CHUNK_VALUES = 2 << 20; // f32 values per streamed chunk (8 MiB)

export function checkOutType(v: unknown, arg = 'outtype'): GgufOutType {
  if (typeof v !== 'string' || !Object.hasOwn(OUT_TYPES, v)) throw new LoraTypeError(`${arg}: expected one of ${Object.keys(OUT_TYPES).join(', ')}, got ${JSON.stringify(v)}`);
  return v as GgufOutType;
}

export function readConfig(file: string, arg: string): Record<string, unknown> {
  if (!fs.existsSync(file)) throw new LoraRangeError(`${arg}: ${file} does not exist`);
  let json: unknown;
  try {
    json = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new LoraTypeError(`${file}: not valid JSON (${(e as Error).message})`);
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new LoraTypeError(`${file}: expected a JSON object`);
  const c = json as Record<string, unknown>;
  // multimodal configs keep the language model's settings under text_config
  return c.text_config && typeof c.text_config === 'object' ? { ...c, ...(c.text_config as Record<string, unknown>) } : c;
}

/** The ggml type a tensor of this shape is written in. */
export function storageType(shape: readonly number[], out: GgufOutType): number {
  if (shape.length < 2) return GGML.F32;
  const t = OUT_TYPES[out].type;
  const bs = ggmlType(t)!.blockSize;
  if (shape[shape.length - 1] % bs === 0) return t;
  return out === 'f32' ? GGML.F32 : GGML.F16;
}

/** Splits `rows` rows into chunks of at most CHUNK_VALUES values, each a multiple of `unit` rows. */
export function* rowChunks(rows: number, cols: number, unit = 1): Generator<[number, number]> {
  const per = Math.max(unit, Math.floor(CHUNK_VALUES / Math.max(cols, 1) / unit) * unit);
  for (let r = 0; r < rows; r += per) yield [r, Math.min(rows, r + per)];
  if (rows === 0) yield [0, 0];
}

interface Planned {
  hf: string;
  spec: GgufTensorSpec;
}

function planTensors(ck: Checkpoint, arch: ArchSpec, config: Record<string, unknown>, out: GgufOutType, dir: string): Planned[] {
  const tied = config.tie_word_embeddings === true;
  const plan: Planned[] = [];
  for (const name of ck.names) {
    if (isIgnoredHfTensor(name)) continue;
    const g = ggufTensorName(arch, name);
    if (g === null) throw new AdapterError(`model: tensor '${name}' of ${dir} has no llama.cpp counterpart for ${arch.modelType} (lorakit maps ${Object.keys(arch.block).join(', ')}, embed_tokens, norm, lm_head)`);
    if (g === 'output.weight' && (arch.dropLmHead || tied)) continue; // llama.cpp uses token_embd
    const e = ck.entry(name);
    if (!['F32', 'F16', 'BF16', 'F64'].includes(e.dtype)) throw new LoraTypeError(`model: tensor '${name}' is ${e.dtype}; only float checkpoints are converted`);
    plan.push({ hf: name, spec: { name: g, type: storageType(e.shape, out), shape: e.shape } });
  }
  return plan;
}

/** The metadata of the converted base. */
function baseMetadata(arch: ArchSpec, config: Record<string, unknown>, dir: string, out: GgufOutType, warn: (m: string) => void): { keys: Array<[string, GgufKV]>; ropeFreqs: Float32Array | null } {
  const h = hparamKeys(arch, config, path.join(dir, 'config.json'));
  const name = typeof config._name_or_path === 'string' && config._name_or_path ? config._name_or_path : path.basename(path.resolve(dir));
  const keys: Array<[string, GgufKV]> = [
    ['general.architecture', kv.str(arch.arch)],
    ['general.type', kv.str('model')],
    ['general.name', kv.str(name)],
    ['general.file_type', kv.u32(OUT_TYPES[out].fileType)],
    ['general.quantization_version', kv.u32(2)],
    ...h.keys,
    ...tokenizerKeys(dir, arch.arch, hparamsOf(config, 'config.json').vocab, config, warn),
  ];
  return { keys, ropeFreqs: h.ropeFreqs };
}

/** Streams one HF tensor into the writer: f32 row chunks, transformed, encoded in the spec's type. */
async function streamTensor(ck: Checkpoint, p: Planned, arch: ArchSpec, config: Record<string, unknown>, w: GgufStreamWriter): Promise<void> {
  const reader = ck.readerOf(p.hf);
  const e = reader.entry(p.hf);
  const cols = e.shape.length >= 2 ? e.shape[e.shape.length - 1] : e.shape.length === 1 ? e.shape[0] : 1;
  const rows = cols === 0 ? 0 : e.shape.reduce((a, b) => a * b, 1) / cols;
  const heads = permuteHeads(arch, p.spec.name, hparamsOf(config, 'config.json'));
  const isNorm = arch.normPlusOne && /norm\.weight$/.test(p.spec.name);
  const elt = ELEMENT_SIZE[e.dtype];
  if (heads !== null && e.shape.length === 1) {
    // a bias: permuted as rows of one value
    w.writeFloat32(p.spec.name, permuteRows(float32FromBytes(reader.bytes(p.hf), e.dtype, p.hf).slice(), heads, 1));
    return;
  }
  const unit = heads !== null ? rows / heads : 1; // permutation stays within a head
  for (const [r0, r1] of rowChunks(rows, cols, unit)) {
    let v: Float32Array = float32FromBytes(reader.range(p.hf, r0 * cols * elt, r1 * cols * elt), e.dtype, p.hf).slice();
    if (heads !== null) v = permuteRows(v, (r1 - r0) / unit, cols);
    if (isNorm) for (let i = 0; i < v.length; i++) v[i] = v[i] + 1;
    w.write(p.spec.name, await quantizeAsync(p.spec.type, v));
  }
}

/** Converts a Hugging Face model directory to a GGUF base. */
export async function convertModelToGguf(opts: ConvertModelOptions): Promise<ConvertResult> {
  if (opts === null || typeof opts !== 'object') throw new LoraTypeError('opts: expected { model, out, outtype? }');
  if (typeof opts.model !== 'string' || !fs.existsSync(opts.model) || !fs.statSync(opts.model).isDirectory()) throw new LoraRangeError(`model: ${String(opts.model)} is not a directory`);
  if (typeof opts.out !== 'string' || opts.out.length === 0) throw new LoraTypeError('out: expected an output .gguf path');
  const out = checkOutType(opts.outtype ?? 'f16');
  const warn = opts.warn ?? ((m: string) => console.warn(m));
  const config = readConfig(path.join(opts.model, 'config.json'), 'model');
  const arch = archOf(config, path.join(opts.model, 'config.json'));
  const ck = Checkpoint.open(opts.model, 'model');
  try {
    const plan = planTensors(ck, arch, config, out, opts.model);
    const meta = baseMetadata(arch, config, opts.model, out, warn);
    const specs = plan.map((p) => p.spec);
    if (meta.ropeFreqs) specs.push({ name: 'rope_freqs.weight', type: GGML.F32, shape: [meta.ropeFreqs.length] });
    const w = new GgufStreamWriter(opts.out, meta.keys, specs);
    try {
      for (let i = 0; i < plan.length; i++) {
        await streamTensor(ck, plan[i], arch, config, w);
        opts.onProgress?.(i + 1, specs.length, plan[i].spec.name);
        await new Promise((r) => setImmediate(r));
      }
      if (meta.ropeFreqs) w.writeFloat32('rope_freqs.weight', meta.ropeFreqs);
      w.commit();
    } catch (e) {
      w.abort();
      throw e;
    }
    return { architecture: arch.arch, tensors: specs.length, bytesWritten: fs.statSync(opts.out).size, out: opts.out };
  } finally {
    ck.close();
  }
}
