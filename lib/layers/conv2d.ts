/**
 * LoraConv2d: y = conv(x, W) + b + Σ_active s·B(A(drop(x))), as peft's lora.Conv2d. A [r, in, kh, kw]
 * is a conv with the base's kernel, stride and padding (dilation 1: peft does not copy it); B
 * [out, r/groups, 1, 1] is a 1×1 conv with the base's groups. Natively: im2col plus the packed GEMM,
 * with the base, every adapter's 1×1 expand and the bias as K segments of one GEMM per image and group.
 * ΔW = s·B·A over the flattened kernel (peft's conv(Aᵀ, B)ᵀ·s); merging a grouped conv is refused, as in peft.
 */
import { Device, FloatDType } from '../dtype';
import { AdapterError, LoraRangeError, LoraTypeError, ShapeError, StateError, shapeStr } from '../errors';
import { KernelSteps, step } from '../exec';
import { BackwardTermArg } from '../native';
import { Rng } from '../rng';
import { Tensor, requireFloatTensor } from '../tensor';
import { checkInt, checkOptions } from '../validate';
import { InitLoraWeights, kaimingFactors } from './init';
import { AdapterGrads, BackwardResult, LoraLayer, MixedForwardOptions } from './lora_layer';

export type Pair = number | [number, number];

export interface LoraConv2dOptions {
  /** [out, in / groups, kh, kw] */
  weight: Tensor;
  bias?: Tensor | null;
  stride?: Pair;
  padding?: Pair;
  dilation?: Pair;
  groups?: number;
}

interface AdapterCache {
  name: string;
  xa: Tensor;
  u: Tensor; // f32 [N, r, Ho·Wo]
  p: number;
  seed: number;
  stream: number;
}

interface ForwardCache {
  x: Tensor;
  outShape: number[];
  adapters: AdapterCache[];
}

function pair(v: unknown, name: string, min: number): [number, number] {
  if (Array.isArray(v)) {
    if (v.length !== 2) throw new LoraTypeError(`${name}: expected a number or [h, w]`);
    return [checkInt(v[0], `${name}[0]`, min, 1 << 20), checkInt(v[1], `${name}[1]`, min, 1 << 20)];
  }
  const n = checkInt(v, name, min, 1 << 20);
  return [n, n];
}

export class LoraConv2d extends LoraLayer {
  readonly stride: [number, number];
  readonly padding: [number, number];
  readonly dilation: [number, number];
  readonly groups: number;
  #weight: Tensor;
  #bias: Tensor | null;
  #cache: ForwardCache | null = null;
  #forwardCount = 0;

  constructor(opts: LoraConv2dOptions) {
    super();
    const o = checkOptions(opts, ['weight', 'bias', 'stride', 'padding', 'dilation', 'groups'], 'opts');
    if (o.weight === undefined) throw new LoraTypeError('opts.weight: required');
    const W = requireFloatTensor(o.weight, 'opts.weight', (o.weight as Tensor | undefined)?.device ?? 'cpu');
    if (W.shape.length !== 4)
      throw new ShapeError(`opts.weight: expected 4 dimensions [out, in/groups, kh, kw], got shape ${shapeStr(W.shape)}`);
    this.stride = pair(o.stride ?? 1, 'opts.stride', 1);
    this.padding = pair(o.padding ?? 0, 'opts.padding', 0);
    this.dilation = pair(o.dilation ?? 1, 'opts.dilation', 1);
    this.groups = checkInt(o.groups ?? 1, 'opts.groups', 1, 1 << 20);
    if (W.shape[0] % this.groups !== 0)
      throw new ShapeError(`opts.groups: ${this.groups} does not divide out_channels ${W.shape[0]} (weight ${shapeStr(W.shape)})`);
    this.#weight = W;
    this.#bias = null;
    if (o.bias !== undefined && o.bias !== null) {
      const b = requireFloatTensor(o.bias, 'opts.bias', W.device);
      if (b.shape.length !== 1 || b.shape[0] !== this.outFeatures)
        throw new ShapeError(`opts.bias: expected shape [${this.outFeatures}], got ${shapeStr(b.shape)}`);
      this.#bias = b;
    }
  }

  /** The device of the base weight; inputs, adapters and outputs live there. */
  get device(): Device {
    return this.#weight.device;
  }
  get weight(): Tensor {
    return this.#weight;
  }
  get bias(): Tensor | null {
    return this.#bias;
  }
  /** in_channels */
  get inFeatures(): number {
    return this.#weight.shape[1] * this.groups;
  }
  /** out_channels */
  get outFeatures(): number {
    return this.#weight.shape[0];
  }
  get kernelSize(): [number, number] {
    return [this.#weight.shape[2], this.#weight.shape[3]];
  }

  /** Output spatial size for an input of H×W with the given dilation. */
  private outSize(h: number, w: number, dil: [number, number]): [number, number] {
    const [kh, kw] = this.kernelSize;
    return [
      Math.floor((h + 2 * this.padding[0] - dil[0] * (kh - 1) - 1) / this.stride[0]) + 1,
      Math.floor((w + 2 * this.padding[1] - dil[1] * (kw - 1) - 1) / this.stride[1]) + 1,
    ];
  }

  private geom(): number[] {
    return [...this.stride, ...this.padding, ...this.dilation, this.groups];
  }

  /**
   * x [N, in, H, W] → y [N, out, Ho, Wo] in x's dtype. In training mode the inputs are kept for
   * backward(). opts.adapterNames (eval mode): one adapter name or '__base__' per image.
   */
  forward(x: Tensor, opts: MixedForwardOptions = {}): Tensor {
    return this.runLayerSync('forward', this.forwardSteps(x, opts));
  }

  /** forward() with the kernels on a libuv thread; x, the weights and y are busy until it settles. */
  forwardAsync(x: Tensor, opts: MixedForwardOptions = {}): Promise<Tensor> {
    return this.runLayerAsync('forward', this.forwardSteps(x, opts));
  }

  /** backward() with the kernels on a libuv thread. */
  backwardAsync(dy: Tensor): Promise<BackwardResult> {
    return this.runLayerAsync('backward', this.backwardSteps(dy));
  }

  private *forwardSteps(x: Tensor, opts: MixedForwardOptions): KernelSteps<Tensor> {
    requireFloatTensor(x, 'x', this.device);
    const o = checkOptions(opts, ['adapterNames'], 'opts') as MixedForwardOptions;
    if (x.shape.length !== 4 || x.shape[1] !== this.inFeatures)
      throw new ShapeError(`x: expected shape [N, ${this.inFeatures}, H, W] (in_channels ${this.inFeatures}), got ${shapeStr(x.shape)}`);
    if (this.#weight.disposed) throw new StateError('weight: the base weight tensor was disposed');
    if (this.#bias?.disposed) throw new StateError('bias: the bias tensor was disposed');
    const [N, , H, Wd] = x.shape;
    const [Ho, Wo] = this.outSize(H, Wd, this.dilation);
    if (!(Ho > 0 && Wo > 0))
      throw new ShapeError(`x: spatial size ${H}×${Wd} is too small for kernel ${this.kernelSize.join('×')} with padding ${this.padding.join('×')}`);
    let names: string[];
    let images: Int32Array | null = null;
    if (o.adapterNames !== undefined) {
      const mixed = this.resolveMixedBatch(o.adapterNames, N);
      names = mixed.adapters;
      images = this._disableAdapters ? mixed.index.fill(-1) : mixed.index;
    } else {
      if (this._disableAdapters && this.merged) yield* this.unmergeSteps();
      names = this.contributingAdapters();
    }
    this.clearCache();
    if (names.length > 0) {
      const [Ha, Wa] = this.outSize(H, Wd, [1, 1]);
      if (Ha !== Ho || Wa !== Wo)
        throw new ShapeError(
          `x: the adapters' lora_A conv (dilation 1, as in peft) gives ${Ha}×${Wa} but the base conv (dilation ${this.dilation.join('×')}) gives ${Ho}×${Wo}`,
        );
    }
    const stream = this.#forwardCount++;
    const adapters: AdapterCache[] = [];
    const outShape = [N, this.outFeatures, Ho, Wo];
    const device = this.device;
    const y = Tensor.zeros(outShape, { dtype: x.dtype, device });
    try {
      for (const name of names) {
        const p = this._training ? this._loraDropout.get(name)! : 0;
        const seed = this._seed.get(name)!;
        let xa = x;
        if (p > 0) {
          xa = Tensor.zeros(x.shape, { dtype: x.dtype, device });
          adapters.push({ name, xa, u: xa, p, seed, stream });
          yield step('dropout', x.handle, p, seed, stream, xa.handle);
        }
        const u = Tensor.zeros([N, this._r.get(name)!, Ho * Wo], { dtype: 'f32', device });
        if (p > 0) adapters[adapters.length - 1].u = u;
        else adapters.push({ name, xa, u, p, seed, stream });
      }
      const terms = adapters.map((a) => ({
        xa: a.xa.handle,
        u: a.u.handle,
        A: this._loraA.get(a.name)!.handle,
        B: this._loraB.get(a.name)!.handle,
        scale: this._scaling.get(a.name)!,
      }));
      yield step('conv2dForward', x.handle, this.#weight.handle, this.#bias?.handle ?? null, this.geom(), terms, y.handle, images);
    } catch (e) {
      freeAdapterCache(adapters, x);
      y.dispose();
      throw e;
    }
    if (this._training) this.#cache = { x, outShape, adapters };
    else freeAdapterCache(adapters, x);
    return y;
  }

  /** Gradients for the last training-mode forward: dx, and dA/dB per contributing, unfrozen adapter. */
  backward(dy: Tensor): BackwardResult {
    return this.runLayerSync('backward', this.backwardSteps(dy));
  }

  private *backwardSteps(dy: Tensor): KernelSteps<BackwardResult> {
    requireFloatTensor(dy, 'dy', this.device);
    const cache = this.#cache;
    if (!cache) throw new StateError('backward: needs a forward() in training mode first (call train() before forward)');
    if (cache.x.disposed) throw new StateError('backward: the input x of the last forward was disposed');
    if (dy.shape.length !== cache.outShape.length || dy.shape.some((d, i) => d !== cache.outShape[i]))
      throw new ShapeError(`dy: expected shape ${shapeStr(cache.outShape)} (the forward output), got ${shapeStr(dy.shape)}`);
    const device = this.device;
    const dx = Tensor.zeros(cache.x.shape, { dtype: cache.x.dtype, device });
    const grads = new Map<string, AdapterGrads>();
    const terms: BackwardTermArg[] = [];
    try {
      for (const a of cache.adapters) {
        if (!this._loraA.has(a.name)) throw new StateError(`backward: adapter '${a.name}' was deleted after the forward`);
        const A = this._loraA.get(a.name)!;
        const B = this._loraB.get(a.name)!;
        let g: AdapterGrads | null = null;
        if (!this._inferenceMode.get(a.name)) {
          g = { loraA: Tensor.zeros(A.shape, { dtype: A.dtype, device }), loraB: Tensor.zeros(B.shape, { dtype: B.dtype, device }) };
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
      yield step('conv2dBackward', dy.handle, cache.x.handle, this.#weight.handle, this.geom(), terms, dx.handle);
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

  /** peft's Conv init: A kaiming-uniform (U(±1/√(in·kh·kw))), B = 0; 'gaussian': A ~ N(0, 1/r); false: B random too. */
  protected createAdapterWeights(r: number, init: InitLoraWeights, rng: Rng, dtype: FloatDType): { A: Tensor; B: Tensor } {
    if (r % this.groups !== 0)
      throw new LoraRangeError(`opts.r: ${r} must be a multiple of groups ${this.groups} (lora_B is a grouped 1×1 conv)`);
    const [kh, kw] = this.kernelSize;
    const rg = r / this.groups;
    const { a, b } = kaimingFactors(r, this.inFeatures * kh * kw, this.outFeatures, rg, init, rng);
    const device = this.device;
    return {
      A: Tensor.from(a, [r, this.inFeatures, kh, kw], { dtype, device }),
      B: Tensor.from(b, [this.outFeatures, rg, 1, 1], { dtype, device }),
    };
  }

  protected exactFanInFanOut(): boolean {
    return false;
  }

  protected override requireMergeable(name: string): void {
    if (this.groups > 1) throw new AdapterError(`merge: adapter '${name}' is on a grouped conv (groups ${this.groups}); peft refuses to merge it too`);
    const [kh, kw] = this.kernelSize;
    if ((this.dilation[0] > 1 && kh > 1) || (this.dilation[1] > 1 && kw > 1))
      throw new AdapterError(
        `merge: adapter '${name}' runs at dilation 1 (peft's lora_A) but the base conv at ${this.dilation.join('×')}; its delta cannot be merged into W`,
      );
  }

  protected *deltaSteps(name: string, sign: 1 | -1, W: Tensor, out: Tensor): KernelSteps<void> {
    this.requireMergeable(name);
    const s = sign * this._scaling.get(name)!;
    if (!Number.isFinite(s)) throw new LoraRangeError(`scaling of adapter '${name}' is not finite (${s})`);
    yield step('conv2dMergeDelta', W.handle, this._loraA.get(name)!.handle, this._loraB.get(name)!.handle, s, out.handle);
  }

  protected override weightedAdapterUnsupported(): string | null {
    return this.groups > 1 ? `grouped convs (groups ${this.groups}) have no single B·A to combine` : null;
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

  protected clearCache(): void {
    if (this.#cache) freeAdapterCache(this.#cache.adapters, this.#cache.x);
    this.#cache = null;
  }
}

function freeAdapterCache(adapters: AdapterCache[], x: Tensor): void {
  for (const a of adapters) {
    if (a.xa !== x) a.xa.dispose();
    if (a.u !== a.xa) a.u.dispose();
  }
}
