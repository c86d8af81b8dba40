/**
 * LoraModel: peft's LoraModel over a set of named modules. LoRA is injected where the config's
 * targetModules match (peft's rules); adapters are added, activated, deleted and combined
 * model-wide; parameter counts come from shapes alone, so a model given as shapes can be counted
 * without allocating its weights. A config's bias mode makes biases trainable and its
 * modulesToSave gives modules a trainable copy per adapter (trainable.ts, modules_to_save.ts).
 * Injection and removal of adapters: adapter_injection.ts; merges and merge-and-unload: model_merge.ts.
 */
import { CudaStream, checkStream } from '../cuda';
import { AdapterError, LoraRangeError, LoraTypeError, StateError } from '../errors';
import { LayerRngState, LoraLayer, WeightedAdapterOptions } from '../layers/lora_layer';
import { LoraLinear } from '../layers/linear';
import { Tensor } from '../tensor';
import { Parameter } from '../parameter';
import { QuantizedTensor } from '../quantized_tensor';
import { FloatDType } from '../dtype';
import { checkOptions, checkString } from '../validate';
import { FromPretrainedOptions, modelFromAdapter } from './from_pretrained';
import { ModelMergeAndUnloadOptions } from './quantize_modules';
import { LoraConfig, ResolvedLoraConfig, resolveConfig } from './config';
import { ModuleSpec, NormalizedModule, hasData, hasWeight, normalizeModules } from './modules';
import { ModulesToSaveWrapper } from './modules_to_save';
import { resolvedTargets } from './targeting';
import { countTrainable, namedTrainableParameters, trainableBiasModules, trainableLine } from './trainable';
import { AdapterLoadTarget, AdapterSaveSource } from './adapter_host';
import { AdapterSlot, InjectionTarget, injectAdapter, injectWeightedAdapter, removeAdapter } from './adapter_injection';
import { MergeSource, ModelMergeOptions, layerMerges, layerSwitches, prepareUnload, unloadedStateDict } from './model_merge';
import { LoadOptions, loadAdapter, loadAdapterAsync, readAdapter, readAdapterAsync, savePretrained, savePretrainedAsync } from './adapter_io';

export type { FromPretrainedOptions } from './from_pretrained';
export type { ModelMergeAndUnloadOptions } from './quantize_modules';
export type { AdapterSlot } from './adapter_injection';
export type { ModelMergeOptions } from './model_merge';

export class LoraModel implements AdapterLoadTarget, AdapterSaveSource {
  /** Module name → its LoRA layer (targeted modules that hold data). */
  readonly layers = new Map<string, LoraLayer>();
  /** Adapter name → its resolved config. */
  readonly peftConfig = new Map<string, ResolvedLoraConfig>();
  readonly #modules: Map<string, NormalizedModule>;
  /** Module name → adapter name → rank and alpha (also for shape-only modules). */
  readonly #slots = new Map<string, Map<string, AdapterSlot>>();
  /** Modules named by some adapter's modulesToSave → their per-adapter copies (peft's ModulesToSaveWrapper). */
  readonly #saved = new Map<string, ModulesToSaveWrapper>();
  /** Parameters of trainable biases of modules without a LoRA layer (those with one hand out their own). */
  readonly #biasParams = new Map<string, Parameter>();
  #active: string[] = [];
  #unloaded = false;
  #stream: CudaStream | null = null;
  /** QuantizedTensors fromPretrained's quantize option made (the model frees them). */
  #ownedQuantized: QuantizedTensor[] = [];
  /** During mergeAndUnload: the quantized layers' merged float weights, by module. */
  #unloadedFloat: Map<string, Tensor> | null = null;

  constructor(modules: Iterable<ModuleSpec> | Map<string, ModuleSpec>, config: LoraConfig, adapterName = 'default') {
    this.#modules = normalizeModules(modules);
    this.#active = [adapterName];
    this.addAdapter(adapterName, config);
  }

  /**
   * The cuda stream every LoRA layer of the model runs on, also layers added later; null (the
   * default): the caller's current stream. Every layer must be on cuda.
   */
  get stream(): CudaStream | null {
    return this.#stream;
  }

  set stream(s: CudaStream | null) {
    if (s !== null) {
      checkStream(s, 'stream');
      for (const [name, layer] of this.layers)
        if (layer.weight.device !== 'cuda')
          throw new LoraTypeError(`stream: module '${name}' is on the ${layer.weight.device}; only a model whose layers are all on cuda runs on a stream`);
    }
    for (const layer of this.layers.values()) layer.stream = s;
    this.#stream = s;
  }

  get modules(): ReadonlyMap<string, NormalizedModule> {
    return this.#modules;
  }

  get activeAdapters(): readonly string[] {
    return this.#active.slice();
  }

  /** Modules some adapter's modulesToSave names → their copies; `weight` / `bias` are what a forward should use. */
  get modulesToSave(): ReadonlyMap<string, ModulesToSaveWrapper> {
    return this.#saved;
  }

  /** @internal the adapter_host view of modulesToSave. */
  get savedModules(): ReadonlyMap<string, ModulesToSaveWrapper> {
    return this.#saved;
  }

  get adapterNames(): string[] {
    return [...this.peftConfig.keys()];
  }

  /** Module names carrying the adapter (all of them when no adapter is named). */
  targetedModules(adapterName?: string): string[] {
    return [...this.#slots.entries()].filter(([, s]) => adapterName === undefined || s.has(adapterName)).map(([n]) => n);
  }

  /** Rank and alpha of an adapter on one module. */
  slot(moduleName: string, adapterName: string): AdapterSlot | undefined {
    return this.#slots.get(moduleName)?.get(adapterName);
  }

  /** The target list after expanding 'all-linear' (what adapter_config.json records). */
  resolvedTargets(c: ResolvedLoraConfig): string[] | string {
    return resolvedTargets(c, this.#modules.values());
  }

  /** Injects a new adapter where its config targets; like peft it does not become active. */
  addAdapter(name: string, config: LoraConfig): this {
    this.requireLive();
    checkString(name, 'adapterName');
    if (this.peftConfig.has(name)) throw new AdapterError(`adapterName: adapter '${name}' already exists`);
    if (name === '__base__') throw new AdapterError("adapterName: '__base__' is reserved");
    const c = resolveConfig(config);
    if (c.bias !== 'none' && [...this.peftConfig.values()].some((o) => o.bias !== 'none'))
      throw new AdapterError(`config.bias: only one adapter may have bias != 'none' (as in peft)`);
    injectAdapter(this.injectionTarget(), name, c);
    this.peftConfig.set(name, c);
    this.syncActive();
    return this;
  }

  /** Makes the named adapter(s) active on every layer (layers without one of them skip it). */
  setAdapter(names: string | string[]): this {
    this.requireLive();
    const list = typeof names === 'string' ? [names] : names;
    if (!Array.isArray(list) || list.length === 0) throw new LoraTypeError('names: expected an adapter name or a non-empty array of names');
    list.forEach((n, i) => this.requireAdapter(n, `names[${i}]`));
    const next = [...new Set(list)];
    for (const [mod, w] of this.#saved) {
      const own = next.filter((a) => w.modulesToSave.has(a));
      if (own.length > 1)
        throw new AdapterError(`names: adapters ${own.join(', ')} each have a copy of module '${mod}' (modulesToSave); only one of them can be active (as in peft)`);
    }
    this.#active = next;
    this.syncActive();
    return this;
  }

  /** Removes an adapter everywhere. If it was active, the first remaining adapter becomes active. */
  deleteAdapter(name: string): this {
    this.requireLive();
    this.requireAdapter(name, 'adapterName');
    removeAdapter(this.injectionTarget(), name);
    this.peftConfig.delete(name);
    this.#active = this.#active.filter((n) => n !== name);
    if (this.#active.length === 0 && this.peftConfig.size > 0) this.#active = [this.adapterNames[0]];
    this.syncActive();
    return this;
  }

  /**
   * Combines existing adapters into a new one on every layer that has at least one of them
   * (peft's add_weighted_adapter: absent ones count as zero; the new adapter's scaling is 1).
   */
  addWeightedAdapter(adapters: string[], weights: number[], newName: string, opts: WeightedAdapterOptions = {}): this {
    this.requireLive();
    if (!Array.isArray(adapters) || adapters.length === 0) throw new LoraTypeError('adapters: expected a non-empty array of adapter names');
    if (!Array.isArray(weights) || weights.length !== adapters.length)
      throw new LoraRangeError(`weights: expected ${adapters.length} numbers (one per adapter), got ${Array.isArray(weights) ? weights.length : typeof weights}`);
    adapters.forEach((n, i) => this.requireAdapter(n, `adapters[${i}]`));
    checkString(newName, 'newName');
    if (this.peftConfig.has(newName)) throw new AdapterError(`newName: adapter '${newName}' already exists`);
    this.requireAllData('addWeightedAdapter', adapters);
    injectWeightedAdapter(this.injectionTarget(), adapters, weights, newName, opts);
    this.syncActive();
    return this;
  }

  /**
   * Loads a peft adapter directory onto modules (kinds follow the adapter's tensors). The adapter
   * is frozen unless opts.isTrainable, as in peft.
   */
  static fromPretrained(modules: Iterable<ModuleSpec> | Map<string, ModuleSpec>, dir: string, opts: FromPretrainedOptions = {}): LoraModel {
    const o = checkOptions(opts, ['adapterName', 'isTrainable', 'warn', 'quantize'], 'opts') as FromPretrainedOptions;
    const warn = o.warn ?? ((m: string) => console.warn(m));
    return modelFromAdapter((m, c, n) => new LoraModel(m, c, n), modules, readAdapter(dir, warn), dir, o, warn);
  }

  /** fromPretrained() with the file reads off the JS thread. */
  static async fromPretrainedAsync(modules: Iterable<ModuleSpec> | Map<string, ModuleSpec>, dir: string, opts: FromPretrainedOptions = {}): Promise<LoraModel> {
    const o = checkOptions(opts, ['adapterName', 'isTrainable', 'warn', 'quantize'], 'opts') as FromPretrainedOptions;
    const warn = o.warn ?? ((m: string) => console.warn(m));
    return modelFromAdapter((m, c, n) => new LoraModel(m, c, n), modules, await readAdapterAsync(dir, warn), dir, o, warn);
  }

  /** Adds an adapter from a peft adapter directory under `name` (not activated, as in peft). */
  loadAdapter(dir: string, name: string, opts: LoadOptions = {}): this {
    this.requireLive();
    checkString(name, 'name');
    loadAdapter(this, dir, name, checkOptions(opts, ['isTrainable', 'warn'], 'opts') as LoadOptions);
    return this;
  }

  /** loadAdapter() with the file reads off the JS thread. */
  async loadAdapterAsync(dir: string, name: string, opts: LoadOptions = {}): Promise<this> {
    this.requireLive();
    checkString(name, 'name');
    await loadAdapterAsync(this, dir, name, checkOptions(opts, ['isTrainable', 'warn'], 'opts') as LoadOptions);
    return this;
  }

  /** Writes every (or the selected) adapter in peft's format; non-default adapters go to dir/<name>. */
  savePretrained(dir: string, opts: { selectedAdapters?: string[] } = {}): this {
    this.requireLive();
    const o = checkOptions(opts, ['selectedAdapters'], 'opts') as { selectedAdapters?: string[] };
    savePretrained(this, dir, o.selectedAdapters);
    return this;
  }
  /** savePretrained() with the file I/O off the JS thread (each file written atomically). */
  async savePretrainedAsync(dir: string, opts: { selectedAdapters?: string[] } = {}): Promise<this> {
    this.requireLive();
    const o = checkOptions(opts, ['selectedAdapters'], 'opts') as { selectedAdapters?: string[] };
    await savePretrainedAsync(this, dir, o.selectedAdapters);
    return this;
  }

  /**
   * The trainable tensors, for an optimizer: lora_A, lora_B (and lora_B's bias, DoRA magnitudes) of
   * the active, non-frozen adapters; the biases the bias mode trains; the active adapter's copy of
   * each modulesToSave module. backward() on a LoRA layer accumulates into its own; the gradients of
   * the other modules' tensors come from the caller's forward (Parameter.accumulateGrad).
   */
  parameters(): Parameter[] {
    return this.namedParameters().map(([, p]) => p);
  }

  /**
   * [name, Parameter] pairs in module order, named as peft's named_parameters without its
   * `base_model.model.` prefix: `<module>.lora_A.<adapter>.weight`, `<module>.base_layer.bias`
   * (a LoRA layer's trained bias), `<module>.bias`, `<module>.modules_to_save.<adapter>.weight`.
   */
  namedParameters(): Array<[string, Parameter]> {
    this.requireLive();
    return namedTrainableParameters(this.trainableView(), this.layers, this.#biasParams);
  }

  /** { trainable, total } parameter counts as peft's get_nb_trainable_parameters gives them. */
  getNbTrainableParameters(): { trainable: number; total: number } {
    this.requireLive();
    return countTrainable(this.trainableView());
  }

  private trainableView() {
    return { peftConfig: this.peftConfig, active: this.#active, modules: this.#modules, slots: this.#slots, saved: this.#saved };
  }

  /** Prints (and returns) peft's line: `trainable params: N || all params: M || trainable%: P`. */
  printTrainableParameters(log: (line: string) => void = (l) => console.log(l)): string {
    const line = trainableLine(this.getNbTrainableParameters());
    log(line);
    return line;
  }

  /**
   * Merges the active (or named) adapters into the base weights in place; exactly by default
   * (LoraLayer.merge: unmergeAdapter() gives every weight back bit for bit), opts.exact false as peft.
   */
  mergeAdapter(opts: ModelMergeOptions = {}): this {
    this.requireLive();
    for (const [layer, o] of layerMerges(this.mergeSource(), opts)) layer.merge(o);
    return this;
  }

  /**
   * Hot-swap: every layer's merged adapters become those of `names` it holds (merged in that
   * order), in one pass over each weight when its merges were exact (LoraLayer.switchMerged); the
   * weights equal, bit for bit, those of unmergeAdapter() then mergeAdapter({ adapterNames: names }).
   */
  switchMergedAdapter(names: readonly string[]): this {
    this.requireLive();
    for (const [layer, own] of layerSwitches(this.mergeSource(), names)) layer.switchMerged(own);
    return this;
  }

  async switchMergedAdapterAsync(names: readonly string[]): Promise<this> {
    this.requireLive();
    for (const [layer, own] of layerSwitches(this.mergeSource(), names)) await layer.switchMergedAsync(own);
    return this;
  }

  /** Bytes of exact-merge side information held by all layers (LoraLayer.mergeSideInfoBytes). */
  get mergeSideInfoBytes(): number {
    let n = 0;
    for (const layer of this.layers.values()) n += layer.mergeSideInfoBytes;
    return n;
  }

  /** Undoes every merge (LIFO per layer). */
  unmergeAdapter(): this {
    this.requireLive();
    for (const layer of this.layers.values()) layer.unmerge();
    return this;
  }

  /**
   * mergeAdapter() off the JS thread: layer after layer, each layer's merge runs on a libuv thread
   * (its weight and adapter tensors are busy meanwhile). On failure the layers merged so far stay
   * merged, as with the sync form; unmergeAdapter() undoes them.
   */
  async mergeAdapterAsync(opts: ModelMergeOptions = {}): Promise<this> {
    this.requireLive();
    for (const [layer, o] of layerMerges(this.mergeSource(), opts)) await layer.mergeAsync(o);
    return this;
  }

  async unmergeAdapterAsync(): Promise<this> {
    this.requireLive();
    for (const layer of [...this.layers.values()]) await layer.unmergeAsync();
    return this;
  }

  /** mergeAndUnload() with the float layers' merges off the JS thread. */
  async mergeAndUnloadAsync(opts: ModelMergeAndUnloadOptions = {}): Promise<Map<string, Tensor>> {
    const o = this.prepareUnload(opts);
    await this.mergeAdapterAsync({ adapterNames: o.adapterNames, safeMerge: o.safeMerge, exact: false });
    return this.unload(o.dtype);
  }

  /**
   * Merges the active (or named) adapters and returns the base model's state dict under its own
   * tensor names (tied weights once, under the owner's name). The weights are the caller's own
   * tensors, changed in place as peft's merge_and_unload does; the adapters are freed and the
   * model can no longer be used.
   */
  mergeAndUnload(opts: ModelMergeAndUnloadOptions = {}): Map<string, Tensor> {
    const o = this.prepareUnload(opts);
    this.mergeAdapter({ adapterNames: o.adapterNames, safeMerge: o.safeMerge, exact: false }); // nothing to unmerge after
    return this.unload(o.dtype);
  }

  /** Quantized layers first: their merged weights as float copies (the merges that follow skip them). */
  private prepareUnload(opts: ModelMergeAndUnloadOptions): ModelMergeAndUnloadOptions {
    const { opts: o, floats } = prepareUnload(this.mergeSource(), opts);
    this.#unloadedFloat = floats;
    return o;
  }

  /** The state dict after a merge (modulesToSave modules hold their active copy); frees the adapters and retires the model. */
  private unload(dtype?: FloatDType): Map<string, Tensor> {
    for (const w of this.#saved.values()) w.unloadIntoOriginal();
    this.#saved.clear();
    const out = unloadedStateDict(this.#modules.values(), this.#unloadedFloat ?? new Map<string, Tensor>(), dtype);
    this.dispose();
    return out;
  }

  /** The base tensors under their state-dict names (modules given as shapes are skipped; quantized ones as QuantizedTensors). */
  stateDict(): Map<string, Tensor | QuantizedTensor> {
    const out = new Map<string, Tensor | QuantizedTensor>();
    for (const m of this.#modules.values()) {
      if (m.tiedTo === null && hasWeight(m.weight)) out.set(m.weightName, m.weight);
      if (m.bias && hasData(m.bias)) out.set(m.biasName, m.bias);
    }
    return out;
  }

  /** Frees every adapter tensor and the QuantizedTensors the model made (the caller's base weights are theirs). */
  dispose(): void {
    for (const layer of this.layers.values()) layer.dispose();
    this.layers.clear();
    for (const w of this.#saved.values()) w.dispose();
    this.#saved.clear();
    for (const q of this.#ownedQuantized) q.dispose();
    this.#ownedQuantized = [];
    this.#unloadedFloat = null;
    this.#unloaded = true;
  }

  /** @internal fromPretrained: the QuantizedTensors made on load, freed with the model. */
  adoptQuantized(made: QuantizedTensor[]): void {
    this.#ownedQuantized.push(...made);
  }

  /** Every layer's dropout generator state, by module name (for a training checkpoint). */
  rngState(): Record<string, LayerRngState> {
    return Object.fromEntries([...this.layers].map(([m, l]) => [m, l.rngState()]));
  }

  /** Restores rngState(); every layer it names must exist. */
  setRngState(state: Record<string, LayerRngState>): this {
    if (state === null || typeof state !== 'object') throw new LoraTypeError('state: expected the object rngState() returned');
    for (const [m, s] of Object.entries(state)) {
      const layer = this.layers.get(m);
      if (!layer) throw new AdapterError(`state: module '${m}' has no LoRA layer in this model`);
      layer.setRngState(s);
    }
    return this;
  }

  /** @internal */
  requireAdapter(name: unknown, argName: string): string {
    if (typeof name !== 'string') throw new LoraTypeError(`${argName}: expected an adapter name (string), got ${typeof name}`);
    if (!this.peftConfig.has(name)) throw new AdapterError(`${argName}: unknown adapter '${name}' (this model has: ${this.adapterNames.join(', ') || 'none'})`);
    return name;
  }

  /** @internal Throws unless every module carrying the adapters (all when null) holds data. */
  requireAllData(op: string, adapters: string[] | null): void {
    for (const [mod, s] of this.#slots) {
      if (adapters !== null && !adapters.some((a) => s.has(a))) continue;
      if (!this.layers.has(mod)) throw new StateError(`${op}: module '${mod}' was given as a shape only; ${op} needs its weight tensor`);
    }
  }

  private syncActive(): void {
    const biases = trainableBiasModules(this.trainableView());
    for (const [mod, layer] of this.layers) {
      layer.setAdapter(this.#active.filter((a) => layer.adapterNames.includes(a)));
      layer.trainableBias = biases.has(mod) && layer.bias !== null && layer instanceof LoraLinear;
    }
    for (const w of this.#saved.values()) w.setAdapter(this.#active.find((a) => w.modulesToSave.has(a)) ?? null);
  }

  private requireLive(): void {
    if (this.#unloaded) throw new StateError('LoraModel: already unloaded (mergeAndUnload/dispose); build a new one');
  }

  /** The model as adapter_injection.ts sees it. */
  private injectionTarget(): InjectionTarget {
    return {
      modules: this.#modules, layers: this.layers, slots: this.#slots, saved: this.#saved, peftConfig: this.peftConfig, stream: this.#stream,
      resolvedTargets: (c) => this.resolvedTargets(c),
      targetedModules: (n) => this.targetedModules(n),
    };
  }

  /** The model as model_merge.ts sees it. */
  private mergeSource(): MergeSource {
    return {
      layers: this.layers, active: this.#active, unloadedFloat: this.#unloadedFloat,
      requireAdapter: (n, arg) => this.requireAdapter(n, arg),
      requireAllData: (op, a) => this.requireAllData(op, a),
    };
  }
}
