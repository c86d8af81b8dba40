/**
 * LoraLayer: the state every LoRA layer kind shares, as in peft's tuners/lora/layer.py. Per-adapter
 * values live in maps keyed by adapter name; subclasses supply the weight shapes, initialisation,
 * the delta weight and the forward/backward math.
 */
import { FloatDType } from '../dtype';
import { AdapterError, LoraRangeError, LoraTypeError, ShapeError, StateError } from '../errors';
import { CudaStream, checkStream } from '../cuda';
import { KernelSteps, runAsync, runSync, step } from '../exec';
import { mat, matmul, qr, svd, transpose } from '../linalg';
import { Rng, nextGlobalSeed } from '../rng';
import { Tensor } from '../tensor';
import { Parameter } from '../parameter';
import { checkBool, checkFinite, checkInt, checkOptions, checkScale, checkString } from '../validate';

/**
 * true: A kaiming-uniform, B = 0; 'gaussian': A ~ N(0, 1/r), B = 0; false: both random; 'pissa' and
 * 'olora' (LoraLinear): A and B from an SVD / QR of W, and W is rewritten so the output is unchanged.
 */
export type InitLoraWeights = boolean | 'gaussian' | 'pissa' | 'olora';

export type CombinationType = 'svd' | 'linear' | 'cat';

export interface WeightedAdapterOptions {
  /** peft's default is 'svd'. */
  combinationType?: CombinationType;
  /** Rank of the 'svd' combination (default: the largest source rank). */
  svdRank?: number;
}

/** Where each row of a mixed batch goes: '__base__' runs the base layer alone. */
export interface MixedForwardOptions {
  /** One adapter name (or '__base__') per entry of x's first dimension; eval mode only. */
  adapterNames?: readonly string[];
}

export interface AdapterOptions {
  /** Rank (peft default 8). */
  r?: number;
  /** Scaling numerator (peft default 8): scaling = loraAlpha / r, or loraAlpha / √r with useRslora. */
  loraAlpha?: number;
  /** Dropout probability on the adapter's input in training mode, in [0, 1). */
  loraDropout?: number;
  useRslora?: boolean;
  /** See InitLoraWeights (default true: a no-op at init). */
  initLoraWeights?: InitLoraWeights;
  /** DoRA (LoraLinear): a magnitude vector [out] rescales each output row by m / ‖W + s·B·A‖. */
  useDora?: boolean;
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
  'useDora',
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
  /** DoRA adapters: dL/dmagnitude [out]. */
  magnitude?: Tensor;
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
  protected readonly _useDora = new Map<string, boolean>();
  protected readonly _loraMagnitude = new Map<string, Tensor>();
  protected readonly _magnitudeParameters = new Map<string, Parameter>();
  protected _activeAdapters: string[] = [];
  protected _disableAdapters = false;
  protected _mergedAdapters: string[] = [];
  protected _training = true;
  #asyncOp: string | null = null;
  #stream: CudaStream | null = null;
  /** Parameter objects handed out by parameters(); backward() accumulates into their grads. */
  protected readonly _parameters = new Map<string, [Parameter, Parameter]>();

  /** Base weight (owned by the caller; merge changes it in place). */
  abstract get weight(): Tensor;
  abstract get bias(): Tensor | null;
  abstract get inFeatures(): number;
  abstract get outFeatures(): number;

  /**
   * The cuda stream this layer's forward, backward, merge and unmerge run on; null (the default):
   * the caller's current stream. Layers on different streams may run at the same time on the GPU.
   */
  get stream(): CudaStream | null {
    return this.#stream;
  }

  set stream(s: CudaStream | null) {
    this.requireIdle('stream');
    if (s === null) {
      this.#stream = null;
      return;
    }
    checkStream(s, 'stream');
    if (this.weight.device !== 'cuda')
      throw new LoraTypeError(`stream: only cuda layers run on a stream; this layer's weight is on the ${this.weight.device}`);
    this.#stream = s;
  }

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
  get useDora(): ReadonlyMap<string, boolean> {
    return this._useDora;
  }
  /** DoRA magnitude vectors [out], keyed by adapter name (peft's lora_magnitude_vector). */
  get loraMagnitude(): ReadonlyMap<string, Tensor> {
    return this._loraMagnitude;
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
      const m = this.magnitudeParameter(name);
      if (m) out.push(m);
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

  /** A DoRA adapter's magnitude vector as a Parameter (null for plain LoRA adapters). */
  magnitudeParameter(name: string): Parameter | null {
    this.requireAdapter(name, 'name');
    const m = this._loraMagnitude.get(name);
    if (!m) return null;
    let p = this._magnitudeParameters.get(name);
    if (!p) {
      p = new Parameter(`lora_magnitude_vector.${name}.weight`, 'lora_magnitude_vector', name, m);
      this._magnitudeParameters.set(name, p);
    }
    return p;
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
    const alpha = checkScale(o.loraAlpha ?? 8, 'opts.loraAlpha');
    const p = checkFinite(o.loraDropout ?? 0, 'opts.loraDropout');
    if (p < 0 || p >= 1) throw new LoraRangeError(`opts.loraDropout: expected 0 <= p < 1, got ${p}`);
    const rs = o.useRslora === undefined ? false : checkBool(o.useRslora, 'opts.useRslora');
    const init = o.initLoraWeights ?? true;
    if (init !== true && init !== false && init !== 'gaussian' && init !== 'pissa' && init !== 'olora')
      throw new LoraTypeError(`opts.initLoraWeights: expected true, false, 'gaussian', 'pissa' or 'olora', got ${String(init)}`);
    const useDora = o.useDora === undefined ? false : checkBool(o.useDora, 'opts.useDora');
    if (useDora && !this.supportsDora)
      throw new AdapterError(`opts.useDora: DoRA is supported on LoraLinear only, not on ${this.constructor.name}`);
    if ((init === 'pissa' || init === 'olora') && !this.supportsWeightInit)
      throw new AdapterError(`opts.initLoraWeights: '${init}' is supported on LoraLinear only, not on ${this.constructor.name}`);
    if ((init === 'pissa' || init === 'olora') && this.merged)
      throw new StateError(`opts.initLoraWeights: '${init}' rewrites the base weight; unmerge() first`);
    const seed = o.seed === undefined ? nextGlobalSeed() : checkInt(o.seed, 'opts.seed', 0);
    const frozen = o.inferenceMode === undefined ? false : checkBool(o.inferenceMode, 'opts.inferenceMode');
    const dtype = o.dtype ?? 'f32';
    if (dtype !== 'f32' && dtype !== 'f16' && dtype !== 'bf16')
      throw new LoraTypeError(`opts.dtype: expected 'f32', 'f16' or 'bf16', got ${String(dtype)}`);
    if (r > Math.min(this.inFeatures, this.outFeatures) * 64)
      throw new LoraRangeError(`opts.r: ${r} is far larger than the layer (${this.inFeatures} in, ${this.outFeatures} out)`);

    const rng = new Rng(seed);
    const scaling = rs ? alpha / Math.sqrt(r) : alpha / r;
    const { A, B } =
      init === 'pissa' || init === 'olora' ? this.initFromWeight(init, r, scaling, dtype) : this.createAdapterWeights(r, init, rng, dtype);
    this.registerAdapter(name, { r, alpha, scaling, p, rs, A, B, frozen, seed: rng.nextSeed() });
    if (useDora) {
      this._useDora.set(name, true);
      this._loraMagnitude.set(name, this.initMagnitude(name));
    }
    return this;
  }

  private registerAdapter(
    name: string,
    a: { r: number; alpha: number; scaling: number; p: number; rs: boolean; A: Tensor; B: Tensor; frozen: boolean; seed: number },
  ): void {
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

  /** The configured scaling: alpha / r, or alpha / √r with rslora. */
  private baseScaling(name: string): number {
    const r = this._r.get(name)!;
    return this._loraAlpha.get(name)! / (this._useRslora.get(name) ? Math.sqrt(r) : r);
  }

  private requireUnmergedForScale(names: readonly string[], op: string): void {
    const m = names.filter((n) => this._mergedAdapters.includes(n));
    if (m.length > 0) throw new StateError(`${op}: adapter(s) ${m.join(', ')} are merged; unmerge() before changing their scaling`);
  }

  /** peft's set_scale: scaling = scale · alpha / r (or / √r with rslora), absolute. */
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

  /** peft's unscale_layer: no factor resets each active adapter to alpha / r; otherwise divides by factor. */
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
   * weighted sources. 'cat' is exactly Σ wᵢ·sᵢ·Bᵢ·Aᵢ (rank Σ rᵢ); 'svd' is its truncated SVD (float64);
   * 'linear' (equal ranks) sums the factors, A = Σ sign·√|wᵢ·sᵢ|·Aᵢ and B = Σ √|wᵢ·sᵢ|·Bᵢ, which has
   * cross terms, as in peft. DoRA sources are refused (peft's result for them is not the weighted sum).
   */
  addWeightedAdapter(adapters: readonly string[], weights: readonly number[], newName: string, opts: WeightedAdapterOptions = {}): this {
    const o = checkOptions(opts, ['combinationType', 'svdRank'], 'opts') as WeightedAdapterOptions;
    if (!Array.isArray(adapters) || adapters.length === 0) throw new LoraTypeError('adapters: expected a non-empty array of adapter names');
    adapters.forEach((n, i) => this.requireAdapter(n, `adapters[${i}]`));
    if (!Array.isArray(weights) || weights.length !== adapters.length)
      throw new LoraTypeError(`weights: expected an array of ${adapters.length} numbers (one per adapter)`);
    weights.forEach((w, i) => checkFinite(w, `weights[${i}]`));
    checkString(newName, 'newName');
    if (this._r.has(newName)) throw new AdapterError(`newName: adapter '${newName}' already exists on this layer`);
    if (newName === '__base__') throw new AdapterError("newName: '__base__' is reserved for 'no adapter' in mixed batches");
    let kind = o.combinationType ?? 'svd';
    if (kind !== 'svd' && kind !== 'linear' && kind !== 'cat')
      throw new LoraTypeError(`opts.combinationType: expected 'svd', 'linear' or 'cat', got ${String(kind)}`);
    const dora = adapters.filter((n) => this._useDora.get(n));
    if (dora.length > 0) throw new AdapterError(`adapters: DoRA adapter(s) ${dora.join(', ')} cannot be combined (the result would not be the weighted sum)`);
    const why = this.weightedAdapterUnsupported();
    if (why) throw new AdapterError(`addWeightedAdapter: ${why}`);
    if (adapters.length === 1) kind = 'linear'; // as peft: one source is always combined linearly
    const ranks = adapters.map((n) => this._r.get(n)!);
    const A0 = this._loraA.get(adapters[0])!;
    const B0 = this._loraB.get(adapters[0])!;
    const outDim = B0.shape[0];
    const inDim = A0.numel / ranks[0];
    const As = adapters.map((n) => this._loraA.get(n)!.toFloat32Array());
    const Bs = adapters.map((n) => this._loraB.get(n)!.toFloat32Array());
    const ws = adapters.map((n, i) => weights[i] * this._scaling.get(n)!);
    let rNew: number;
    let a: Float64Array;
    let b: Float64Array;
    if (kind === 'cat') {
      rNew = ranks.reduce((x, y) => x + y, 0);
      a = new Float64Array(rNew * inDim);
      b = new Float64Array(outDim * rNew);
      let off = 0;
      adapters.forEach((_, i) => {
        const r = ranks[i];
        for (let k = 0; k < r * inDim; k++) a[off * inDim + k] = ws[i] * As[i][k];
        for (let row = 0; row < outDim; row++) for (let k = 0; k < r; k++) b[row * rNew + off + k] = Bs[i][row * r + k];
        off += r;
      });
    } else if (kind === 'linear') {
      if (new Set(ranks).size !== 1)
        throw new AdapterError(`opts.combinationType: 'linear' needs adapters of equal rank, got ranks ${ranks.join(', ')} (use 'cat' or 'svd')`);
      rNew = ranks[0];
      a = new Float64Array(rNew * inDim);
      b = new Float64Array(outDim * rNew);
      adapters.forEach((_, i) => {
        const root = Math.sqrt(Math.abs(ws[i]));
        const sign = ws[i] < 0 ? -1 : 1;
        for (let k = 0; k < a.length; k++) a[k] += sign * root * As[i][k];
        for (let k = 0; k < b.length; k++) b[k] += root * Bs[i][k];
      });
    } else {
      const maxRank = Math.min(outDim, inDim);
      rNew = o.svdRank === undefined ? Math.min(Math.max(...ranks), maxRank) : checkInt(o.svdRank, 'opts.svdRank', 1, maxRank);
      ({ a, b } = truncatedSvdOfSum(As, Bs, ranks, ws, outDim, inDim, rNew));
    }
    const dtype = A0.dtype as FloatDType;
    const A = Tensor.from(a, [rNew, ...A0.shape.slice(1)], { dtype });
    const B = Tensor.from(b, [outDim, rNew, ...B0.shape.slice(2)], { dtype });
    const first = adapters[0];
    this.registerAdapter(newName, {
      r: rNew,
      alpha: rNew,
      scaling: 1,
      p: this._loraDropout.get(first)!,
      rs: false,
      A,
      B,
      frozen: false,
      seed: nextGlobalSeed(),
    });
    return this;
  }

  /**
   * Validates a mixed batch (peft's adapter_names): one name per entry of x's first dimension.
   * Returns the distinct adapters used and, per entry, the index into them (-1: base).
   */
  protected resolveMixedBatch(names: unknown, batch: number): { adapters: string[]; index: Int32Array } {
    if (!Array.isArray(names)) throw new LoraTypeError('opts.adapterNames: expected an array of adapter names');
    if (this._training)
      throw new StateError('opts.adapterNames: mixed-adapter batches need eval mode (call eval() first), as in peft');
    if (this.merged) throw new StateError('opts.adapterNames: cannot mix adapters while some are merged; unmerge() first');
    if (names.length !== batch)
      throw new ShapeError(`opts.adapterNames: expected ${batch} names (one per entry of x's first dimension), got ${names.length}`);
    const adapters: string[] = [];
    const index = new Int32Array(batch);
    // Each distinct name is checked once (a serving batch repeats a few names thousands of times).
    const seen = new Map<unknown, number>();
    for (let i = 0; i < batch; i++) {
      const n: unknown = names[i];
      let k = seen.get(n);
      if (k === undefined) {
        if (n === '__base__') {
          k = -1;
        } else {
          this.requireAdapter(n, `opts.adapterNames[${i}]`);
          const name = n as string;
          if (this._useDora.get(name))
            throw new AdapterError(`opts.adapterNames[${i}]: DoRA adapter '${name}' cannot be used in a mixed batch (as in peft)`);
          k = adapters.push(name) - 1;
        }
        seen.set(n, k);
      }
      index[i] = k;
    }
    return { adapters, index };
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
    this._parameters.get(name)?.forEach((p) => p.zeroGrad());
    this._parameters.delete(name);
    this._magnitudeParameters.get(name)?.zeroGrad();
    this._magnitudeParameters.delete(name);
    for (const m of [this._r, this._loraAlpha, this._scaling, this._loraDropout, this._useRslora, this._loraA, this._loraB, this._inferenceMode, this._seed, this._useDora, this._loraMagnitude])
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
    const out = Tensor.zeros(W.shape, { dtype: 'f32', device: W.device });
    try {
      runSync(this.deltaSteps(name, 1, out, out, true));
    } catch (e) {
      out.dispose();
      throw e;
    }
    return out;
  }

  /** Adds the named (or active) adapters' ΔW to the base weight; already merged ones are skipped. */
  merge(opts: MergeOptions = {}): this {
    return this.runLayerSync('merge', this.mergeSteps(opts));
  }

  /** merge() with the work on a libuv thread; the weight and adapters are busy until it settles. */
  mergeAsync(opts: MergeOptions = {}): Promise<this> {
    return this.runLayerAsync('merge', this.mergeSteps(opts));
  }

  /** Undoes merges in reverse order (W -= ΔW). */
  unmerge(): this {
    return this.runLayerSync('unmerge', this.unmergeSteps());
  }

  unmergeAsync(): Promise<this> {
    return this.runLayerAsync('unmerge', this.unmergeSteps());
  }

  private *mergeSteps(opts: MergeOptions): KernelSteps<this> {
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
          yield* this.deltaSteps(name, 1, W, trial);
          if (!(yield step('allFinite', trial.handle)))
            throw new LoraRangeError(`merge: NaNs or infinities detected in the merged weight for adapter '${name}'; the weight was left unchanged`);
          yield step('convert', trial.handle, W.handle);
        } finally {
          trial.dispose();
        }
      } else {
        yield* this.deltaSteps(name, 1, W, W);
      }
      this._mergedAdapters.push(name);
    }
    return this;
  }

  protected *unmergeSteps(): KernelSteps<this> {
    while (this._mergedAdapters.length > 0) {
      const name = this._mergedAdapters[this._mergedAdapters.length - 1];
      yield* this.deltaSteps(name, -1, this.weight, this.weight);
      this._mergedAdapters.pop(); // only once W is restored, so a failed step can be retried
    }
    return this;
  }

  /** Runs an operation body synchronously; refused while an async one is in flight on this layer. */
  protected runLayerSync<T>(op: string, steps: KernelSteps<T>): T {
    this.requireIdle(op);
    return runSync(steps, this.#stream?.id ?? 0);
  }

  /** Runs an operation body step by step off the JS thread; one async operation per layer at a time. */
  protected async runLayerAsync<T>(op: string, steps: KernelSteps<T>): Promise<T> {
    this.requireIdle(`${op}Async`);
    const stream = this.#stream?.id ?? 0;
    this.#asyncOp = `${op}Async`;
    try {
      return await runAsync(steps, stream);
    } finally {
      this.#asyncOp = null;
    }
  }

  protected requireIdle(op: string): void {
    if (this.#asyncOp) throw new StateError(`${op}: ${this.#asyncOp}() is still running on this layer; await it first`);
  }

  /** Frees the adapters' tensors (not the base weight, which the caller owns). */
  dispose(): void {
    this.requireIdle('dispose');
    this.clearCache();
    for (const pair of this._parameters.values()) pair.forEach((p) => p.zeroGrad());
    for (const p of this._magnitudeParameters.values()) p.zeroGrad();
    for (const t of [...this._loraA.values(), ...this._loraB.values(), ...this._loraMagnitude.values()]) t.dispose();
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
    for (const [name, g] of grads) {
      const m = this._magnitudeParameters.get(name);
      if (m && g.magnitude) m.accumulateGrad(g.magnitude);
    }
  }

  /** Creates A and B for a new adapter. */
  protected abstract createAdapterWeights(
    r: number,
    init: InitLoraWeights,
    rng: Rng,
    dtype: FloatDType,
  ): { A: Tensor; B: Tensor };

  /**
   * out = W + sign·ΔW(name) (out may be W). DoRA adapters merge as peft (out = k ⊙ (W + ΔW) and its
   * inverse) unless plainDelta, which gives the LoRA ΔW alone (peft's get_delta_weight).
   */
  protected abstract deltaSteps(name: string, sign: 1 | -1, W: Tensor, out: Tensor, plainDelta?: boolean): KernelSteps<void>;

  /** Layer kinds with DoRA override this and initMagnitude. */
  protected get supportsDora(): boolean {
    return false;
  }

  protected initMagnitude(_name: string): Tensor {
    throw new AdapterError(`useDora: not supported on ${this.constructor.name}`);
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
}

/**
 * Rank-k truncated SVD of Σ wᵢ·Bᵢ·Aᵢ (float64). With Bc = [wᵢ·Bᵢ] (out×R) and Ac = [Aᵢ] (R×in),
 * Bc = Qb·Rb and Acᵀ = Qa·Ra give Bc·Ac = Qb·(Rb·Raᵀ)·Qaᵀ, so only an R×R SVD is needed and no dense
 * out×in matrix is formed (dense fallback when R exceeds out or in).
 */
function truncatedSvdOfSum(
  As: Float32Array[],
  Bs: Float32Array[],
  ranks: number[],
  ws: number[],
  outDim: number,
  inDim: number,
  k: number,
): { a: Float64Array; b: Float64Array } {
  const R = ranks.reduce((x, y) => x + y, 0);
  const a = new Float64Array(k * inDim);
  const b = new Float64Array(outDim * k);
  if (R > Math.min(outDim, inDim)) {
    const delta = mat(outDim, inDim);
    ranks.forEach((r, i) => {
      const d = matmul(mat(outDim, r, Bs[i]), mat(r, inDim, As[i]));
      for (let j = 0; j < d.data.length; j++) delta.data[j] += ws[i] * d.data[j];
    });
    const f = svd(delta);
    const kk = f.S.length;
    a.set(f.Vt.data.subarray(0, k * inDim));
    for (let row = 0; row < outDim; row++) for (let j = 0; j < k; j++) b[row * k + j] = f.U.data[row * kk + j] * f.S[j];
    return { a, b };
  }
  const Bc = mat(outDim, R);
  const AcT = mat(inDim, R);
  let off = 0;
  ranks.forEach((r, i) => {
    for (let row = 0; row < outDim; row++) for (let j = 0; j < r; j++) Bc.data[row * R + off + j] = ws[i] * Bs[i][row * r + j];
    for (let j = 0; j < r; j++) for (let c = 0; c < inDim; c++) AcT.data[c * R + off + j] = As[i][j * inDim + c];
    off += r;
  });
  const qb = qr(Bc);
  const qa = qr(AcT);
  const f = svd(matmul(qb.R, transpose(qa.R))); // R×R
  const left = matmul(qb.Q, f.U); // out×R
  const right = matmul(f.Vt, transpose(qa.Q)); // R×in
  for (let row = 0; row < outDim; row++) for (let j = 0; j < k; j++) b[row * k + j] = left.data[row * R + j] * f.S[j];
  a.set(right.data.subarray(0, k * inDim));
  return { a, b };
}
