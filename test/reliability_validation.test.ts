/**
 * Validation audit: each bad argument gets a typed lorakit error that names it, from the TS layer,
 * and the raw binding rejects the same inputs on its own (the native check is the real boundary).
 */
import { DTypeError, LoraLinear, LoraRangeError, LoraTypeError, ShapeError, StateError, Tensor, kernels } from '../lib';
import { call } from '../lib/native';
import { randomArray } from './helpers/reference';

const t = (shape: number[], seed = 1, dtype: 'f32' | 'f16' | 'bf16' = 'f32') =>
  Tensor.from(randomArray(shape.reduce((a, b) => a * b, 1), seed), shape, { dtype });

type ErrClass = new (...a: never[]) => Error;

function expectErr(fn: () => unknown, cls: ErrClass, msg: RegExp): void {
  let thrown: unknown;
  try {
    fn();
  } catch (e) {
    thrown = e;
  }
  expect(thrown).toBeInstanceOf(cls);
  expect((thrown as Error).message).toMatch(msg);
}

describe('TS layer: typed errors naming the argument', () => {
  const x = t([2, 8]);
  const W = t([4, 8], 2);
  const A = t([2, 8], 3);
  const B = t([4, 2], 4);
  const ok = { loraA: A, loraB: B, scaling: 1 };

  test.each([
    ['NaN scaling', () => kernels.loraLinearForward(x, W, { adapters: [{ ...ok, scaling: NaN }] }), LoraRangeError, /opts\.adapters\[0\]\.scaling/],
    ['infinite scaling', () => kernels.mergeAdapter(W, { ...ok, scaling: Infinity }), LoraRangeError, /adapter\.scaling/],
    ['scaling beyond f32', () => kernels.mergeAdapter(W, { ...ok, scaling: 1e39 }), LoraRangeError, /adapter\.scaling.*f32 range/],
    ['string scaling', () => kernels.mergeAdapter(W, { ...ok, scaling: '1' as unknown as number }), LoraTypeError, /adapter\.scaling/],
    ['rank 0 adapter', () => kernels.mergeAdapter(W, { loraA: Tensor.zeros([0, 8]), loraB: Tensor.zeros([4, 0]), scaling: 1 }), ShapeError, /adapter\.loraA.*r >= 1/],
    ['wrong A shape', () => kernels.loraLinearForward(x, W, { adapters: [{ ...ok, loraA: t([2, 7]) }] }), ShapeError, /opts\.adapters\[0\]\.loraA/],
    ['wrong B shape', () => kernels.mergeAdapter(W, { ...ok, loraB: t([4, 3]) }), ShapeError, /adapter\.loraB/],
    ['x last dim', () => kernels.loraLinearForward(t([2, 7]), W), ShapeError, /^x: expected shape \[\.\.\., 8\]/],
    ['0-feature weight', () => kernels.loraLinearForward(Tensor.zeros([2, 0]), Tensor.zeros([4, 0])), ShapeError, /weight: in_features/],
    ['int tensor as x', () => kernels.loraLinearForward(Tensor.zeros([2, 8], { dtype: 'i32' }), W), DTypeError, /^x: /],
    ['not a tensor', () => kernels.loraLinearForward({} as Tensor, W), LoraTypeError, /^x: expected a Tensor/],
    ['fake tensor (prototype only)', () => kernels.loraLinearForward(Object.create(Tensor.prototype), W), LoraTypeError, /^x: expected a Tensor/],
    ['adapters not an array', () => kernels.loraLinearForward(x, W, { adapters: {} as never }), LoraTypeError, /opts\.adapters/],
    ['adapter null', () => kernels.loraLinearForward(x, W, { adapters: [null as never] }), LoraTypeError, /opts\.adapters\[0\]/],
    ['bias shape', () => kernels.loraLinearForward(x, W, { bias: t([5]) }), ShapeError, /opts\.bias/],
    ['bias not a tensor', () => kernels.loraLinearForward(x, W, { bias: [1, 2, 3, 4] as never }), LoraTypeError, /opts\.bias/],
    ['fanInFanOut not boolean', () => kernels.mergeAdapter(W, ok, { fanInFanOut: 1 as never }), LoraTypeError, /opts\.fanInFanOut/],
    ['unknown option', () => kernels.mergeAdapter(W, ok, { outt: W } as never), LoraTypeError, /unknown option 'outt'/],
    ['out shape', () => kernels.mergeAdapter(W, ok, { out: t([8, 4]) }), ShapeError, /opts\.out/],
    ['r = 0 on a layer', () => new LoraLinear({ weight: W }).addAdapter('a', { r: 0 }), LoraRangeError, /opts\.r/],
    ['r negative', () => new LoraLinear({ weight: W }).addAdapter('a', { r: -2 }), LoraRangeError, /opts\.r/],
    ['r fractional', () => new LoraLinear({ weight: W }).addAdapter('a', { r: 1.5 }), LoraRangeError, /opts\.r/],
    ['alpha NaN', () => new LoraLinear({ weight: W }).addAdapter('a', { loraAlpha: NaN }), LoraRangeError, /opts\.loraAlpha/],
    ['alpha beyond f32', () => new LoraLinear({ weight: W }).addAdapter('a', { loraAlpha: 1e300 }), LoraRangeError, /opts\.loraAlpha/],
    ['shape product overflow', () => Tensor.zeros([2 ** 30, 2 ** 30, 2 ** 30]), LoraRangeError, /shape.*too many elements/],
    ['shape with NaN', () => Tensor.zeros([2, NaN]), LoraRangeError, /shape\[1\]/],
    ['shape negative', () => Tensor.zeros([-1]), LoraRangeError, /shape\[0\]/],
    ['17 dimensions', () => Tensor.zeros(new Array(17).fill(1)), LoraRangeError, /at most 16/],
    ['device not built', () => Tensor.zeros([2], { device: 'gpu' as never }), LoraTypeError, /opts\.device/],
  ] as Array<[string, () => unknown, ErrClass, RegExp]>)('%s', (_name, fn, cls, msg) => expectErr(fn, cls, msg));

  test('disposed tensors are refused everywhere', () => {
    const d = t([2, 8]);
    d.dispose();
    expectErr(() => kernels.loraLinearForward(d, W), StateError, /^x: the tensor was disposed/);
    expectErr(() => kernels.mergeAdapter(W, { ...ok, loraA: d }), StateError, /adapter\.loraA/);
    expectErr(() => W.copyFrom(d as Tensor), StateError, /^src/);
    expectErr(() => d.toFloat32Array(), StateError, /dispose/);
    const l = new LoraLinear({ weight: t([4, 8]) });
    l.addAdapter('a');
    l.weight.dispose();
    expectErr(() => l.forward(x), StateError, /weight/);
  });

  test('detached and resized ArrayBuffers', () => {
    const buf = new ArrayBuffer(32);
    const f = new Float32Array(buf);
    structuredClone(buf, { transfer: [buf] });
    expectErr(() => Tensor.from(f, [8]), LoraTypeError, /^data: the ArrayBuffer is detached/);
    expectErr(() => t([8]).copyFrom(f), LoraTypeError, /^src: the ArrayBuffer is detached/);
    const rb = new (ArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => ArrayBuffer & { resize(n: number): void })(32, { maxByteLength: 64 });
    const view = new Float32Array(rb, 0, 8);
    rb.resize(16);
    expectErr(() => Tensor.from(view, [8]), ShapeError, /resizable and now holds 16 bytes/);
    const tracking = new Float32Array(rb);
    rb.resize(32);
    expect(Array.from(Tensor.from(tracking, [8]).toFloat32Array())).toEqual(Array.from(tracking));
  });

  test('typed arrays at byte offsets read from their own offset', () => {
    const big = new Float64Array(11).map((_, i) => i + 0.5);
    expect(Array.from(Tensor.from(big.subarray(3, 9), [6]).toFloat32Array())).toEqual([3.5, 4.5, 5.5, 6.5, 7.5, 8.5]);
    const bytes = Buffer.alloc(4 * 10 + 4); // Node Buffers sit at arbitrary offsets of a pool
    const f = new Float32Array(bytes.buffer, bytes.byteOffset + 4, 10).map((_, i) => i);
    expect(Array.from(Tensor.from(f, [10]).toFloat32Array())).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    const sab = new Float32Array(new SharedArrayBuffer(16)).fill(2);
    expect(Array.from(Tensor.from(sab, [4]).toFloat32Array())).toEqual([2, 2, 2, 2]);
  });
});

describe('native boundary rejects the same inputs without the TS checks', () => {
  const W = t([4, 8], 2);
  const A = t([2, 8], 3);
  const B = t([4, 2], 4);
  const out = t([4, 8], 5);

  test.each([
    ['scale NaN', () => call((b) => b.mergeDelta(W.handle, A.handle, B.handle, NaN, false, out.handle)), LoraRangeError, /scale/],
    ['scale beyond f32', () => call((b) => b.mergeDelta(W.handle, A.handle, B.handle, 1e39, false, out.handle)), LoraRangeError, /scale.*f32/],
    ['rank 0', () => call((b) => b.mergeDelta(W.handle, Tensor.zeros([0, 8]).handle, Tensor.zeros([4, 0]).handle, 1, false, out.handle)), LoraRangeError, /adapter\.A/],
    ['not a tensor', () => call((b) => b.mergeDelta({} as never, A.handle, B.handle, 1, false, out.handle)), LoraTypeError, /weight: expected a lorakit Tensor/],
    ['fifo not boolean', () => call((b) => b.mergeDelta(W.handle, A.handle, B.handle, 1, 0 as never, out.handle)), LoraTypeError, /fanInFanOut/],
    ['output aliases an input', () => call((b) => b.mergeDelta(W.handle, A.handle, B.handle, 1, false, A.handle)), LoraRangeError, /out: expected shape|out: must not be/],
    ['dropout seed negative', () => call((b) => b.dropout(W.handle, 0.5, -1, 0, out.handle)), LoraRangeError, /seed/],
    ['dropout p = 1', () => call((b) => b.dropout(W.handle, 1, 0, 0, out.handle)), LoraRangeError, /^p:/],
    ['zero in_features', () => call((b) => b.shrink(Tensor.zeros([3, 0]).handle, Tensor.zeros([2, 0]).handle, Tensor.zeros([3, 2]).handle)), LoraRangeError, /^A:/],
    ['shape product overflow', () => call((b) => new b.NativeTensor('f32', [2 ** 40, 2 ** 40], 'cpu')), LoraRangeError, /too many elements/],
    ['typed array of the wrong kind', () => call(() => out.handle.write(new Int32Array(32))), LoraTypeError, /^data:/],
  ] as Array<[string, () => unknown, ErrClass, RegExp]>)('%s', (_name, fn, cls, msg) => expectErr(fn, cls, msg));

  test('an output that is also an input is refused (same shapes)', () => {
    const sq = t([4, 4], 6);
    const a = t([4, 4], 7);
    const bb = t([4, 4], 8);
    expectErr(() => call((b) => b.linearForward(sq.handle, a.handle, null, false, [], a.handle)), LoraRangeError, /y: must not be the same tensor as weight/);
    expectErr(() => call((b) => b.shrink(sq.handle, a.handle, a.handle)), LoraRangeError, /out: must not be the same tensor as A/);
    expectErr(
      () => call((b) => b.linearBackward(sq.handle, a.handle, false, [{ xa: sq.handle, u: bb.handle, A: bb.handle, B: bb.handle, scale: 1, p: 0, seed: 0, stream: 0, dA: bb.handle, dB: null }], null)),
      LoraRangeError,
      /terms\[0\]\.dA: must not be the same tensor/,
    );
  });
});
