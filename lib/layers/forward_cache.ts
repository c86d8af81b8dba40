/**
 * What a LoraLinear training forward keeps for its backward: per adapter the input A saw and the
 * shrink, and for DoRA the detached norm (borrowed from the layer's norm cache) and the unscaled
 * pre-activations; how it is freed; the DoRA backward's operands.
 */
import { DoraBackwardTermArg } from '../native';
import { Tensor } from '../tensor';
import { AdapterGrads } from './options';

export interface AdapterCache {
  name: string;
  xa: Tensor; // the input A saw: x, or its dropout (owned when dropout > 0)
  u: Tensor; // [n, r] shrink, in the scratch dtype
  p: number;
  seed: number;
  stream: number;
}

export interface ForwardCache {
  x: Tensor;
  outShape: number[];
  adapters: AdapterCache[];
  /** DoRA forward: the detached norm [out] (f32, borrowed from the norm cache) and pre = xa·Wᵀ + s·u·Bᵀ [n, out] (scratch dtype, owned) */
  dora?: { norm: Tensor; pre: Tensor };
}

/** Frees what a forward kept (x belongs to the caller, dora.norm to the norm cache). */
export function freeAdapterCache(adapters: AdapterCache[], x: Tensor, dora?: { norm: Tensor; pre: Tensor }): void {
  for (const a of adapters) {
    if (a.xa !== x) a.xa.dispose();
    if (a.u !== a.xa) a.u.dispose();
  }
  dora?.pre.dispose(); // dora.norm belongs to the norm cache
}

/** doraLinearBackward's term for the cached forward, and zeroed gradients (null for a frozen adapter). */
export function doraBackwardTerm(
  a: AdapterCache,
  dora: { norm: Tensor; pre: Tensor },
  ops: { A: Tensor; B: Tensor; magnitude: Tensor; scale: number },
  frozen: boolean,
): { term: DoraBackwardTermArg; g: AdapterGrads | null } {
  const { A, B, magnitude: m } = ops;
  const device = A.device;
  const g: AdapterGrads | null = frozen
    ? null
    : {
        loraA: Tensor.zeros(A.shape, { dtype: A.dtype, device }),
        loraB: Tensor.zeros(B.shape, { dtype: B.dtype, device }),
        magnitude: Tensor.zeros(m.shape, { dtype: m.dtype, device }),
      };
  const term: DoraBackwardTermArg = {
    xa: a.xa.handle,
    u: a.u.handle,
    A: A.handle,
    B: B.handle,
    magnitude: m.handle,
    scale: ops.scale,
    p: a.p,
    seed: a.seed,
    stream: a.stream,
    norm: dora.norm.handle,
    pre: dora.pre.handle,
  };
  return { term, g };
}
