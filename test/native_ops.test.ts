/**
 * The native op list and its argument vocabulary: every kernel op has a sync and an Async export
 * (one list, native/napi/ops.h, typed by KernelBinding); every JS number is checked before it
 * becomes a seed, counter, scale or size; optimizer steps respect the busy-tensor guard.
 */
import { AdamW, LoraLinear, SGD, Tensor, backendInfo } from '../lib';
import { mixedDtypes, scratchDtype } from '../lib/backend';
import { KernelOp, NativeBinding, call, callAsync, native } from '../lib/native';
import { randomArray } from './helpers/reference';

// Exhaustive over KernelOp at compile time: a missing or unknown key is a type error.
const OPS: Record<KernelOp, true> = {
  shrink: true,
  linearForward: true,
  loraForward: true,
  linearBackward: true,
  mergeDelta: true,
  conv2dMergeDelta: true,
  exactMerge: true,
  mixedLinearForward: true,
  doraWeightNorm: true,
  doraLinearForward: true,
  doraLinearBackward: true,
  doraMerge: true,
  embeddingForward: true,
  embeddingBackward: true,
  conv2dForward: true,
  conv2dBackward: true,
  dropout: true,
  convert: true,
  allFinite: true,
  ggmlDequantize: true,
  ggmlQuantize: true,
  ggmlMergeRows: true,
  quantize: true,
  dequantize: true,
  quantLoraForward: true,
  quantLinearBackward: true,
  adamwStep: true,
  sgdStep: true,
  accumulate: true,
  columnSum: true,
  sumSquares: true,
  scaleInplace: true,
};

function expectErr(fn: () => unknown, name: string, msg: RegExp): void {
  let thrown: unknown;
  try {
    fn();
  } catch (e) {
    thrown = e;
  }
  expect(thrown).toBeDefined();
  expect((thrown as Error).name).toBe(name);
  expect((thrown as Error).message).toMatch(msg);
}

describe('the kernel op list', () => {
  test('every op of the TypeScript list has a sync and an Async export, and no other Async export exists', () => {
    const b = native() as unknown as Record<string, unknown>;
    for (const op of Object.keys(OPS)) {
      expect(typeof b[op]).toBe('function');
      expect(typeof b[`${op}Async`]).toBe('function');
    }
    const asyncOps = Object.keys(b).filter((k) => k.endsWith('Async')).map((k) => k.slice(0, -'Async'.length));
    expect(asyncOps.sort()).toEqual(Object.keys(OPS).sort());
  });

  test('the device-specific optimizer bindings are gone (one op for both devices)', () => {
    const b = native() as unknown as Record<string, unknown>;
    for (const name of ['cudaAdamwStep', 'cudaSgdStep', 'cudaAccumulate', 'cudaSumSquares', 'cudaScale']) expect(b[name]).toBeUndefined();
  });

  test('sumSquares returns its number from the sync and the async form', async () => {
    const t = Tensor.from([1, 2, 3, -4], [4], { dtype: 'bf16' });
    expect(call((b) => b.sumSquares(t.handle))).toBe(30);
    await expect(callAsync((b) => b.sumSquaresAsync(t.handle))).resolves.toBe(30);
  });
});

describe('backend traits', () => {
  test('the cpu shrinks into f32 and mixes dtypes', () => {
    for (const d of ['f32', 'f16', 'bf16'] as const) expect(scratchDtype('cpu', d)).toBe('f32');
    expect(mixedDtypes('cpu')).toBe(true);
  });

  test('cuda: x dtype and one dtype per call where compiled in, else the build error', () => {
    if (backendInfo().compiled.includes('cuda')) {
      expect(scratchDtype('cuda', 'bf16')).toBe('bf16');
      expect(mixedDtypes('cuda')).toBe(false);
      return;
    }
    expectErr(() => scratchDtype('cuda', 'f32'), 'LoraTypeError', /^device: 'cuda' is not available in this build/);
    expectErr(() => call((b: NativeBinding) => b.scratchDtype('tpu', 'f32')), 'LoraTypeError', /^device: expected 'cpu' or 'cuda'/);
  });
});

describe('JS numbers are checked before they become seeds, counters, scales or sizes', () => {
  const x = Tensor.from(randomArray(12, 1), [3, 4]);
  const out = Tensor.zeros([3, 4]);
  const bad = [-1, NaN, 2 ** 60, 1.5, Infinity];

  test('dropout: seed and stream (sync and async)', async () => {
    for (const v of bad) {
      expectErr(() => call((b) => b.dropout(x.handle, 0.5, v, 0, out.handle)), 'LoraRangeError', /^seed: /);
      expectErr(() => call((b) => b.dropout(x.handle, 0.5, 0, v, out.handle)), 'LoraRangeError', /^stream: /);
      await expect(callAsync((b) => b.dropoutAsync(x.handle, 0.5, v, 0, out.handle))).rejects.toThrow(
        expect.objectContaining({ name: 'LoraRangeError', message: expect.stringMatching(/^seed: /) }),
      );
    }
    for (const p of [NaN, -0.1, 1, 0.99999999999]) expectErr(() => call((b) => b.dropout(x.handle, p, 0, 0, out.handle)), 'LoraRangeError', /^p: /);
    // 2^53 itself is still a counter
    expect(() => call((b) => b.dropout(x.handle, 0.5, 2 ** 53, 2 ** 53, out.handle))).not.toThrow();
  });

  test('linearBackward: a term\'s seed, stream, scale and p name the term', () => {
    const W = Tensor.from(randomArray(20, 2), [5, 4]);
    const A = Tensor.from(randomArray(8, 3), [2, 4]);
    const B = Tensor.from(randomArray(10, 4), [5, 2]);
    const u = Tensor.zeros([3, 2]);
    const dy = Tensor.from(randomArray(15, 5), [3, 5]);
    const term = (o: Record<string, number>) => ({ xa: x.handle, u: u.handle, A: A.handle, B: B.handle, scale: 1, p: 0.1, seed: 7, stream: 1, dA: null, dB: null, ...o });
    expect(() => call((b) => b.linearBackward(dy.handle, W.handle, false, [term({})], null))).not.toThrow();
    for (const v of bad) {
      expectErr(() => call((b) => b.linearBackward(dy.handle, W.handle, false, [term({ seed: v })], null)), 'LoraRangeError', /^terms\[0\]\.seed: /);
      expectErr(() => call((b) => b.linearBackward(dy.handle, W.handle, false, [term({ stream: v })], null)), 'LoraRangeError', /^terms\[0\]\.stream: /);
    }
    expectErr(() => call((b) => b.linearBackward(dy.handle, W.handle, false, [term({ scale: NaN })], null)), 'LoraRangeError', /^terms\[0\]\.scale: /);
    expectErr(() => call((b) => b.linearBackward(dy.handle, W.handle, false, [term({ scale: 1e39 })], null)), 'LoraRangeError', /^terms\[0\]\.scale: .*f32/);
    expectErr(() => call((b) => b.linearBackward(dy.handle, W.handle, false, [term({ p: 1 })], null)), 'LoraRangeError', /^terms\[0\]\.p: /);
  });

  test('optimizer ops: rates, step counts and scales', () => {
    const p = Tensor.zeros([4]);
    const g = Tensor.zeros([4]);
    const m = Tensor.zeros([4]);
    const v = Tensor.zeros([4]);
    const adamw = (lr: number, step: number) => () => call((b) => b.adamwStep(p.handle, g.handle, m.handle, v.handle, null, lr, 0.9, 0.999, 1e-8, 0, step));
    expectErr(adamw(-1, 1), 'LoraRangeError', /^lr: expected >= 0/);
    expectErr(adamw(NaN, 1), 'LoraRangeError', /^lr: expected a finite number/);
    for (const s of [NaN, -3, 1.5, 2 ** 60]) expectErr(adamw(1e-3, s), 'LoraRangeError', /^step: /);
    expectErr(() => call((b) => b.sgdStep(p.handle, g.handle, m.handle, null, 0.1, -0.5, 0, false, 0, true)), 'LoraRangeError', /^momentum: /);
    expectErr(() => call((b) => b.accumulate(m.handle, g.handle, NaN)), 'LoraRangeError', /^alpha: /);
    expectErr(() => call((b) => b.scaleInplace(g.handle, 1e39)), 'LoraRangeError', /^alpha: .*f32/);
    expectErr(() => call((b) => b.accumulate(m.handle, Tensor.zeros([4], { device: 'cpu' }).handle, 2 ** 1024)), 'LoraRangeError', /^alpha: /);
  });

  test('DoRA, conv2d and embedding backward counters; thread counts', () => {
    const W = Tensor.zeros([3, 4]);
    const A = Tensor.zeros([2, 4]);
    const B = Tensor.zeros([3, 2]);
    const mag = Tensor.zeros([3]);
    const dy = Tensor.zeros([5, 3]);
    const term = (o: Record<string, number>) => ({
      xa: Tensor.zeros([5, 4]).handle, u: Tensor.zeros([5, 2]).handle, A: A.handle, B: B.handle, magnitude: mag.handle,
      scale: 1, p: 0, seed: 0, stream: 0, norm: Tensor.zeros([3]).handle, pre: Tensor.zeros([5, 3]).handle, ...o,
    });
    expect(() => call((b) => b.doraLinearBackward(dy.handle, W.handle, false, term({}), null, null, null, null))).not.toThrow();
    expectErr(() => call((b) => b.doraLinearBackward(dy.handle, W.handle, false, term({ seed: -1 }), null, null, null, null)), 'LoraRangeError', /^term\.seed: /);
    expectErr(() => call((b) => b.doraLinearBackward(dy.handle, W.handle, false, term({ stream: NaN }), null, null, null, null)), 'LoraRangeError', /^term\.stream: /);
    const idx = Tensor.from(Int32Array.from([0, 1]), [2]);
    const eA = Tensor.zeros([2, 5]);
    const eB = Tensor.zeros([4, 2]);
    const edy = Tensor.zeros([2, 4]);
    for (const pad of [2.5, NaN, 5, -2])
      expectErr(() => call((b) => b.embeddingBackward(idx.handle, edy.handle, eA.handle, eB.handle, 1, pad, null, null)), 'LoraRangeError', /^paddingIdx: /);
    const cx = Tensor.zeros([1, 2, 4, 4]);
    const cw = Tensor.zeros([3, 2, 3, 3]);
    const cdy = Tensor.zeros([1, 3, 2, 2]);
    const ct = { xa: cx.handle, u: Tensor.zeros([1, 1, 4]).handle, A: Tensor.zeros([1, 2, 3, 3]).handle, B: Tensor.zeros([3, 1, 1, 1]).handle, scale: 1, p: 0, seed: -1, stream: 0, dA: null, dB: null };
    expectErr(() => call((b) => b.conv2dBackward(cdy.handle, cx.handle, cw.handle, [1, 1, 0, 0, 1, 1, 1], [ct], null)), 'LoraRangeError', /^terms\[0\]\.seed: /);
    expectErr(() => call((b) => b.conv2dForward(cx.handle, cw.handle, null, [1, 1, 0, 0, 1, 1, NaN], [], cdy.handle)), 'LoraRangeError', /^geom\[6\]: /);
    for (const n of [-1, 1.5, 257, NaN]) expectErr(() => call((b) => b.setNumThreads(n)), 'LoraRangeError', /^n: /);
  });
});

describe('optimizer steps and async work', () => {
  function trainedLayer(): { layer: LoraLinear; x: Tensor } {
    const layer = new LoraLinear({ weight: Tensor.from(randomArray(6 * 5, 1, 0.3), [6, 5]) });
    layer.addAdapter('a', { r: 2, initLoraWeights: false, seed: 3 });
    const x = Tensor.from(randomArray(4 * 5, 2), [4, 5]);
    const params = layer.parameters(); // backward accumulates into the parameters handed out
    layer.forward(x);
    layer.backward(Tensor.from(randomArray(4 * 6, 4), [4, 6]));
    expect(params.every((p) => p.grad !== null)).toBe(true);
    return { layer, x };
  }

  test('a step while forwardAsync reads the parameters throws StateError; after it settles, the step works', async () => {
    const { layer, x } = trainedLayer();
    const opt = new AdamW(layer.parameters(), { lr: 1e-2 });
    const before = layer.loraA.get('a')!.toFloat32Array();
    const pending = layer.forwardAsync(x);
    let err: unknown;
    try {
      opt.step();
    } catch (e) {
      err = e;
    }
    expect((err as Error)?.name).toBe('StateError');
    expect((err as Error).message).toMatch(/in use by async work/);
    await pending;
    expect(opt.stepCount).toBe(0);
    expect(opt.stateOf(opt.parameters[0])?.step ?? 0).toBe(0);
    opt.step();
    expect(opt.stepCount).toBe(1);
    expect(opt.stateOf(opt.parameters[0])!.step).toBe(1);
    expect(Array.from(layer.loraA.get('a')!.toFloat32Array())).not.toEqual(Array.from(before));
  });

  test('stepAsync equals step (AdamW and SGD with momentum) and holds the parameters busy', async () => {
    for (const make of [(l: LoraLinear) => new AdamW(l.parameters(), { lr: 1e-2 }), (l: LoraLinear) => new SGD(l.parameters(), { lr: 0.1, momentum: 0.9 })]) {
      const s = trainedLayer().layer;
      const a = trainedLayer().layer;
      const os = make(s);
      const oa = make(a);
      for (let i = 0; i < 3; i++) {
        os.step();
        const pending = oa.stepAsync();
        expect(() => a.parameters()[0].data.dispose()).toThrow(expect.objectContaining({ name: 'StateError' }));
        await pending;
      }
      expect(oa.stepCount).toBe(3);
      for (const name of ['a']) {
        expect(Array.from(a.loraA.get(name)!.toFloat32Array())).toEqual(Array.from(s.loraA.get(name)!.toFloat32Array()));
        expect(Array.from(a.loraB.get(name)!.toFloat32Array())).toEqual(Array.from(s.loraB.get(name)!.toFloat32Array()));
      }
    }
  });
});
