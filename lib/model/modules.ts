/**
 * The modules a LoraModel works on: { name, kind, weight, bias? } where weight/bias are Tensors or
 * bare shapes (enough to count parameters). modulesFromStateDict groups a flat state dict
 * (`<module>.weight`, `<module>.bias`) into modules and guesses kinds with a small name map.
 */
import { LoraRangeError, LoraTypeError, shapeStr } from '../errors';
import { QuantizedTensor, isQuantizedTensor } from '../quantized_tensor';
import { Tensor } from '../tensor';
import { numelOf } from '../validate';
import { LoraKind, WEIGHT_RANK, factorShapes } from './factors';

/** 'other' holds parameters LoRA never targets (norms, scalars): counted, merged through unchanged. */
export type ModuleKind = LoraKind | 'other';
export const MODULE_KINDS: readonly ModuleKind[] = ['linear', 'conv1d', 'embedding', 'conv2d', 'other'];

/** A tensor, a bare shape, or (a linear module's weight) a QuantizedTensor. */
export type ParamValue = Tensor | QuantizedTensor | readonly number[];

/** Layer settings that shapes do not tell: conv2d geometry, an embedding's padding index. */
export interface ModuleOptions {
  stride?: number | [number, number];
  padding?: number | [number, number];
  dilation?: number | [number, number];
  groups?: number;
  paddingIdx?: number | null;
}

export interface ModuleSpec {
  name: string;
  kind: ModuleKind;
  weight: ParamValue;
  bias?: ParamValue | null;
  /** Name of the module whose weight this one shares (tied embeddings): counted once, saved once. */
  tiedTo?: string;
  /** State-dict names (default `<name>.weight` / `<name>.bias`). */
  weightName?: string;
  biasName?: string;
  options?: ModuleOptions;
}

export interface NormalizedModule {
  name: string;
  kind: ModuleKind;
  weight: ParamValue;
  bias: ParamValue | null;
  tiedTo: string | null;
  weightName: string;
  biasName: string;
  options: ModuleOptions;
}

export function shapeOf(p: ParamValue): readonly number[] {
  return p instanceof Tensor || isQuantizedTensor(p) ? p.shape : p;
}

/** A float tensor (not a shape, not a QuantizedTensor). */
export function hasData(p: ParamValue | null): p is Tensor {
  return p instanceof Tensor;
}

/** A tensor a LoRA layer can sit on: a float one, or a linear module's QuantizedTensor. */
export function hasWeight(p: ParamValue | null): p is Tensor | QuantizedTensor {
  return p instanceof Tensor || isQuantizedTensor(p);
}

/** [in, out] of a module as LoRA sees it (embedding: in = num_embeddings; conv2d: in = in_channels). */
export function loraDims(m: NormalizedModule): { inF: number; outF: number } {
  const s = shapeOf(m.weight);
  switch (m.kind) {
    case 'linear':
      return { inF: s[1], outF: s[0] };
    case 'conv1d':
      return { inF: s[0], outF: s[1] };
    case 'embedding':
      return { inF: s[0], outF: s[1] };
    case 'conv2d':
      return { inF: s[1] * (m.options.groups ?? 1), outF: s[0] };
    default:
      throw new LoraTypeError(`module '${m.name}': kind ${m.kind} cannot take LoRA`);
  }
}

/** Shapes of lora_A and lora_B for rank r, as peft stores them (factors.ts). */
export function loraShapes(m: NormalizedModule, r: number): { A: number[]; B: number[] } {
  if (m.kind === 'other') throw new LoraTypeError(`module '${m.name}': kind ${m.kind} cannot take LoRA`);
  return factorShapes(m.kind, shapeOf(m.weight), r, m.kind === 'conv2d' ? (m.options.groups ?? 1) : 1);
}

const RANK: Record<ModuleKind, number | null> = { ...WEIGHT_RANK, other: null };

function checkParam(v: unknown, name: string): ParamValue {
  if (v instanceof Tensor) {
    if (v.disposed) throw new LoraTypeError(`${name}: the tensor was disposed`);
    return v;
  }
  if (isQuantizedTensor(v)) {
    if (v.disposed) throw new LoraTypeError(`${name}: the QuantizedTensor was disposed`);
    return v;
  }
  if (Array.isArray(v) && v.every((d) => Number.isSafeInteger(d) && d >= 0)) return Object.freeze([...v]) as readonly number[];
  throw new LoraTypeError(`${name}: expected a Tensor or a shape (array of non-negative integers)`);
}

export function normalizeModules(modules: Iterable<ModuleSpec> | Map<string, ModuleSpec>, argName = 'modules'): Map<string, NormalizedModule> {
  if (modules === null || typeof modules !== 'object' || !(Symbol.iterator in modules) || ArrayBuffer.isView(modules))
    throw new LoraTypeError(`${argName}: expected an array (or Map) of { name, kind, weight, bias? } modules`);
  const list = modules instanceof Map ? [...modules.values()] : [...modules];
  const out = new Map<string, NormalizedModule>();
  list.forEach((m, i) => {
    const where = `${argName}[${i}]`;
    if (!m || typeof m !== 'object') throw new LoraTypeError(`${where}: expected { name, kind, weight, bias? }`);
    if (typeof m.name !== 'string' || m.name.length === 0) throw new LoraTypeError(`${where}.name: expected a non-empty string`);
    if (!MODULE_KINDS.includes(m.kind)) throw new LoraTypeError(`${where}.kind: expected one of ${MODULE_KINDS.join(', ')}, got ${String(m.kind)}`);
    if (out.has(m.name)) throw new LoraRangeError(`${where}.name: module '${m.name}' appears twice`);
    const weight = checkParam(m.weight, `${where}.weight`);
    if (isQuantizedTensor(weight) && m.kind !== 'linear')
      throw new LoraTypeError(`${where}.weight: a QuantizedTensor is a linear module's weight [out, in]; '${m.name}' is ${m.kind} (give it a float Tensor, or call .dequantize())`);
    const rank = RANK[m.kind];
    if (rank !== null && shapeOf(weight).length !== rank)
      throw new LoraRangeError(`${where}.weight: a ${m.kind} module needs a ${rank}-D weight, '${m.name}' has shape ${shapeStr(shapeOf(weight))}`);
    const bias = m.bias === undefined || m.bias === null ? null : checkParam(m.bias, `${where}.bias`);
    if (isQuantizedTensor(bias)) throw new LoraTypeError(`${where}.bias: a bias is a float Tensor, not a QuantizedTensor`);
    out.set(m.name, {
      name: m.name,
      kind: m.kind,
      weight,
      bias,
      tiedTo: m.tiedTo ?? null,
      weightName: m.weightName ?? `${m.name}.weight`,
      biasName: m.biasName ?? `${m.name}.bias`,
      options: { ...(m.options ?? {}) },
    });
  });
  for (const m of out.values()) {
    if (m.tiedTo !== null && !out.has(m.tiedTo)) throw new LoraRangeError(`${argName}: module '${m.name}' is tied to '${m.tiedTo}', which is not in the list`);
  }
  return out;
}

/** Number of elements of the module's own parameters (a tied weight is counted by its owner only). */
export function baseParamCount(m: NormalizedModule): number {
  return (m.tiedTo === null ? numelOf(shapeOf(m.weight)) : 0) + (m.bias ? numelOf(shapeOf(m.bias)) : 0);
}

const EMBEDDING_NAMES = /^(embed_tokens|embed_positions|embed_in|word_embeddings|position_embeddings|token_type_embeddings|tok_embeddings|wte|wpe|shared|embeddings)$/;
const CONV1D_NAMES = /^(c_attn|c_proj|c_fc|q_attn)$/; // transformers' GPT-2 family Conv1D

/** The default kind for a module from its last name component and weight shape. */
export function guessKind(name: string, shape: readonly number[]): ModuleKind {
  if (typeof name !== 'string') throw new LoraTypeError(`name: expected a module name, got ${typeof name}`);
  if (!Array.isArray(shape)) throw new LoraTypeError('shape: expected an array of dimensions');
  const last = name.slice(name.lastIndexOf('.') + 1);
  if (shape.length === 4) return 'conv2d';
  if (shape.length !== 2) return 'other';
  if (EMBEDDING_NAMES.test(last)) return 'embedding';
  if (CONV1D_NAMES.test(last)) return 'conv1d';
  return 'linear';
}

export interface FromStateDictOptions {
  /** Kind overrides: a module name or '.'-suffix → kind (e.g. { c_proj: 'linear' }). */
  kinds?: Record<string, ModuleKind>;
  /**
   * Tied weights { removed name: kept name } (torch's save_model writes these in the safetensors
   * metadata, e.g. { 'model.decoder.embed_tokens.weight': 'lm_head.weight' }).
   */
  aliases?: Map<string, string> | Record<string, string>;
}

function kindOverride(name: string, kinds: Record<string, ModuleKind> | undefined): ModuleKind | undefined {
  if (!kinds) return undefined;
  for (const [k, v] of Object.entries(kinds)) if (name === k || name.endsWith(`.${k}`)) return v;
  return undefined;
}

/**
 * Groups a state dict into modules: `<m>.weight` (+ `<m>.bias`) becomes module <m>; any other
 * tensor becomes an 'other' module of its own. Aliased (tied) weights become modules tied to their owner.
 */
export function modulesFromStateDict(stateDict: Map<string, ParamValue> | Record<string, ParamValue>, opts: FromStateDictOptions = {}): ModuleSpec[] {
  if (stateDict === null || typeof stateDict !== 'object') throw new LoraTypeError('stateDict: expected a Map or an object of tensors or shapes');
  if (opts === null || typeof opts !== 'object') throw new LoraTypeError('opts: expected an options object');
  const sd = stateDict instanceof Map ? stateDict : new Map(Object.entries(stateDict));
  const aliases = opts.aliases instanceof Map ? opts.aliases : new Map(Object.entries(opts.aliases ?? {}));
  const mods: ModuleSpec[] = [];
  const used = new Set<string>();
  const ownerOf = new Map<string, string>(); // weight name → module name
  for (const [key, value] of sd) {
    if (!key.endsWith('.weight')) continue;
    const name = key.slice(0, -'.weight'.length);
    const shape = shapeOf(value);
    const kind = kindOverride(name, opts.kinds) ?? guessKind(name, shape);
    const biasKey = `${name}.bias`;
    const bias = sd.get(biasKey);
    const mod: ModuleSpec = { name, kind, weight: value };
    const sharing = hasWeight(value) ? mods.find((m) => m.weight === value && m.tiedTo === undefined) : undefined;
    if (sharing) mod.tiedTo = sharing.name; // one Tensor under two names: tied, counted once
    if (bias !== undefined && shapeOf(bias).length === 1) {
      mod.bias = bias;
      used.add(biasKey);
    }
    mods.push(mod);
    used.add(key);
    ownerOf.set(key, name);
  }
  for (const [key, value] of sd) {
    if (used.has(key)) continue;
    mods.push({ name: key, kind: 'other', weight: value, weightName: key });
  }
  for (const [removed, kept] of aliases) {
    const owner = ownerOf.get(kept);
    if (owner === undefined || sd.has(removed) || !removed.endsWith('.weight')) continue;
    const name = removed.slice(0, -'.weight'.length);
    const value = sd.get(kept)!;
    const kind = kindOverride(name, opts.kinds) ?? guessKind(name, shapeOf(value));
    mods.push({ name, kind, weight: value, tiedTo: owner });
  }
  return mods;
}
