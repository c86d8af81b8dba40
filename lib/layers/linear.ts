/**
 * LoraLinear: y = x·Wᵀ + b + Σ_active s·(drop(x)·Aᵀ)·Bᵀ, as peft's lora.Linear. W is [out, in], or
 * [in, out] with fanInFanOut (GPT-2's Conv1D). The base GEMM and every active adapter's expand run
 * as one native pass that writes y once; the shrink x·Aᵀ is kept for backward.
 */
import { FloatDType } from '../dtype';
import { LoraRangeError, LoraTypeError, ShapeError, StateError, shapeStr } from '../errors';
import { BackwardTermArg, call } from '../native';
import { Rng } from '../rng';
import { Tensor, requireFloatTensor } from '../tensor';
import { checkBool, checkOptions } from '../validate';
import { AdapterGrads, BackwardResult, InitLoraWeights, LoraLayer } from './lora_layer';

export interface LoraLinearOptions {
  weight: Tensor;
  bias?: Tensor | null;
  fanInFanOut?: boolean;
}

interface AdapterCache {
  name: string;
  xa: Tensor; // the input A saw: x, or its dropout (owned when dropout > 0)
  u: Tensor; // f32 [n, r] shrink
  p: number;
  seed: number;
  stream: number;
}

interface ForwardCache {
  x: Tensor;
  outShape: number[];
  adapters: AdapterCache[];
}

export class LoraLinear extends LoraLayer {
  readonly fanInFanOut: boolean;
  #weight: Tensor;
  #bias: Tensor | null;
  #cache: ForwardCache | null = null;
  #forwardCount = 0;

  constructor(opts: LoraLinearOptions) {
    super();
    const o = checkOptions(opts, ['weight', 'bias', 'fanInFanOut'], 'opts');
    if (o.weight === undefined) throw new LoraTypeError('opts.weight: required');
    const W = requireFloatTensor(o.weight, 'opts.weight');
    if (W.shape.length !== 2) throw new ShapeError(`opts.weight: expected 2 dimensions, got shape ${shapeStr(W.shape)}`);
    this.fanInFanOut = o.fanInFanOut === undefined ? false : checkBool(o.fanInFanOut, 'opts.fanInFanOut');
    this.#weight = W;
    this.#bias = null;
    if (o.bias !== undefined && o.bias !== null) {
      const b = requireFloatTensor(o.bias, 'opts.bias');
      if (b.shape.length !== 1 || b.shape[0] !== this.outFeatures)
        throw new ShapeError(`opts.bias: expected shape [${this.outFeatures}], got ${shapeStr(b.shape)}`);
      this.#bias = b;
    }
  }

  get weight(): Tensor {
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

  /** x [..., in] → y [..., out] in x's dtype. In training mode the inputs are kept for backward(). */
  forward(x: Tensor): Tensor {
    requireFloatTensor(x, 'x');
    if (x.shape.length === 0 || x.shape[x.shape.length - 1] !== this.inFeatures)
      throw new ShapeError(`x: expected shape [..., ${this.inFeatures}] (in_features), got ${shapeStr(x.shape)}`);
    this.requireLive();
    if (this._disableAdapters && this.merged) this.unmerge();
    this.clearCache();
    const names = this.contributingAdapters();
    const stream = this.#forwardCount++;
    const adapters: AdapterCache[] = [];
    const outShape = [...x.shape.slice(0, -1), this.outFeatures];
    const y = Tensor.zeros(outShape, { dtype: x.dtype });
    try {
      for (const name of names) {
        const p = this._training ? this._loraDropout.get(name)! : 0;
        const seed = this._seed.get(name)!;
        let xa = x;
        if (p > 0) {
          xa = Tensor.zeros(x.shape, { dtype: x.dtype });
          adapters.push({ name, xa, u: xa, p, seed, stream }); // registered before use so it is freed on error
          call((b) => b.dropout(x.handle, p, seed, stream, xa.handle));
        }
        const u = Tensor.zeros([...x.shape.slice(0, -1), this._r.get(name)!], { dtype: 'f32' });
        if (p > 0) adapters[adapters.length - 1].u = u;
        else adapters.push({ name, xa, u, p, seed, stream });
        call((b) => b.shrink(xa.handle, this._loraA.get(name)!.handle, u.handle));
      }
      const terms = adapters.map(
        (a) => [a.u.handle, this._loraB.get(a.name)!.handle, this._scaling.get(a.name)!] as [typeof a.u.handle, typeof a.u.handle, number],
      );
      call((b) => b.linearForward(x.handle, this.#weight.handle, this.#bias?.handle ?? null, this.fanInFanOut, terms, y.handle));
    } catch (e) {
      freeAdapterCache(adapters, x);
      y.dispose();
      throw e;
    }
    if (this._training) this.#cache = { x, outShape, adapters };
    else freeAdapterCache(adapters, x);
    return y;
  }

  /**
   * Gradients for the last training-mode forward: dx, and dA/dB for each contributing adapter that
   * is not frozen. W and b never change.
   */
  backward(dy: Tensor): BackwardResult {
    requireFloatTensor(dy, 'dy');
    const cache = this.#cache;
    if (!cache) throw new StateError('backward: needs a forward() in training mode first (call train() before forward)');
    if (cache.x.disposed) throw new StateError('backward: the input x of the last forward was disposed');
    if (dy.shape.length !== cache.outShape.length || dy.shape.some((d, i) => d !== cache.outShape[i]))
      throw new ShapeError(`dy: expected shape ${shapeStr(cache.outShape)} (the forward output), got ${shapeStr(dy.shape)}`);
    const dx = Tensor.zeros(cache.x.shape, { dtype: cache.x.dtype });
    const grads = new Map<string, AdapterGrads>();
    const terms: BackwardTermArg[] = [];
    try {
      for (const a of cache.adapters) {
        if (!this._loraA.has(a.name)) throw new StateError(`backward: adapter '${a.name}' was deleted after the forward`);
        const A = this._loraA.get(a.name)!;
        const B = this._loraB.get(a.name)!;
        let g: AdapterGrads | null = null;
        if (!this._inferenceMode.get(a.name)) {
          g = { loraA: Tensor.zeros(A.shape, { dtype: A.dtype }), loraB: Tensor.zeros(B.shape, { dtype: B.dtype }) };
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
      call((b) => b.linearBackward(dy.handle, this.#weight.handle, this.fanInFanOut, terms, dx.handle));
    } catch (e) {
      dx.dispose();
      for (const g of grads.values()) {
        g.loraA.dispose();
        g.loraB.dispose();
      }
      throw e;
    }
    this.accumulateParameterGrads(grads);
    return { dx, grads };
  }

  protected createAdapterWeights(r: number, init: InitLoraWeights, rng: Rng, dtype: FloatDType): { A: Tensor; B: Tensor } {
    const inF = this.inFeatures;
    const outF = this.outFeatures;
    const a = new Float32Array(r * inF);
    const b = new Float32Array(outF * r);
    const bound = 1 / Math.sqrt(inF); // kaiming_uniform(a=√5) = U(±1/√fan_in), nn.Linear's default
    if (init === 'gaussian') rng.fillNormal(a, 0, 1 / r);
    else rng.fillUniform(a, -bound, bound);
    if (init === false) rng.fillUniform(b, -1 / Math.sqrt(r), 1 / Math.sqrt(r)); // nn.Linear(r, out) default
    return { A: Tensor.from(a, [r, inF], { dtype }), B: Tensor.from(b, [outF, r], { dtype }) };
  }

  protected writeDelta(name: string, sign: 1 | -1, W: Tensor, out: Tensor): void {
    const s = sign * this._scaling.get(name)!;
    if (!Number.isFinite(s)) throw new LoraRangeError(`scaling of adapter '${name}' is not finite (${s})`);
    call((b) => b.mergeDelta(W.handle, this._loraA.get(name)!.handle, this._loraB.get(name)!.handle, s, this.fanInFanOut, out.handle));
  }

  protected override onReseed(): void {
    this.#forwardCount = 0;
  }

  protected clearCache(): void {
    if (this.#cache) freeAdapterCache(this.#cache.adapters, this.#cache.x);
    this.#cache = null;
  }

  private requireLive(): void {
    if (this.#weight.disposed) throw new StateError('weight: the base weight tensor was disposed');
    if (this.#bias?.disposed) throw new StateError('bias: the bias tensor was disposed');
  }
}

function freeAdapterCache(adapters: AdapterCache[], x: Tensor): void {
  for (const a of adapters) {
    if (a.xa !== x) a.xa.dispose();
    if (a.u !== a.xa) a.u.dispose();
  }
}
