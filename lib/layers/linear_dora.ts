/**
 * DoRA for LoraLinear (peft's lora.dora.DoraLinearLayer): each output feature scaled by
 * k = magnitude / ‖W + s·B·A‖, the norm detached as in peft, so
 *   forward  y = k ⊙ (x·Wᵀ + s·drop(x)·Aᵀ·Bᵀ) + b          (one native call, k in its epilogue)
 *   merge    W' = k ⊙ (W + s·B·A), the norm kept (peft's _caches) for unmerge W = W'/k − s·B·A.
 * The norm comes from a low-rank identity, never from a dense out×in delta, and is cached while W,
 * A, B and s are unchanged (dora_norm_cache.ts). Over a quantized base the steps take the
 * dequantised copy of W that the host's floatBaseSteps makes (peft does the same on bnb bases).
 */
import { scratchDtype } from '../backend';
import { StateError } from '../errors';
import { KernelSteps, step } from '../exec';
import { Tensor } from '../tensor';
import { DoraNormCache } from './dora_norm_cache';
import { AdapterCache, ForwardCache, doraBackwardTerm } from './forward_cache';
import { LinearHost } from './linear_host';
import { AdapterGrads } from './options';

export class LinearDora {
  /** peft's _caches: the DoRA weight norm of each merged DoRA adapter, for its unmerge */
  readonly #mergeNorm = new Map<string, Tensor>();
  readonly #norms = new DoraNormCache();

  constructor(private readonly host: LinearHost) {}

  /** ‖W + s·B·A‖ per output feature (f32 [out]) for W (default: the base weight, dequantised if quantized). */
  *weightNormSteps(name: string, given?: Tensor): KernelSteps<Tensor> {
    const h = this.host;
    h.requireAdapter(name, 'name');
    const W = given ?? (yield* h.floatBaseSteps('f32'));
    const norm = Tensor.zeros([h.outFeatures], { dtype: 'f32', device: h.device });
    try {
      yield step('doraWeightNorm', W.handle, h.loraA.get(name)!.handle, h.loraB.get(name)!.handle, h.scaling.get(name)!,
        h.fanInFanOut, norm.handle);
    } catch (e) {
      norm.dispose();
      throw e;
    } finally {
      if (!given) h.freeFloatBase(W);
    }
    return norm;
  }

  /** The forward of the one active DoRA adapter over the float base (see forwardOnBaseSteps). */
  *forwardSteps(x: Tensor, name: string, stream: number, adapters: AdapterCache[], y: Tensor): KernelSteps<ForwardCache['dora']> {
    const base = yield* this.host.floatBaseSteps(x.dtype);
    try {
      return yield* this.forwardOnBaseSteps(x, name, stream, adapters, y, base);
    } finally {
      this.host.freeFloatBase(base);
    }
  }

  /**
   * One native call: u = xa·Aᵀ, y = k ⊙ (x·Wᵀ + s·u·Bᵀ) + b (+ the base path outside the dropout);
   * in training u and the unscaled pre are kept for backward. The norm comes from the cache, or is
   * computed by the same call when stale. W is the base, or a dequantised copy of a quantized one
   * (a new tensor each call, so its norm is recomputed each call).
   */
  private *forwardOnBaseSteps(x: Tensor, name: string, stream: number, adapters: AdapterCache[], y: Tensor, W: Tensor): KernelSteps<ForwardCache['dora']> {
    const h = this.host;
    const dev = h.device;
    const training = h.training;
    const p = training ? h.loraDropout.get(name)! : 0;
    const seed = h.seed(name);
    const A = h.loraA.get(name)!;
    const B = h.loraB.get(name)!;
    const scale = h.scaling.get(name)!;
    let xa = x;
    if (p > 0) {
      xa = Tensor.empty(x.shape, { dtype: x.dtype, device: dev });
      adapters.push({ name, xa, u: xa, p, seed, stream }); // registered before use so it is freed on error
      yield step('dropout', x.handle, p, seed, stream, xa.handle);
    }
    const scratch = scratchDtype(dev, x.dtype);
    let u: Tensor | null = null;
    if (training) {
      u = Tensor.empty([...x.shape.slice(0, -1), h.r.get(name)!], { dtype: scratch, device: dev });
      if (p > 0) adapters[adapters.length - 1].u = u;
      else adapters.push({ name, xa, u, p, seed, stream });
    }
    // The norm: cached, or computed by the forward itself (the cpu streams W once for both).
    const plan = this.#norms.prepare(name, {
      W, A, B, scale, fanInFanOut: h.fanInFanOut, outFeatures: h.outFeatures, device: dev,
    });
    const norm = plan.norm;
    const pre = this.#norms.takePre(training, [x.numel / h.inFeatures, h.outFeatures], scratch, dev);
    try {
      yield step('doraLinearForward', x.handle, xa.handle, W.handle, h.bias?.handle ?? null, h.fanInFanOut,
        u?.handle ?? null, A.handle, B.handle, scale, norm.handle, h.loraMagnitude.get(name)!.handle, y.handle, pre?.handle ?? null,
        plan.ready, plan.wsq?.handle ?? null, plan.wsqReady);
    } catch (e) {
      plan.abort();
      pre?.dispose();
      throw e;
    }
    plan.commit();
    return pre ? { norm, pre } : undefined;
  }

  /** dx, and dA, dB, d(magnitude) unless the adapter is frozen, for a DoRA forward's cache. */
  *backwardSteps(dy: Tensor, cache: ForwardCache, dx: Tensor, grads: Map<string, AdapterGrads>): KernelSteps<void> {
    const h = this.host;
    const a = cache.adapters[0];
    if (!h.loraA.has(a.name)) throw new StateError(`backward: adapter '${a.name}' was deleted after the forward`);
    const { term, g } = doraBackwardTerm(a, cache.dora!, {
      A: h.loraA.get(a.name)!, B: h.loraB.get(a.name)!, magnitude: h.loraMagnitude.get(a.name)!, scale: h.scaling.get(a.name)!,
    }, h.frozen(a.name));
    if (g) grads.set(a.name, g);
    const base = yield* h.floatBaseSteps(dy.dtype);
    try {
      yield step('doraLinearBackward', dy.handle, base.handle, h.fanInFanOut, term, dx.handle, g ? g.loraA.handle : null,
        g ? g.loraB.handle : null, g ? g.magnitude!.handle : null);
    } finally {
      h.freeFloatBase(base);
    }
  }

  /** out = k ⊙ (W + s·B·A) (s > 0 from merge, the norm kept), or its inverse with the kept norm (s < 0, unmerge). */
  *mergeSteps(name: string, sign: 1 | -1, s: number, W: Tensor, out: Tensor): KernelSteps<void> {
    const h = this.host;
    const A = h.loraA.get(name)!;
    const B = h.loraB.get(name)!;
    const m = h.loraMagnitude.get(name)!;
    if (sign === 1) {
      const norm = yield* this.weightNormSteps(name, W);
      try {
        yield step('doraMerge', W.handle, A.handle, B.handle, s, h.fanInFanOut, m.handle, norm.handle, false, out.handle);
      } catch (e) {
        norm.dispose();
        throw e;
      }
      this.#mergeNorm.get(name)?.dispose();
      this.#mergeNorm.set(name, norm);
    } else {
      const norm = this.#mergeNorm.get(name);
      if (!norm) throw new StateError(`unmerge: no cached weight norm for DoRA adapter '${name}'`);
      yield step('doraMerge', W.handle, A.handle, B.handle, -s, h.fanInFanOut, m.handle, norm.handle, true, out.handle);
      norm.dispose();
      this.#mergeNorm.delete(name);
    }
  }

  /** Frees the norm a merge kept for a plain unmerge (an exact record undid the merge instead). */
  dropMergeNorm(name: string): void {
    this.#mergeNorm.get(name)?.dispose();
    this.#mergeNorm.delete(name);
  }

  /** Forgets a deleted adapter's cached forward norm. */
  deleteNorm(name: string): void {
    this.#norms.delete(name);
  }

  /** Hands a dropped forward cache's pre buffer back for reuse. */
  keepPre(pre: Tensor): void {
    this.#norms.keepPre(pre);
  }

  /** Frees every cached norm. */
  clear(): void {
    this.#norms.clear();
    for (const n of this.#mergeNorm.values()) n.dispose();
    this.#mergeNorm.clear();
  }
}
