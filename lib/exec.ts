/**
 * One body, two drivers: an operation written as a generator that yields kernel steps runs either
 * synchronously (each step at once) or asynchronously (each step as a Promise on a libuv thread).
 * Errors from a step are thrown back into the generator, so its try/finally cleanup runs either way.
 */
import { NativeBinding, call, callAsync } from './native';

export type KernelOp =
  | 'shrink'
  | 'linearForward'
  | 'loraForward'
  | 'linearBackward'
  | 'mergeDelta'
  | 'dropout'
  | 'convert'
  | 'allFinite'
  // peft-parity ops (native/napi/parity_binding.cc)
  | 'mixedLinearForward'
  | 'doraWeightNorm'
  | 'doraLinearForward'
  | 'doraLinearBackward'
  | 'doraMerge'
  | 'embeddingForward'
  | 'embeddingBackward'
  | 'conv2dForward'
  | 'conv2dBackward'
  | 'conv2dMergeDelta';

export interface KernelStep {
  op: KernelOp;
  args: unknown[];
}

/** What an operation body yields; the value sent back is the step's result (allFinite: boolean). */
export type KernelSteps<T> = Generator<KernelStep, T, unknown>;

export function step<K extends KernelOp>(op: K, ...args: Parameters<NativeBinding[K]>): KernelStep {
  return { op, args };
}

type AnyFn = (...a: unknown[]) => unknown;

/** Runs one step synchronously. */
export function runStep(s: KernelStep): unknown {
  return call((b) => (b[s.op] as AnyFn)(...s.args));
}

export function runSync<T>(steps: KernelSteps<T>): T {
  let r = steps.next();
  while (!r.done) {
    const s = r.value;
    let value: unknown;
    try {
      value = call((b) => (b[s.op] as AnyFn)(...s.args));
    } catch (e) {
      r = steps.throw(e);
      continue;
    }
    r = steps.next(value);
  }
  return r.value;
}

export async function runAsync<T>(steps: KernelSteps<T>): Promise<T> {
  let r = steps.next();
  while (!r.done) {
    const s = r.value;
    let value: unknown;
    try {
      value = await callAsync((b) => (b[`${s.op}Async`] as AnyFn)(...s.args) as Promise<unknown>);
    } catch (e) {
      r = steps.throw(e);
      continue;
    }
    r = steps.next(value);
  }
  return r.value;
}
