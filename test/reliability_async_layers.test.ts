/**
 * Async forms of the peft-parity paths (DoRA, mixed-adapter batches, LoraEmbedding, LoraConv2d):
 * bit-identical to the sync forms, and the tensors they use are busy while the work is in flight.
 */
import { AdapterGrads, LoraConv2d, LoraEmbedding, LoraLinear, LoraRangeError, StateError, Tensor } from '../lib';
import { call, callAsync } from '../lib/native';
import { randomArray } from './helpers/reference';

function rand(shape: number[], seed: number, scale = 0.5): Tensor {
  return Tensor.from(randomArray(shape.reduce((a, b) => a * b, 1), seed, scale), shape);
}

function expectSame(actual: Tensor, expected: Tensor): void {
  expect(actual.shape).toEqual(expected.shape);
  expect(Array.from(actual.toFloat32Array())).toEqual(Array.from(expected.toFloat32Array()));
}

function expectSameGrads(actual: Map<string, AdapterGrads>, expected: Map<string, AdapterGrads>): void {
  expect([...actual.keys()].sort()).toEqual([...expected.keys()].sort());
  expect(expected.size).toBeGreaterThan(0);
  for (const [name, g] of expected) {
    const a = actual.get(name)!;
    expectSame(a.loraA, g.loraA);
    expectSame(a.loraB, g.loraB);
    if (g.magnitude) expectSame(a.magnitude!, g.magnitude);
    else expect(a.magnitude).toBeUndefined();
  }
}

function doraLayer(seed: number): LoraLinear {
  const l = new LoraLinear({ weight: rand([12, 20], seed), bias: rand([12], seed + 1) });
  l.addAdapter('d', { r: 3, loraAlpha: 6, initLoraWeights: false, useDora: true, loraDropout: 0.2, seed });
  l.setAdapter('d');
  return l;
}

function twoAdapterLinear(seed: number): LoraLinear {
  const l = new LoraLinear({ weight: rand([12, 20], seed), bias: rand([12], seed + 1) });
  l.addAdapter('a', { r: 3, loraAlpha: 6, initLoraWeights: false, seed });
  l.addAdapter('b', { r: 2, loraAlpha: 5, initLoraWeights: false, seed: seed + 3 });
  return l.eval();
}

function embedding(seed: number): LoraEmbedding {
  const l = new LoraEmbedding({ weight: rand([30, 8], seed), paddingIdx: 2 });
  l.addAdapter('a', { r: 4, loraAlpha: 8, initLoraWeights: false, seed });
  l.addAdapter('b', { r: 2, loraAlpha: 3, initLoraWeights: false, seed: seed + 5 });
  l.setAdapter(['a', 'b']);
  return l;
}

function conv(seed: number): LoraConv2d {
  const l = new LoraConv2d({ weight: rand([6, 4, 3, 3], seed), bias: rand([6], seed + 1), padding: 1 });
  l.addAdapter('a', { r: 4, loraAlpha: 8, initLoraWeights: false, loraDropout: 0.25, seed });
  l.addAdapter('b', { r: 2, loraAlpha: 3, initLoraWeights: false, seed: seed + 5 });
  l.setAdapter(['a', 'b']);
  return l;
}

describe('DoRA: async equals sync bit for bit', () => {
  test('forwardAsync / backwardAsync (training, dropout) and eval forwardAsync', async () => {
    const x = rand([2, 3, 20], 21);
    const dy = rand([2, 3, 12], 22);
    const s = doraLayer(4);
    const a = doraLayer(4);
    expectSame(await a.forwardAsync(x), s.forward(x));
    const gs = s.backward(dy);
    const ga = await a.backwardAsync(dy);
    expectSame(ga.dx, gs.dx);
    expectSameGrads(ga.grads, gs.grads);
    expect(ga.grads.get('d')!.magnitude).toBeDefined();
    s.eval();
    a.eval();
    expectSame(await a.forwardAsync(x), s.forward(x));
  });

  test('mergeAsync / unmergeAsync, plain and safe', async () => {
    for (const safeMerge of [false, true]) {
      const s = doraLayer(8);
      const a = doraLayer(8);
      const w0 = Array.from(s.weight.toFloat32Array());
      s.merge({ safeMerge });
      await a.mergeAsync({ safeMerge });
      expect(a.mergedAdapters).toEqual(['d']);
      expect(Array.from(s.weight.toFloat32Array())).not.toEqual(w0);
      expectSame(a.weight, s.weight);
      s.unmerge();
      await a.unmergeAsync();
      expect(a.merged).toBe(false);
      expectSame(a.weight, s.weight);
    }
  });
});

describe('mixed-adapter batches: async equals sync bit for bit', () => {
  test('LoraLinear forwardAsync with adapterNames', async () => {
    const x = rand([4, 3, 20], 31);
    const names = ['a', '__base__', 'b', 'a'];
    const s = twoAdapterLinear(6);
    const a = twoAdapterLinear(6);
    const ys = s.forward(x, { adapterNames: names });
    expectSame(await a.forwardAsync(x, { adapterNames: names }), ys);
    // Not the plain-forward result: rows really took different adapters.
    expect(Array.from(ys.toFloat32Array())).not.toEqual(Array.from(s.forward(x).toFloat32Array()));
  });
});

describe('LoraEmbedding: async equals sync bit for bit', () => {
  test('forwardAsync / backwardAsync (i32 tensor and BigInt64Array indices)', async () => {
    const idx = Tensor.from(new Int32Array([2, 5, 29, 0, 5, 17]), [2, 3], { dtype: 'i32' });
    const dy = rand([2, 3, 8], 41);
    const s = embedding(3);
    const a = embedding(3);
    expectSame(await a.forwardAsync(idx), s.forward(idx));
    const gs = s.backward(dy);
    const ga = await a.backwardAsync(dy);
    expectSameGrads(ga.grads, gs.grads);
    const big = new BigInt64Array([1n, 2n, 3n]);
    expectSame(await a.forwardAsync(big), s.forward(big));
  });

  test('mixed batch forwardAsync', async () => {
    const idx = Tensor.from(new Int32Array([2, 5, 29, 0, 5, 17]), [3, 2], { dtype: 'i32' });
    const s = embedding(5).eval();
    const a = embedding(5).eval();
    const names = ['b', '__base__', 'a'];
    expectSame(await a.forwardAsync(idx, { adapterNames: names }), s.forward(idx, { adapterNames: names }));
  });

  test('mergeAsync / unmergeAsync', async () => {
    const s = embedding(7);
    const a = embedding(7);
    s.merge({ safeMerge: true });
    await a.mergeAsync({ safeMerge: true });
    expect(a.mergedAdapters).toEqual(['a', 'b']);
    expectSame(a.weight, s.weight);
    s.unmerge();
    await a.unmergeAsync();
    expectSame(a.weight, s.weight);
  });
});

describe('LoraConv2d: async equals sync bit for bit', () => {
  test('forwardAsync / backwardAsync (two adapters, dropout) and a mixed batch', async () => {
    const x = rand([2, 4, 5, 5], 51);
    const dy = rand([2, 6, 5, 5], 52);
    const s = conv(9);
    const a = conv(9);
    expectSame(await a.forwardAsync(x), s.forward(x));
    const gs = s.backward(dy);
    const ga = await a.backwardAsync(dy);
    expectSame(ga.dx, gs.dx);
    expectSameGrads(ga.grads, gs.grads);
    s.eval();
    a.eval();
    const names = ['b', 'a'];
    expectSame(await a.forwardAsync(x, { adapterNames: names }), s.forward(x, { adapterNames: names }));
  });

  test('mergeAsync / unmergeAsync', async () => {
    const s = conv(11);
    const a = conv(11);
    s.merge();
    await a.mergeAsync();
    expect(a.mergedAdapters).toEqual(['a', 'b']);
    expectSame(a.weight, s.weight);
    s.unmerge();
    await a.unmergeAsync();
    expectSame(a.weight, s.weight);
  });
});

describe('tensors in use by parity async work are busy', () => {
  test('DoRA backward and merge: dy and the weight cannot be disposed until they settle', async () => {
    const l = doraLayer(12);
    const x = rand([3, 20], 61);
    const dy = rand([3, 12], 62);
    l.forward(x);
    const back = l.backwardAsync(dy); // its first (and only) kernel is doraLinearBackward
    expect(() => dy.dispose()).toThrow(StateError);
    expect(() => dy.dispose()).toThrow(/in use by async work/);
    await back;
    const merge = l.mergeAsync(); // first kernel: doraWeightNorm on the weight
    expect(() => l.weight.dispose()).toThrow(StateError);
    await merge;
    dy.dispose();
    expect(dy.disposed).toBe(true);
  });

  test('mixed batch, embedding and conv2d inputs cannot be disposed while their async forward runs', async () => {
    const x = rand([4, 3, 20], 71);
    const lin = twoAdapterLinear(13);
    const p1 = lin.forwardAsync(x, { adapterNames: ['a', 'b', '__base__', 'a'] });
    expect(() => x.dispose()).toThrow(StateError);
    await p1;

    const idx = Tensor.from(new Int32Array([1, 2, 3]), [3], { dtype: 'i32' });
    const emb = embedding(14);
    const p2 = emb.forwardAsync(idx);
    expect(() => idx.dispose()).toThrow(StateError);
    expect(() => emb.loraA.get('a')!.dispose()).toThrow(StateError);
    await p2;

    const xc = rand([1, 4, 5, 5], 72);
    const c = conv(15).eval();
    const p3 = c.forwardAsync(xc);
    expect(() => xc.dispose()).toThrow(StateError);
    expect(() => c.forward(xc)).toThrow(/forwardAsync\(\) is still running/);
    await p3;

    x.dispose();
    idx.dispose();
    xc.dispose();
    expect(x.disposed && idx.disposed && xc.disposed).toBe(true);
  });
});

describe('parity async bindings reject bad arguments with the sync messages', () => {
  test('doraMergeAsync and conv2dForwardAsync', async () => {
    const W = rand([12, 20], 81);
    const A = rand([3, 19], 82); // wrong in_features
    const B = rand([12, 3], 83);
    const m = rand([12], 84);
    const norm = Tensor.zeros([12]);
    const args = [W.handle, A.handle, B.handle, 1, false, m.handle, norm.handle, false, W.handle] as const;
    const syncMessage = (() => {
      try {
        call((b) => b.doraMerge(...args));
      } catch (e) {
        return (e as Error).message;
      }
      return 'no error';
    })();
    expect(syncMessage).toMatch(/^A: expected shape \[r, 20\]/);
    await expect(callAsync((b) => b.doraMergeAsync(...args))).rejects.toThrow(LoraRangeError);
    await expect(callAsync((b) => b.doraMergeAsync(...args))).rejects.toThrow(syncMessage);
    const x = rand([1, 4, 5, 5], 85);
    const Wc = rand([6, 4, 3, 3], 86);
    const y = Tensor.zeros([1, 6, 5, 5]);
    await expect(callAsync((b) => b.conv2dForwardAsync(x.handle, Wc.handle, null, [1, 1, 1, 1, 1, 1, 1], [], x.handle, null))).rejects.toThrow(
      'y: expected shape [1, 6, 5, 5], got [1, 4, 5, 5]',
    );
    await callAsync((b) => b.conv2dForwardAsync(x.handle, Wc.handle, null, [1, 1, 1, 1, 1, 1, 1], [], y.handle, null));
    const ys = Tensor.zeros([1, 6, 5, 5]);
    call((b) => b.conv2dForward(x.handle, Wc.handle, null, [1, 1, 1, 1, 1, 1, 1], [], ys.handle, null));
    expectSame(y, ys);
  });
});

describe('per-row adapter arrays are copied at the call', () => {
  test('changing rowAdapter after mixedLinearForwardAsync returns does not change (or break) the result', async () => {
    const x = rand([4, 20], 91);
    const W = rand([12, 20], 92);
    const factors: Array<[Tensor['handle'], Tensor['handle'], number]> = [[rand([3, 20], 93).handle, rand([12, 3], 94).handle, 0.5]];
    const rows = new Int32Array([0, -1, 0, 0]);
    const ys = Tensor.zeros([4, 12]);
    call((b) => b.mixedLinearForward(x.handle, W.handle, null, false, factors, rows, ys.handle));
    const ya = Tensor.zeros([4, 12]);
    const pending = callAsync((b) => b.mixedLinearForwardAsync(x.handle, W.handle, null, false, factors, rows, ya.handle));
    rows.fill(1 << 20); // would index far past the adapter list if the native side still read this array
    await pending;
    expectSame(ya, ys);
  });
});
