/** LoraConv2d against peft's conv2d cases, a float64 direct-convolution reference, finite differences and merges. */
import { LoraConv2d, Tensor } from '../lib';
import { expectClose, loadCase, relErr } from './helpers/golden';
import { randomArray } from './helpers/reference';

const TOL = 1e-5;

describe.each(['conv2d_k3', 'conv2d_k1'])('golden %s', (name) => {
  const c = loadCase(name);
  const meta = c.meta as { r: number; lora_alpha: number; padding: number; stride: number; scaling: number };
  const t = (n: string) => Tensor.from(c.f32(n), c.file.entry(n).shape);

  function makeLayer(): LoraConv2d {
    const layer = new LoraConv2d({ weight: t('W'), bias: t('bias'), stride: meta.stride, padding: meta.padding });
    layer.addAdapter('default', { r: meta.r, loraAlpha: meta.lora_alpha });
    expect(layer.loraA.get('default')!.shape).toEqual(c.file.entry('A').shape);
    expect(layer.loraB.get('default')!.shape).toEqual(c.file.entry('B').shape);
    layer.loraA.get('default')!.copyFrom(c.f32('A'));
    layer.loraB.get('default')!.copyFrom(c.f32('B'));
    return layer;
  }

  test('forward y; backward dx, dA, dB', () => {
    const layer = makeLayer();
    expect(layer.scaling.get('default')).toBe(meta.scaling);
    const y = layer.forward(t('x'));
    expect(y.shape).toEqual(c.file.entry('y').shape);
    expectClose(y.toFloat32Array(), c.f32('y'), TOL, 'y');
    const { dx, grads } = layer.backward(t('dy'));
    expectClose(dx.toFloat32Array(), c.f32('dx'), TOL, 'dx');
    expectClose(grads.get('default')!.loraA.toFloat32Array(), c.f32('dA'), TOL, 'dA');
    expectClose(grads.get('default')!.loraB.toFloat32Array(), c.f32('dB'), TOL, 'dB');
  });

  test('merge gives W_merged and the same output; unmerge restores W', () => {
    const layer = makeLayer();
    layer.merge();
    expectClose(layer.weight.toFloat32Array(), c.f32('W_merged'), TOL, 'W_merged');
    layer.eval();
    expectClose(layer.forward(t('x')).toFloat32Array(), c.f32('y'), TOL, 'y merged');
    layer.unmerge();
    expect(relErr(layer.weight.toFloat32Array(), c.f32('W'))).toBeLessThan(1e-6);
  });

  test('bf16 storage computes in f32 (within 1e-2)', () => {
    const bf = (n: string) => Tensor.from(c.f32(n), c.file.entry(n).shape, { dtype: 'bf16' });
    const layer = new LoraConv2d({ weight: bf('W'), bias: bf('bias'), stride: meta.stride, padding: meta.padding });
    layer.addAdapter('default', { r: meta.r, loraAlpha: meta.lora_alpha, dtype: 'bf16' });
    layer.loraA.get('default')!.copyFrom(c.f32('A'));
    layer.loraB.get('default')!.copyFrom(c.f32('B'));
    const y = layer.forward(bf('x'));
    expect(y.dtype).toBe('bf16');
    expect(relErr(y.toFloat32Array(), c.f32('y'))).toBeLessThan(1e-2);
    const { dx } = layer.backward(bf('dy'));
    expect(relErr(dx.toFloat32Array(), c.f32('dx'))).toBeLessThan(1e-2);
  });
});

interface Setup {
  N: number;
  C: number;
  O: number;
  H: number;
  W: number;
  k: [number, number];
  stride: [number, number];
  padding: [number, number];
  dilation: [number, number];
  groups: number;
  rs: number[];
  dropout: number;
}

/** Direct float64 convolution: x [N, C, H, W], w [O, C/g, kh, kw] → [N, O, Ho, Wo]. */
function convRef(
  x: Float32Array,
  s: { N: number; C: number; H: number; W: number },
  w: ArrayLike<number>,
  O: number,
  kh: number,
  kw: number,
  stride: [number, number],
  pad: [number, number],
  dil: [number, number],
  groups: number,
): { y: Float64Array; Ho: number; Wo: number } {
  const Ho = Math.floor((s.H + 2 * pad[0] - dil[0] * (kh - 1) - 1) / stride[0]) + 1;
  const Wo = Math.floor((s.W + 2 * pad[1] - dil[1] * (kw - 1) - 1) / stride[1]) + 1;
  const cg = s.C / groups;
  const og = O / groups;
  const y = new Float64Array(s.N * O * Ho * Wo);
  for (let n = 0; n < s.N; n++)
    for (let o = 0; o < O; o++) {
      const g = Math.floor(o / og);
      for (let oh = 0; oh < Ho; oh++)
        for (let ow = 0; ow < Wo; ow++) {
          let acc = 0;
          for (let cc = 0; cc < cg; cc++)
            for (let i = 0; i < kh; i++)
              for (let j = 0; j < kw; j++) {
                const h = oh * stride[0] - pad[0] + i * dil[0];
                const ww = ow * stride[1] - pad[1] + j * dil[1];
                if (h < 0 || h >= s.H || ww < 0 || ww >= s.W) continue;
                acc += w[((o * cg + cc) * kh + i) * kw + j] * x[((n * s.C + g * cg + cc) * s.H + h) * s.W + ww];
              }
          y[((n * O + o) * Ho + oh) * Wo + ow] = acc;
        }
    }
  return { y, Ho, Wo };
}

const SETUPS: Setup[] = [
  { N: 2, C: 4, O: 6, H: 7, W: 6, k: [3, 2], stride: [2, 1], padding: [1, 0], dilation: [1, 1], groups: 1, rs: [3, 2], dropout: 0 },
  { N: 2, C: 4, O: 6, H: 6, W: 5, k: [3, 3], stride: [1, 1], padding: [1, 1], dilation: [1, 1], groups: 2, rs: [4], dropout: 0 },
  { N: 1, C: 3, O: 4, H: 7, W: 7, k: [2, 2], stride: [3, 3], padding: [0, 0], dilation: [2, 2], groups: 1, rs: [2], dropout: 0 },
  { N: 3, C: 2, O: 5, H: 5, W: 4, k: [3, 3], stride: [1, 2], padding: [1, 1], dilation: [1, 1], groups: 1, rs: [2, 3], dropout: 0.3 },
];

describe.each(SETUPS)('random conv2d %o', (s) => {
  const wShape = [s.O, s.C / s.groups, ...s.k];
  const W0 = randomArray(wShape.reduce((a, b) => a * b, 1), 3);
  const bias = randomArray(s.O, 4);
  const x = randomArray(s.N * s.C * s.H * s.W, 5);
  const xShape = [s.N, s.C, s.H, s.W];

  function build(): LoraConv2d {
    const layer = new LoraConv2d({
      weight: Tensor.from(W0, wShape),
      bias: Tensor.from(bias, [s.O]),
      stride: s.stride,
      padding: s.padding,
      dilation: s.dilation,
      groups: s.groups,
    });
    s.rs.forEach((r, i) => layer.addAdapter(`a${i}`, { r, loraAlpha: 2 * r + 1, initLoraWeights: false, seed: 20 + i, loraDropout: s.dropout }));
    layer.setAdapter(s.rs.map((_, i) => `a${i}`));
    return layer;
  }

  test('forward (eval) matches a float64 direct convolution', () => {
    const layer = build().eval();
    const base = convRef(x, s, W0, s.O, s.k[0], s.k[1], s.stride, s.padding, s.dilation, s.groups);
    const ref = base.y.slice();
    const P = base.Ho * base.Wo;
    for (let o = 0; o < s.O; o++) for (let n = 0; n < s.N; n++) for (let p = 0; p < P; p++) ref[(n * s.O + o) * P + p] += bias[o];
    s.rs.forEach((r, a) => {
      const A = layer.loraA.get(`a${a}`)!.toFloat32Array();
      const B = layer.loraB.get(`a${a}`)!.toFloat32Array();
      const sc = layer.scaling.get(`a${a}`)!;
      const u = convRef(x, s, A, r, s.k[0], s.k[1], s.stride, s.padding, [1, 1], 1).y; // [N, r, P]
      const rg = r / s.groups;
      const og = s.O / s.groups;
      for (let n = 0; n < s.N; n++)
        for (let o = 0; o < s.O; o++) {
          const g = Math.floor(o / og);
          for (let p = 0; p < P; p++) {
            let acc = 0;
            for (let k = 0; k < rg; k++) acc += B[o * rg + k] * u[(n * r + g * rg + k) * P + p];
            ref[(n * s.O + o) * P + p] += sc * acc;
          }
        }
    });
    const y = layer.forward(Tensor.from(x, xShape));
    expect(y.shape).toEqual([s.N, s.O, base.Ho, base.Wo]);
    expectClose(y.toFloat32Array(), ref, TOL, 'y');
  });

  test('backward matches finite differences (dx, dA, dB)', () => {
    const layer = build();
    const y0 = layer.forward(Tensor.from(x, xShape));
    const dy = randomArray(y0.numel, 6);
    const dyT = Tensor.from(dy, y0.shape);
    const loss = (xv: Float32Array = x): number => {
      layer.manualSeed(3);
      const y = layer.forward(Tensor.from(xv, xShape)).toFloat32Array();
      let l = 0;
      for (let i = 0; i < y.length; i++) l += y[i] * dy[i];
      return l;
    };
    layer.manualSeed(3);
    layer.forward(Tensor.from(x, xShape));
    const { dx, grads } = layer.backward(dyT);
    const check = (grad: Float32Array, base: Float32Array, apply: (v: Float32Array) => number, seed: number, what: string) => {
      const dir = randomArray(base.length, seed);
      const eps = 1e-2;
      const lp = apply(base.map((v, i) => v + eps * dir[i]));
      const lm = apply(base.map((v, i) => v - eps * dir[i]));
      apply(base);
      const fd = (lp - lm) / (2 * eps);
      let an = 0;
      for (let i = 0; i < dir.length; i++) an += grad[i] * dir[i];
      if (!(Math.abs(fd - an) <= 2e-3 * Math.max(1, Math.abs(fd)))) throw new Error(`${what}: fd ${fd} vs analytic ${an}`);
    };
    check(dx.toFloat32Array(), x, (v) => loss(v), 40, 'dx');
    s.rs.forEach((_, a) => {
      const A = layer.loraA.get(`a${a}`)!;
      const B = layer.loraB.get(`a${a}`)!;
      const g = grads.get(`a${a}`)!;
      check(g.loraA.toFloat32Array(), A.toFloat32Array(), (v) => (A.copyFrom(v), loss()), 41 + a, `dA a${a}`);
      check(g.loraB.toFloat32Array(), B.toFloat32Array(), (v) => (B.copyFrom(v), loss()), 51 + a, `dB a${a}`);
    });
  });

  if (s.dilation[0] > 1) {
    test('a dilated base refuses to merge (the adapter runs at dilation 1)', () => {
      const layer = build();
      expect(() => layer.merge()).toThrow(expect.objectContaining({ name: 'AdapterError', message: expect.stringMatching(/dilation/) }));
      expect(relErr(layer.weight.toFloat32Array(), W0)).toBe(0);
    });
  } else if (s.groups === 1) {
    test('merge then unmerge round-trips; merged output equals the unmerged one', () => {
      const layer = build().eval();
      const xt = Tensor.from(x, xShape);
      const y0 = layer.forward(xt).toFloat32Array();
      layer.merge();
      expectClose(layer.forward(xt).toFloat32Array(), y0, TOL, 'merged y');
      layer.unmerge();
      expect(relErr(layer.weight.toFloat32Array(), W0)).toBeLessThan(1e-6);
    });
  } else {
    test('a grouped conv refuses to merge (as peft) and leaves W alone', () => {
      const layer = build();
      expect(() => layer.merge()).toThrow(expect.objectContaining({ name: 'AdapterError', message: expect.stringMatching(/grouped conv/) }));
      expect(layer.merged).toBe(false);
      expect(relErr(layer.weight.toFloat32Array(), W0)).toBe(0);
    });
  }
});

describe('LoraConv2d mixed batch', () => {
  test('one adapter name per image, as separate single-adapter forwards', () => {
    const layer = new LoraConv2d({ weight: Tensor.from(randomArray(4 * 3 * 9, 1), [4, 3, 3, 3]), bias: Tensor.from(randomArray(4, 2), [4]), padding: 1 });
    layer.addAdapter('p', { r: 2, initLoraWeights: false, seed: 1 });
    layer.addAdapter('q', { r: 3, initLoraWeights: false, seed: 2 });
    const names = ['q', '__base__', 'p', 'q'];
    const x = randomArray(4 * 3 * 5 * 5, 3);
    const per = 3 * 5 * 5;
    expect(() => layer.forward(Tensor.from(x, [4, 3, 5, 5]), { adapterNames: names })).toThrow(/eval mode/);
    layer.eval();
    const mixed = layer.forward(Tensor.from(x, [4, 3, 5, 5]), { adapterNames: names }).toFloat32Array();
    const outPer = 4 * 5 * 5;
    names.forEach((name, i) => {
      if (name === '__base__') layer.enableAdapters(false);
      else layer.setAdapter(name);
      const one = layer.forward(Tensor.from(x.subarray(i * per, (i + 1) * per), [1, 3, 5, 5])).toFloat32Array();
      layer.enableAdapters(true);
      expectClose(mixed.subarray(i * outPer, (i + 1) * outPer), one, TOL, `image ${i} (${name})`);
    });
    expect(() => layer.forward(Tensor.from(x, [4, 3, 5, 5]), { adapterNames: ['p'] })).toThrow(/expected 4 names/);
  });
});

describe('LoraConv2d weighted adapters and errors', () => {
  test('cat of two conv adapters equals the sum of their deltas', () => {
    const layer = new LoraConv2d({ weight: Tensor.from(randomArray(6 * 3 * 9, 1), [6, 3, 3, 3]), padding: 1 });
    layer.addAdapter('p', { r: 2, initLoraWeights: false, seed: 1 });
    layer.addAdapter('q', { r: 3, initLoraWeights: false, seed: 2 });
    layer.addWeightedAdapter(['p', 'q'], [0.5, 2], 'c', { combinationType: 'cat' });
    expect(layer.loraA.get('c')!.shape).toEqual([5, 3, 3, 3]);
    expect(layer.loraB.get('c')!.shape).toEqual([6, 5, 1, 1]);
    const dp = layer.getDeltaWeight('p').toFloat32Array();
    const dq = layer.getDeltaWeight('q').toFloat32Array();
    expectClose(layer.getDeltaWeight('c').toFloat32Array(), dp.map((v, i) => 0.5 * v + 2 * dq[i]), 1e-6, 'cat delta');
  });

  test('bad input gets typed errors naming the argument and shapes', () => {
    expect(() => new LoraConv2d({ weight: Tensor.zeros([4, 3, 3]) })).toThrow(expect.objectContaining({ name: 'ShapeError' }));
    expect(() => new LoraConv2d({ weight: Tensor.zeros([5, 2, 3, 3]), groups: 2 })).toThrow(/groups: 2 does not divide out_channels 5/);
    expect(() => new LoraConv2d({ weight: Tensor.zeros([4, 2, 3, 3]), stride: 0 })).toThrow(/opts.stride/);
    expect(() => new LoraConv2d({ weight: Tensor.zeros([4, 2, 3, 3]), bias: Tensor.zeros([3]) })).toThrow(/opts.bias: expected shape \[4\]/);
    const layer = new LoraConv2d({ weight: Tensor.zeros([4, 2, 3, 3]), groups: 2 });
    expect(() => layer.addAdapter('a', { r: 3 })).toThrow(/multiple of groups 2/);
    layer.addAdapter('a', { r: 4 });
    expect(() => layer.forward(Tensor.zeros([1, 3, 5, 5]))).toThrow(/x: expected shape \[N, 4, H, W\]/);
    expect(() => layer.forward(Tensor.zeros([1, 4, 2, 2]))).toThrow(/too small for kernel 3×3/);
    expect(() => layer.forward(Tensor.zeros([1, 4, 5, 5], { dtype: 'i32' }))).toThrow(expect.objectContaining({ name: 'DTypeError' }));
    expect(() => layer.addAdapter('d', { useDora: true })).toThrow(/LoraLinear only/);
    const dil = new LoraConv2d({ weight: Tensor.zeros([2, 2, 3, 3]), dilation: 2, padding: 2 });
    dil.addAdapter('a', { r: 2 });
    expect(() => dil.forward(Tensor.zeros([1, 2, 6, 6]))).toThrow(/lora_A conv \(dilation 1, as in peft\)/);
    dil.enableAdapters(false);
    expect(dil.forward(Tensor.zeros([1, 2, 6, 6])).shape).toEqual([1, 2, 6, 6]);
  });
});
