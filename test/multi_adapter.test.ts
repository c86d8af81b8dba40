/** Several adapters on one LoraLinear against peft's multi_adapter case, plus scaling helpers and pissa/olora. */
import { LoraLinear, Tensor } from '../lib';
import { mat, matmul, qr, svd } from '../lib/linalg';
import { expectClose, loadCase, relErr } from './helpers/golden';
import { randomArray } from './helpers/reference';

const TOL = 1e-5;
const c = loadCase('multi_adapter');
const meta = c.meta as { mixed_names: string[]; weights: number[]; svd_rank: number };
const t = (n: string) => Tensor.from(c.f32(n), c.file.entry(n).shape);

function makeLayer(): LoraLinear {
  const layer = new LoraLinear({ weight: t('W'), bias: t('bias') });
  layer.addAdapter('first', { r: 4, loraAlpha: 8 });
  layer.addAdapter('second', { r: 6, loraAlpha: 3 });
  for (const n of ['first', 'second']) {
    layer.loraA.get(n)!.copyFrom(c.f32(`A.${n}`));
    layer.loraB.get(n)!.copyFrom(c.f32(`B.${n}`));
  }
  return layer;
}

const y = (layer: LoraLinear) => layer.forward(t('x')).toFloat32Array();

describe('golden multi_adapter', () => {
  test('one active adapter, both active (summed), disabled', () => {
    const layer = makeLayer();
    expect(layer.activeAdapters).toEqual(['first']);
    expectClose(y(layer), c.f32('y.first'), TOL, 'y.first');
    layer.setAdapter('second');
    expectClose(y(layer), c.f32('y.second'), TOL, 'y.second');
    layer.setAdapter(['first', 'second']);
    expectClose(y(layer), c.f32('y.both'), TOL, 'y.both');
    layer.enableAdapters(false);
    expectClose(y(layer), c.f32('y.disabled'), TOL, 'y.disabled');
    layer.enableAdapters(true);
    expectClose(y(layer), c.f32('y.both'), TOL, 'y.both again');
  });

  test('merge with both active gives W_merged.both; unmerge restores W', () => {
    const layer = makeLayer();
    layer.setAdapter(['first', 'second']);
    layer.merge();
    expect(layer.mergedAdapters).toEqual(['first', 'second']);
    expectClose(layer.weight.toFloat32Array(), c.f32('W_merged.both'), TOL, 'W_merged.both');
    layer.eval();
    expectClose(y(layer), c.f32('y.both'), TOL, 'y after merge');
    layer.unmerge();
    expect(relErr(layer.weight.toFloat32Array(), c.f32('W'))).toBeLessThan(1e-6);
  });

  test('mixed batch: one adapter name per row, __base__ for none', () => {
    const layer = makeLayer().eval();
    const names = Array.from(c.file.int64('mixed_index'), (i) => meta.mixed_names[Number(i)]);
    const out = layer.forward(t('x'), { adapterNames: names });
    expectClose(out.toFloat32Array(), c.f32('y.mixed'), TOL, 'y.mixed');
    // disabled adapters: every row gets the base
    layer.enableAdapters(false);
    expectClose(layer.forward(t('x'), { adapterNames: names }).toFloat32Array(), c.f32('y.disabled'), TOL, 'mixed disabled');
  });

  test('mixed batch over a 3-D input applies one name per batch entry, f16 storage', () => {
    const layer = makeLayer().eval();
    const x = c.f32('x'); // [7, 20] viewed as [7, 1, 20] and as bf16 storage
    const x3 = Tensor.from(x, [7, 1, 20], { dtype: 'bf16' });
    const names = Array.from(c.file.int64('mixed_index'), (i) => meta.mixed_names[Number(i)]);
    const out = layer.forward(x3, { adapterNames: names });
    expect(out.shape).toEqual([7, 1, 18]);
    expect(out.dtype).toBe('bf16');
    expect(relErr(out.toFloat32Array(), c.f32('y.mixed'))).toBeLessThan(1e-2);
  });

  test('mixed batch errors: training mode, unknown name, wrong count, merged', () => {
    const layer = makeLayer();
    const names = ['first', 'second', '__base__', 'first', 'second', '__base__', 'first'];
    expect(() => layer.forward(t('x'), { adapterNames: names })).toThrow(/eval mode/);
    layer.eval();
    expect(() => layer.forward(t('x'), { adapterNames: [...names.slice(0, 6), 'nope'] })).toThrow(
      expect.objectContaining({ name: 'AdapterError', message: expect.stringMatching(/adapterNames\[6\].*unknown adapter 'nope'/) }),
    );
    expect(() => layer.forward(t('x'), { adapterNames: names.slice(0, 3) })).toThrow(
      expect.objectContaining({ name: 'ShapeError', message: expect.stringMatching(/expected 7 names/) }),
    );
    layer.merge();
    expect(() => layer.forward(t('x'), { adapterNames: names })).toThrow(expect.objectContaining({ name: 'StateError' }));
  });

  test.each([
    ['cat', 'w_cat', ['first', 'second']],
    ['linear', 'w_linear', ['first', 'first']],
  ] as const)('addWeightedAdapter %s matches peft factors and output', (kind, name, sources) => {
    const layer = makeLayer();
    layer.addWeightedAdapter([...sources], meta.weights, name, { combinationType: kind });
    expect(layer.scaling.get(name)).toBe(1);
    expect(layer.activeAdapters).toEqual(['first']); // not activated, as peft
    expectClose(layer.loraA.get(name)!.toFloat32Array(), c.f32(`A.${name}`), TOL, `A.${name}`);
    expectClose(layer.loraB.get(name)!.toFloat32Array(), c.f32(`B.${name}`), TOL, `B.${name}`);
    layer.setAdapter(name);
    expectClose(y(layer), c.f32(`y.${name}`), TOL, `y.${name}`);
  });

  test('addWeightedAdapter svd (rank 4) matches peft output', () => {
    const layer = makeLayer();
    layer.addWeightedAdapter(['first', 'second'], meta.weights, 'w_svd', { combinationType: 'svd', svdRank: meta.svd_rank });
    expect(layer.r.get('w_svd')).toBe(4);
    layer.setAdapter('w_svd');
    expectClose(y(layer), c.f32('y.w_svd'), TOL, 'y.w_svd');
  });

  test.each([
    [4, 5, 3, 2], // R = 5 > min(out, in): dense SVD
    [12, 9, 3, 2], // R = 5 <= min(out, in): SVD of the stacked factors' QR
  ])('svd at full rank reproduces cat exactly (out %i, in %i, ranks %i+%i)', (outF, inF, r1, r2) => {
    const layer = new LoraLinear({ weight: Tensor.from(randomArray(outF * inF, 1), [outF, inF]) });
    layer.addAdapter('p', { r: r1, loraAlpha: 2, initLoraWeights: false, seed: 1 });
    layer.addAdapter('q', { r: r2, loraAlpha: 5, initLoraWeights: false, seed: 2 });
    const k = Math.min(r1 + r2, outF, inF);
    layer.addWeightedAdapter(['p', 'q'], [0.3, -1.2], 'cat', { combinationType: 'cat' });
    layer.addWeightedAdapter(['p', 'q'], [0.3, -1.2], 'svd', { combinationType: 'svd', svdRank: k });
    expectClose(layer.getDeltaWeight('svd').toFloat32Array(), layer.getDeltaWeight('cat').toFloat32Array(), 1e-6, 'svd vs cat');
  });

  test('addWeightedAdapter errors', () => {
    const layer = makeLayer();
    expect(() => layer.addWeightedAdapter(['first', 'second'], [1, 1], 'x', { combinationType: 'linear' })).toThrow(/equal rank/);
    expect(() => layer.addWeightedAdapter(['first', 'zz'], [1, 1], 'x')).toThrow(/adapters\[1\].*unknown adapter 'zz'/);
    expect(() => layer.addWeightedAdapter(['first'], [1, 2], 'x')).toThrow(/weights: expected an array of 1/);
    expect(() => layer.addWeightedAdapter(['first'], [1], 'second')).toThrow(/already exists/);
    expect(() => layer.addWeightedAdapter(['first', 'second'], [1, 1], 'x', { combinationType: 'svd', svdRank: 99 })).toThrow(/svdRank/);
  });
});

describe('setScale / scaleLayer / unscaleLayer', () => {
  test('change the output as peft does', () => {
    const layer = makeLayer();
    const base = c.f32('y.disabled');
    const full = c.f32('y.first');
    const part = (f: number) => full.map((v, i) => base[i] + f * (v - base[i]));
    layer.setScale('first', 0.5);
    expect(layer.scaling.get('first')).toBeCloseTo(1, 12);
    expectClose(y(layer), part(0.5), TOL, 'setScale 0.5');
    layer.scaleLayer(3);
    expectClose(y(layer), part(1.5), TOL, 'scaleLayer 3');
    layer.unscaleLayer(3);
    expectClose(y(layer), part(0.5), TOL, 'unscaleLayer 3');
    layer.unscaleLayer();
    expect(layer.scaling.get('first')).toBe(2);
    expectClose(y(layer), full, TOL, 'unscaleLayer()');
    // only active adapters are scaled
    expect(layer.scaling.get('second')).toBe(0.5);
  });

  test('refuse to rescale a merged adapter and bad factors', () => {
    const layer = makeLayer();
    layer.merge();
    expect(() => layer.scaleLayer(2)).toThrow(expect.objectContaining({ name: 'StateError' }));
    expect(() => layer.setScale('first', 2)).toThrow(/unmerge/);
    layer.unmerge();
    expect(() => layer.unscaleLayer(0)).toThrow(/cannot unscale by 0/);
    expect(() => layer.setScale('first', NaN)).toThrow(/finite/);
    expect(() => layer.setScale('zz', 1)).toThrow(/unknown adapter/);
  });
});

describe.each([false, true])('pissa / olora init (fanInFanOut %s)', (fifo) => {
  const outF = 12;
  const inF = 9;
  const W0 = randomArray(outF * inF, 11);
  const x = Tensor.from(randomArray(5 * inF, 12), [5, inF]);
  const bias = Tensor.from(randomArray(outF, 13), [outF]);

  test.each(['pissa', 'olora'] as const)('%s keeps the base output at init and rewrites W', (kind) => {
    const layer = new LoraLinear({ weight: Tensor.from(W0, fifo ? [inF, outF] : [outF, inF]), bias, fanInFanOut: fifo });
    layer.enableAdapters(false);
    const yBase = layer.forward(x).toFloat32Array();
    layer.enableAdapters(true);
    layer.addAdapter('p', { r: 4, loraAlpha: 8, initLoraWeights: kind });
    expect(relErr(layer.weight.toFloat32Array(), W0)).toBeGreaterThan(1e-2);
    expectClose(layer.forward(x).toFloat32Array(), yBase, TOL, `${kind} output at init`);
    const A = mat(4, inF, layer.loraA.get('p')!.toFloat32Array());
    const B = mat(outF, 4, layer.loraB.get('p')!.toFloat32Array());
    if (kind === 'pissa') {
      // A's rows are orthogonal (scaled right singular vectors)
      const g = matmul(A, { rows: inF, cols: 4, data: Float64Array.from({ length: inF * 4 }, (_, k) => A.data[(k % 4) * inF + Math.floor(k / 4)]) });
      for (let i = 0; i < 4; i++) for (let j = 0; j < 4; j++) if (i !== j) expect(Math.abs(g.data[i * 4 + j])).toBeLessThan(1e-5);
    } else {
      // B's columns are orthonormal (Q of the QR)
      for (let i = 0; i < 4; i++)
        for (let j = 0; j < 4; j++) {
          let d = 0;
          for (let o = 0; o < outF; o++) d += B.data[o * 4 + i] * B.data[o * 4 + j];
          expect(d).toBeCloseTo(i === j ? 1 : 0, 5);
        }
    }
  });

  test('rank above min(out, in) is refused', () => {
    const layer = new LoraLinear({ weight: Tensor.from(W0, fifo ? [inF, outF] : [outF, inF]), fanInFanOut: fifo });
    expect(() => layer.addAdapter('p', { r: 10, initLoraWeights: 'pissa' })).toThrow(/r <= min\(out, in\) = 9/);
    expect(relErr(layer.weight.toFloat32Array(), W0)).toBe(0);
  });
});

describe('linalg', () => {
  test.each([
    [7, 5],
    [5, 7],
    [6, 6],
  ])('svd and qr of a %i×%i matrix reconstruct it', (m, n) => {
    const a = mat(m, n, randomArray(m * n, m * 10 + n));
    const f = svd(a);
    const k = Math.min(m, n);
    const us = mat(m, k);
    for (let i = 0; i < m; i++) for (let j = 0; j < k; j++) us.data[i * k + j] = f.U.data[i * k + j] * f.S[j];
    expect(relErr(matmul(us, f.Vt).data, a.data)).toBeLessThan(1e-12);
    for (let j = 1; j < k; j++) expect(f.S[j]).toBeLessThanOrEqual(f.S[j - 1]);
    const q = qr(a);
    expect(relErr(matmul(q.Q, q.R).data, a.data)).toBeLessThan(1e-12);
    for (let i = 1; i < k; i++) for (let j = 0; j < i; j++) expect(q.R.data[i * n + j]).toBe(0);
  });

  test('svd of a rank-deficient matrix', () => {
    const u = mat(6, 2, randomArray(12, 3));
    const v = mat(2, 5, randomArray(10, 4));
    const a = matmul(u, v);
    const f = svd(a);
    expect(f.S[2]).toBeLessThan(1e-12 * f.S[0]);
    const us = mat(6, 5);
    for (let i = 0; i < 6; i++) for (let j = 0; j < 5; j++) us.data[i * 5 + j] = f.U.data[i * 5 + j] * f.S[j];
    expect(relErr(matmul(us, f.Vt).data, a.data)).toBeLessThan(1e-12);
  });
});
