import { AdamW, LoraLinear, Parameter, SGD, Tensor, clipGradNorm, countParameters } from '../lib';
import { relErr } from './helpers/golden';
import { adamwRefInit, adamwRefStep, sgdRefStep } from './helpers/optim_reference';
import { randomArray } from './helpers/reference';

function param(n: number[], seed: number, role: 'lora_A' | 'lora_B' = 'lora_A', dtype: 'f32' | 'bf16' = 'f32'): Parameter {
  const numel = n.reduce((a, b) => a * b, 1);
  return new Parameter(`${role}.default.weight`, role, 'default', Tensor.from(randomArray(numel, seed), n, { dtype }));
}

function setGrad(p: Parameter, g: Float32Array): void {
  p.zeroGrad();
  p.accumulateGrad(Tensor.from(g, p.shape));
}

describe('AdamW', () => {
  test('has PyTorch defaults', () => {
    const opt = new AdamW([param([2, 3], 1)]);
    expect(opt.paramGroups[0].lr).toBe(1e-3);
    expect(opt.betas).toEqual([0.9, 0.999]);
    expect(opt.eps).toBe(1e-8);
    expect(opt.paramGroups[0].weightDecay).toBe(0.01);
  });

  test('matches a float64 reference step by step over 20 steps (rel err <= 1e-6)', () => {
    const p = param([37, 53], 11);
    const h = { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.05 };
    const ref = adamwRefInit(p.data.toFloat32Array());
    const opt = new AdamW([p], { lr: h.lr, betas: [h.beta1, h.beta2], eps: h.eps, weightDecay: h.weightDecay });
    for (let step = 1; step <= 20; step++) {
      const g = randomArray(p.numel, 1000 + step, step % 3 === 0 ? 1e-3 : 1);
      setGrad(p, g);
      opt.step();
      adamwRefStep(ref, g, h);
      expect(relErr(p.data.toFloat32Array(), ref.p)).toBeLessThanOrEqual(1e-6);
      const st = opt.stateOf(p)!;
      expect(st.step).toBe(step);
      expect(relErr(st.expAvg, ref.m)).toBeLessThanOrEqual(1e-6);
      expect(relErr(st.expAvgSq, ref.v)).toBeLessThanOrEqual(1e-6);
    }
    // The parameters really moved (a no-op optimizer cannot pass).
    expect(relErr(p.data.toFloat32Array(), adamwRefInit(param([37, 53], 11).data.toFloat32Array()).p)).toBeGreaterThan(1e-2);
  });

  test('LoRA+ gives lora_B lr·ratio and lora_A lr', () => {
    const a = param([4, 16], 21, 'lora_A');
    const b = param([16, 4], 22, 'lora_B');
    const opt = new AdamW([a, b], { lr: 2e-3, loraPlusLrRatio: 16, weightDecay: 0 });
    expect(opt.paramGroups.map((g) => g.lr)).toEqual([2e-3, 32e-3]);
    const refA = adamwRefInit(a.data.toFloat32Array());
    const refB = adamwRefInit(b.data.toFloat32Array());
    for (let s = 1; s <= 5; s++) {
      const ga = randomArray(a.numel, 40 + s);
      const gb = randomArray(b.numel, 60 + s);
      setGrad(a, ga);
      setGrad(b, gb);
      opt.step();
      adamwRefStep(refA, ga, { lr: 2e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 });
      adamwRefStep(refB, gb, { lr: 32e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 });
    }
    expect(relErr(a.data.toFloat32Array(), refA.p)).toBeLessThanOrEqual(1e-6);
    expect(relErr(b.data.toFloat32Array(), refB.p)).toBeLessThanOrEqual(1e-6);
  });

  test('bf16 parameters keep an f32 master copy: tiny updates are not lost to rounding', () => {
    const p = param([8, 64], 31, 'lora_A', 'bf16');
    const h = { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 };
    const ref = adamwRefInit(p.data.toFloat32Array());
    const start = p.data.toFloat32Array();
    const opt = new AdamW([p], { lr: h.lr, weightDecay: 0 });
    const g = new Float32Array(p.numel).fill(1); // every step moves each value by ~lr
    for (let s = 0; s < 40; s++) {
      setGrad(p, g);
      opt.step();
      adamwRefStep(ref, g, h);
    }
    const now = p.data.toFloat32Array();
    // Each step alone is below bf16's resolution for |p| > 2^-6, yet the total (4e-3) shows.
    let moved = 0;
    for (let i = 0; i < now.length; i++) {
      const ulp = 2 ** (Math.floor(Math.log2(Math.abs(ref.p[i]) || 1e-30)) - 7);
      expect(Math.abs(now[i] - ref.p[i])).toBeLessThanOrEqual(ulp / 2 + 1e-9);
      if (now[i] !== start[i]) moved++;
    }
    expect(moved).toBeGreaterThan(now.length / 2);
    const st = opt.stateOf(p)!;
    expect(relErr(st.expAvg, ref.m)).toBeLessThanOrEqual(1e-6);
  });

  test('skips parameters without a gradient and rejects bad options with typed errors', () => {
    const p = param([3, 3], 5);
    const before = p.data.toFloat32Array();
    const opt = new AdamW([p]);
    opt.step();
    expect(p.data.toFloat32Array()).toEqual(before);
    expect(() => new AdamW([p], { betas: [0.9, 1] })).toThrow(/opts.betas\[1\]/);
    expect(() => new AdamW([p], { lr: -1 })).toThrow(expect.objectContaining({ name: 'LoraRangeError' }));
    expect(() => new AdamW([], {})).toThrow(/params/);
    expect(() => new AdamW([p, p])).toThrow(/more than once/);
    expect(() => new AdamW([p], { lr: 1e-3, betas: [0.9, 0.99], foo: 1 } as never)).toThrow(/unknown option 'foo'/);
    opt.dispose();
    expect(() => opt.step()).toThrow(/disposed/);
  });
});

describe('SGD', () => {
  const variants = [
    { name: 'plain', momentum: 0, dampening: 0, nesterov: false, weightDecay: 0 },
    { name: 'momentum + dampening + weight decay', momentum: 0.9, dampening: 0.1, nesterov: false, weightDecay: 0.01 },
    { name: 'nesterov', momentum: 0.8, dampening: 0, nesterov: true, weightDecay: 0.001 },
  ];
  test.each(variants)('$name matches a float64 reference over 20 steps (rel err <= 1e-6)', (v) => {
    const p = param([29, 31], 3);
    const h = { lr: 0.05, ...v };
    const ref = { p: Float64Array.from(p.data.toFloat32Array()), buf: null as Float64Array | null };
    const opt = new SGD([p], { lr: h.lr, momentum: v.momentum, dampening: v.dampening, nesterov: v.nesterov, weightDecay: v.weightDecay });
    for (let s = 1; s <= 20; s++) {
      const g = randomArray(p.numel, 500 + s);
      setGrad(p, g);
      opt.step();
      sgdRefStep(ref, g, h);
      expect(relErr(p.data.toFloat32Array(), ref.p)).toBeLessThanOrEqual(1e-6);
    }
  });

  test('requires lr and checks nesterov', () => {
    const p = param([2, 2], 1);
    expect(() => new SGD([p], {} as never)).toThrow(/opts.lr: required/);
    expect(() => new SGD([p], { lr: 0.1, nesterov: true })).toThrow(/Nesterov/);
  });
});

describe('gradients: accumulation, zeroGrad, clipping', () => {
  function makeLayer(): LoraLinear {
    const W = Tensor.from(randomArray(24 * 16, 9, 0.2), [24, 16]);
    const layer = new LoraLinear({ weight: W });
    layer.addAdapter('default', { r: 4, initLoraWeights: false, seed: 3 });
    return layer;
  }

  test('parameters() are the adapter tensors; backward accumulates into their grads; zeroGrad clears', () => {
    const layer = makeLayer();
    const params = layer.parameters();
    expect(params.map((p) => p.name)).toEqual(['lora_A.default.weight', 'lora_B.default.weight']);
    expect(params[0].data).toBe(layer.loraA.get('default'));
    expect(layer.parameters()[0]).toBe(params[0]);
    expect(countParameters(params)).toBe(4 * 16 + 24 * 4);
    const x = Tensor.from(randomArray(5 * 16, 4), [5, 16]);
    const dy = Tensor.from(randomArray(5 * 24, 5), [5, 24]);
    layer.forward(x);
    const once = layer.backward(dy).grads.get('default')!;
    const gA = once.loraA.toFloat32Array();
    expect(relErr(params[0].grad!.toFloat32Array(), gA)).toBe(0);
    layer.forward(x);
    layer.backward(dy);
    expect(relErr(params[0].grad!.toFloat32Array(), gA.map((v) => 2 * v))).toBeLessThan(1e-7);
    const opt = new AdamW(params);
    opt.zeroGrad();
    expect(params[0].grad).toBeNull();
    expect(params[1].grad).toBeNull();
  });

  test('frozen (inferenceMode) and inactive adapters are not trainable', () => {
    const layer = makeLayer();
    layer.addAdapter('frozen', { r: 2, inferenceMode: true });
    layer.setAdapter(['default', 'frozen']);
    expect(layer.parameters().map((p) => p.adapter)).toEqual(['default', 'default']);
    layer.setAdapter('frozen');
    expect(layer.parameters()).toEqual([]);
  });

  test('clipGradNorm scales to the max norm and returns the norm before', () => {
    const p = param([10, 10], 7);
    const g = randomArray(100, 8);
    setGrad(p, g);
    const norm = Math.sqrt(g.reduce((s, v) => s + v * v, 0));
    expect(clipGradNorm([p], 0.5)).toBeCloseTo(norm, 4);
    const after = p.grad!.toFloat32Array();
    expect(Math.sqrt(after.reduce((s, v) => s + v * v, 0))).toBeCloseTo(0.5, 4);
  });
});

describe('bad input is a typed error, never a crash', () => {
  test('native optimizer bindings re-check everything', () => {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { call } = require('../lib/native') as typeof import('../lib/native');
    const p = Tensor.zeros([4, 4]);
    const g = Tensor.zeros([4, 4]);
    const m = Tensor.zeros([4, 4]);
    const v = Tensor.zeros([4, 4]);
    const ok = () => call((b) => b.adamwStep(p.handle, g.handle, m.handle, v.handle, null, 1e-3, 0.9, 0.999, 1e-8, 0, 1));
    expect(ok).not.toThrow();
    const bad: Array<[() => unknown, RegExp]> = [
      [() => call((b) => b.adamwStep(p.handle, Tensor.zeros([4, 5]).handle, m.handle, v.handle, null, 1e-3, 0.9, 0.999, 1e-8, 0, 1)), /grad: expected shape \[4, 4\]/],
      [() => call((b) => b.adamwStep(p.handle, g.handle, Tensor.zeros([16], { dtype: 'bf16' }).handle, v.handle, null, 1e-3, 0.9, 0.999, 1e-8, 0, 1)), /expAvg: optimizer state must be f32/],
      [() => call((b) => b.adamwStep(p.handle, g.handle, m.handle, m.handle, null, 1e-3, 0.9, 0.999, 1e-8, 0, 1)), /distinct/],
      [() => call((b) => b.adamwStep(p.handle, g.handle, m.handle, v.handle, null, 1e-3, 1.5, 0.999, 1e-8, 0, 1)), /beta1/],
      [() => call((b) => b.adamwStep(p.handle, g.handle, m.handle, v.handle, null, 1e-3, 0.9, 0.999, 1e-8, 0, 0)), /step: expected an integer >= 1/],
      [() => call((b) => b.adamwStep(p.handle, p.handle, m.handle, v.handle, null, 1e-3, 0.9, 0.999, 1e-8, 0, 1)), /grad: must not be the parameter/],
      [() => call((b) => b.adamwStep({} as never, g.handle, m.handle, v.handle, null, 1e-3, 0.9, 0.999, 1e-8, 0, 1)), /param: expected a lorakit Tensor/],
      [() => call((b) => b.sgdStep(p.handle, g.handle, null, null, 0.1, 0.9, 0, false, 0, true)), /momentumBuffer: required/],
      [() => call((b) => b.sgdStep(p.handle, g.handle, m.handle, null, 0.1, 0.9, 0.5, true, 0, true)), /nesterov/],
      [() => call((b) => b.sgdStep(p.handle, g.handle, m.handle, null, NaN, 0.9, 0, false, 0, true)), /lr: expected a finite number/],
      [() => call((b) => b.accumulate(Tensor.zeros([4, 4], { dtype: 'bf16' }).handle, g.handle, 1)), /dst: expected an f32 tensor/],
      [() => call((b) => (b.adamwStep as (...a: unknown[]) => void)(p.handle, g.handle)), /expAvg: required/],
    ];
    for (const [fn, msg] of bad) expect(fn).toThrow(msg);
  });

  test('Parameter and optimizer state errors', () => {
    const layer = new LoraLinear({ weight: Tensor.zeros([6, 5]) });
    layer.addAdapter('a', { r: 2 });
    const [pa] = layer.parameters();
    expect(() => pa.accumulateGrad(Tensor.zeros([5, 2]))).toThrow(expect.objectContaining({ name: 'ShapeError' }));
    expect(() => pa.accumulateGrad(Tensor.zeros([2, 5], { dtype: 'i32' }))).toThrow(expect.objectContaining({ name: 'DTypeError' }));
    const opt = new AdamW(layer.parameters());
    pa.accumulateGrad(Tensor.zeros([2, 5]));
    layer.addAdapter('b', { r: 2 });
    layer.deleteAdapter('a');
    expect(pa.grad).toBeNull(); // freed with the adapter
    pa.zeroGrad();
    expect(() => pa.accumulateGrad(Tensor.zeros([2, 5]))).toThrow(/disposed/);
    expect(() => opt.step()).not.toThrow(); // nothing has a gradient
  });
});
