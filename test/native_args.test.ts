/** The parity bindings re-validate everything: garbage arguments throw typed errors, never crash. */
import { Tensor } from '../lib';
import { NativeBinding, call, native } from '../lib/native';

const LAYER_KIND_FUNCTIONS = [
  'mixedLinearForward',
  'embeddingForward',
  'embeddingBackward',
  'conv2dForward',
  'conv2dBackward',
  'conv2dMergeDelta',
  'doraWeightNorm',
  'doraLinearForward',
  'doraLinearBackward',
  'doraMerge',
] as const;

type Fn = (...args: unknown[]) => unknown;

describe('parity bindings reject bad arguments', () => {
  const b = native() as unknown as Record<string, Fn>;
  const f32 = Tensor.zeros([2, 3]);
  const idx = Tensor.from(Int32Array.from([0, 1]), [2]);
  const disposed = Tensor.zeros([2, 3]);
  disposed.dispose();
  const garbage: unknown[][] = [
    [],
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
    ['x', {}, null, undefined, [], true, 'y', 0, 1, 2, 3, 4],
    [idx.handle, idx.handle, idx.handle, idx.handle, idx.handle, idx.handle, idx.handle, idx.handle, idx.handle, idx.handle, idx.handle, idx.handle],
    [f32.handle, f32.handle, f32.handle, f32.handle, f32.handle, f32.handle, f32.handle, f32.handle, f32.handle, f32.handle, f32.handle, f32.handle],
    [f32.handle, f32.handle, null, false, [[f32.handle, f32.handle, 1]], new Int32Array(2), f32.handle, f32.handle],
    [{ write: () => 0 }, f32.handle, null, false, [], null, f32.handle],
  ];

  test.each(LAYER_KIND_FUNCTIONS)('%s', (name) => {
    expect(typeof b[name]).toBe('function');
    for (const args of garbage) {
      let threw = false;
      try {
        call(() => b[name](...args));
      } catch (e) {
        threw = true;
        expect(e).toBeInstanceOf(Error);
        expect(String((e as Error).message).length).toBeGreaterThan(5);
      }
      expect(threw).toBe(true);
    }
  });

  test('a disposed tensor is a StateError', () => {
    expect(() => call((nb: NativeBinding) => nb.doraWeightNorm(disposed.handle as never, f32.handle, f32.handle, 1, false, f32.handle))).toThrow();
    const W = Tensor.zeros([4, 3]);
    const A = Tensor.zeros([2, 3]);
    const B = Tensor.zeros([4, 2]);
    const norm = Tensor.zeros([4]);
    const bad = Tensor.zeros([4]);
    const handle = bad.handle;
    bad.dispose();
    expect(() => call((nb) => nb.doraWeightNorm(W.handle, A.handle, B.handle, 1, false, handle))).toThrow(
      expect.objectContaining({ name: 'StateError', message: expect.stringMatching(/norm: the tensor was disposed/) }),
    );
    expect(() => call((nb) => nb.doraWeightNorm(W.handle, A.handle, B.handle, 1, false, Tensor.zeros([4], { dtype: 'bf16' }).handle))).toThrow(
      /norm: expected an f32 tensor/,
    );
    call((nb) => nb.doraWeightNorm(W.handle, A.handle, B.handle, 1, false, norm.handle));
    expect(Array.from(norm.toFloat32Array())).toEqual([0, 0, 0, 0]);
  });

  test('mixed rows and conv geometry are range-checked natively', () => {
    const x = Tensor.zeros([2, 3]);
    const W = Tensor.zeros([4, 3]);
    const y = Tensor.zeros([2, 4]);
    expect(() => call((nb) => nb.mixedLinearForward(x.handle, W.handle, null, false, [], Int32Array.from([0, -1]), y.handle))).toThrow(
      /rowAdapter\[0\]: 0 is not -1 \(base\) or an adapter index below 0/,
    );
    expect(() => call((nb) => nb.mixedLinearForward(x.handle, W.handle, null, false, [], Int32Array.from([-1]), y.handle))).toThrow(
      /rowAdapter: expected 2 entries/,
    );
    const cx = Tensor.zeros([1, 2, 4, 4]);
    const cw = Tensor.zeros([3, 2, 3, 3]);
    const cy = Tensor.zeros([1, 3, 2, 2]);
    expect(() => call((nb) => nb.conv2dForward(cx.handle, cw.handle, null, [1, 1, 0, 0, 1, 1, 0], [], cy.handle))).toThrow(/geom\[6\]/);
    expect(() => call((nb) => nb.conv2dForward(cx.handle, cw.handle, null, [1, 1, 0, 0, 1, 1, 2], [], cy.handle))).toThrow(/groups 2/);
    call((nb) => nb.conv2dForward(cx.handle, cw.handle, null, [1, 1, 0, 0, 1, 1, 1], [], cy.handle));
  });
});
