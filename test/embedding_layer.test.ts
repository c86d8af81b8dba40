/** LoraEmbedding against peft's embedding case, finite differences, merge round trips and errors. */
import { LoraEmbedding, Tensor } from '../lib';
import { native } from '../lib/native';
import { expectClose, loadCase, relErr } from './helpers/golden';
import { randomArray } from './helpers/reference';

const TOL = 1e-5;

describe('golden embedding', () => {
  const c = loadCase('embedding');
  const meta = c.meta as { r: number; lora_alpha: number; num_embeddings: number; embedding_dim: number; scaling: number };
  const t = (n: string) => Tensor.from(c.f32(n), c.file.entry(n).shape);

  function makeLayer(): LoraEmbedding {
    const layer = new LoraEmbedding({ weight: t('W') });
    layer.addAdapter('default', { r: meta.r, loraAlpha: meta.lora_alpha });
    expect(layer.loraA.get('default')!.shape).toEqual([meta.r, meta.num_embeddings]);
    expect(layer.loraB.get('default')!.shape).toEqual([meta.embedding_dim, meta.r]);
    layer.loraA.get('default')!.copyFrom(c.f32('A'));
    layer.loraB.get('default')!.copyFrom(c.f32('B'));
    return layer;
  }

  test.each(['BigInt64Array', 'Int32Array', 'i64 Tensor', 'i32 Tensor'])('forward y and backward dA, dB from a %s', (kind) => {
    const layer = makeLayer();
    expect(layer.scaling.get('default')).toBe(meta.scaling);
    const idx64 = c.file.int64('indices');
    const idx32 = Int32Array.from(idx64, Number);
    const indices =
      kind === 'BigInt64Array' ? idx64 : kind === 'Int32Array' ? idx32 : kind === 'i64 Tensor' ? Tensor.from(idx64, [idx64.length]) : Tensor.from(idx32, [idx32.length]);
    const y = layer.forward(indices);
    expect(y.shape).toEqual([idx64.length, meta.embedding_dim]);
    expectClose(y.toFloat32Array(), c.f32('y'), TOL, 'y');
    const { grads } = layer.backward(t('dy'));
    expectClose(grads.get('default')!.loraA.toFloat32Array(), c.f32('dA'), TOL, 'dA');
    expectClose(grads.get('default')!.loraB.toFloat32Array(), c.f32('dB'), TOL, 'dB');
  });

  test('merge gives W_merged; merged forward equals the unmerged one; unmerge restores W', () => {
    const layer = makeLayer();
    layer.merge();
    expectClose(layer.weight.toFloat32Array(), c.f32('W_merged'), TOL, 'W_merged');
    layer.eval();
    expectClose(layer.forward(c.file.int64('indices')).toFloat32Array(), c.f32('y'), TOL, 'y merged');
    layer.unmerge();
    expect(relErr(layer.weight.toFloat32Array(), c.f32('W'))).toBeLessThan(1e-6);
    const W = c.f32('W');
    const Wm = c.f32('W_merged');
    expectClose(layer.getDeltaWeight('default').toFloat32Array(), Wm.map((v, i) => v - W[i]), 1e-4, 'delta');
  });

  test('peft init: A = 0 and B ~ N(0, 1), so the layer starts as the base', () => {
    const layer = new LoraEmbedding({ weight: t('W') });
    layer.addAdapter('default', { r: 6, seed: 3 });
    expect(layer.loraA.get('default')!.toFloat32Array().every((v) => v === 0)).toBe(true);
    const b = layer.loraB.get('default')!.toFloat32Array();
    const mean = b.reduce((s, v) => s + v, 0) / b.length;
    const variance = b.reduce((s, v) => s + (v - mean) ** 2, 0) / b.length;
    expect(Math.abs(mean)).toBeLessThan(0.2);
    expect(variance).toBeGreaterThan(0.7);
    expect(variance).toBeLessThan(1.3);
  });
});

describe.each([
  { num: 17, dim: 11, r: 3, shape: [4, 6], pad: null as number | null },
  { num: 9, dim: 5, r: 2, shape: [3, 2, 5], pad: 2 },
])('random embedding %o', ({ num, dim, r, shape, pad }) => {
  const n = shape.reduce((a, b) => a * b, 1);
  // Many repeats (n > num) so the scatter-add is exercised.
  const idx = Int32Array.from({ length: n }, (_, i) => (i * 7 + (i % 3)) % num);
  idx[0] = pad ?? 1;
  idx[1] = pad ?? 1;
  const W0 = randomArray(num * dim, 5);

  function build(): LoraEmbedding {
    const layer = new LoraEmbedding({ weight: Tensor.from(W0, [num, dim]), paddingIdx: pad });
    layer.addAdapter('e', { r, loraAlpha: 5, initLoraWeights: false, seed: 9 });
    layer.addAdapter('f', { r: r + 1, loraAlpha: 2, initLoraWeights: false, seed: 10 });
    layer.setAdapter(['e', 'f']);
    return layer;
  }

  test('backward matches finite differences; padding_idx gets no dA; repeated runs are bitwise equal', () => {
    const layer = build();
    const dy = randomArray(n * dim, 6);
    const idxT = Tensor.from(idx, shape, { dtype: 'i64' });
    const loss = (): number => {
      const y = layer.forward(idxT).toFloat32Array();
      let l = 0;
      for (let i = 0; i < y.length; i++) l += y[i] * dy[i];
      return l;
    };
    expect(layer.forward(idxT).shape).toEqual([...shape, dim]);
    const { grads } = layer.backward(Tensor.from(dy, [...shape, dim]));
    for (const name of ['e', 'f']) {
      const g = grads.get(name)!;
      for (const [which, param] of [['A', layer.loraA.get(name)!], ['B', layer.loraB.get(name)!]] as const) {
        const grad = (which === 'A' ? g.loraA : g.loraB).toFloat32Array();
        const base = param.toFloat32Array();
        const dir = randomArray(base.length, which === 'A' ? 7 : 8);
        // peft (F.embedding with padding_idx) gives the padding column no gradient: leave it out of the check.
        if (which === 'A' && pad !== null) for (let k = 0; k < base.length / num; k++) dir[k * num + pad] = 0;
        const eps = 1e-2;
        param.copyFrom(base.map((v, i) => v + eps * dir[i]));
        const lp = loss();
        param.copyFrom(base.map((v, i) => v - eps * dir[i]));
        const lm = loss();
        param.copyFrom(base);
        let an = 0;
        for (let i = 0; i < dir.length; i++) an += grad[i] * dir[i];
        const fd = (lp - lm) / (2 * eps);
        expect(Math.abs(fd - an)).toBeLessThan(2e-3 * Math.max(1, Math.abs(fd)));
      }
      if (pad !== null) {
        const dA = g.loraA.toFloat32Array();
        const rr = layer.r.get(name)!;
        for (let k = 0; k < rr; k++) expect(dA[k * num + pad]).toBe(0);
      }
      // deterministic accumulation
      layer.forward(idxT);
      const again = layer.backward(Tensor.from(dy, [...shape, dim])).grads.get(name)!;
      expect(Array.from(again.loraA.toFloat32Array())).toEqual(Array.from(g.loraA.toFloat32Array()));
    }
  });

  test('merge then unmerge round-trips; merged output matches', () => {
    const layer = build().eval();
    const y0 = layer.forward(idx).toFloat32Array();
    layer.merge({ safeMerge: true });
    expect(layer.mergedAdapters).toEqual(['e', 'f']);
    expectClose(layer.forward(idx).toFloat32Array(), y0, TOL, 'merged y');
    layer.unmerge();
    expect(relErr(layer.weight.toFloat32Array(), W0)).toBeLessThan(1e-6);
  });

  test('mixed batch: one adapter per entry of the first dimension', () => {
    const layer = build().eval();
    const idxT = Tensor.from(idx, shape, { dtype: 'i32' });
    const names = Array.from({ length: shape[0] }, (_, i) => ['e', 'f', '__base__'][i % 3]);
    const mixed = layer.forward(idxT, { adapterNames: names }).toFloat32Array();
    const per = n / shape[0];
    const rowsOf = (name: string): Float32Array => {
      if (name === '__base__') layer.enableAdapters(false);
      else layer.setAdapter(name);
      const y = layer.forward(idxT).toFloat32Array();
      layer.enableAdapters(true);
      return y;
    };
    names.forEach((name, i) => {
      const ref = rowsOf(name).subarray(i * per * dim, (i + 1) * per * dim);
      expectClose(mixed.subarray(i * per * dim, (i + 1) * per * dim), ref, TOL, `entry ${i} (${name})`);
    });
  });
});

describe('LoraEmbedding dtypes and errors', () => {
  test('bf16 weight and adapters: f32 compute, one rounding', () => {
    const c = loadCase('embedding');
    const layer = new LoraEmbedding({ weight: Tensor.from(c.f32('W'), [30, 24], { dtype: 'bf16' }) });
    layer.addAdapter('default', { r: 6, loraAlpha: 12, dtype: 'f16' });
    layer.loraA.get('default')!.copyFrom(c.f32('A'));
    layer.loraB.get('default')!.copyFrom(c.f32('B'));
    const y = layer.forward(c.file.int64('indices'));
    expect(y.dtype).toBe('bf16');
    expect(relErr(y.toFloat32Array(), c.f32('y'))).toBeLessThan(1e-2);
  });

  test('bad input gets typed errors naming the argument', () => {
    const layer = new LoraEmbedding({ weight: Tensor.from(randomArray(20, 1), [5, 4]) });
    layer.addAdapter('a', { r: 2 });
    expect(() => layer.forward(Int32Array.from([0, 5]))).toThrow(
      expect.objectContaining({ name: 'LoraRangeError', message: 'indices[1]: 5 is out of range for num_embeddings 5' }),
    );
    expect(() => layer.forward(BigInt64Array.from([-1n]))).toThrow(/indices\[0\]: -1 is out of range/);
    expect(() => layer.forward(Tensor.from([0, 1], [2]))).toThrow(expect.objectContaining({ name: 'DTypeError' }));
    expect(() => layer.forward([0, 1] as unknown as Int32Array)).toThrow(expect.objectContaining({ name: 'LoraTypeError' }));
    expect(() => layer.backward(Tensor.zeros([2, 4]))).toThrow(expect.objectContaining({ name: 'StateError' }));
    layer.forward(Int32Array.from([0, 1]));
    expect(() => layer.backward(Tensor.zeros([3, 4]))).toThrow(/dy: expected shape \[2, 4\]/);
    expect(() => new LoraEmbedding({ weight: Tensor.zeros([5]) })).toThrow(expect.objectContaining({ name: 'ShapeError' }));
    expect(() => new LoraEmbedding({ weight: Tensor.zeros([5, 4]), paddingIdx: 5 })).toThrow(/opts.paddingIdx/);
    expect(() => layer.addAdapter('d', { useDora: true })).toThrow(/DoRA is supported on LoraLinear only/);
    expect(() => layer.addAdapter('p', { initLoraWeights: 'pissa' })).toThrow(/LoraLinear only/);
    // the native side validates indices too
    const W = Tensor.zeros([5, 4]);
    const y = Tensor.zeros([1, 4]);
    expect(() => native().embeddingForward(Tensor.from(Int32Array.from([7]), [1]).handle, W.handle, [], null, y.handle)).toThrow(
      /index 7 at position 0 is out of range for num_embeddings 5/,
    );
  });

  test('addWeightedAdapter cat and svd on embeddings combine (B·A)ᵀ deltas', () => {
    const layer = new LoraEmbedding({ weight: Tensor.from(randomArray(40, 1), [10, 4]) });
    layer.addAdapter('p', { r: 2, initLoraWeights: false, seed: 1 });
    layer.addAdapter('q', { r: 1, initLoraWeights: false, seed: 2 });
    layer.addWeightedAdapter(['p', 'q'], [0.5, -2], 'c', { combinationType: 'cat' });
    layer.addWeightedAdapter(['p', 'q'], [0.5, -2], 's', { combinationType: 'svd', svdRank: 3 });
    expect(layer.loraA.get('c')!.shape).toEqual([3, 10]);
    expect(layer.loraB.get('c')!.shape).toEqual([4, 3]);
    const dp = layer.getDeltaWeight('p').toFloat32Array();
    const dq = layer.getDeltaWeight('q').toFloat32Array();
    const want = dp.map((v, i) => 0.5 * v - 2 * dq[i]);
    expectClose(layer.getDeltaWeight('c').toFloat32Array(), want, 1e-6, 'cat');
    expectClose(layer.getDeltaWeight('s').toFloat32Array(), want, 1e-6, 'svd');
  });

  test('negative paddingIdx counts from the end', () => {
    expect(new LoraEmbedding({ weight: Tensor.zeros([5, 4]), paddingIdx: -1 }).paddingIdx).toBe(4);
  });
});
