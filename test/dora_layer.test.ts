/** DoRA on LoraLinear: peft's linear_dora case, the low-rank norm, finite differences, merge round trips. */
import { LoraLinear, Tensor } from '../lib';
import { expectClose, loadCase, relErr } from './helpers/golden';
import { randomArray } from './helpers/reference';

const TOL = 1e-5;

describe('golden linear_dora', () => {
  const c = loadCase('linear_dora');
  const meta = c.meta as { r: number; lora_alpha: number };
  const t = (n: string) => Tensor.from(c.f32(n), c.file.entry(n).shape);

  function makeLayer(): LoraLinear {
    const layer = new LoraLinear({ weight: t('W'), bias: t('bias') });
    layer.addAdapter('default', { r: meta.r, loraAlpha: meta.lora_alpha, useDora: true });
    layer.loraA.get('default')!.copyFrom(c.f32('A'));
    layer.loraB.get('default')!.copyFrom(c.f32('B'));
    layer.loraMagnitude.get('default')!.copyFrom(c.f32('magnitude'));
    return layer;
  }

  test('forward y; backward dx, dA, dB, dmagnitude', () => {
    const layer = makeLayer();
    expect(layer.useDora.get('default')).toBe(true);
    expect(layer.loraMagnitude.get('default')!.shape).toEqual([28]);
    expectClose(layer.forward(t('x')).toFloat32Array(), c.f32('y'), TOL, 'y');
    const { dx, grads } = layer.backward(t('dy'));
    const g = grads.get('default')!;
    expectClose(dx.toFloat32Array(), c.f32('dx'), TOL, 'dx');
    expectClose(g.loraA.toFloat32Array(), c.f32('dA'), TOL, 'dA');
    expectClose(g.loraB.toFloat32Array(), c.f32('dB'), TOL, 'dB');
    expectClose(g.magnitude!.toFloat32Array(), c.f32('dmagnitude'), TOL, 'dmagnitude');
  });

  test('merge gives W_merged and y_merged; unmerge restores W', () => {
    const layer = makeLayer();
    layer.merge();
    expectClose(layer.weight.toFloat32Array(), c.f32('W_merged'), TOL, 'W_merged');
    layer.eval();
    expectClose(layer.forward(t('x')).toFloat32Array(), c.f32('y_merged'), TOL, 'y_merged');
    layer.unmerge();
    expect(relErr(layer.weight.toFloat32Array(), c.f32('W'))).toBeLessThan(1e-6);
    // getDeltaWeight is the plain LoRA delta, as peft's get_delta_weight
    const d = layer.getDeltaWeight('default').toFloat32Array();
    const A = c.f32('A');
    const B = c.f32('B');
    expect(d[0]).toBeCloseTo(2 * [0, 1, 2, 3].reduce((s, k) => s + B[k] * A[k * 32], 0), 5);
  });

  test('parameters() include the magnitude; backward accumulates its gradient', () => {
    const layer = makeLayer();
    const params = layer.parameters();
    expect(params.map((p) => p.role)).toEqual(['lora_A', 'lora_B', 'lora_magnitude_vector']);
    layer.forward(t('x'));
    layer.backward(t('dy'));
    expectClose(params[2].grad!.toFloat32Array(), c.f32('dmagnitude'), TOL, 'magnitude grad');
  });

  test('a frozen (inferenceMode) DoRA adapter gets no gradients but dx is still exact', () => {
    const layer = new LoraLinear({ weight: t('W'), bias: t('bias') });
    layer.addAdapter('default', { r: meta.r, loraAlpha: meta.lora_alpha, useDora: true, inferenceMode: true });
    layer.loraA.get('default')!.copyFrom(c.f32('A'));
    layer.loraB.get('default')!.copyFrom(c.f32('B'));
    layer.loraMagnitude.get('default')!.copyFrom(c.f32('magnitude'));
    layer.forward(t('x'));
    const { dx, grads } = layer.backward(t('dy'));
    expect(grads.size).toBe(0);
    expectClose(dx.toFloat32Array(), c.f32('dx'), TOL, 'dx');
  });

  test('eval forward equals training forward without dropout', () => {
    const layer = makeLayer().eval();
    expectClose(layer.forward(t('x')).toFloat32Array(), c.f32('y'), TOL, 'eval y');
  });
});

/** ‖W + s·B·A‖ per output row, float64, W in [out, in] layout. */
function normRef(W: Float32Array, A: Float32Array, B: Float32Array, s: number, outF: number, inF: number, r: number, fifo: boolean): Float64Array {
  const n = new Float64Array(outF);
  for (let o = 0; o < outF; o++) {
    let acc = 0;
    for (let i = 0; i < inF; i++) {
      let v = fifo ? W[i * outF + o] : W[o * inF + i];
      for (let k = 0; k < r; k++) v += s * B[o * r + k] * A[k * inF + i];
      acc += v * v;
    }
    n[o] = Math.sqrt(acc);
  }
  return n;
}

interface Setup {
  n: number;
  inF: number;
  outF: number;
  r: number;
  fifo: boolean;
  dropout: number;
}

const SETUPS: Setup[] = [
  { n: 5, inF: 13, outF: 9, r: 3, fifo: false, dropout: 0 },
  { n: 4, inF: 7, outF: 11, r: 2, fifo: true, dropout: 0 },
  { n: 6, inF: 10, outF: 8, r: 4, fifo: false, dropout: 0.3 },
  { n: 3, inF: 9, outF: 12, r: 5, fifo: true, dropout: 0.25 },
];

describe.each(SETUPS)('DoRA on random shapes %o', (s) => {
  const wShape = s.fifo ? [s.inF, s.outF] : [s.outF, s.inF];
  const W0 = randomArray(s.inF * s.outF, s.n + s.inF);

  function build(): LoraLinear {
    const layer = new LoraLinear({
      weight: Tensor.from(W0, wShape),
      bias: Tensor.from(randomArray(s.outF, 5), [s.outF]),
      fanInFanOut: s.fifo,
    });
    layer.addAdapter('d', { r: s.r, loraAlpha: 3, initLoraWeights: false, useDora: true, loraDropout: s.dropout, seed: 4 });
    return layer;
  }

  test('magnitude init and the low-rank norm match the dense float64 norm', () => {
    const layer = build();
    const A = layer.loraA.get('d')!.toFloat32Array();
    const B = layer.loraB.get('d')!.toFloat32Array();
    const ref = normRef(W0, A, B, layer.scaling.get('d')!, s.outF, s.inF, s.r, s.fifo);
    expectClose(layer.loraMagnitude.get('d')!.toFloat32Array(), ref, 1e-6, 'magnitude init');
    expectClose(layer.doraWeightNorm('d').toFloat32Array(), ref, 1e-6, 'norm');
  });

  test('backward matches finite differences (norm held constant, as peft detaches it)', () => {
    const layer = build();
    const x = randomArray(s.n * s.inF, 21);
    const dy = randomArray(s.n * s.outF, 22);
    const scaling = layer.scaling.get('d')!;
    const A = layer.loraA.get('d')!;
    const B = layer.loraB.get('d')!;
    const M = layer.loraMagnitude.get('d')!;
    const n0 = layer.doraWeightNorm('d').toFloat32Array();
    const m0 = M.toFloat32Array();
    const A0 = A.toFloat32Array();
    const B0 = B.toFloat32Array();
    // L = Σ dy⊙y with the norm frozen at n0: rescale the magnitude by n(A, B)/n0 after each change.
    const loss = (xv: Float32Array = x): number => {
      const n1 = layer.doraWeightNorm('d').toFloat32Array();
      const m = M.toFloat32Array();
      M.copyFrom(m.map((v, o) => (v * n1[o]) / n0[o]));
      layer.manualSeed(7);
      const y = layer.forward(Tensor.from(xv, [s.n, s.inF])).toFloat32Array();
      M.copyFrom(m);
      let l = 0;
      for (let i = 0; i < y.length; i++) l += y[i] * dy[i];
      return l;
    };
    layer.manualSeed(7);
    layer.forward(Tensor.from(x, [s.n, s.inF]));
    const { dx, grads } = layer.backward(Tensor.from(dy, [s.n, s.outF]));
    const g = grads.get('d')!;
    const directional = (
      grad: Float32Array,
      base: Float32Array,
      set: (v: Float32Array) => void,
      seed: number,
      f: (v: Float32Array) => number,
    ): void => {
      const dir = randomArray(base.length, seed);
      const eps = 1e-2;
      const lp = f(base.map((v, i) => v + eps * dir[i]));
      const lm = f(base.map((v, i) => v - eps * dir[i]));
      set(base);
      const fd = (lp - lm) / (2 * eps);
      let an = 0;
      for (let i = 0; i < dir.length; i++) an += grad[i] * dir[i];
      expect(Math.abs(fd - an)).toBeLessThan(2e-3 * Math.max(1, Math.abs(fd)));
    };
    directional(g.loraA.toFloat32Array(), A0, (v) => A.copyFrom(v), 31, (v) => (A.copyFrom(v), loss()));
    directional(g.loraB.toFloat32Array(), B0, (v) => B.copyFrom(v), 32, (v) => (B.copyFrom(v), loss()));
    directional(g.magnitude!.toFloat32Array(), m0, (v) => M.copyFrom(v), 33, (v) => (M.copyFrom(v), loss()));
    directional(dx.toFloat32Array(), x, () => undefined, 34, (v) => loss(v));
  });

  test('merge then unmerge round-trips W; merged output equals the unmerged eval output', () => {
    const layer = build().eval();
    const x = Tensor.from(randomArray(s.n * s.inF, 41), [s.n, s.inF]);
    const y0 = layer.forward(x).toFloat32Array();
    layer.merge({ safeMerge: true });
    expectClose(layer.forward(x).toFloat32Array(), y0, TOL, 'merged y');
    layer.unmerge();
    expect(relErr(layer.weight.toFloat32Array(), W0)).toBeLessThan(1e-6);
    expectClose(layer.forward(x).toFloat32Array(), y0, TOL, 'unmerged y');
  });
});

describe('DoRA: dtypes and errors', () => {
  test('bf16 storage computes in f32 and lands within 1e-2', () => {
    const c = loadCase('linear_dora');
    const bf = (n: string) => Tensor.from(c.f32(n), c.file.entry(n).shape, { dtype: 'bf16' });
    const layer = new LoraLinear({ weight: bf('W'), bias: bf('bias') });
    layer.addAdapter('default', { r: 4, loraAlpha: 8, useDora: true, dtype: 'bf16' });
    layer.loraA.get('default')!.copyFrom(c.f32('A'));
    layer.loraB.get('default')!.copyFrom(c.f32('B'));
    layer.loraMagnitude.get('default')!.copyFrom(c.f32('magnitude'));
    expect(layer.loraMagnitude.get('default')!.dtype).toBe('bf16');
    const y = layer.forward(bf('x'));
    expect(y.dtype).toBe('bf16');
    expect(relErr(y.toFloat32Array(), c.f32('y'))).toBeLessThan(1e-2);
    const { dx, grads } = layer.backward(bf('dy'));
    expect(relErr(dx.toFloat32Array(), c.f32('dx'))).toBeLessThan(1e-2);
    expect(relErr(grads.get('default')!.magnitude!.toFloat32Array(), c.f32('dmagnitude'))).toBeLessThan(2e-2);
  });

  test('a DoRA adapter must be the only active one and cannot join a mixed batch', () => {
    const layer = new LoraLinear({ weight: Tensor.from(randomArray(20, 1), [4, 5]) });
    layer.addAdapter('d', { r: 2, useDora: true });
    layer.addAdapter('plain', { r: 2 });
    layer.setAdapter(['d', 'plain']);
    const x = Tensor.from(randomArray(10, 2), [2, 5]);
    expect(() => layer.forward(x)).toThrow(expect.objectContaining({ name: 'AdapterError', message: expect.stringMatching(/only active adapter/) }));
    layer.eval();
    expect(() => layer.forward(x, { adapterNames: ['d', 'plain'] })).toThrow(/DoRA adapter 'd' cannot be used in a mixed batch/);
    expect(() => layer.addWeightedAdapter(['d', 'plain'], [1, 1], 'w', { combinationType: 'cat' })).toThrow(/DoRA/);
    layer.deleteAdapter('d');
    expect(layer.loraMagnitude.has('d')).toBe(false);
  });
});
