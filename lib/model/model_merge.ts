/**
 * LoraModel's merges, as peft's merge_adapter / unmerge_adapter / merge_and_unload: which adapters
 * each layer merges or switches to (LoraLayer.merge / switchMerged do the work, exactly by default),
 * and the state dict merge_and_unload hands back: W + Σ ΔW under each module's own tensor names.
 */
import { FloatDType, isFloatDType } from '../dtype';
import { LoraTypeError } from '../errors';
import { LoraLayer, MergeOptions } from '../layers/lora_layer';
import { isQuantizedTensor } from '../quantized_tensor';
import { Tensor } from '../tensor';
import { checkOptions } from '../validate';
import { NormalizedModule, hasData } from './modules';
import { ModelMergeAndUnloadOptions, floatMergedWeights } from './quantize_modules';

/** LoraModel.mergeAdapter's options (LoraLayer.merge's, applied to every layer). */
export interface ModelMergeOptions {
  adapterNames?: string[];
  safeMerge?: boolean;
  /** Exact merge (default true): side information per layer makes unmergeAdapter() exact. */
  exact?: boolean;
}

/** What the merge plans read of a LoraModel. */
export interface MergeSource {
  readonly layers: ReadonlyMap<string, LoraLayer>;
  readonly active: string[];
  /** During mergeAndUnload: the quantized layers' merged float weights, by module (their layers merge no more). */
  readonly unloadedFloat: ReadonlyMap<string, Tensor> | null;
  requireAdapter(name: unknown, argName: string): string;
  requireAllData(op: string, adapters: string[] | null): void;
}

/** mergeAdapter(opts): each layer holding some of the active (or named) adapters, with its merge options. */
export function layerMerges(m: MergeSource, opts: ModelMergeOptions): Array<[LoraLayer, MergeOptions]> {
  const o = checkOptions(opts, ['adapterNames', 'safeMerge', 'exact'], 'opts') as ModelMergeOptions;
  const names = o.adapterNames ?? m.active;
  names.forEach((n, i) => m.requireAdapter(n, `opts.adapterNames[${i}]`));
  m.requireAllData('mergeAdapter', names);
  const out: Array<[LoraLayer, MergeOptions]> = [];
  for (const [mod, layer] of m.layers) {
    const own = names.filter((n) => layer.adapterNames.includes(n));
    if (own.length && !m.unloadedFloat?.has(mod)) out.push([layer, { adapterNames: own, safeMerge: o.safeMerge ?? false, exact: o.exact ?? true }]);
  }
  return out;
}

/** switchMergedAdapter(names): every layer, with the adapters of names it holds. */
export function layerSwitches(m: MergeSource, names: readonly string[]): Array<[LoraLayer, string[]]> {
  if (!Array.isArray(names)) throw new LoraTypeError('names: expected an array of adapter names');
  names.forEach((n, i) => m.requireAdapter(n, `names[${i}]`));
  m.requireAllData('switchMergedAdapter', [...names]);
  return [...m.layers.values()].map((layer) => [layer, names.filter((n) => layer.adapterNames.includes(n))]);
}

/**
 * mergeAndUnload's checked options (adapterNames filled in), and the quantized layers' merged
 * weights as float copies, made first (the merges that follow skip those layers).
 */
export function prepareUnload(m: MergeSource, opts: ModelMergeAndUnloadOptions): { opts: ModelMergeAndUnloadOptions; floats: Map<string, Tensor> } {
  m.requireAllData('mergeAndUnload', null);
  const o = checkOptions(opts, ['adapterNames', 'safeMerge', 'dtype'], 'opts') as ModelMergeAndUnloadOptions;
  if (o.dtype !== undefined && !isFloatDType(o.dtype)) throw new LoraTypeError(`opts.dtype: expected f32, f16 or bf16, got ${String(o.dtype)}`);
  const names = o.adapterNames ?? m.active;
  names.forEach((n, i) => m.requireAdapter(n, `opts.adapterNames[${i}]`));
  const floats = floatMergedWeights(m.layers, names, o.dtype, o.safeMerge ?? false);
  return { opts: { ...o, adapterNames: [...names] }, floats };
}

/** The merged state dict: each module's weight (its float merge when quantized) and bias, in dtype if given; tied weights once. */
export function unloadedStateDict(modules: Iterable<NormalizedModule>, floats: ReadonlyMap<string, Tensor>, dtype?: FloatDType): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  for (const m of modules) {
    const q = floats.get(m.name) ?? m.weight;
    const w = isQuantizedTensor(q) ? q.dequantize({ dtype: dtype ?? 'f32' }) : q; // an untouched quantized module
    if (m.tiedTo === null && hasData(w)) out.set(m.weightName, dtype && w.dtype !== dtype ? w.to({ dtype }) : w);
    if (m.bias && hasData(m.bias)) out.set(m.biasName, dtype && m.bias.dtype !== dtype ? m.bias.to({ dtype }) : m.bias);
  }
  return out;
}
