/** Shared pieces of the fuzz targets: typed-error checks, tensor scopes, deterministic values. */
import { AdapterError, DTypeError, LoraRangeError, LoraTypeError, ShapeError, StateError, Tensor } from '../../lib';

export const TYPED_ERRORS = [LoraTypeError, DTypeError, ShapeError, LoraRangeError, AdapterError, StateError];

export function isTyped(e: unknown): e is Error {
  return TYPED_ERRORS.some((c) => e instanceof c);
}

/** Counts of the cases each target ran, by kind. */
export const tally = { valid: 0, invalid: 0 };

/** fn must throw a lorakit error whose message names `arg`. */
export function expectTypedError(fn: () => unknown, arg: string): void {
  tally.invalid++;
  try {
    fn();
  } catch (e) {
    checkTyped(e, arg);
    return;
  }
  throw new Error(`expected a typed error naming '${arg}', but the call succeeded`);
}

export async function expectTypedRejection(fn: () => Promise<unknown>, arg: string): Promise<void> {
  tally.invalid++;
  try {
    await fn();
  } catch (e) {
    checkTyped(e, arg);
    return;
  }
  throw new Error(`expected a rejection naming '${arg}', but the call succeeded`);
}

function checkTyped(e: unknown, arg: string): void {
  if (!isTyped(e)) throw new Error(`untyped error for '${arg}': ${String((e as Error)?.stack ?? e)}`);
  if (!e.message.includes(arg)) throw new Error(`error does not name '${arg}': ${e.name}: ${e.message}`);
}

/** Collects tensors made by a case so they are freed whatever happens. */
export class Scope {
  readonly tensors: Tensor[] = [];
  add<T extends Tensor>(t: T): T {
    this.tensors.push(t);
    return t;
  }
  dispose(): void {
    for (const t of this.tensors) t.dispose();
    this.tensors.length = 0;
  }
}

/** Deterministic values in [-1, 1) from a seed (xorshift32). */
export function values(n: number, seed: number): Float64Array {
  let s = seed >>> 0 || 1;
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    out[i] = (s / 4294967296) * 2 - 1;
  }
  return out;
}

export function prod(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** A float tensor with deterministic values, stored in dtype. */
export function floatTensor(scope: Scope, shape: number[], dtype: 'f32' | 'f16' | 'bf16', seed: number, scale = 1): Tensor {
  const v = values(prod(shape), seed);
  if (scale !== 1) for (let i = 0; i < v.length; i++) v[i] *= scale;
  return scope.add(Tensor.from(v, shape, { dtype }));
}

/** The stored values of a float tensor, widened exactly. */
export function stored(t: Tensor): Float64Array {
  return Float64Array.from(t.toFloat32Array());
}
