/**
 * One body, two drivers: an operation written as a generator that yields kernel steps runs either
 * synchronously (each step at once) or asynchronously (each step as a Promise on a libuv thread).
 * Errors from a step are thrown back into the generator, so its try/finally cleanup runs either way.
 */
import { KernelBinding, KernelOp, call, callAsync } from './native';

export type { KernelOp };

export interface KernelStep {
  op: KernelOp;
  args: unknown[];
}

/** What an operation body yields; the value sent back is the step's result (allFinite: boolean). */
export type KernelSteps<T> = Generator<KernelStep, T, unknown>;

export function step<K extends KernelOp>(op: K, ...args: Parameters<KernelBinding[K]>): KernelStep {
  return { op, args };
}

/** Runs one kernel op synchronously, as a one-step body (for callers with a single call). */
export function runOp<K extends KernelOp>(op: K, ...args: Parameters<KernelBinding[K]>): ReturnType<KernelBinding[K]> {
  return runStep(step(op, ...args)) as ReturnType<KernelBinding[K]>;
}

type AnyFn = (...a: unknown[]) => unknown;

/**
 * Runs fn with the JS thread's current cuda stream set to the stream id (0: as it is). Native
 * calls made meanwhile run on it; async ones take it when they are queued.
 */
export function onStream<T>(stream: number, fn: () => T): T {
  if (stream === 0) return fn();
  const prev = call((b) => b.cudaCurrentStream());
  call((b) => b.cudaSetStream(stream));
  try {
    return fn();
  } finally {
    try {
      call((b) => b.cudaSetStream(prev));
    } catch {
      call((b) => b.cudaSetStream(0)); // the outer stream was disposed meanwhile
    }
  }
}

/** Runs one step synchronously. */
export function runStep(s: KernelStep): unknown {
  return call((b) => (b[s.op] as AnyFn)(...s.args));
}

export function runSync<T>(steps: KernelSteps<T>, stream = 0): T {
  if (stream !== 0) return onStream(stream, () => runSync(steps));
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

/** The body's synchronous parts and the queuing of each step run on the stream (0: the current one). */
export async function runAsync<T>(steps: KernelSteps<T>, stream = 0): Promise<T> {
  let r = onStream(stream, () => steps.next());
  while (!r.done) {
    const s = r.value;
    let value: unknown;
    try {
      value = await onStream(stream, () => callAsync((b) => (b[`${s.op}Async`] as AnyFn)(...s.args) as Promise<unknown>));
    } catch (e) {
      r = onStream(stream, () => steps.throw(e));
      continue;
    }
    r = onStream(stream, () => steps.next(value));
  }
  return r.value;
}
