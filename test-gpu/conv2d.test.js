// LoraConv2d on cuda: peft's golden conv2d_k3 and conv2d_k1 cases within 1e-5 in f32 (y, dx, dA, dB,
// merge, unmerge) and within 1e-2 in bf16; cpu parity on random data with stride, padding, groups,
// a dilated base without adapters, dropout (the same masks as the cpu) and a mixed batch (one
// adapter per image); the backward is bitwise repeatable.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { lk, loadCase, expectClose, relErr, randomArray, DEVICE, PARITY } = require('./helpers');
const { LoraConv2d, Tensor } = lk;

const TOL = 1e-5;

for (const name of ['conv2d_k3', 'conv2d_k1']) {
  test(`golden ${name} on ${DEVICE}: y, dx, dA, dB, merge, unmerge (f32) and bf16 within 1e-2`, () => {
    const c = loadCase(name);
    const m = c.meta;
    for (const dtype of ['f32', 'bf16']) {
      const t = (n) => Tensor.from(c.f32(n), c.shape(n), { dtype, device: DEVICE });
      const layer = new LoraConv2d({ weight: t('W'), bias: t('bias'), stride: m.stride, padding: m.padding });
      layer.addAdapter('default', { r: m.r, loraAlpha: m.lora_alpha, dtype });
      layer.loraA.get('default').copyFrom(c.f32('A'));
      layer.loraB.get('default').copyFrom(c.f32('B'));
      const tol = dtype === 'f32' ? TOL : 1e-2;
      const y = layer.forward(t('x'));
      assert.strictEqual(y.device, DEVICE);
      assert.deepStrictEqual(y.shape, c.shape('y'));
      expectClose(y.toFloat32Array(), c.f32('y'), tol, `${dtype} y`);
      const { dx, grads } = layer.backward(t('dy'));
      expectClose(dx.toFloat32Array(), c.f32('dx'), tol, `${dtype} dx`);
      expectClose(grads.get('default').loraA.toFloat32Array(), c.f32('dA'), tol, `${dtype} dA`);
      expectClose(grads.get('default').loraB.toFloat32Array(), c.f32('dB'), tol, `${dtype} dB`);
      if (dtype !== 'f32') continue;
      layer.merge();
      expectClose(layer.weight.toFloat32Array(), c.f32('W_merged'), TOL, 'W_merged');
      layer.eval();
      expectClose(layer.forward(t('x')).toFloat32Array(), c.f32('y'), TOL, 'y merged');
      layer.unmerge();
      assert.ok(relErr(layer.weight.toFloat32Array(), c.f32('W')) < 1e-6, 'unmerge');
    }
  });
}

// [N, C, O, H, W, k, stride, padding, dilation, groups, dropout]
const SETUPS = [
  [2, 6, 8, 9, 11, 3, 2, 1, 1, 2, 0],
  [3, 4, 6, 7, 7, 1, 1, 0, 1, 1, 0.3],
  [2, 5, 7, 8, 6, 3, 1, 2, 1, 1, 0],
];

for (const [dtype, tol] of [['f32', 1e-5], ['bf16', 1e-2]]) {
  for (const [N, C, O, H, Wd, k, stride, padding, dilation, groups, p] of SETUPS) {
    test(`conv2d ${dtype} N=${N} C=${C} O=${O} ${H}x${Wd} k=${k} s=${stride} p=${padding} g=${groups} dropout=${p}: cuda matches the cpu`, PARITY, () => {
      let seed = 4000 + N * 100 + C * 10 + k;
      const pair = (shape, scale) => {
        const data = randomArray(shape.reduce((a, b) => a * b, 1), seed++, scale);
        return { cpu: Tensor.from(data, shape, { dtype }), cuda: Tensor.from(data, shape, { dtype, device: DEVICE }) };
      };
      const W = pair([O, C / groups, k, k], 0.3);
      const b = pair([O], 0.5);
      const build = (dev) => {
        const l = new LoraConv2d({ weight: W[dev], bias: b[dev], stride, padding, dilation, groups });
        l.addAdapter('a', { r: 2 * groups, loraAlpha: 4, dtype, initLoraWeights: false, seed: 11, loraDropout: p });
        l.addAdapter('b', { r: 4 * groups, loraAlpha: 3, dtype, initLoraWeights: false, seed: 12 });
        l.setAdapter(['a', 'b']);
        l.manualSeed(99);
        return l;
      };
      const lc = build('cpu');
      const lg = build(DEVICE);
      const x = pair([N, C, H, Wd], 1);
      const yc = lc.forward(x.cpu).toFloat32Array();
      const yg = lg.forward(x.cuda);
      assert.ok(relErr(yg.toFloat32Array(), yc) <= tol, 'y');
      const dy = pair(yg.shape, 1);
      const gc = lc.backward(dy.cpu);
      const gg = lg.backward(dy.cuda);
      assert.ok(relErr(gg.dx.toFloat32Array(), gc.dx.toFloat32Array()) <= tol, 'dx');
      for (const name of ['a', 'b'])
        for (const key of ['loraA', 'loraB']) {
          const e = relErr(gg.grads.get(name)[key].toFloat32Array(), gc.grads.get(name)[key].toFloat32Array());
          assert.ok(e <= tol, `${name}.${key}: ${e}`);
        }
      // repeatable: the same forward and backward again give the same bits
      lg.manualSeed(99);
      lg.forward(x.cuda);
      const g2 = lg.backward(dy.cuda);
      assert.ok(g2.dx.toFloat32Array().every((v, i) => Object.is(v, gg.dx.toFloat32Array()[i])), 'dx repeatable');
      // mixed batch, one adapter per image
      lc.eval();
      lg.eval();
      const names = Array.from({ length: N }, (_, i) => ['a', '__base__', 'b'][i % 3]);
      const e = relErr(lg.forward(x.cuda, { adapterNames: names }).toFloat32Array(), lc.forward(x.cpu, { adapterNames: names }).toFloat32Array());
      assert.ok(e <= tol, `mixed batch: ${e}`);
    });
  }
}

test(`conv2d on ${DEVICE}: a dilated base conv without adapters equals the cpu`, PARITY, () => {
  const data = randomArray(8 * 4 * 3 * 3, 5, 0.3);
  const x = randomArray(2 * 4 * 12 * 12, 6, 1);
  const mk = (device) => new LoraConv2d({ weight: Tensor.from(data, [8, 4, 3, 3], { device }), padding: 2, dilation: 2 });
  const yc = mk('cpu').forward(Tensor.from(x, [2, 4, 12, 12])).toFloat32Array();
  const yg = mk(DEVICE).forward(Tensor.from(x, [2, 4, 12, 12], { device: DEVICE })).toFloat32Array();
  assert.ok(relErr(yg, yc) <= 1e-5);
});
