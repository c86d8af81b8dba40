/**
 * LoraEmbedding: y = W[idx] + Σ_active s·(Aᵀ[idx])·Bᵀ, as peft's lora.Embedding. W is
 * [num_embeddings, dim], A (peft's lora_embedding_A) is [r, num_embeddings] and B (lora_embedding_B)
 * is [dim, r]; they live in the same loraA / loraB maps as every other kind. No dropout (peft has
 * none on embeddings). ΔW = s·(B·A)ᵀ.
 */
import { Device, FloatDType } from '../dtype';
import { DTypeError, LoraRangeError, LoraTypeError, ShapeError, StateError, shapeStr } from '../errors';
import { KernelSteps, step } from '../exec';
import { Rng } from '../rng';
import { Tensor, describe, requireFloatTensor } from '../tensor';
import { checkInt, checkOptions } from '../validate';
import { InitLoraWeights, embeddingFactors } from './init';
import { AdapterGrads, LoraLayer, MixedForwardOptions } from './lora_layer';

export interface LoraEmbeddingOptions {
  /** [num_embeddings, embedding_dim] */
  weight: Tensor;
  /** As nn.Embedding's padding_idx (negative counts from the end): that row's A column gets no gradient. */
  paddingIdx?: number | null;
}

/** Indices: an Int32Array or BigInt64Array (shape [length]) or an i32/i64 Tensor of any shape. */
export type EmbeddingIndices = Int32Array | BigInt64Array | Tensor;

export interface EmbeddingBackwardResult {
  /** dA [r, num] and dB [dim, r] for each contributing adapter that is not frozen (indices have no gradient). */
  grads: Map<string, AdapterGrads>;
}

interface ForwardCache {
  indices: Tensor;
  ownsIndices: boolean;
  adapters: string[];
}

export class LoraEmbedding extends LoraLayer {
  readonly paddingIdx: number | null;
  #weight: Tensor;
  #cache: ForwardCache | null = null;

  constructor(opts: LoraEmbeddingOptions) {
    super();
    const o = checkOptions(opts, ['weight', 'paddingIdx'], 'opts');
    if (o.weight === undefined) throw new LoraTypeError('opts.weight: required');
    // On cuda the weight, adapters and outputs live on the GPU; indices stay on the host.
    const W = requireFloatTensor(o.weight, 'opts.weight', (o.weight as Tensor | undefined)?.device ?? 'cpu');
    if (W.shape.length !== 2)
      throw new ShapeError(`opts.weight: expected 2 dimensions [num_embeddings, dim], got shape ${shapeStr(W.shape)}`);
    this.#weight = W;
    const num = W.shape[0];
    if (o.paddingIdx === undefined || o.paddingIdx === null) this.paddingIdx = null;
    else {
      const p = checkInt(o.paddingIdx, 'opts.paddingIdx', -num, num - 1);
      this.paddingIdx = p < 0 ? p + num : p;
    }
  }

  /** The device of the base weight; adapters, outputs and dy live there. */
  get device(): Device {
    return this.#weight.device;
  }

  get weight(): Tensor {
    return this.#weight;
  }
  get bias(): Tensor | null {
    return null;
  }
  /** num_embeddings (A's second dimension). */
  get inFeatures(): number {
    return this.#weight.shape[0];
  }
  /** embedding_dim (B's first dimension). */
  get outFeatures(): number {
    return this.#weight.shape[1];
  }
  get numEmbeddings(): number {
    return this.inFeatures;
  }
  get embeddingDim(): number {
    return this.outFeatures;
  }

  /**
   * indices [...] → [..., dim] in W's dtype. opts.adapterNames (eval mode): one adapter name or
   * '__base__' per entry of the indices' first dimension. Out-of-range indices throw LoraRangeError.
   */
  forward(indices: EmbeddingIndices, opts: MixedForwardOptions = {}): Tensor {
    return this.runLayerSync('forward', this.forwardSteps(indices, opts));
  }

  /** forward() with the kernel on a libuv thread; the indices, the weights and y are busy until it settles. */
  forwardAsync(indices: EmbeddingIndices, opts: MixedForwardOptions = {}): Promise<Tensor> {
    return this.runLayerAsync('forward', this.forwardSteps(indices, opts));
  }

  /** backward() with the kernels on a libuv thread. */
  backwardAsync(dy: Tensor): Promise<EmbeddingBackwardResult> {
    return this.runLayerAsync('backward', this.backwardSteps(dy));
  }

  private *forwardSteps(indices: EmbeddingIndices, opts: MixedForwardOptions): KernelSteps<Tensor> {
    const o = checkOptions(opts, ['adapterNames'], 'opts') as MixedForwardOptions;
    if (this.#weight.disposed) throw new StateError('weight: the base weight tensor was disposed');
    const { tensor: idx, owned } = this.indexTensor(indices);
    let keep = false;
    try {
      let names: string[];
      let rowAdapter: Int32Array | null = null;
      if (o.adapterNames !== undefined) {
        if (idx.shape.length < 1) throw new ShapeError('indices: a mixed batch needs a batch dimension, got a scalar');
        const mixed = this.resolveMixedBatch(o.adapterNames, idx.shape[0]);
        names = mixed.adapters;
        const per = idx.numel / Math.max(1, idx.shape[0]);
        rowAdapter = new Int32Array(idx.numel);
        mixed.index.forEach((a, i) => rowAdapter!.fill(this._disableAdapters ? -1 : a, i * per, (i + 1) * per));
      } else {
        if (this._disableAdapters && this.merged) yield* this.unmergeSteps();
        names = this.contributingAdapters();
      }
      this.clearCache();
      const y = Tensor.zeros([...idx.shape, this.outFeatures], { dtype: this.#weight.dtype, device: this.device });
      try {
        const factors = names.map(
          (n) => [this._loraA.get(n)!.handle, this._loraB.get(n)!.handle, this._scaling.get(n)!] as [Tensor['handle'], Tensor['handle'], number],
        );
        yield step('embeddingForward', idx.handle, this.#weight.handle, factors, rowAdapter, y.handle);
      } catch (e) {
        y.dispose();
        throw e;
      }
      if (this._training && rowAdapter === null) {
        this.#cache = { indices: idx, ownsIndices: owned, adapters: names };
        keep = true;
      }
      return y;
    } finally {
      if (owned && !keep) idx.dispose();
    }
  }

  /** Gradients for the last training-mode forward: dA and dB per contributing, unfrozen adapter. */
  backward(dy: Tensor): EmbeddingBackwardResult {
    return this.runLayerSync('backward', this.backwardSteps(dy));
  }

  private *backwardSteps(dy: Tensor): KernelSteps<EmbeddingBackwardResult> {
    requireFloatTensor(dy, 'dy', this.device);
    const cache = this.#cache;
    if (!cache) throw new StateError('backward: needs a forward() in training mode first (call train() before forward)');
    if (cache.indices.disposed) throw new StateError('backward: the indices tensor of the last forward was disposed');
    const outShape = [...cache.indices.shape, this.outFeatures];
    if (dy.shape.length !== outShape.length || dy.shape.some((d, i) => d !== outShape[i]))
      throw new ShapeError(`dy: expected shape ${shapeStr(outShape)} (the forward output), got ${shapeStr(dy.shape)}`);
    const grads = new Map<string, AdapterGrads>();
    try {
      for (const name of cache.adapters) {
        if (!this._loraA.has(name)) throw new StateError(`backward: adapter '${name}' was deleted after the forward`);
        if (this._inferenceMode.get(name)) continue;
        const A = this._loraA.get(name)!;
        const B = this._loraB.get(name)!;
        const g = {
          loraA: Tensor.zeros(A.shape, { dtype: A.dtype, device: this.device }),
          loraB: Tensor.zeros(B.shape, { dtype: B.dtype, device: this.device }),
        };
        grads.set(name, g);
        yield step('embeddingBackward', cache.indices.handle, dy.handle, A.handle, B.handle, this._scaling.get(name)!,
          this.paddingIdx ?? -1, g.loraA.handle, g.loraB.handle);
      }
    } catch (e) {
      for (const g of grads.values()) {
        g.loraA.dispose();
        g.loraB.dispose();
      }
      throw e;
    }
    this.accumulateParameterGrads(grads);
    return { grads };
  }

  /** peft's Embedding init: true/'gaussian' give A = 0, B ~ N(0, 1); false gives both N(0, 1). */
  protected createAdapterWeights(r: number, init: InitLoraWeights, rng: Rng, dtype: FloatDType): { A: Tensor; B: Tensor } {
    const { a, b } = embeddingFactors(r, this.inFeatures, this.outFeatures, init, rng);
    const device = this.device;
    return { A: Tensor.from(a, [r, this.inFeatures], { dtype, device }), B: Tensor.from(b, [this.outFeatures, r], { dtype, device }) };
  }

  /** W [num, dim] is the [in, out] layout of a fan_in_fan_out linear: ΔW = s·(B·A)ᵀ. */
  /** W [num, dim] merges as a fan_in_fan_out linear with A [r, num] and B [dim, r]. */
  protected exactFanInFanOut(): boolean {
    return true;
  }

  protected *deltaSteps(name: string, sign: 1 | -1, W: Tensor, out: Tensor): KernelSteps<void> {
    const s = sign * this._scaling.get(name)!;
    if (!Number.isFinite(s)) throw new LoraRangeError(`scaling of adapter '${name}' is not finite (${s})`);
    yield step('mergeDelta', W.handle, this._loraA.get(name)!.handle, this._loraB.get(name)!.handle, s, true, out.handle);
  }

  protected clearCache(): void {
    if (this.#cache?.ownsIndices) this.#cache.indices.dispose();
    this.#cache = null;
  }

  private indexTensor(indices: unknown): { tensor: Tensor; owned: boolean } {
    const num = this.inFeatures;
    const check = (v: number | bigint, i: number) => {
      if (v < 0 || v >= num) throw new LoraRangeError(`indices[${i}]: ${v} is out of range for num_embeddings ${num}`);
    };
    if (indices instanceof Int32Array || indices instanceof BigInt64Array) {
      indices.forEach((v, i) => check(v, i));
      return { tensor: Tensor.from(indices, [indices.length]), owned: true };
    }
    if (!(indices instanceof Tensor))
      throw new LoraTypeError(`indices: expected an Int32Array, a BigInt64Array or an i32/i64 Tensor, got ${describe(indices)}`);
    if (indices.disposed) throw new StateError('indices: the tensor was disposed');
    if (indices.dtype !== 'i32' && indices.dtype !== 'i64')
      throw new DTypeError(`indices: expected an i32 or i64 tensor, got ${indices.dtype}`);
    // The native side checks the range again; this gives the position in JS terms.
    const values = indices.dtype === 'i32' ? indices.toInt32Array() : indices.toBigInt64Array();
    values.forEach((v, i) => check(v, i));
    // The kernels read indices on the host (a cuda call uploads them itself).
    if (indices.device !== 'cpu') return { tensor: Tensor.from(values, indices.shape), owned: true };
    return { tensor: indices, owned: false };
  }
}
