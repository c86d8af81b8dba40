/** What LoraLinear's training forward keeps for its backward, and how it is freed. */
import { Tensor } from '../tensor';

export interface AdapterCache {
  name: string;
  xa: Tensor; // the input A saw: x, or its dropout (owned when dropout > 0)
  u: Tensor; // f32 [n, r] shrink
  p: number;
  seed: number;
  stream: number;
}

export interface ForwardCache {
  x: Tensor;
  outShape: number[];
  adapters: AdapterCache[];
  /** DoRA forward: the detached norm [out] and pre = xa·Wᵀ + s·u·Bᵀ [n, out], both f32 */
  dora?: { norm: Tensor; pre: Tensor };
}

export function freeAdapterCache(adapters: AdapterCache[], x: Tensor, dora?: { norm: Tensor; pre: Tensor }): void {
  for (const a of adapters) {
    if (a.xa !== x) a.xa.dispose();
    if (a.u !== a.xa) a.u.dispose();
  }
  dora?.norm.dispose();
  dora?.pre.dispose();
}
