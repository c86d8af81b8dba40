/**
 * peft's ModulesToSaveWrapper: a module named in a config's modulesToSave gets a full trainable copy
 * of its tensors per adapter. The active adapter's copy is the one a forward should use (`weight`,
 * `bias`), the original is kept untouched; mergeAndUnload keeps the active copy. lorakit runs no
 * forward for such modules (the caller's model does, as for any non-LoRA module): the wrapper
 * holds the tensors, hands out their Parameters and says which ones are live.
 */
import { AdapterError, StateError } from '../errors';
import { NormalizedModule, hasData } from './modules';
import { isQuantizedTensor } from '../quantized_tensor';
import { Parameter } from '../parameter';
import { Tensor } from '../tensor';

/** A module's tensors: its weight and, when it has one, its bias. */
export interface ModuleTensors {
  readonly weight: Tensor;
  readonly bias: Tensor | null;
}

/** peft's rule for modules_to_save entries: the exact module name or a '.'-suffix of it. */
export function matchesModulesToSave(list: readonly string[] | null, name: string): boolean {
  return list !== null && list.some((m) => name === m || name.endsWith(`.${m}`));
}

/** The modules a config's modulesToSave names; each must hold its tensors (peft raises when none is found). */
export function saveTargets(modules: ReadonlyMap<string, NormalizedModule>, list: readonly string[] | null): NormalizedModule[] {
  if (list === null || list.length === 0) return [];
  const found = [...modules.values()].filter((m) => matchesModulesToSave(list, m.name));
  if (found.length === 0)
    throw new AdapterError(`config.modulesToSave: ${JSON.stringify(list)} matched no module (modules look like '${[...modules.keys()].slice(0, 3).join("', '")}')`);
  for (const m of found) {
    if (isQuantizedTensor(m.weight))
      throw new AdapterError(`config.modulesToSave: module '${m.name}' has a quantized weight; a trainable copy needs a float one (leave it out of opts.quantize with skip)`);
    if (!hasData(m.weight) || (m.bias && !hasData(m.bias)))
      throw new StateError(`config.modulesToSave: module '${m.name}' was given as a shape only; its trainable copy needs its tensors`);
    if (m.tiedTo !== null) throw new AdapterError(`config.modulesToSave: module '${m.name}' shares its weight with '${m.tiedTo}'; untie it first`);
  }
  return found;
}

export class ModulesToSaveWrapper {
  readonly #copies = new Map<string, ModuleTensors>();
  readonly #frozen = new Map<string, boolean>();
  readonly #params = new Map<string, Parameter[]>();
  #active: string | null = null;

  constructor(
    readonly name: string,
    /** The module's own tensors (the caller's), left as they are while a copy is active. */
    readonly originalModule: ModuleTensors,
  ) {}

  /** Adapter name → that adapter's copy (peft's modules_to_save ModuleDict). */
  get modulesToSave(): ReadonlyMap<string, ModuleTensors> {
    return this.#copies;
  }

  /** The adapter whose copy is in use, or null (the original is used). */
  get activeAdapter(): string | null {
    return this.#active;
  }

  /** The weight a forward uses: the active adapter's copy, else the original. */
  get weight(): Tensor {
    return (this.#active !== null ? this.#copies.get(this.#active)! : this.originalModule).weight;
  }

  get bias(): Tensor | null {
    return (this.#active !== null ? this.#copies.get(this.#active)! : this.originalModule).bias;
  }

  /** Adds adapter `adapter`'s copy (a clone of the original), trainable unless frozen. */
  update(adapter: string, frozen: boolean): void {
    if (this.#copies.has(adapter)) return;
    const o = this.originalModule;
    if (o.weight.disposed || o.bias?.disposed) throw new StateError(`modulesToSave: module '${this.name}': its tensor was disposed`);
    const weight = o.weight.clone();
    let bias: Tensor | null = null;
    try {
      bias = o.bias ? o.bias.clone() : null;
    } catch (e) {
      weight.dispose();
      throw e;
    }
    this.#copies.set(adapter, { weight, bias });
    this.#frozen.set(adapter, frozen);
  }

  /** Uses `adapter`'s copy (null: the original). */
  setAdapter(adapter: string | null): void {
    if (adapter !== null && !this.#copies.has(adapter))
      throw new AdapterError(`modulesToSave: module '${this.name}' has no copy for adapter '${adapter}'`);
    this.#active = adapter;
  }

  /** The active copy's tensors as Parameters (`modules_to_save.<adapter>.weight` / `.bias`); none when frozen or inactive. */
  parameters(): Parameter[] {
    const a = this.#active;
    if (a === null || this.#frozen.get(a)) return [];
    let ps = this.#params.get(a);
    if (!ps) {
      const c = this.#copies.get(a)!;
      ps = [new Parameter(`modules_to_save.${a}.weight`, 'modules_to_save', a, c.weight)];
      if (c.bias) ps.push(new Parameter(`modules_to_save.${a}.bias`, 'modules_to_save', a, c.bias));
      this.#params.set(a, ps);
    }
    return ps.slice();
  }

  /** Frees adapter `adapter`'s copy. */
  delete(adapter: string): void {
    const c = this.#copies.get(adapter);
    if (!c) return;
    this.#params.get(adapter)?.forEach((p) => p.zeroGrad());
    this.#params.delete(adapter);
    c.weight.dispose();
    c.bias?.dispose();
    this.#copies.delete(adapter);
    this.#frozen.delete(adapter);
    if (this.#active === adapter) this.#active = null;
  }

  /**
   * peft's unload of a ModulesToSaveWrapper keeps the active copy: its values go into the original
   * tensors (in place, so the caller's state dict holds them), then every copy is freed.
   */
  unloadIntoOriginal(): void {
    const a = this.#active;
    if (a !== null) {
      const c = this.#copies.get(a)!;
      this.originalModule.weight.copyFrom(c.weight);
      if (c.bias && this.originalModule.bias) this.originalModule.bias.copyFrom(c.bias);
    }
    this.dispose();
  }

  dispose(): void {
    for (const a of [...this.#copies.keys()]) this.delete(a);
  }
}
