/**
 * Putting an adapter into a LoraModel's modules, as peft's inject_adapter and add_weighted_adapter:
 * a LoRA layer (created on first use) on every module the config targets, per-module rank and
 * alpha (rankPattern / alphaPattern), a modulesToSave copy per adapter; or, for a weighted
 * combination, a new adapter on every layer holding one of the sources and its derived config.
 * On failure nothing of the new adapter stays behind. removeAdapter takes one out (peft's delete_adapter).
 */
import { CudaStream } from '../cuda';
import { LoraRangeError, LoraTypeError, AdapterError } from '../errors';
import { LoraLayer, WeightedAdapterOptions } from '../layers/lora_layer';
import { Rng, nextGlobalSeed } from '../rng';
import { Tensor } from '../tensor';
import { ResolvedLoraConfig } from './config';
import { createLayer } from './layer_factory';
import { NormalizedModule, hasWeight } from './modules';
import { ModulesToSaveWrapper, matchesModulesToSave, saveTargets } from './modules_to_save';
import { biasTensor } from './trainable';
import { isExcluded, isTargeted, rankAndAlpha } from './targeting';

export interface AdapterSlot {
  r: number;
  loraAlpha: number;
}

/** The LoraModel state an injection reads and fills in. */
export interface InjectionTarget {
  readonly modules: ReadonlyMap<string, NormalizedModule>;
  readonly layers: Map<string, LoraLayer>;
  /** Module name → adapter name → rank and alpha (also for shape-only modules). */
  readonly slots: Map<string, Map<string, AdapterSlot>>;
  readonly saved: Map<string, ModulesToSaveWrapper>;
  readonly peftConfig: Map<string, ResolvedLoraConfig>;
  /** The model's stream, given to layers it creates. */
  readonly stream: CudaStream | null;
  /** The target list after expanding 'all-linear'. */
  resolvedTargets(c: ResolvedLoraConfig): string[] | string;
  targetedModules(adapterName?: string): string[];
}

/** Adds adapter `name` with config c where c targets (layers, slots, modulesToSave copies); not peftConfig. */
export function injectAdapter(t: InjectionTarget, name: string, c: ResolvedLoraConfig): void {
  const targets = t.resolvedTargets(c);
  // As peft, a module in modulesToSave never takes LoRA.
  const hits = [...t.modules.values()].filter(
    (m) => !isExcluded(c, m.name) && !matchesModulesToSave(c.modulesToSave, m.name) && isTargeted(c, targets, m.name),
  );
  if (hits.length === 0)
    throw new AdapterError(`config.targetModules: ${JSON.stringify(c.targetModules)} matched no module (modules look like '${[...t.modules.keys()].slice(0, 3).join("', '")}')`);
  for (const m of hits) {
    if (m.kind === 'other') throw new LoraTypeError(`config.targetModules: module '${m.name}' (kind 'other') cannot take LoRA; supported kinds are linear, conv1d, embedding, conv2d`);
    if (c.bias !== 'none' && m.bias && m.kind !== 'linear' && m.kind !== 'conv1d')
      throw new AdapterError(`config.bias: '${c.bias}' trains the bias of ${m.kind} module '${m.name}'; lorakit trains base biases of linear and conv1d LoRA layers only`);
  }
  const saved = saveTargets(t.modules, c.modulesToSave);
  const rng = new Rng(c.seed ?? nextGlobalSeed());
  const created: Array<[string, LoraLayer, boolean]> = [];
  try {
    for (const m of hits) {
      const { r, alpha } = rankAndAlpha(c, m.name);
      if (!Number.isInteger(r) || r < 1) throw new LoraRangeError(`config.rankPattern: rank for '${m.name}' must be a positive integer, got ${r}`);
      const seed = rng.nextSeed();
      if (hasWeight(m.weight)) {
        let layer = t.layers.get(m.name);
        const fresh = layer === undefined;
        layer ??= createLayer(m);
        if (fresh && t.stream) layer.stream = t.stream;
        layer.addAdapter(name, {
          r, loraAlpha: alpha, loraDropout: c.loraDropout, useRslora: c.useRslora, initLoraWeights: c.initLoraWeights, useDora: c.useDora,
          loraBias: c.loraBias, seed, inferenceMode: c.inferenceMode,
        });
        created.push([m.name, layer, fresh]);
        if (fresh) t.layers.set(m.name, layer);
      }
      if (!t.slots.has(m.name)) t.slots.set(m.name, new Map());
      t.slots.get(m.name)!.set(name, { r, loraAlpha: alpha });
    }
    for (const m of saved) {
      let w = t.saved.get(m.name);
      if (!w) {
        w = new ModulesToSaveWrapper(m.name, { weight: m.weight as Tensor, bias: biasTensor(m) });
        t.saved.set(m.name, w);
      }
      w.update(name, c.inferenceMode);
    }
  } catch (e) {
    for (const [mod, w] of [...t.saved]) {
      w.delete(name);
      if (w.modulesToSave.size === 0) t.saved.delete(mod);
    }
    for (const [mod, layer, fresh] of created) {
      if (fresh) {
        layer.dispose();
        t.layers.delete(mod);
      } else if (layer.adapterNames.includes(name)) layer.deleteAdapter(name);
    }
    for (const [mod, s] of [...t.slots]) {
      s.delete(name);
      if (s.size === 0) t.slots.delete(mod);
    }
    throw e;
  }
}

/**
 * Adds newName as the weighted combination of `adapters` (checked by the caller) on every layer
 * holding one of them, and its config: the first source's, with rank and alpha per module.
 */
export function injectWeightedAdapter(t: InjectionTarget, adapters: string[], weights: number[], newName: string, opts: WeightedAdapterOptions): void {
  const saving = adapters.filter((a) => [...t.saved.values()].some((w) => w.modulesToSave.has(a)));
  if (saving.length) throw new AdapterError(`adapters: ${saving.join(', ')} have modulesToSave copies, which a weighted combination cannot merge (as in peft)`);
  const first = t.peftConfig.get(adapters[0])!;
  const done: LoraLayer[] = [];
  try {
    for (const [mod, layer] of t.layers) {
      const have = adapters.filter((a) => layer.adapterNames.includes(a));
      if (have.length === 0) continue;
      layer.addWeightedAdapter(have, have.map((a) => weights[adapters.indexOf(a)]), newName, opts);
      done.push(layer);
      const r = layer.r.get(newName)!;
      if (!t.slots.has(mod)) t.slots.set(mod, new Map());
      t.slots.get(mod)!.set(newName, { r, loraAlpha: layer.loraAlpha.get(newName)! });
    }
  } catch (e) {
    for (const l of done) l.deleteAdapter(newName);
    for (const s of t.slots.values()) s.delete(newName);
    throw e;
  }
  const targets = t.targetedModules(newName);
  const r = targets.length ? t.slots.get(targets[0])!.get(newName)!.r : first.r;
  t.peftConfig.set(newName, {
    ...first, r, loraAlpha: r, targetModules: targets, rankPattern: {}, alphaPattern: {}, useRslora: false, useDora: false, loraBias: false,
    modulesToSave: null, bias: 'none', layersToTransform: null, layersPattern: null, excludeModules: null,
  });
  for (const mod of targets) {
    const s = t.slots.get(mod)!.get(newName)!;
    const key = mod.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'); // patterns are regexes: match this module only
    if (s.r !== r) t.peftConfig.get(newName)!.rankPattern[key] = s.r;
    if (s.loraAlpha !== r) t.peftConfig.get(newName)!.alphaPattern[key] = s.loraAlpha;
  }
}

/** Takes adapter `name` out of every layer (freeing layers left without adapters), slot and modulesToSave copy; not peftConfig. */
export function removeAdapter(t: InjectionTarget, name: string): void {
  for (const [mod, layer] of t.layers) {
    if (!layer.adapterNames.includes(name)) continue;
    layer.deleteAdapter(name);
    if (layer.adapterNames.length === 0) {
      layer.dispose();
      t.layers.delete(mod);
    }
  }
  for (const [mod, s] of [...t.slots]) {
    s.delete(name);
    if (s.size === 0) t.slots.delete(mod);
  }
  for (const [mod, w] of [...t.saved]) {
    w.delete(name);
    if (w.modulesToSave.size === 0) t.saved.delete(mod);
  }
}
