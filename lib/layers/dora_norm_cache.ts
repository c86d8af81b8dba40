/**
 * DoRA's weight norm ‖W + s·B·A‖ per output feature (f32 [out], detached), kept between forwards.
 * peft's DoraLinearLayer recomputes it on every forward; here an entry stays valid while W, A and B
 * are the same tensors with the same write counts (Tensor.version: every native write bumps it, so
 * optimizer steps, copyFrom, loads and merge/unmerge all invalidate) and the scale is unchanged.
 * ‖W_o‖² is kept apart, per W, so a training step (A or B changed) costs one pass over W for W·Aᵀ
 * and O(out·r²) (the low-rank identity of native/cpu/ops.h). A wrapped tensor (version -1) is never
 * trusted: its norm is recomputed on each use.
 */
import { Device } from '../dtype';
import { KernelSteps, step } from '../exec';
import { Tensor } from '../tensor';

interface NormEntry {
  norm: Tensor;
  W: Tensor;
  A: Tensor;
  B: Tensor;
  scale: number;
  versions: [number, number, number];
}

export interface DoraNormInputs {
  W: Tensor;
  A: Tensor;
  B: Tensor;
  scale: number;
  fanInFanOut: boolean;
  outFeatures: number;
  device: Device;
}

function versionsOf(W: Tensor, A: Tensor, B: Tensor): [number, number, number] {
  return [W.version, A.version, B.version];
}

function trusted(v: readonly number[]): boolean {
  return v.every((x) => x >= 0);
}

export class DoraNormCache {
  readonly #norms = new Map<string, NormEntry>();
  #wsq: { W: Tensor; version: number; wsq: Tensor } | null = null;

  /** The cached norm of adapter `name` when still valid, else null. */
  lookup(name: string, o: DoraNormInputs): Tensor | null {
    const e = this.#norms.get(name);
    if (!e || e.norm.disposed || e.W !== o.W || e.A !== o.A || e.B !== o.B || e.scale !== o.scale) return null;
    const v = versionsOf(o.W, o.A, o.B);
    return trusted(v) && v.every((x, i) => x === e.versions[i]) ? e.norm : null;
  }

  /**
   * The norm for these inputs: cached, or computed (W·Aᵀ, with ‖W‖² reused while W is unchanged)
   * and cached. The cache owns the tensor; callers borrow it until the next call for this name.
   */
  *normSteps(name: string, o: DoraNormInputs): KernelSteps<Tensor> {
    const hit = this.lookup(name, o);
    if (hit) return hit;
    const wv = o.W.version;
    let wsq = this.#wsq;
    const wsqReady = wsq !== null && wsq.W === o.W && wsq.version === wv && wv >= 0 && !wsq.wsq.disposed;
    if (!wsqReady) {
      this.#wsq?.wsq.dispose();
      this.#wsq = null;
      wsq = { W: o.W, version: wv, wsq: Tensor.empty([o.outFeatures], { dtype: 'f32', device: o.device }) };
    }
    const old = this.#norms.get(name);
    const norm = old && !old.norm.disposed ? old.norm : Tensor.empty([o.outFeatures], { dtype: 'f32', device: o.device });
    this.#norms.delete(name); // no entry while the kernel runs: a failure leaves nothing stale
    try {
      yield step('doraWeightNorm', o.W.handle, o.A.handle, o.B.handle, o.scale, o.fanInFanOut, norm.handle, wsq!.wsq.handle, wsqReady);
    } catch (e) {
      norm.dispose();
      if (!wsqReady) wsq!.wsq.dispose();
      throw e;
    }
    this.#wsq = wsq;
    this.#norms.set(name, { norm, W: o.W, A: o.A, B: o.B, scale: o.scale, versions: versionsOf(o.W, o.A, o.B) });
    return norm;
  }

  /** Frees adapter `name`'s entry. */
  delete(name: string): void {
    this.#norms.get(name)?.norm.dispose();
    this.#norms.delete(name);
  }

  /** Frees every entry and the cached ‖W‖². */
  clear(): void {
    for (const e of this.#norms.values()) e.norm.dispose();
    this.#norms.clear();
    this.#wsq?.wsq.dispose();
    this.#wsq = null;
  }
}
