/**
 * A llama.cpp LoRA adapter GGUF → pairs in llama.cpp's layout (for merging), and → a peft adapter
 * directory (adapter_config.json + adapter_model.safetensors, as lib/model/adapter_io.ts writes
 * them): Q/K rows of lora_b un-permuted, token_embd's lora_a transposed back, and llama.cpp's scale
 * alpha/r (1 when alpha is 0 or missing) expressed in peft's terms. When the file carries the
 * original adapter_config.json (`lorakit.peft_config`, written by adapterToGguf) it is restored and
 * any ratio folded into lora_b is taken out again; otherwise the config is built from the file
 * (lora_alpha = alpha, r the most common rank, rank_pattern / alpha_pattern for the others).
 */
import * as fs from 'fs';
import * as path from 'path';
import { AdapterError, LoraRangeError, LoraTypeError, ShapeError, shapeStr } from '../errors';
import { writeFileAtomicSync } from '../io/atomic';
import { writeSafetensors, RawTensor } from '../io/safetensors_writer';
import { CONFIG_FILE, WEIGHTS_FILE, peftKeys } from '../model/adapter_io';
import { fromPeftJson, peftJsonText, resolveConfig, toPeftJson } from '../model/config';
import { hfTensorName, permuteHeads, unpermuteRows } from './arch';
import { loadBaseInfo } from './adapter_to_gguf';
import { BaseInfo, LoraPair, moduleScaling } from './lora_map';
import { GgufReader } from './reader';

export interface GgufLora {
  /** Pairs in llama.cpp's layout; `scaling` is llama.cpp's alpha/r (1 when alpha is 0). */
  pairs: LoraPair[];
  alpha: number;
  architecture: string;
  /** The original adapter_config.json text, when the file carries it. */
  peftConfig: string | null;
}

/** Reads an adapter GGUF, checking it is a LoRA for `base`'s architecture and shapes. */
export function readGgufLora(file: string, base: BaseInfo, warn: (m: string) => void = (m) => console.warn(m)): GgufLora {
  const r = new GgufReader(file);
  try {
    const type = r.getString('general.type', '');
    if (type !== 'adapter') throw new AdapterError(`adapter: ${file} has general.type '${type}', expected 'adapter'`);
    const at = r.getString('adapter.type', '');
    if (at !== 'lora') throw new AdapterError(`adapter: ${file} has adapter.type '${at}', expected 'lora'`);
    const arch = r.getString('general.architecture');
    if (arch !== base.spec.arch) throw new AdapterError(`adapter: ${file} is for architecture '${arch}', the base ${base.source} is '${base.spec.arch}' (llama.cpp refuses the mismatch too)`);
    const alpha = r.getNumber('adapter.lora.alpha', 0);
    const halves = new Map<string, { a?: string; b?: string }>();
    for (const t of r.tensors) {
      const m = /^(.+)\.lora_([ab])$/.exec(t.name);
      if (!m) {
        if (/_norm\.weight$/.test(t.name)) {
          warn(`lorakit: ${file}: ignoring '${t.name}' (a norm vector; llama.cpp ignores it too)`);
          continue;
        }
        throw new AdapterError(`adapter: ${file}: tensor '${t.name}' is not a lora_a / lora_b factor`);
      }
      const h = halves.get(m[1]) ?? {};
      h[m[2] as 'a' | 'b'] = t.name;
      halves.set(m[1], h);
    }
    const pairs: LoraPair[] = [];
    for (const [baseName, h] of halves) {
      if (!h.a || !h.b) throw new AdapterError(`adapter: ${file}: '${baseName}' has lora_${h.a ? 'b' : 'a'} missing`);
      const ta = r.tensor(h.a);
      const tb = r.tensor(h.b);
      if (ta.shape.length !== 2 || tb.shape.length !== 2) throw new ShapeError(`adapter: ${file}: '${baseName}' factors must be 2-D, got ${shapeStr(ta.shape)} / ${shapeStr(tb.shape)}`);
      const rank = tb.shape[1];
      const embedding = baseName === 'token_embd.weight';
      const want = base.shapes?.get(baseName);
      if (base.shapes && !want) throw new AdapterError(`adapter: ${file}: '${baseName}' is not a tensor of the base ${base.source}`);
      const implied = embedding ? [ta.shape[0], tb.shape[0]] : [tb.shape[0], ta.shape[1]];
      const rankOk = embedding ? ta.shape[1] === rank : ta.shape[0] === rank;
      if (!rankOk || (want && want.join() !== implied.join()))
        throw new ShapeError(`adapter: ${file}: '${baseName}' lora_a ${shapeStr(ta.shape)} / lora_b ${shapeStr(tb.shape)} do not fit ${want ? shapeStr(want) : 'each other'}`);
      const module = hfTensorName(base.spec, baseName)?.replace(/\.weight$/, '');
      if (!module) throw new AdapterError(`adapter: ${file}: '${baseName}' has no Hugging Face module for ${base.spec.modelType}`);
      pairs.push({
        base: baseName, module, a: r.float32(h.a), aShape: [ta.shape[0], ta.shape[1]], b: r.float32(h.b), bShape: [tb.shape[0], tb.shape[1]],
        r: rank, scaling: alpha ? alpha / rank : 1, embedding,
      });
    }
    const peftConfig = r.metadata.get('lorakit.peft_config')?.type === 'string' ? (r.get('lorakit.peft_config') as string) : null;
    return { pairs, alpha, architecture: arch, peftConfig };
  } finally {
    r.close();
  }
}

export interface GgufToPeftOptions {
  /** The llama.cpp LoRA adapter (.gguf). */
  adapter: string;
  /** The GGUF base it belongs to. */
  base: string;
  /** The peft adapter directory to write. */
  out: string;
  warn?: (message: string) => void;
}

function transpose(x: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = x[i * cols + j];
  return out;
}

const raw = (v: Float32Array, shape: number[]): RawTensor => ({ dtype: 'F32', shape, bytes: new Uint8Array(v.buffer, v.byteOffset, v.byteLength) });

function mostCommon(values: number[]): number {
  const counts = new Map<number, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  return [...counts].sort((x, y) => y[1] - x[1] || x[0] - y[0])[0][0];
}

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** Converts a llama.cpp LoRA GGUF back to a peft adapter directory. */
export async function ggufToPeft(opts: GgufToPeftOptions): Promise<{ out: string; modules: number }> {
  if (opts === null || typeof opts !== 'object') throw new LoraTypeError('opts: expected { adapter, base, out }');
  if (typeof opts.out !== 'string' || opts.out.length === 0) throw new LoraTypeError('out: expected an output directory');
  const warn = opts.warn ?? ((m: string) => console.warn(m));
  const base = loadBaseInfo({ base: opts.base });
  const lora = readGgufLora(opts.adapter, base, warn);
  if (lora.pairs.length === 0) throw new LoraRangeError(`adapter: ${opts.adapter} has no LoRA factors`);
  let configText: string;
  let peftScaling: (p: LoraPair) => number;
  if (lora.peftConfig !== null) {
    configText = lora.peftConfig;
    const c = resolveConfig(fromPeftJson(JSON.parse(configText), `${opts.adapter}: lorakit.peft_config`, warn), 'lorakit.peft_config');
    peftScaling = (p) => moduleScaling(c, p.module, p.r);
  } else {
    const ranks = lora.pairs.map((p) => p.r);
    const r = mostCommon(ranks);
    const rankPattern: Record<string, number> = {};
    const alphaPattern: Record<string, number> = {};
    for (const p of lora.pairs) {
      if (p.r !== r) rankPattern[`^${escapeRe(p.module)}$`] = p.r;
      if (!lora.alpha && p.r !== r) alphaPattern[`^${escapeRe(p.module)}$`] = p.r; // scale 1: α = r
    }
    const c = resolveConfig({ r, loraAlpha: lora.alpha || r, targetModules: lora.pairs.map((p) => p.module).sort(), rankPattern, alphaPattern, taskType: 'CAUSAL_LM' });
    configText = peftJsonText(toPeftJson(c, c.targetModules as string[]));
    peftScaling = (p) => moduleScaling(c, p.module, p.r);
  }
  const tensors = new Map<string, RawTensor>();
  for (const p of lora.pairs) {
    const keys = peftKeys(p.module, p.embedding ? 'embedding' : 'linear');
    // llama.cpp's scale over peft's, folded into B; alpha's f32 storage alone (≤ 6e-8) is not a difference
    const q = p.scaling / peftScaling(p);
    const ratio = Math.abs(q - 1) < 1e-6 ? 1 : q;
    if (p.embedding) {
      const [nVocab, r] = p.aShape;
      tensors.set(keys.A, raw(transpose(p.a, nVocab, r), [r, nVocab]));
      tensors.set(keys.B, raw(ratio === 1 ? p.b : p.b.map((v) => v * ratio), [...p.bShape]));
      continue;
    }
    const heads = permuteHeads(base.spec, p.base, base.hparams);
    const b = heads === null ? p.b : unpermuteRows(p.b, heads, p.r);
    tensors.set(keys.A, raw(p.a, [...p.aShape]));
    tensors.set(keys.B, raw(ratio === 1 ? b : b.map((v) => v * ratio), [...p.bShape]));
  }
  const sorted = new Map([...tensors].sort((x, y) => (x[0] < y[0] ? -1 : 1)));
  fs.mkdirSync(opts.out, { recursive: true });
  writeSafetensors(path.join(opts.out, WEIGHTS_FILE), sorted, { format: 'pt' });
  writeFileAtomicSync(path.join(opts.out, CONFIG_FILE), configText);
  return { out: opts.out, modules: lora.pairs.length };
}
