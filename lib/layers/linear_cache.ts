/**
 * What a LoraLinear training forward keeps for its backward: per adapter the input A saw and the
 * shrink, and for DoRA the detached norm (borrowed from the layer's norm cache) and the unscaled
 * pre-activations.
 */
import { Tensor } from '../tensor';

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
