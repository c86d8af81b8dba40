/**
 * Every exported function and constructor called with random junk (wrong types, NaN, null, odd
 * arrays and objects, disposed tensors). A call may succeed; if it throws, the error must be a
 * lorakit error class (never an incidental TypeError from deep inside, never a crash).
 */
import fc from 'fast-check';
import * as lk from '../../lib';
import { isTyped, tally } from './fuzz_common';

// Left out: functions that write files or run long jobs when handed plausible arguments.
const SKIP = new Set(['bench', 'train', 'writeSafetensors', 'SafetensorsStreamWriter', 'GgufStreamWriter', 'mergeCheckpoint', 'ProgressBar', 'LoraLayer',
  'LoraTypeError', 'DTypeError', 'ShapeError', 'LoraRangeError', 'AdapterError', 'StateError', 'NativeLoadError']);

const entries: Array<[string, (...a: unknown[]) => unknown, boolean]> = [];
for (const [name, v] of Object.entries(lk)) {
  if (SKIP.has(name)) continue;
  if (typeof v === 'function') entries.push([name, v as (...a: unknown[]) => unknown, /^class\b/.test(Function.prototype.toString.call(v))]);
}
for (const [name, v] of Object.entries(lk.kernels)) if (typeof v === 'function' && !SKIP.has(name)) entries.push([`kernels.${name}`, v as (...a: unknown[]) => unknown, false]);
entries.push(['Tensor.wrap', lk.Tensor.wrap.bind(lk.Tensor) as (...a: unknown[]) => unknown, false]);

/** A view whose ArrayBuffer was transferred away. */
function detachedView(): Float32Array {
  const buf = new ArrayBuffer(24);
  const v = new Float32Array(buf);
  structuredClone(buf, { transfer: [buf] });
  return v;
}

/** A tensor wrapping an array whose buffer is then detached (its memory gone) or shrunk. */
function orphanedWrap(shrink: boolean): lk.Tensor {
  type Resizable = ArrayBuffer & { resize(n: number): void };
  const buf = shrink
    ? new (ArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => Resizable)(24, { maxByteLength: 48 })
    : new ArrayBuffer(24);
  const t = lk.Tensor.wrap(new Float32Array(buf), [2, 3]);
  if (shrink) (buf as Resizable).resize(8);
  else structuredClone(buf, { transfer: [buf] });
  return t;
}

function junk(i: number): unknown {
  const t = () => lk.Tensor.from(new Float32Array(6).fill(0.5), [2, 3]);
  const d = () => {
    const x = lk.Tensor.zeros([2]);
    x.dispose();
    return x;
  };
  const pool: Array<() => unknown> = [
    () => undefined, () => null, () => 0, () => -1, () => 1.5, () => NaN, () => Infinity, () => 1e300, () => 2 ** 60,
    () => '', () => 'x', () => 'f32', () => 'all-linear', () => true, () => false, () => [], () => [1, 2], () => [[1]], () => ['q_proj'],
    () => ({}), () => ({ weight: t() }), () => ({ r: 0 }), () => ({ targetModules: 7 }), () => t(), () => lk.Tensor.zeros([3], { dtype: 'i32' }),
    d, () => new Float32Array(4), () => new Uint16Array(3), () => () => 1, () => 3n, () => new Map([['a', t()]]), () => [t(), t()],
    detachedView, () => orphanedWrap(false), () => orphanedWrap(true), () => lk.Tensor.wrap(new Float32Array(new SharedArrayBuffer(24)), [2, 3]),
  ];
  return pool[i % pool.length]();
}

export const surfaceTarget = fc.property(
  fc.integer({ min: 0, max: entries.length - 1 }),
  fc.array(fc.nat(), { maxLength: 4 }),
  (which, argIdx) => {
    const [name, fn, isClass] = entries[which];
    const args = argIdx.map(junk);
    tally.invalid++;
    const restoreThreads = lk.backendInfo().threads;
    try {
      const r = isClass ? new (fn as unknown as new (...a: unknown[]) => unknown)(...args) : fn(...args);
      if (r instanceof Promise) r.catch(() => {});
    } catch (e) {
      if (!isTyped(e)) throw new Error(`${name}(${args.map((a) => describeArg(a)).join(', ')}): untyped ${String((e as Error)?.stack ?? e).split('\n').slice(0, 3).join(' | ')}`);
    } finally {
      if (name === 'setNumThreads') lk.setNumThreads(restoreThreads);
    }
  },
);

function describeArg(a: unknown): string {
  if (a instanceof lk.Tensor) return a.toString();
  if (typeof a === 'bigint') return `${a}n`;
  if (typeof a === 'function') return 'function';
  try {
    return JSON.stringify(a) ?? String(a);
  } catch {
    return String(a);
  }
}
