/**
 * LoraLayer: the state every LoRA layer kind shares, as in peft's tuners/lora/layer.py. Per-adapter
 * values live in maps keyed by adapter name; subclasses supply the weight shapes, initialisation,
 * the delta weight and the forward/backward math.
 */
import { FloatDType } from '../dtype';
import { AdapterError, LoraRangeError, LoraTypeError } from '../errors';
import { call } from '../native';
import { Rng, nextGlobalSeed } from '../rng';
import { Tensor } from '../tensor';
import { Parameter } from '../train/parameter';
import { checkBool, checkFinite, checkInt, checkOptions, checkString } from '../validate';

export type InitLoraWeights = boolean | 'gaussian';

export interface AdapterOptions {
  /** Rank (peft default 8). */
  r?: number;
  /** Scaling numerator (peft default 8): scaling = loraAlpha / r, or loraAlpha / √r with useRslora. */
  loraAlpha?: number;
  /** Dropout probability on the adapter's input in training mode, in [0, 1). */
  loraDropout?: number;
  useRslora?: boolean;
  /** true: A kaiming-uniform, B = 0 (no-op at init); 'gaussian': A ~ N(0, 1/r), B = 0; false: both random. */
  initLoraWeights?: InitLoraWeights;
  /** Seed for the initialisation and the dropout masks (default: from the global generator). */
  seed?: number;
  /** Frozen adapter: forward uses it, backward gives it no gradient. */
  inferenceMode?: boolean;
  /** Storage dtype of A and B (default 'f32', as peft's autocast_adapter_dtype). */
  dtype?: FloatDType;
}

export const ADAPTER_OPTION_KEYS = [
  'r',
  'loraAlpha',
  'loraDropout',
  'useRslora',
  'initLoraWeights',
  'seed',
  'inferenceMode',
  'dtype',
] as const;

export interface MergeOptions {
  /** Check the merged weight for NaN/Inf before writing it; W is untouched on failure. */
  safeMerge?: boolean;
  /** Adapters to merge (default: the active ones). */
  adapterNames?: string[];
}

export interface AdapterGrads {
  loraA: Tensor;
  loraB: Tensor;
}

export interface BackwardResult {
  dx: Tensor;
  grads: Map<string, AdapterGrads>;
}

export abstract class LoraLayer {
  protected readonly _r = new Map<string, number>();
  protected readonly _loraAlpha = new Map<string, number>();
  protected readonly _scaling = new Map<string, number>();
  protected readonly _loraDropout = new Map<string, number>();
  protected readonly _useRslora = new Map<string, boolean>();
  protected readonly _loraA = new Map<string, Tensor>();
  protected readonly _loraB = new Map<string, Tensor>();
  protected readonly _inferenceMode = new Map<string, boolean>();
  protected readonly _seed = new Map<string, number>();
  protected _activeAdapters: string[] = [];
  protected _disableAdapters = false;
  protected _mergedAdapters: string[] = [];
  protected _training = true;
  /** Parameter objects handed out by parameters(); backward() accumulates into their grads. */
  protected readonly _parameters = new Map<string, [Parameter, Parameter]>();

  /** Base weight (owned by the caller; merge changes it in place). */
  abstract get weight(): Tensor;
  abstract get bias(): Tensor | null;
  abstract get inFeatures(): number;
  abstract get outFeatures(): number;

  get r(): ReadonlyMap<string, number> {
    return this._r;
  }
  get loraAlpha(): ReadonlyMap<string, number> {
    return this._loraAlpha;
  }
  get scaling(): ReadonlyMap<string, number> {
    return this._scaling;
  }
  get loraDropout(): ReadonlyMap<string, number> {
    return this._loraDropout;
  }
  get useRslora(): ReadonlyMap<string, boolean> {
    return this._useRslora;
  }
  get loraA(): ReadonlyMap<string, Tensor> {
    return this._loraA;
  }
  get loraB(): ReadonlyMap<string, Tensor> {
    return this._loraB;
  }
  get activeAdapters(): readonly string[] {
    return this._activeAdapters.slice();
  }
  get mergedAdapters(): readonly string[] {
    return this._mergedAdapters.slice();
  }
  get merged(): boolean {
    return this._mergedAdapters.length > 0;
  }
  get disableAdapters(): boolean {
    return this._disableAdapters;
  }
  get training(): boolean {
    return this._training;
  }
  /** Names of all adapters on this layer, in insertion order. */
  get adapterNames(): string[] {
    return [...this._r.keys()];
  }
  /** True when the adapter gets no gradients (inferenceMode). */
  isFrozen(name: string): boolean {
    this.requireAdapter(name, 'name');
    return this._inferenceMode.get(name) === true;
  }

  /**
   * The trainable tensors: lora_A and lora_B of each active adapter that is not frozen (peft's
   * requires_grad). The same Parameter objects come back on every call; after one has been handed
   * out, backward() adds the adapter's gradients into its grad.
   */
  parameters(): Parameter[] {
    const out: Parameter[] = [];
    for (const name of this._activeAdapters) {
      if (this._inferenceMode.get(name) || !this._loraA.has(name)) continue;
      out.push(...this.adapterParameters(name));
    }
    return out;
  }

  /** [lora_A, lora_B] of one adapter as Parameters (frozen or not). */
  adapterParameters(name: string): [Parameter, Parameter] {
    this.requireAdapter(name, 'name');
    let pair = this._parameters.get(name);
    if (!pair) {
      pair = [
        new Parameter(`lora_A.${name}.weight`, 'lora_A', name, this._loraA.get(name)!),
        new Parameter(`lora_B.${name}.weight`, 'lora_B', name, this._loraB.get(name)!),
      ];
      this._parameters.set(name, pair);
    }
    return [pair[0], pair[1]];
  }

  /**
   * Adds an adapter. As in peft, a new adapter is not activated, except the first one on a layer
   * with no active adapter.
   */
  addAdapter(name: string, opts: AdapterOptions = {}): this {
    checkString(name, 'name');
    const o = checkOptions(opts, ADAPTER_OPTION_KEYS, 'opts') as AdapterOptions;
    if (this._r.has(name)) throw new AdapterError(`name: adapter '${name}' already exists on this layer`);
    if (name === '__base__') throw new AdapterError("name: '__base__' is reserved for 'no adapter' in mixed batches");
    const r = checkInt(o.r ?? 8, 'opts.r', 1, 1 << 20);
    const alpha = checkFinite(o.loraAlpha ?? 8, 'opts.loraAlpha');
    const p = checkFinite(o.loraDropout ?? 0, 'opts.loraDropout');
    if (p < 0 || p >= 1) throw new LoraRangeError(`opts.loraDropout: expected 0 <= p < 1, got ${p}`);
    const rs = o.useRslora === undefined ? false : checkBool(o.useRslora, 'opts.useRslora');
    const init = o.initLoraWeights ?? true;
    if (init !== true && init !== false && init !== 'gaussian')
      throw new LoraTypeError(`opts.initLoraWeights: expected true, false or 'gaussian', got ${String(init)}`);
    const seed = o.seed === undefined ? nextGlobalSeed() : checkInt(o.seed, 'opts.seed', 0);
    const frozen = o.inferenceMode === undefined ? false : checkBool(o.inferenceMode, 'opts.inferenceMode');
    const dtype = o.dtype ?? 'f32';
    if (dtype !== 'f32' && dtype !== 'f16' && dtype !== 'bf16')
      throw new LoraTypeError(`opts.dtype: expected 'f32', 'f16' or 'bf16', got ${String(dtype)}`);
    if (r > Math.min(this.inFeatures, this.outFeatures) * 64)
      throw new LoraRangeError(`opts.r: ${r} is far larger than the layer (${this.inFeatures} in, ${this.outFeatures} out)`);

    const rng = new Rng(seed);
    const { A, B } = this.createAdapterWeights(r, init, rng, dtype);
    this._r.set(name, r);
    this._loraAlpha.set(name, alpha);
    this._scaling.set(name, rs ? alpha / Math.sqrt(r) : alpha / r);
    this._loraDropout.set(name, p);
    this._useRslora.set(name, rs);
    this._loraA.set(name, A);
    this._loraB.set(name, B);
    this._inferenceMode.set(name, frozen);
    this._seed.set(name, rng.nextSeed());
    if (this._activeAdapters.length === 0) this._activeAdapters = [name];
    return this;
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
    this.requireAdapter(name, 'name');
    if (this._mergedAdapters.includes(name))
      throw new AdapterError(`name: adapter '${name}' is merged; call unmerge() before deleting it`);
    this._loraA.get(name)!.dispose();
    this._loraB.get(name)!.dispose();
    this._parameters.get(name)?.forEach((p) => p.zeroGrad());
    this._parameters.delete(name);
    for (const m of [this._r, this._loraAlpha, this._scaling, this._loraDropout, this._useRslora, this._loraA, this._loraB, this._inferenceMode, this._seed])
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
    const out = Tensor.zeros(W.shape, { dtype: 'f32' });
    this.writeDelta(name, 1, out, out);
    return out;
  }

  /** Adds the named (or active) adapters' ΔW to the base weight; already merged ones are skipped. */
  merge(opts: MergeOptions = {}): this {
    const o = checkOptions(opts, ['safeMerge', 'adapterNames'], 'opts') as MergeOptions;
    const safe = o.safeMerge === undefined ? false : checkBool(o.safeMerge, 'opts.safeMerge');
    let names = this._activeAdapters;
    if (o.adapterNames !== undefined) {
      if (!Array.isArray(o.adapterNames)) throw new LoraTypeError('opts.adapterNames: expected an array of adapter names');
      o.adapterNames.forEach((n, i) => this.requireAdapter(n, `opts.adapterNames[${i}]`));
      names = o.adapterNames;
    }
    for (const name of names) {
      if (this._mergedAdapters.includes(name)) continue;
      const W = this.weight;
      if (safe) {
        const trial = W.clone();
        try {
          this.writeDelta(name, 1, W, trial);
          if (!call((b) => b.allFinite(trial.handle)))
            throw new LoraRangeError(`merge: NaNs or infinities detected in the merged weight for adapter '${name}'; the weight was left unchanged`);
          W.copyFrom(trial);
        } finally {
          trial.dispose();
        }
      } else {
        this.writeDelta(name, 1, W, W);
      }
      this._mergedAdapters.push(name);
    }
    return this;
  }

  /** Undoes merges in reverse order (W -= ΔW). */
  unmerge(): this {
    while (this._mergedAdapters.length > 0) {
      const name = this._mergedAdapters.pop()!;
      this.writeDelta(name, -1, this.weight, this.weight);
    }
    return this;
  }

  /** Frees the adapters' tensors (not the base weight, which the caller owns). */
  dispose(): void {
    this.clearCache();
    for (const pair of this._parameters.values()) pair.forEach((p) => p.zeroGrad());
    for (const t of [...this._loraA.values(), ...this._loraB.values()]) t.dispose();
  }

  /** Adapters that contribute to a forward in the current state. */
  protected contributingAdapters(): string[] {
    if (this._disableAdapters || this.merged) return [];
    return this._activeAdapters.filter((n) => this._loraA.has(n));
  }

  protected requireAdapter(name: unknown, argName: string): string {
    if (typeof name !== 'string') throw new LoraTypeError(`${argName}: expected an adapter name (string), got ${typeof name}`);
    if (!this._r.has(name))
      throw new AdapterError(`${argName}: unknown adapter '${name}' (this layer has: ${[...this._r.keys()].join(', ') || 'none'})`);
    return name;
  }

  /** Adds freshly computed adapter gradients into the grads of the Parameters handed out. */
  protected accumulateParameterGrads(grads: ReadonlyMap<string, AdapterGrads>): void {
    for (const [name, g] of grads) {
      const pair = this._parameters.get(name);
      if (!pair) continue;
      pair[0].accumulateGrad(g.loraA);
      pair[1].accumulateGrad(g.loraB);
    }
  }

  /** Creates A and B for a new adapter. */
  protected abstract createAdapterWeights(
    r: number,
    init: InitLoraWeights,
    rng: Rng,
    dtype: FloatDType,
  ): { A: Tensor; B: Tensor };

  /** out = W + sign·ΔW(name) (out may be W). */
  protected abstract writeDelta(name: string, sign: 1 | -1, W: Tensor, out: Tensor): void;

  /** Drops whatever the last training forward kept for backward. */
  protected abstract clearCache(): void;

  protected onAdapterDeleted(_name: string): void {}

  /** Called after manualSeed(): restart any per-forward dropout counter. */
  protected onReseed(): void {}
}
