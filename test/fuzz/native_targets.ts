/**
 * The native boundary on its own: random argument lists (tensors of any shape and dtype, odd
 * numbers, strings, nulls, nested arrays, term objects) for every binding. Whatever happens, the
 * call returns or throws an error carrying a lorakit `code`; a crash is caught by the parent process.
 */
import fc from 'fast-check';
import { Tensor } from '../../lib';
import { NativeTensorHandle, native } from '../../lib/native';
import { tally } from './fuzz_common';

const DIMS = fc.array(fc.constantFrom(0, 1, 2, 3, 5), { maxLength: 3 });
const tensorSpec = fc.record({ shape: DIMS, dtype: fc.constantFrom('f32', 'f16', 'bf16', 'i32', 'i64'), disposed: fc.boolean() });

type ValSpec = { t: 'tensor'; i: number } | { t: 'num'; v: number } | { t: 'str'; v: string } | { t: 'lit'; v: null | undefined | boolean } | { t: 'obj' } | { t: 'arr'; items: ValSpec[] };

const leaf: fc.Arbitrary<ValSpec> = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 0, max: 5 }).map((i) => ({ t: 'tensor' as const, i })) },
  { weight: 3, arbitrary: fc.constantFrom(0, 1, -1, 0.5, 1.5, NaN, Infinity, -Infinity, 1e39, 2 ** 53, 2 ** 60, -0).map((v) => ({ t: 'num' as const, v })) },
  { weight: 1, arbitrary: fc.constantFrom('f32', 'bits', 'i64', '', 'cpu', 'cuda').map((v) => ({ t: 'str' as const, v })) },
  { weight: 2, arbitrary: fc.constantFrom(null, undefined, true, false).map((v) => ({ t: 'lit' as const, v })) },
  { weight: 1, arbitrary: fc.constant({ t: 'obj' as const }) },
);
const valSpec: fc.Arbitrary<ValSpec> = fc.oneof(
  { weight: 8, arbitrary: leaf },
  { weight: 2, arbitrary: fc.array(fc.oneof(leaf, fc.array(leaf, { maxLength: 3 }).map((items) => ({ t: 'arr' as const, items }))), { maxLength: 3 }).map((items) => ({ t: 'arr' as const, items })) },
);

const FNS = ['shrink', 'linearForward', 'linearBackward', 'mergeDelta', 'dropout', 'convert', 'allFinite', 'ctor', 'write', 'read',
  'shrinkAsync', 'linearForwardAsync', 'linearBackwardAsync', 'mergeDeltaAsync', 'dropoutAsync', 'convertAsync', 'allFiniteAsync'] as const;

export const nativeTarget = fc.asyncProperty(
  fc.constantFrom(...FNS),
  fc.array(tensorSpec, { minLength: 6, maxLength: 6 }),
  fc.array(valSpec, { maxLength: 7 }),
  async (fn, specs, args) => {
    const b = native();
    const tensors: Tensor[] = specs.map((s) => Tensor.zeros(s.shape, { dtype: s.dtype as 'f32' }));
    tensors.forEach((t, i) => specs[i].disposed && i > 2 && t.dispose());
    const handles = tensors.map((t) => (t.disposed ? disposedHandle(b) : t.handle));
    const build = (v: ValSpec): unknown => {
      switch (v.t) {
        case 'tensor':
          return handles[v.i];
        case 'num':
        case 'str':
        case 'lit':
          return v.v;
        case 'obj':
          return { xa: handles[0], u: handles[1], A: handles[2], B: handles[3], scale: 1, p: 0, seed: 0, stream: 0, dA: null, dB: null };
        case 'arr':
          return v.items.map(build);
      }
    };
    const a = args.map(build);
    tally.invalid++;
    try {
      let r: unknown;
      const raw = b as unknown as Record<string, (...x: unknown[]) => unknown>;
      if (fn === 'ctor') r = new b.NativeTensor(...(a as [string, number[], string]));
      else if (fn === 'write') r = (handles[0] as unknown as { write(...x: unknown[]): unknown }).write(...a);
      else if (fn === 'read') r = (handles[1] as unknown as { read(...x: unknown[]): unknown }).read(...a);
      else r = raw[fn](...a);
      if (r instanceof Promise) await r;
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (typeof code !== 'string' || !code.startsWith('LORAKIT_'))
        throw new Error(`${fn}: error without a lorakit code: ${String((e as Error)?.stack ?? e)}`);
    } finally {
      for (const t of tensors) t.dispose();
    }
  },
);

function disposedHandle(b: ReturnType<typeof native>): NativeTensorHandle {
  const h = new b.NativeTensor('f32', [2], 'cpu');
  h.dispose();
  return h;
}
