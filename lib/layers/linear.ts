/**
 * LoraLinear: y = x·Wᵀ + b + Σ_active s·(drop(x)·Aᵀ)·Bᵀ, as peft's lora.Linear. W is [out, in], or
 * [in, out] with fanInFanOut (GPT-2's Conv1D). The base GEMM and every active adapter's expand run
 * as one native pass that writes y once; the shrink x·Aᵀ is kept for backward.
 * DoRA adapters (useDora) scale each output feature by magnitude / ‖W + s·B·A‖ (norm detached, as
 * peft): y = k ⊙ (x·Wᵀ + s·u·Bᵀ) + b, the LoRA forward with k in its epilogue. The norm comes from a
 * low-rank identity, never from a dense out×in delta, and is cached while W, A, B and s are
 * unchanged (dora_norm_cache.ts; the DoRA steps: linear_dora.ts). Mixed batches: mixed_batch.ts.
 * lora_bias adapters add s·b_B (folded into the call's bias); a trainable base bias (peft's bias
 * modes) gets Σ_rows dy in backward (bias_terms.ts).
 * Over a quantized base (a QuantizedTensor weight, peft's bnb Linear8bitLt / Linear4bit): the
 * forward dequantises inside the native GEMM and backward gives dx through the quantized W, so
 * adapters train on a frozen base (QLoRA); merge re-quantizes (quantizable_layer.ts). Dropout adds
 * the expands after the base (quant_forward.ts). Paths that peft runs on a dequantised weight (DoRA,
 * mixed batches), and dropout with 16-bit activations, use a dequantised copy of W.
 */
import { mixedDtypes, requireCallDtype, scratchDtype } from '../backend';
import { DType, Device, FloatDType } from '../dtype';
import { AdapterError, DTypeError, LoraRangeError, LoraTypeError, ShapeError, StateError, shapeStr } from '../errors';
import { KernelSteps, runSync, step } from '../exec';
import { BackwardTermArg, NativeTensorHandle } from '../native';
import { Rng } from '../rng';
import { QuantizedTensor, isQuantizedTensor } from '../quantized_tensor';
import { Tensor, requireFloatTensor } from '../tensor';
import { checkBool, checkOptions } from '../validate';
import { foldedBiasSteps, columnSumSteps } from './bias_terms';
import { AdapterCache, ForwardCache, freeAdapterCache } from './forward_cache';
import { InitLoraWeights, kaimingFactors, residualWeight, weightInitFactors } from './init';
import { AdapterGrads, BackwardResult, LoraLinearForwardOptions } from './lora_layer';
import { LinearDora } from './linear_dora';
import { LinearHost } from './linear_host';
import { mixedLinearForwardSteps } from './mixed_batch';
import { addsExpandsInF32, quantBaseThenExpandsSteps } from './quant_forward';
import { QuantizableLayer } from './quantizable_layer';

export interface LoraLinearOptions<W extends Tensor | QuantizedTensor = Tensor | QuantizedTensor> {
  /** The base weight: a float Tensor, or a QuantizedTensor [out, in] (Tensor.quantize) for a frozen quantized base. */
  weight: W;
  bias?: Tensor | null;
  fanInFanOut?: boolean;
}

const FORWARD_OPTION_KEYS = ['adapterNames', 'out'] as const;

export class LoraLinear<W extends Tensor | QuantizedTensor = Tensor> extends QuantizableLayer {
  readonly fanInFanOut: boolean;
  #weight: W;
  #bias: Tensor | null;
  #cache: ForwardCache | null = null;
  #forwardCount = 0;
  readonly #host: LinearHost = this.linearHost();
  readonly #dora = new LinearDora(this.#host);

  constructor(opts: LoraLinearOptions<W>) {
    super();
    const o = checkOptions(opts, ['weight', 'bias', 'fanInFanOut'], 'opts');
    if (o.weight === undefined) throw new LoraTypeError('opts.weight: required');
    this.fanInFanOut = o.fanInFanOut === undefined ? false : checkBool(o.fanInFanOut, 'opts.fanInFanOut');
    if (isQuantizedTensor(o.weight)) {
      if (o.weight.disposed) throw new StateError('opts.weight: the QuantizedTensor was disposed');
      if (this.fanInFanOut)
        throw new LoraTypeError('opts.fanInFanOut: a quantized base is stored [out, in]; quantize the transposed weight and leave fanInFanOut false');
      this.#weight = o.weight as W;
    } else {
      const W = requireFloatTensor(o.weight, 'opts.weight', (o.weight as Tensor | undefined)?.device ?? 'cpu');
      if (W.shape.length !== 2) throw new ShapeError(`opts.weight: expected 2 dimensions, got shape ${shapeStr(W.shape)}`);
      this.#weight = W as W;
    }
    this.#bias = null;
    if (o.bias !== undefined && o.bias !== null) {
      const b = requireFloatTensor(o.bias, 'opts.bias', this.#weight.device);
      if (b.shape.length !== 1 || b.shape[0] !== this.outFeatures)
        throw new ShapeError(`opts.bias: expected shape [${this.outFeatures}], got ${shapeStr(b.shape)}`);
      this.#bias = b;
    }
  }

  /** The device of the base weight; inputs, adapters and outputs live there. */
  get device(): Device {
    return this.#weight.device;
  }
  /** The base weight (a Tensor, or a QuantizedTensor for a quantized base). */
  get weight(): W {
    return this.#weight;
  }
  get bias(): Tensor | null {
    return this.#bias;
  }
  get inFeatures(): number {
    return this.fanInFanOut ? this.#weight.shape[0] : this.#weight.shape[1];
  }
  get outFeatures(): number {
    return this.fanInFanOut ? this.#weight.shape[1] : this.#weight.shape[0];
  }

  /**
   * x [..., in] → y [..., out] in x's dtype. In training mode the inputs are kept for backward().
   * opts.adapterNames (eval mode): one adapter name or '__base__' per entry of x's first dimension.
   * opts.out: y is written into this tensor (x's dtype, shape [..., out]) and returned, no allocation.
   */
  forward(x: Tensor, opts?: LoraLinearForwardOptions): Tensor {
    return this.runLayerSync('forward', this.forwardSteps(x, opts));
  }

  /**
   * forward() with the kernels on a libuv thread (DoRA and mixed-adapter batches included); x, the
   * weights and y are busy until it settles.
   */
  forwardAsync(x: Tensor, opts?: LoraLinearForwardOptions): Promise<Tensor> {
    return this.runLayerAsync('forward', this.forwardSteps(x, opts));
  }

  /** backward() with the kernels on a libuv thread. */
  backwardAsync(dy: Tensor): Promise<BackwardResult> {
    return this.runLayerAsync('backward', this.backwardSteps(dy));
  }

  private *forwardSteps(x: Tensor, opts: LoraLinearForwardOptions | undefined): KernelSteps<Tensor> {
    requireFloatTensor(x, 'x', this.device);
    this.requireDeviceDType(x, 'x');
    const xs = x.shape;
    if (xs.length === 0 || xs[xs.length - 1] !== this.inFeatures)
      throw new ShapeError(`x: expected shape [..., ${this.inFeatures}] (in_features), got ${shapeStr(xs)}`);
    const o = checkOptions(opts, FORWARD_OPTION_KEYS, 'opts') as LoraLinearForwardOptions;
    this.requireLive();
    const outShape = xs.length === 2 ? [xs[0], this.outFeatures] : [...xs.slice(0, -1), this.outFeatures];
    const out = o.out === undefined ? null : this.checkOut(o.out, x, outShape);
    if (o.adapterNames !== undefined) {
      if (out) throw new LoraTypeError('opts.out: not supported with opts.adapterNames (a mixed batch allocates its output)');
      if (xs.length < 2) throw new ShapeError(`x: a mixed batch needs a batch dimension, got shape ${shapeStr(xs)}`);
      const mixed = this.resolveMixedBatch(o.adapterNames, xs[0]);
      const withBias = mixed.adapters.filter((n) => this._loraBBias.has(n));
      if (withBias.length && !this._disableAdapters)
        throw new AdapterError(`opts.adapterNames: adapter(s) ${withBias.join(', ')} have a lora_B bias; mixed-adapter batches do not support lora_bias`);
      this.clearCache();
      return yield* mixedLinearForwardSteps(this.#host, x, mixed.adapters, mixed.index);
    }
    if (this._disableAdapters && this.merged) yield* this.unmergeSteps();
    this.clearCache();
    const names = this.contributingAdapters();
    // One pass over the active adapters for what decides the path (no per-call closures).
    let doraName: string | undefined;
    let anyBiasB = false;
    let anyDropout = false;
    for (const n of names) {
      if (doraName === undefined && this._useDora.get(n)) doraName = n;
      if (this._loraBBias.has(n)) anyBiasB = true;
      if (this._training && this._loraDropout.get(n)! > 0) anyDropout = true;
    }
    if (doraName !== undefined && names.length > 1)
      throw new AdapterError(
        `forward: DoRA adapter '${doraName}' must be the only active adapter (active: ${names.join(', ')}); ` +
          "peft's result for several would depend on their order",
      );
    const stream = this.#forwardCount++;
    const adapters: AdapterCache[] = [];
    let dora: ForwardCache['dora'];
    const dev = this.device;
    const y = out ?? Tensor.empty(outShape, { dtype: x.dtype, device: dev });
    let folded: Tensor | null = null; // b + Σ s·b_B when an active adapter has a lora_B bias
    try {
      if (anyBiasB) {
        const biasTerms = names.filter((n) => this._loraBBias.has(n)).map((n) => [this._loraBBias.get(n)!, this._scaling.get(n)!] as const);
        folded = yield* foldedBiasSteps(this.#bias, biasTerms, this.outFeatures, dev, x.dtype);
      }
      const biasHandle = (folded ?? this.#bias)?.handle ?? null;
      // u = x·Aᵀ in the backend's scratch dtype (f32 on the cpu; x's dtype on cuda, the tensor-core expand's operand).
      const uDtype = scratchDtype(dev, x.dtype);
      if (!anyDropout && doraName === undefined) {
        // One native call: every shrink and the fused forward; u is kept only for backward.
        for (const name of names) {
          if (!this._training) continue;
          const u = Tensor.empty([...x.shape.slice(0, -1), this._r.get(name)!], { dtype: uDtype, device: dev });
          adapters.push({ name, xa: x, u, p: 0, seed: this._seed.get(name)!, stream });
        }
        // Built with map(), not push(): the binding reads this array noticeably faster then (measured).
        const args = names.map(
          (name, i) =>
            [this._loraA.get(name)!.handle, this._loraB.get(name)!.handle, this._scaling.get(name)!, this._training ? adapters[i].u.handle : null] as [
              NativeTensorHandle, NativeTensorHandle, number, NativeTensorHandle | null,
            ],
        );
        const q = this.quantizedWeight;
        if (q) yield step('quantLoraForward', x.handle, q.storage.handle, q.spec, biasHandle, args, y.handle);
        else yield step('loraForward', x.handle, (this.#weight as Tensor).handle, biasHandle, this.fanInFanOut, args, y.handle);
        folded?.dispose();
        if (this._training) this.#cache = { x, outShape, adapters };
        return y;
      }
      if (doraName !== undefined) {
        dora = yield* this.#dora.forwardSteps(x, doraName, stream, adapters, y);
      } else {
        for (const name of names) {
          const p = this._training ? this._loraDropout.get(name)! : 0;
          const seed = this._seed.get(name)!;
          let xa = x;
          if (p > 0) {
            xa = Tensor.empty(x.shape, { dtype: x.dtype, device: dev });
            adapters.push({ name, xa, u: xa, p, seed, stream }); // registered before use so it is freed on error
            yield step('dropout', x.handle, p, seed, stream, xa.handle);
          }
          const u = Tensor.empty([...x.shape.slice(0, -1), this._r.get(name)!], { dtype: uDtype, device: dev });
          if (p > 0) adapters[adapters.length - 1].u = u;
          else adapters.push({ name, xa, u, p, seed, stream });
          yield step('shrink', xa.handle, this._loraA.get(name)!.handle, u.handle);
        }
        const q = this.quantizedWeight;
        const expands = adapters.map((a) => ({ u: a.u, B: this._loraB.get(a.name)!, scale: this._scaling.get(a.name)! }));
        if (q && addsExpandsInF32(y.dtype, dev, expands)) {
          yield* quantBaseThenExpandsSteps(x, q, biasHandle, expands, y);
          folded?.dispose();
          if (this._training) this.#cache = { x, outShape, adapters };
          else freeAdapterCache(adapters, x);
          return y;
        }
        const base = yield* this.floatBaseSteps(x.dtype);
        try {
          const terms = adapters.map(
            (a) => [a.u.handle, this._loraB.get(a.name)!.handle, this._scaling.get(a.name)!] as [typeof a.u.handle, typeof a.u.handle, number],
          );
          yield step('linearForward', x.handle, base.handle, biasHandle, this.fanInFanOut, terms, y.handle);
        } finally {
          this.freeFloatBase(base);
        }
      }
    } catch (e) {
      freeAdapterCache(adapters, x);
      folded?.dispose();
      if (y !== out) y.dispose();
      throw e;
    }
    folded?.dispose();
    if (this._training) this.#cache = { x, outShape, adapters, dora };
    else freeAdapterCache(adapters, x, dora);
    return y;
  }

  /** ‖W + s·B·A‖ per output feature (f32 [out]) for W (default: the base weight, dequantised if quantized). */
  doraWeightNorm(name: string, W?: Tensor): Tensor {
    return runSync(this.#dora.weightNormSteps(name, W));
  }

  /**
   * Gradients for the last training-mode forward: dx, and dA/dB for each contributing adapter that
   * is not frozen. W and b never change.
   */
  backward(dy: Tensor): BackwardResult {
    return this.runLayerSync('backward', this.backwardSteps(dy));
  }

  private *backwardSteps(dy: Tensor): KernelSteps<BackwardResult> {
    requireFloatTensor(dy, 'dy', this.device);
    this.requireDeviceDType(dy, 'dy');
    const cache = this.#cache;
    if (!cache) throw new StateError('backward: needs a forward() in training mode first (call train() before forward)');
    if (cache.x.disposed) throw new StateError('backward: the input x of the last forward was disposed');
    if (dy.shape.length !== cache.outShape.length || dy.shape.some((d, i) => d !== cache.outShape[i]))
      throw new ShapeError(`dy: expected shape ${shapeStr(cache.outShape)} (the forward output), got ${shapeStr(dy.shape)}`);
    const dev = this.device;
    const dx = Tensor.empty(cache.x.shape, { dtype: cache.x.dtype, device: dev });
    const grads = new Map<string, AdapterGrads>();
    const terms: BackwardTermArg[] = [];
    let biasGrad: Tensor | undefined;
    try {
      if (cache.dora) yield* this.#dora.backwardSteps(dy, cache, dx, grads);
      else for (const a of cache.adapters) {
        if (!this._loraA.has(a.name)) throw new StateError(`backward: adapter '${a.name}' was deleted after the forward`);
        const A = this._loraA.get(a.name)!;
        const B = this._loraB.get(a.name)!;
        let g: AdapterGrads | null = null;
        if (!this._inferenceMode.get(a.name)) {
          g = {
            loraA: Tensor.empty(A.shape, { dtype: A.dtype, device: dev }),
            loraB: Tensor.empty(B.shape, { dtype: B.dtype, device: dev }),
          };
          grads.set(a.name, g);
        }
        terms.push({
          xa: a.xa.handle,
          u: a.u.handle,
          A: A.handle,
          B: B.handle,
          scale: this._scaling.get(a.name)!,
          p: a.p,
          seed: a.seed,
          stream: a.stream,
          dA: g ? g.loraA.handle : null,
          dB: g ? g.loraB.handle : null,
        });
      }
      const q = this.quantizedWeight;
      if (!cache.dora && q) yield step('quantLinearBackward', dy.handle, q.storage.handle, q.spec, terms, dx.handle);
      else if (!cache.dora) yield step('linearBackward', dy.handle, (this.#weight as Tensor).handle, this.fanInFanOut, terms, dx.handle);
      for (const [name, g] of grads) {
        if (this._loraBBias.has(name)) g.loraBBias = yield* columnSumSteps(dy, this._scaling.get(name)!);
      }
      if (this._trainableBias && this.#bias) biasGrad = yield* columnSumSteps(dy, 1);
    } catch (e) {
      dx.dispose();
      for (const g of grads.values()) {
        g.loraA.dispose();
        g.loraB.dispose();
        g.magnitude?.dispose();
        g.loraBBias?.dispose();
      }
      biasGrad?.dispose();
      throw e;
    }
    this.accumulateParameterGrads(grads, biasGrad);
    return biasGrad ? { dx, grads, bias: biasGrad } : { dx, grads };
  }

  protected override get supportsWeightInit(): boolean {
    return true;
  }

  protected override get supportsLoraBias(): boolean {
    return true;
  }

  protected override get supportsTrainableBias(): boolean {
    return true;
  }

  /**
   * peft's pissa_init / olora_init (init.ts, float64); then W ← W − s·B·A with A and B as stored, so
   * the output is unchanged up to W's own rounding. A cuda layer does the same on the host (one copy
   * of W each way) so both devices get identical factors.
   */
  protected override initFromWeight(kind: 'pissa' | 'olora', r: number, scaling: number, dtype: FloatDType): { A: Tensor; B: Tensor } {
    if (this.quantizedWeight)
      throw new AdapterError(`initLoraWeights: '${kind}' rewrites the base weight, which a quantized base keeps frozen; initialise on the float weight, then quantize`);
    const w = (this.#weight as Tensor).toFloat32Array();
    const { W, a, b } = weightInitFactors(kind, w, this.outFeatures, this.inFeatures, this.fanInFanOut, r, scaling);
    const device = this.device;
    const A = Tensor.from(a, [r, this.inFeatures], { dtype, device });
    const B = Tensor.from(b, [this.outFeatures, r], { dtype, device });
    (this.#weight as Tensor).copyFrom(residualWeight(W, A.toFloat32Array(), B.toFloat32Array(), scaling, this.fanInFanOut));
    return { A, B };
  }

  /** peft's nn.Linear init (init.ts): A kaiming-uniform or N(0, 1/r), B = 0 (random when init is false). */
  protected createAdapterWeights(r: number, init: InitLoraWeights, rng: Rng, dtype: FloatDType): { A: Tensor; B: Tensor } {
    const { a, b } = kaimingFactors(r, this.inFeatures, this.outFeatures, r, init, rng);
    const device = this.device;
    return { A: Tensor.from(a, [r, this.inFeatures], { dtype, device }), B: Tensor.from(b, [this.outFeatures, r], { dtype, device }) };
  }

  protected *deltaSteps(name: string, sign: 1 | -1, W: Tensor, out: Tensor, plainDelta = false): KernelSteps<void> {
    const s = sign * this._scaling.get(name)!;
    if (!Number.isFinite(s)) throw new LoraRangeError(`scaling of adapter '${name}' is not finite (${s})`);
    const A = this._loraA.get(name)!;
    const B = this._loraB.get(name)!;
    if (!this._useDora.get(name) || plainDelta) {
      yield step('mergeDelta', W.handle, A.handle, B.handle, s, this.fanInFanOut, out.handle);
      return;
    }
    // DoRA, as peft: merge caches the norm of W + ΔW, unmerge divides by the cached scale.
    yield* this.#dora.mergeSteps(name, sign, s, W, out);
  }

  protected override get supportsDora(): boolean {
    return true;
  }

  protected exactFanInFanOut(): boolean {
    return this.fanInFanOut;
  }

  protected override *exactDoraNormSteps(name: string, W: Tensor): KernelSteps<Tensor> {
    return yield* this.#dora.weightNormSteps(name, W);
  }

  /** peft's DoRA init: magnitude = ‖W + s·B·A‖ per output feature, in A's dtype. */
  protected override initMagnitude(name: string): Tensor {
    const norm = this.doraWeightNorm(name);
    try {
      return norm.to({ dtype: this._loraA.get(name)!.dtype });
    } finally {
      norm.dispose();
    }
  }

  protected override onAdapterDeleted(name: string): void {
    this.#dora.deleteNorm(name);
  }

  /** Frees the adapters' tensors and the cached DoRA norms (not the base weight, which the caller owns). */
  override dispose(): void {
    super.dispose();
    this.#dora.clear();
  }

  protected override onReseed(): void {
    this.#forwardCount = 0;
  }

  protected override get forwardCounter(): number {
    return this.#forwardCount;
  }
  protected override set forwardCounter(n: number) {
    this.#forwardCount = n;
  }

  /**
   * The base as a float Tensor, for the paths that take one (peft runs DoRA and mixed batches over
   * a bnb base on its dequantised weight): the weight itself, or a copy freeFloatBase() frees.
   */
  private *floatBaseSteps(dtype: DType): KernelSteps<Tensor> {
    const q = this.quantizedWeight;
    if (!q) return this.#weight as Tensor;
    return yield* q.dequantizeSteps({ dtype: (mixedDtypes(this.device) ? 'f32' : dtype) as FloatDType });
  }

  private freeFloatBase(W: Tensor): void {
    if (W !== this.#weight) W.dispose();
  }

  protected override dropMergeCache(name: string): void {
    this.#dora.dropMergeNorm(name);
  }

  protected clearCache(): void {
    const c = this.#cache;
    this.#cache = null;
    if (!c) return;
    freeAdapterCache(c.adapters, c.x);
    if (c.dora) this.#dora.keepPre(c.dora.pre);
  }

  /** Backends without mixed dtypes (cuda) take the weight's dtype for activations too. */
  private requireDeviceDType(t: Tensor, name: string): void {
    const W = this.#weight;
    if (!isQuantizedTensor(W)) requireCallDtype(this.device, t.dtype, W.dtype, name);
  }

  /** opts.out: a live float tensor on the layer's device with x's dtype and y's shape, not x itself. */
  private checkOut(out: unknown, x: Tensor, outShape: readonly number[]): Tensor {
    const t = requireFloatTensor(out, 'opts.out', this.device);
    if (t.dtype !== x.dtype) throw new DTypeError(`opts.out: expected ${x.dtype} (x's dtype), got ${t.dtype}`);
    if (t.shape.length !== outShape.length || t.shape.some((d, i) => d !== outShape[i]))
      throw new ShapeError(`opts.out: expected shape ${shapeStr(outShape)} (x's rows, out_features), got ${shapeStr(t.shape)}`);
    if (t === x) throw new LoraRangeError('opts.out: must not be x (the forward reads x while writing y)');
    return t;
  }

  private requireLive(): void {
    if (this.#weight.disposed) throw new StateError('weight: the base weight tensor was disposed');
    if (this.#bias?.disposed) throw new StateError('bias: the bias tensor was disposed');
  }

  /** What linear_dora.ts and mixed_batch.ts read of this layer; every field is read when used. */
  private linearHost(): LinearHost {
    const layer = this;
    return {
      get device() { return layer.device; },
      get fanInFanOut() { return layer.fanInFanOut; },
      get inFeatures() { return layer.inFeatures; },
      get outFeatures() { return layer.outFeatures; },
      get bias() { return layer.#bias; },
      get training() { return layer._training; },
      get disableAdapters() { return layer._disableAdapters; },
      r: this._r,
      scaling: this._scaling,
      loraDropout: this._loraDropout,
      loraA: this._loraA,
      loraB: this._loraB,
      loraMagnitude: this._loraMagnitude,
      seed: (n) => this._seed.get(n)!,
      frozen: (n) => this._inferenceMode.get(n) === true,
      requireAdapter: (n, arg) => this.requireAdapter(n, arg),
      floatBaseSteps: (dtype) => this.floatBaseSteps(dtype),
      freeFloatBase: (W) => this.freeFloatBase(W),
    };
  }
}
