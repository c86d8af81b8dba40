/**
 * LoraLayer: the state every LoRA layer kind shares, as in peft's tuners/lora/layer.py. Per-adapter
 * values live in maps keyed by adapter name; subclasses supply the weight shapes, initialisation,
 * the delta weight and the forward/backward math. Apart: option checks (options.ts), initialisers
 * (init.ts), weighted combination (weighted_adapter.ts), mixed batches (mixed_batch.ts), the
 * Parameters handed out (trainable_adapters.ts), merge / unmerge / switchMerged over a float base
 * (float_merge.ts, exact_merge.ts), sync/async driving on a stream (layer_runner.ts).
 */
import { FloatDType } from '../dtype';
import { AdapterError, LoraRangeError, LoraTypeError, StateError } from '../errors';
import { CudaStream } from '../cuda';
import { KernelSteps, runSync } from '../exec';
import { Rng, nextGlobalSeed } from '../rng';
import type { QuantizedTensor } from '../quantized_tensor';
import { Tensor } from '../tensor';
import { checkBool, checkFinite, checkInt, checkOptions, checkString } from '../validate';
import { loraScaling } from '../model/factors';
import { ExactRecords } from './exact_merge';
import { FloatMergeHost, floatMergeSteps, floatSwitchSteps, floatUnmergeSteps } from './float_merge';
import { LayerRunner } from './layer_runner';
import { TrainableAdapters } from './trainable_adapters';
import { InitLoraWeights } from './init';
import { resolveMixedBatch } from './mixed_batch';
import {
  ADAPTER_OPTION_KEYS, AdapterOptions, LayerBackwardResult, LayerRngState, MergeOptions, MixedForwardOptions, checkRngState, resolveAdapterOptions,
} from './options';
import { WeightedAdapterOptions, loraBiasSources, weightedAdapterFactors } from './weighted_adapter';

export type { InitLoraWeights } from './init';
export { ADAPTER_OPTION_KEYS } from './options';
export type { AdapterOptions, AdapterGrads, BackwardResult, LayerBackwardResult, LayerRngState, LoraLinearForwardOptions, MergeOptions, MixedForwardOptions } from './options';
export type { CombinationType, WeightedAdapterOptions } from './weighted_adapter';

/** One adapter's entries in the layer's maps (p: dropout, rs: rsLoRA, frozen: inference mode). */
type NewAdapter = { r: number; alpha: number; scaling: number; p: number; rs: boolean; A: Tensor; B: Tensor; frozen: boolean; seed: number };

export abstract class LoraLayer extends TrainableAdapters {
  readonly #runner = new LayerRunner();
  /** Side information of the adapters merged exactly (exact_merge.ts). */
  readonly #exact = new ExactRecords();

  /** Base weight (owned by the caller; merge changes it in place); a QuantizedTensor for LoraLinear over a quantized base. */
  abstract get weight(): Tensor | QuantizedTensor;
  abstract get inFeatures(): number;
  abstract get outFeatures(): number;

  /**
   * Every kind runs forward and backward, so a layer taken from a model's map needs no cast.
   * LoraEmbedding's forward also takes Int32Array/BigInt64Array indices; its backward has no dx.
   */
  abstract forward(x: Tensor, opts?: MixedForwardOptions): Tensor;
  abstract forwardAsync(x: Tensor, opts?: MixedForwardOptions): Promise<Tensor>;
  abstract backward(dy: Tensor): LayerBackwardResult;
  abstract backwardAsync(dy: Tensor): Promise<LayerBackwardResult>;

  /**
   * The cuda stream this layer's forward, backward, merge and unmerge run on; null (the default):
   * the caller's current stream. Layers on different streams may run at the same time on the GPU.
   */
  get stream(): CudaStream | null {
    return this.#runner.stream;
  }

  set stream(s: CudaStream | null) {
    this.#runner.setStream(s, this.weight.device);
  }

  /** Bytes held for exact unmerge: the merged adapters' records (and DoRA norms); 0 when none is merged exactly. */
  get mergeSideInfoBytes(): number {
    return this.#exact.bytes;
  }

  /**
   * Adds an adapter. As in peft, a new adapter is not activated, except the first one on a layer
   * with no active adapter.
   */
  addAdapter(name: string, opts: AdapterOptions = {}): this {
    checkString(name, 'name');
    const checked = checkOptions(opts, ADAPTER_OPTION_KEYS, 'opts') as AdapterOptions;
    this.requireNewName(name, 'name');
    const caps = {
      kind: this.constructor.name,
      supportsDora: this.supportsDora,
      supportsLoraBias: this.supportsLoraBias,
      supportsWeightInit: this.supportsWeightInit,
      merged: this.merged,
    };
    const o = resolveAdapterOptions(checked, caps);
    if (o.r > Math.min(this.inFeatures, this.outFeatures) * 64)
      throw new LoraRangeError(`opts.r: ${o.r} is far larger than the layer (${this.inFeatures} in, ${this.outFeatures} out)`);
    const { r, alpha, init, dtype } = o;
    const rng = new Rng(o.seed);
    const scaling = loraScaling(alpha, r, o.useRslora);
    const { A, B } =
      init === 'pissa' || init === 'olora' ? this.initFromWeight(init, r, scaling, dtype) : this.createAdapterWeights(r, init, rng, dtype);
    this.registerAdapter(name, { r, alpha, scaling, p: o.dropout, rs: o.useRslora, A, B, frozen: o.frozen, seed: rng.nextSeed() });
    if (o.useDora) {
      this._useDora.set(name, true);
      this._loraMagnitude.set(name, this.initMagnitude(name));
    }
    if (o.loraBias) {
      // peft: zero with init true; nn.Linear(r, out)'s default bias U(±1/√r) with init false.
      const b = new Float32Array(this.outFeatures);
      if (init === false) rng.fillUniform(b, -1 / Math.sqrt(r), 1 / Math.sqrt(r));
      this._loraBBias.set(name, Tensor.from(b, [this.outFeatures], { dtype, device: this.weight.device }));
    }
    return this;
  }

  private requireNewName(name: string, argName: string): void {
    if (this._r.has(name)) throw new AdapterError(`${argName}: adapter '${name}' already exists on this layer`);
    if (name === '__base__') throw new AdapterError(`${argName}: '__base__' is reserved for 'no adapter' in mixed batches`);
  }

  private registerAdapter(name: string, a: NewAdapter): void {
    this._r.set(name, a.r);
    this._loraAlpha.set(name, a.alpha);
    this._scaling.set(name, a.scaling);
    this._loraDropout.set(name, a.p);
    this._useRslora.set(name, a.rs);
    this._loraA.set(name, a.A);
    this._loraB.set(name, a.B);
    this._inferenceMode.set(name, a.frozen);
    this._seed.set(name, a.seed);
    this._useDora.set(name, false);
    if (this._activeAdapters.length === 0) this._activeAdapters = [name];
  }

  /** The configured scaling (factors.ts: α/r, or α/√r with rsLoRA). */
  private baseScaling(name: string): number {
    return loraScaling(this._loraAlpha.get(name)!, this._r.get(name)!, this._useRslora.get(name)!);
  }

  private requireUnmergedForScale(names: readonly string[], op: string): void {
    const m = names.filter((n) => this._mergedAdapters.includes(n));
    if (m.length > 0) throw new StateError(`${op}: adapter(s) ${m.join(', ')} are merged; unmerge() before changing their scaling`);
  }

  /** peft's set_scale: scaling = scale · the configured scaling, absolute. */
  setScale(name: string, scale: number): this {
    this.requireAdapter(name, 'name');
    checkFinite(scale, 'scale');
    this.requireUnmergedForScale([name], 'setScale');
    this._scaling.set(name, scale * this.baseScaling(name));
    return this;
  }

  /** peft's scale_layer: multiplies the scaling of each active adapter by factor. */
  scaleLayer(factor: number): this {
    checkFinite(factor, 'factor');
    if (factor === 1) return this;
    const names = this._activeAdapters.filter((n) => this._r.has(n));
    this.requireUnmergedForScale(names, 'scaleLayer');
    for (const n of names) this._scaling.set(n, this._scaling.get(n)! * factor);
    return this;
  }

  /** peft's unscale_layer: no factor resets each active adapter to the configured scaling; otherwise divides by factor. */
  unscaleLayer(factor?: number): this {
    if (factor !== undefined) {
      checkFinite(factor, 'factor');
      if (factor === 0) throw new LoraRangeError('factor: cannot unscale by 0');
    }
    const names = this._activeAdapters.filter((n) => this._r.has(n));
    this.requireUnmergedForScale(names, 'unscaleLayer');
    for (const n of names) this._scaling.set(n, factor === undefined ? this.baseScaling(n) : this._scaling.get(n)! / factor);
    return this;
  }

  /**
   * peft's add_weighted_adapter for this layer: a new adapter (scaling 1, not activated) from the
   * weighted sources ('svd', 'linear' or 'cat': weighted_adapter.ts).
   */
  addWeightedAdapter(adapters: readonly string[], weights: readonly number[], newName: string, opts: WeightedAdapterOptions = {}): this {
    const checks = {
      requireAdapter: (n: unknown, arg: string) => this.requireAdapter(n, arg),
      checkNewName: () => this.requireNewName(checkString(newName, 'newName'), 'newName'),
      unsupported: this.weightedAdapterUnsupported() ?? loraBiasSources(adapters, this._loraBBias),
    };
    const { r, A, B } = weightedAdapterFactors(this, checks, adapters, weights, opts);
    const p = this._loraDropout.get(adapters[0])!;
    this.registerAdapter(newName, { r, alpha: r, scaling: 1, p, rs: false, A, B, frozen: false, seed: nextGlobalSeed() });
    return this;
  }

  /** peft's adapter_names: the distinct adapters of a mixed batch and each entry's index into them (-1: base). */
  protected resolveMixedBatch(names: unknown, batch: number): { adapters: string[]; index: Int32Array } {
    return resolveMixedBatch(names, batch, this, (n, arg) => this.requireAdapter(n, arg));
  }

  /** Makes the named adapter(s) active; several active adapters sum. */
  setAdapter(names: string | string[]): this {
    const list = typeof names === 'string' ? [names] : names;
    if (!Array.isArray(list)) throw new LoraTypeError('names: expected an adapter name or an array of names');
    list.forEach((n, i) => this.requireAdapter(n, `names[${i}]`));
    if (new Set(list).size !== list.length) throw new AdapterError(`names: duplicate adapter names in [${list.join(', ')}]`);
    this._activeAdapters = list.slice();
    return this;
  }

  /** enableAdapters(false) runs the base layer alone (unmerging first if needed). */
  enableAdapters(enabled: boolean): this {
    checkBool(enabled, 'enabled');
    this._disableAdapters = !enabled;
    return this;
  }

  /** Removes an adapter and frees its tensors. A merged adapter must be unmerged first. */
  deleteAdapter(name: string): this {
    this.requireIdle('deleteAdapter');
    this.requireAdapter(name, 'name');
    if (this._mergedAdapters.includes(name))
      throw new AdapterError(`name: adapter '${name}' is merged; call unmerge() before deleting it`);
    this._loraA.get(name)!.dispose();
    this._loraB.get(name)!.dispose();
    this._loraMagnitude.get(name)?.dispose();
    this._loraBBias.get(name)?.dispose();
    this.deleteParameters(name);
    for (const m of [this._r, this._loraAlpha, this._scaling, this._loraDropout, this._useRslora, this._loraA, this._loraB, this._inferenceMode, this._seed, this._useDora, this._loraMagnitude, this._loraBBias])
      m.delete(name);
    this.onAdapterDeleted(name);
    this._activeAdapters = this._activeAdapters.filter((n) => n !== name);
    if (this._activeAdapters.length === 0 && this._r.size > 0) this._activeAdapters = [[...this._r.keys()].sort()[0]];
    return this;
  }

  /**
   * Reseeds the dropout masks of every adapter and restarts their counter, so the masks of the
   * following forwards repeat exactly (peft's equivalent is torch.manual_seed).
   */
  manualSeed(seed: number): this {
    const rng = new Rng(checkInt(seed, 'seed', 0));
    for (const name of this._r.keys()) this._seed.set(name, rng.nextSeed());
    this.onReseed();
    return this;
  }

  /** The dropout generator's state, for a training checkpoint (train's resumeFrom restores it). */
  rngState(): LayerRngState {
    return { seeds: Object.fromEntries(this._seed), counter: this.forwardCounter };
  }

  /** Restores rngState(); the masks of the following forwards repeat those of the run it came from. */
  setRngState(s: LayerRngState): this {
    const { seeds, counter } = checkRngState(s, (n) => this.requireAdapter(n, 'state.seeds'));
    for (const [n, v] of seeds) this._seed.set(n, v);
    this.forwardCounter = counter;
    return this;
  }

  train(mode = true): this {
    checkBool(mode, 'mode');
    this._training = mode;
    if (!mode) this.clearCache();
    return this;
  }

  eval(): this {
    return this.train(false);
  }

  /** ΔW for one adapter in the base weight's layout (f32). */
  getDeltaWeight(name: string): Tensor {
    this.requireAdapter(name, 'name');
    const W = this.weight;
    const out = Tensor.zeros(W.shape, { dtype: 'f32', device: W.device });
    try {
      runSync(this.deltaSteps(name, 1, out, out, true));
    } catch (e) {
      out.dispose();
      throw e;
    }
    return out;
  }

  /**
   * Adds the named (or active) adapters' ΔW to the base weight; already merged ones are skipped. By
   * default the merge is exact (exact_merge.ts): unmerge() restores W bit for bit, for ~1–2 bits per
   * weight of side information (mergeSideInfoBytes). opts.exact false merges as peft does.
   */
  merge(opts: MergeOptions = {}): this {
    return this.runLayerSync('merge', this.mergeSteps(opts));
  }

  /** merge() with the work on a libuv thread; the weight and adapters are busy until it settles. */
  mergeAsync(opts: MergeOptions = {}): Promise<this> {
    return this.runLayerAsync('merge', this.mergeSteps(opts));
  }

  /** Undoes merges in reverse order: exact ones from their records (bit for bit), others as W -= ΔW. */
  unmerge(): this {
    return this.runLayerSync('unmerge', this.unmergeSteps());
  }

  unmergeAsync(): Promise<this> {
    return this.runLayerAsync('unmerge', this.unmergeSteps());
  }

  /**
   * Replaces the merged adapters by `names` (merged in that order). When every merged adapter was
   * merged exactly this is one pass over W (undo, then merge), bit-identical, records included, to
   * unmerge() followed by merge({ adapterNames: names }); otherwise it is those two calls.
   */
  switchMerged(names: readonly string[]): this {
    return this.runLayerSync('switchMerged', this.switchSteps(names));
  }

  switchMergedAsync(names: readonly string[]): Promise<this> {
    return this.runLayerAsync('switchMerged', this.switchSteps(names));
  }

  private *mergeSteps(opts: MergeOptions): KernelSteps<this> {
    yield* floatMergeSteps(this.floatMergeHost(), opts);
    return this;
  }

  protected *unmergeSteps(): KernelSteps<this> {
    yield* floatUnmergeSteps(this.floatMergeHost());
    return this;
  }

  private *switchSteps(names: readonly string[]): KernelSteps<this> {
    yield* floatSwitchSteps(this.floatMergeHost(), names);
    return this;
  }

  /** The layer as float_merge.ts sees it; every field is read when used. */
  private floatMergeHost(): FloatMergeHost {
    const layer = this;
    return {
      get kind() { return layer.constructor.name; },
      // The float base the generic merge paths change (LoraLinear overrides them over a quantized base).
      get weight() { return layer.weight as Tensor; },
      get bias() { return layer.bias; },
      get active() { return layer._activeAdapters; },
      get merged() { return layer._mergedAdapters; },
      records: this.#exact,
      loraBBias: this._loraBBias,
      get fanInFanOut() { return layer.exactFanInFanOut(); },
      requireAdapter: (n, arg) => this.requireAdapter(n, arg),
      scaling: (n) => this._scaling.get(n)!,
      isDora: (n) => this._useDora.get(n) === true,
      factors: (n) => {
        this.requireMergeable(n);
        const magnitude = this._useDora.get(n) ? this._loraMagnitude.get(n)! : null;
        return { A: this._loraA.get(n)!, B: this._loraB.get(n)!, magnitude };
      },
      deltaSteps: (n, sign, W, out) => this.deltaSteps(n, sign, W, out),
      doraNormSteps: (n, W) => this.exactDoraNormSteps(n, W),
      unmergeSteps: () => this.unmergeSteps(),
    };
  }

  /** Runs an operation body synchronously on the layer's stream; refused while an async one is in flight. */
  protected runLayerSync<T>(op: string, steps: KernelSteps<T>): T {
    return this.#runner.runSync(op, steps);
  }

  /** Runs an operation body step by step off the JS thread; one async operation per layer at a time. */
  protected runLayerAsync<T>(op: string, steps: KernelSteps<T>): Promise<T> {
    return this.#runner.runAsync(op, steps);
  }

  protected requireIdle(op: string): void {
    this.#runner.requireIdle(op);
  }

  /** Frees the adapters' tensors (not the base weight, which the caller owns). */
  dispose(): void {
    this.requireIdle('dispose');
    this.clearCache();
    this.clearParameterGrads();
    this.#exact.clear();
    for (const t of [...this._loraA.values(), ...this._loraB.values(), ...this._loraMagnitude.values(), ...this._loraBBias.values()]) t.dispose();
  }

  /** Adapters that contribute to a forward in the current state. */
  protected contributingAdapters(): string[] {
    if (this._disableAdapters || this.merged) return [];
    return this._activeAdapters.filter((n) => this._loraA.has(n));
  }

  /** Creates A and B for a new adapter (init.ts has peft's initialisers). */
  protected abstract createAdapterWeights(r: number, init: InitLoraWeights, rng: Rng, dtype: FloatDType): { A: Tensor; B: Tensor };

  /**
   * out = W + sign·ΔW(name) (out may be W). DoRA adapters merge as peft (out = k ⊙ (W + ΔW) and its
   * inverse) unless plainDelta, which gives the LoRA ΔW alone (peft's get_delta_weight).
   */
  protected abstract deltaSteps(name: string, sign: 1 | -1, W: Tensor, out: Tensor, plainDelta?: boolean): KernelSteps<void>;

  /** The layout exactMerge takes the layer's weight and factors in (as its mergeDelta call does). */
  protected abstract exactFanInFanOut(): boolean;

  /** Throws when an adapter's delta cannot be merged into this layer's weight. */
  protected requireMergeable(_name: string): void {}

  /** DoRA: the f32 weight norm ‖W + s·B·A‖ per output feature of W as it stands (LoraLinear). */
  protected *exactDoraNormSteps(name: string, _W: Tensor): KernelSteps<Tensor> {
    throw new AdapterError(`merge: adapter '${name}' uses DoRA, which ${this.constructor.name} does not support`);
  }

  /** Layer kinds with DoRA override this and initMagnitude. */
  protected get supportsDora(): boolean {
    return false;
  }

  protected initMagnitude(_name: string): Tensor {
    throw new AdapterError(`useDora: not supported on ${this.constructor.name}`);
  }

  /** Layer kinds with lora_bias override this (their forward, backward and merge carry b_B). */
  protected get supportsLoraBias(): boolean {
    return false;
  }

  /** Layer kinds with pissa/olora override this and initFromWeight. */
  protected get supportsWeightInit(): boolean {
    return false;
  }

  /** pissa/olora: returns A and B and rewrites the base weight so the output is unchanged. */
  protected initFromWeight(kind: 'pissa' | 'olora', _r: number, _scaling: number, _dtype: FloatDType): { A: Tensor; B: Tensor } {
    throw new AdapterError(`initLoraWeights: '${kind}' is not supported on ${this.constructor.name}`);
  }

  /** A reason why addWeightedAdapter cannot work on this layer, or null. */
  protected weightedAdapterUnsupported(): string | null {
    return null;
  }

  /** Drops whatever the last training forward kept for backward. */
  protected abstract clearCache(): void;

  protected onAdapterDeleted(_name: string): void {}

  /** Called after manualSeed(): restart any per-forward dropout counter. */
  protected onReseed(): void {}

  /** The per-forward dropout counter of layer kinds with dropout (0 for the others). */
  protected get forwardCounter(): number {
    return 0;
  }
  protected set forwardCounter(_n: number) {}
}