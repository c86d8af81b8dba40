/** The Linear-kind cases made by peft 0.21: forward, backward, merge and unmerge. */
import { LoraLinear, Tensor } from '../lib';
import { expectClose, loadCase, relErr } from './helpers/golden';

const TOL = 1e-5;
const CASES = ['linear_basic', 'linear_rslora', 'linear_nobias_r1', 'conv1d_fan_in_fan_out'];

describe.each(CASES)('golden %s', (name) => {
  const c = loadCase(name);
  const meta = c.meta as { r: number; lora_alpha: number; use_rslora: boolean; fan_in_fan_out: boolean; scaling: number; bias: boolean };
  const t = (n: string) => Tensor.from(c.f32(n), c.file.entry(n).shape);

  function makeLayer(): LoraLinear {
    const layer = new LoraLinear({ weight: t('W'), bias: meta.bias ? t('bias') : null, fanInFanOut: meta.fan_in_fan_out });
    layer.addAdapter('default', { r: meta.r, loraAlpha: meta.lora_alpha, useRslora: meta.use_rslora });
    layer.loraA.get('default')!.copyFrom(c.f32('A'));
    layer.loraB.get('default')!.copyFrom(c.f32('B'));
    return layer;
  }

  test('scaling matches peft', () => {
    expect(makeLayer().scaling.get('default')).toBeCloseTo(meta.scaling, 12);
  });

  test('forward y and backward dx, dA, dB', () => {
    const layer = makeLayer();
    const y = layer.forward(t('x'));
    expectClose(y.toFloat32Array(), c.f32('y'), TOL, 'y');
    const { dx, grads } = layer.backward(t('dy'));
    expectClose(dx.toFloat32Array(), c.f32('dx'), TOL, 'dx');
    const g = grads.get('default')!;
    expectClose(g.loraA.toFloat32Array(), c.f32('dA'), TOL, 'dA');
    expectClose(g.loraB.toFloat32Array(), c.f32('dB'), TOL, 'dB');
    expect(g.loraA.shape).toEqual(c.file.entry('A').shape);
    expect(g.loraB.shape).toEqual(c.file.entry('B').shape);
  });

  test('merge gives W_merged and y_merged; unmerge restores W', () => {
    const layer = makeLayer();
    const W0 = c.f32('W');
    layer.merge();
    expect(layer.merged).toBe(true);
    expect(layer.mergedAdapters).toEqual(['default']);
    expectClose(layer.weight.toFloat32Array(), c.f32('W_merged'), TOL, 'W_merged');
    layer.eval();
    expectClose(layer.forward(t('x')).toFloat32Array(), c.f32('y_merged'), TOL, 'y_merged');
    layer.unmerge();
    expect(layer.merged).toBe(false);
    expect(relErr(layer.weight.toFloat32Array(), W0)).toBeLessThan(1e-6);
  });

  test('getDeltaWeight is W_merged − W in the base layout', () => {
    const layer = makeLayer();
    const d = layer.getDeltaWeight('default');
    expect(d.shape).toEqual(c.file.entry('W').shape);
    const W = c.f32('W');
    const Wm = c.f32('W_merged');
    expectClose(d.toFloat32Array(), Wm.map((v, i) => v - W[i]), 1e-4, 'delta');
  });
});

describe('golden linear_bf16 (bf16 storage, f32 compute)', () => {
  const c = loadCase('linear_bf16');
  const meta = c.meta as { r: number; lora_alpha: number };
  const bf = (n: string) => Tensor.from(c.file.uint16(n), c.file.entry(n).shape, { dtype: 'bf16' });

  test('forward and merge land within 1e-2 of the exact results', () => {
    const layer = new LoraLinear({ weight: bf('W'), bias: bf('bias') });
    layer.addAdapter('default', { r: meta.r, loraAlpha: meta.lora_alpha, dtype: 'bf16' });
    layer.loraA.get('default')!.copyFrom(c.file.uint16('A'));
    layer.loraB.get('default')!.copyFrom(c.file.uint16('B'));
    const y = layer.forward(bf('x'));
    expect(y.dtype).toBe('bf16');
    const ey = relErr(y.toFloat32Array(), c.f32('y_exact_f32'));
    expect(ey).toBeLessThan(1e-2);
    expect(ey).toBeLessThan(5e-3); // a single rounding of f32 math: about 3e-3 per the golden README
    layer.merge();
    const em = relErr(layer.weight.toFloat32Array(), c.f32('W_merged_exact_f32'));
    expect(em).toBeLessThan(5e-3);
  });
});
