/**
 * DoRA's weight norm ‖W + s·B·A‖ per output feature (f32 [out], detached), kept between forwards.
 * peft's DoraLinearLayer recomputes it on every forward; here an entry stays valid while W, A and B
 * are the same tensors with the same write counts (Tensor.version: every native write bumps it, so
 * optimizer steps, copyFrom, loads and merge/unmerge all invalidate) and the scale is unchanged.
 * ‖W_o‖² is kept apart, per W, so a training step (A or B changed) costs one pass over W for W·Aᵀ
 * and O(out·r²) (the low-rank identity of native/cpu/ops.h). A wrapped tensor (version -1) is never
 * trusted: its norm is recomputed on each use. The training forward's pre [n, out] buffer is kept
 * here between steps too: a fresh cpu buffer of that size per step costs more than the DoRA scaling
 * (page faults on new memory).
 */
import { Device, FloatDType } from '../dtype';
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

/** prepare()'s answer: a ready cached norm, or one to compute (then commit, or abort on failure). */
export interface NormPlan {
  norm: Tensor;
  ready: boolean;
  wsq: Tensor | null;
  wsqReady: boolean;
  commit(): void;
  abort(): void;
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
  #preSpare: Tensor | null = null;

  /** A training forward's pre buffer (the last one kept when it fits); null, freeing it, in eval. */
  takePre(training: boolean, shape: [number, number], dtype: FloatDType, device: Device): Tensor | null {
    const t = this.#preSpare;
    this.#preSpare = null;
    if (training && t && !t.disposed && t.dtype === dtype && t.device === device && t.shape[0] === shape[0] && t.shape[1] === shape[1]) return t;
    t?.dispose();
    return training ? Tensor.empty(shape, { dtype, device }) : null;
  }

  /** Keeps a pre buffer the layer no longer needs, for the next takePre. */
  keepPre(t: Tensor): void {
    if (this.#preSpare !== t) this.#preSpare?.dispose();
    this.#preSpare = t;
  }

  /** The cached norm of adapter `name` when still valid, else null. */
  lookup(name: string, o: DoraNormInputs): Tensor | null {
    const e = this.#norms.get(name);
    if (!e || e.norm.disposed || e.W !== o.W || e.A !== o.A || e.B !== o.B || e.scale !== o.scale) return null;
    const v = versionsOf(o.W, o.A, o.B);
    return trusted(v) && v.every((x, i) => x === e.versions[i]) ? e.norm : null;
  }

  /**
   * The norm for these inputs: the cached tensor (ready), or a tensor to compute it into with the
   * ‖W‖² state for doraWeightNorm's or doraLinearForward's wsq arguments. After the kernel that
   * computes it has run, commit() records the entry; until then the name has none, so a failed
   * kernel leaves nothing stale (abort() frees what prepare made). The cache owns the tensor;
   * callers borrow it until the next call for this name.
   */
  prepare(name: string, o: DoraNormInputs): NormPlan {
    const hit = this.lookup(name, o);
    if (hit) return { norm: hit, ready: true, wsq: null, wsqReady: false, commit: () => {}, abort: () => {} };
    const wv = o.W.version;
    const cur = this.#wsq;
    const wsqReady = cur !== null && cur.W === o.W && cur.version === wv && wv >= 0 && !cur.wsq.disposed;
    const wsq = wsqReady ? cur! : { W: o.W, version: wv, wsq: Tensor.empty([o.outFeatures], { dtype: 'f32', device: o.device }) };
    if (!wsqReady) {
      cur?.wsq.dispose();
      this.#wsq = null;
    }
    const old = this.#norms.get(name);
    const norm = old && !old.norm.disposed ? old.norm : Tensor.empty([o.outFeatures], { dtype: 'f32', device: o.device });
    this.#norms.delete(name);
    return {
      norm,
      ready: false,
      wsq: wsq.wsq,
      wsqReady,
      commit: () => {
        this.#wsq = wsq;
        this.#norms.set(name, { norm, W: o.W, A: o.A, B: o.B, scale: o.scale, versions: versionsOf(o.W, o.A, o.B) });
      },
      abort: () => {
        norm.dispose();
        if (!wsqReady) wsq.wsq.dispose();
      },
    };
  }

  /** The norm for these inputs: cached, or computed by doraWeightNorm and cached. */
  *normSteps(name: string, o: DoraNormInputs): KernelSteps<Tensor> {
    const plan = this.prepare(name, o);
    if (plan.ready) return plan.norm;
    try {
      yield step('doraWeightNorm', o.W.handle, o.A.handle, o.B.handle, o.scale, o.fanInFanOut, plan.norm.handle, plan.wsq!.handle, plan.wsqReady);
    } catch (e) {
      plan.abort();
      throw e;
    }
    plan.commit();
    return plan.norm;
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
    this.#preSpare?.dispose();
    this.#preSpare = null;
  }
}
