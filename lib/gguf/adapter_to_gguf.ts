/**
 * A peft LoRA adapter directory → a llama.cpp LoRA adapter GGUF (general.type = adapter,
 * adapter.type = lora, adapter.lora.alpha, the base's general.architecture), with the names, shapes,
 * Q/K row permutation and single-alpha scaling described in lora_map.ts. The original
 * adapter_config.json travels in `lorakit.peft_config` (llama.cpp ignores unknown keys), so the way
 * back restores it exactly.
 */
import * as fs from 'fs';
import * as path from 'path';
import { LoraRangeError, LoraTypeError } from '../errors';
import { CONFIG_FILE, disposeAdapter, readAdapterAsync } from '../model/adapter_io';
import { archOf } from './arch';
import { GGML, ggmlType } from './ggml_types';
import { BaseInfo, LoraPair, baseInfoFromConfig, baseInfoFromGguf, chooseAlpha, peftToPairs } from './lora_map';
import { GgufKV, kv } from './metadata';
import { GgufReader } from './reader';
import { readConfig } from './convert_model';
import { GgufStreamWriter, GgufTensorSpec } from './writer';

export type AdapterOutType = 'f32' | 'f16' | 'bf16';
const ADAPTER_TYPES: Record<AdapterOutType, number> = { f32: GGML.F32, f16: GGML.F16, bf16: GGML.BF16 };

export interface AdapterToGgufOptions {
  /** A peft adapter directory (adapter_config.json + adapter_model.safetensors). */
  adapter: string;
  /** The GGUF base the adapter will be used with (gives the architecture, head counts and shapes to check). */
  base?: string;
  /** Or the base model's config.json (no shape check against a file). */
  baseConfig?: string;
  out: string;
  /** Type of the factors (default f32). */
  outtype?: AdapterOutType;
  onProgress?: (done: number, total: number, name: string) => void;
  warn?: (message: string) => void;
}

export interface AdapterToGgufResult {
  out: string;
  architecture: string;
  alpha: number;
  pairs: number;
  /** Modules whose scaling differed from the file's alpha/r, folded into lora_b. */
  folded: string[];
}

/** Base information from `base` (a .gguf) or `baseConfig` (a config.json). */
export function loadBaseInfo(opts: { base?: string; baseConfig?: string }): BaseInfo {
  if ((opts.base === undefined) === (opts.baseConfig === undefined)) throw new LoraTypeError('base: give exactly one of base (a .gguf file) or baseConfig (a config.json)');
  if (opts.base !== undefined) {
    const r = new GgufReader(opts.base);
    try {
      return baseInfoFromGguf(r);
    } finally {
      r.close();
    }
  }
  const config = readConfig(opts.baseConfig!, 'baseConfig');
  return baseInfoFromConfig(archOf(config, opts.baseConfig), config, opts.baseConfig!);
}

/** The metadata and tensor specs of an adapter GGUF for these pairs. */
export function adapterLayout(pairs: readonly LoraPair[], base: BaseInfo, alpha: number, type: number, name: string, peftConfig: string | null): { meta: Array<[string, GgufKV]>; specs: GgufTensorSpec[] } {
  const meta: Array<[string, GgufKV]> = [
    ['general.architecture', kv.str(base.spec.arch)],
    ['general.type', kv.str('adapter')],
    ['general.name', kv.str(name)],
    ['adapter.type', kv.str('lora')],
    ['adapter.lora.alpha', kv.f32(alpha)],
  ];
  if (peftConfig !== null) meta.push(['lorakit.peft_config', kv.str(peftConfig)]);
  const fits = (shape: readonly number[]) => (shape[1] % ggmlType(type)!.blockSize === 0 ? type : GGML.F32);
  const specs = pairs.flatMap((p) => [
    { name: `${p.base}.lora_a`, type: fits(p.aShape), shape: p.aShape },
    { name: `${p.base}.lora_b`, type: fits(p.bShape), shape: p.bShape },
  ]);
  return { meta, specs };
}

/** Converts a peft adapter to a llama.cpp LoRA GGUF. */
export async function adapterToGguf(opts: AdapterToGgufOptions): Promise<AdapterToGgufResult> {
  if (opts === null || typeof opts !== 'object') throw new LoraTypeError('opts: expected { adapter, base | baseConfig, out }');
  if (typeof opts.out !== 'string' || opts.out.length === 0) throw new LoraTypeError('out: expected an output .gguf path');
  const outtype = opts.outtype ?? 'f32';
  if (!Object.hasOwn(ADAPTER_TYPES, outtype)) throw new LoraTypeError(`outtype: expected f32, f16 or bf16, got ${JSON.stringify(outtype)}`);
  const base = loadBaseInfo(opts);
  const adapter = await readAdapterAsync(opts.adapter, opts.warn);
  let pairs: LoraPair[];
  try {
    pairs = peftToPairs(adapter, base, opts.adapter);
  } finally {
    disposeAdapter(adapter);
  }
  if (pairs.length === 0) throw new LoraRangeError(`adapter: ${opts.adapter} has no LoRA factors`);
  const { alpha, fold } = chooseAlpha(pairs);
  const configText = fs.readFileSync(path.join(opts.adapter, CONFIG_FILE), 'utf8');
  const { meta, specs } = adapterLayout(pairs, base, alpha, ADAPTER_TYPES[outtype], path.basename(path.resolve(opts.adapter)), configText);
  const w = new GgufStreamWriter(opts.out, meta, specs);
  try {
    for (let i = 0; i < pairs.length; i++) {
      const p = pairs[i];
      w.writeFloat32(`${p.base}.lora_a`, p.a);
      w.writeFloat32(`${p.base}.lora_b`, fold[i] === 1 ? p.b : p.b.map((v) => v * fold[i]));
      opts.onProgress?.(i + 1, pairs.length, p.base);
      await new Promise((r) => setImmediate(r));
    }
    w.commit();
  } catch (e) {
    w.abort();
    throw e;
  }
  return { out: opts.out, architecture: base.spec.arch, alpha, pairs: pairs.length, folded: pairs.filter((_, i) => fold[i] !== 1).map((p) => p.module) };
}
