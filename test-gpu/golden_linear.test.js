// The Linear conformance cases of ../shared/golden (made by peft 0.21) on device 'cuda':
// f32 within 1e-5, linear_bf16 within 1e-2 (and 5e-3: one rounding of f32 math).
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { lk, loadCase, relErr, expectClose, tileRows, DEVICE, PARITY } = require('./helpers');
const { LoraLinear, Tensor } = lk;

const TOL = 1e-5;
const CASES = ['linear_basic', 'linear_rslora', 'linear_nobias_r1', 'conv1d_fan_in_fan_out'];

test('cuda is compiled in and usable', { skip: DEVICE !== 'cuda' && 'the cpu run' }, () => {
  const info = lk.backendInfo();
  assert.ok(info.compiled.includes('cuda'), JSON.stringify(info));
  assert.ok(info.usable.includes('cuda'), JSON.stringify(info));
});

for (const name of CASES) {
  const c = loadCase(name);
  const m = c.meta;
  const t = (n) => Tensor.from(c.f32(n), c.shape(n), { device: DEVICE });
  const makeLayer = () => {
    const layer = new LoraLinear({ weight: t('W'), bias: m.bias ? t('bias') : null, fanInFanOut: m.fan_in_fan_out });
    layer.addAdapter('default', { r: m.r, loraAlpha: m.lora_alpha, useRslora: m.use_rslora });
    layer.loraA.get('default').copyFrom(c.f32('A'));
    layer.loraB.get('default').copyFrom(c.f32('B'));
    return layer;
  };

  test(`golden ${name}: forward (decode and GEMM paths), backward`, () => {
    const layer = makeLayer();
    assert.strictEqual(layer.loraA.get('default').device, DEVICE);
    const y = layer.forward(t('x'));
    assert.strictEqual(y.device, DEVICE);
    expectClose(y.toFloat32Array(), c.f32('y'), TOL, 'y');
    const { dx, grads } = layer.backward(t('dy'));
    expectClose(dx.toFloat32Array(), c.f32('dx'), TOL, 'dx');
    expectClose(grads.get('default').loraA.toFloat32Array(), c.f32('dA'), TOL, 'dA');
    expectClose(grads.get('default').loraB.toFloat32Array(), c.f32('dB'), TOL, 'dB');
    // Rows repeated 4x take the cuBLASLt path (n > 8) where the golden n takes the decode kernel.
    const [n, d] = c.shape('x');
    const x4 = Tensor.from(tileRows(c.f32('x'), 4), [4 * n, d], { device: DEVICE });
    const dy4 = Tensor.from(tileRows(c.f32('dy'), 4), [4 * n, c.shape('dy')[1]], { device: DEVICE });
    expectClose(layer.forward(x4).toFloat32Array(), tileRows(c.f32('y'), 4), TOL, 'y (n x4)');
    const g4 = layer.backward(dy4);
    expectClose(g4.dx.toFloat32Array(), tileRows(c.f32('dx'), 4), TOL, 'dx (n x4)');
    expectClose(g4.grads.get('default').loraA.toFloat32Array(), c.f32('dA').map((v) => 4 * v), TOL, 'dA (n x4)');
    expectClose(g4.grads.get('default').loraB.toFloat32Array(), c.f32('dB').map((v) => 4 * v), TOL, 'dB (n x4)');
  });

  test(`golden ${name}: merge, forward after merge, unmerge`, () => {
    const layer = makeLayer();
    layer.merge();
    expectClose(layer.weight.toFloat32Array(), c.f32('W_merged'), TOL, 'W_merged');
    layer.eval();
    expectClose(layer.forward(t('x')).toFloat32Array(), c.f32('y_merged'), TOL, 'y_merged');
    layer.unmerge();
    assert.ok(relErr(layer.weight.toFloat32Array(), c.f32('W')) < 1e-6);
    const d = layer.getDeltaWeight('default');
    assert.strictEqual(d.device, DEVICE);
    const W = c.f32('W');
    expectClose(d.toFloat32Array(), c.f32('W_merged').map((v, i) => v - W[i]), 1e-4, 'delta');
  });
}

test(`golden multi_adapter on ${DEVICE}: one, the other, both active; merge both`, () => {
  const c = loadCase('multi_adapter');
  const t = (n) => Tensor.from(c.f32(n), c.shape(n), { device: DEVICE });
  const layer = new LoraLinear({ weight: t('W'), bias: t('bias') });
  for (const [name, a] of Object.entries(c.meta.adapters)) {
    layer.addAdapter(name, { r: a.r, loraAlpha: a.lora_alpha });
    layer.loraA.get(name).copyFrom(c.f32(`A.${name}`));
    layer.loraB.get(name).copyFrom(c.f32(`B.${name}`));
  }
  const x = t('x');
  for (const [names, key] of [[['first'], 'y.first'], [['second'], 'y.second'], [['first', 'second'], 'y.both']]) {
    layer.setAdapter(names);
    expectClose(layer.forward(x).toFloat32Array(), c.f32(key), TOL, key);
    const [n, d] = c.shape('x');
    const x4 = Tensor.from(tileRows(c.f32('x'), 4), [4 * n, d], { device: DEVICE });
    expectClose(layer.forward(x4).toFloat32Array(), tileRows(c.f32(key), 4), TOL, `${key} (n x4)`);
  }
  layer.enableAdapters(false);
  expectClose(layer.forward(x).toFloat32Array(), c.f32('y.disabled'), TOL, 'y.disabled');
  layer.enableAdapters(true);
  layer.setAdapter(['first', 'second']);
  layer.merge();
  expectClose(layer.weight.toFloat32Array(), c.f32('W_merged.both'), TOL, 'W_merged.both');
});

test(`golden multi_adapter on ${DEVICE}: addWeightedAdapter (cat, svd, linear) makes its factors on the layer's device`, () => {
  const c = loadCase('multi_adapter');
  const t = (n) => Tensor.from(c.f32(n), c.shape(n), { device: DEVICE });
  const layer = new LoraLinear({ weight: t('W'), bias: t('bias') });
  for (const [name, a] of Object.entries(c.meta.adapters)) {
    layer.addAdapter(name, { r: a.r, loraAlpha: a.lora_alpha });
    layer.loraA.get(name).copyFrom(c.f32(`A.${name}`));
    layer.loraB.get(name).copyFrom(c.f32(`B.${name}`));
  }
  layer.eval();
  const x = t('x');
  for (const [name, kind, sources, opts] of [
    ['w_cat', 'cat', ['first', 'second'], {}],
    ['w_svd', 'svd', ['first', 'second'], { svdRank: c.meta.svd_rank }],
    ['w_linear', 'linear', c.meta.linear_combines, {}],
  ]) {
    layer.addWeightedAdapter(sources, c.meta.weights, name, { combinationType: kind, ...opts });
    assert.strictEqual(layer.loraA.get(name).device, DEVICE);
    assert.strictEqual(layer.loraB.get(name).device, DEVICE);
    layer.setAdapter(name);
    const y = layer.forward(x); // threw "expected a cuda tensor" when the factors were made on the cpu
    assert.strictEqual(y.device, DEVICE);
    expectClose(y.toFloat32Array(), c.f32(`y.${name}`), kind === 'svd' ? 1e-4 : TOL, `y.${name}`);
  }
});

test(`golden linear_bf16 on ${DEVICE}: forward (both paths) and merge within 1e-2 (and 5e-3)`, () => {
  const c = loadCase('linear_bf16');
  const bf = (n) => Tensor.from(c.file.uint16(n), c.shape(n), { dtype: 'bf16', device: DEVICE });
  const layer = new LoraLinear({ weight: bf('W'), bias: bf('bias') });
  layer.addAdapter('default', { r: c.meta.r, loraAlpha: c.meta.lora_alpha, dtype: 'bf16' });
  layer.loraA.get('default').copyFrom(c.file.uint16('A'));
  layer.loraB.get('default').copyFrom(c.file.uint16('B'));
  const y = layer.forward(bf('x'));
  assert.strictEqual(y.dtype, 'bf16');
  const ey = relErr(y.toFloat32Array(), c.f32('y_exact_f32'));
  assert.ok(ey < 5e-3, `y: ${ey}`);
  // The first 8 rows through the decode kernel.
  const [, d] = c.shape('x');
  const x8 = Tensor.from(c.file.uint16('x').subarray(0, 8 * d), [8, d], { dtype: 'bf16', device: DEVICE });
  const e8 = relErr(layer.forward(x8).toFloat32Array(), c.f32('y_exact_f32').subarray(0, 8 * c.shape('y')[1]));
  assert.ok(e8 < 5e-3, `y (decode): ${e8}`);
  layer.merge();
  const em = relErr(layer.weight.toFloat32Array(), c.f32('W_merged_exact_f32'));
  assert.ok(em < 5e-3, `W_merged: ${em}`);
});
