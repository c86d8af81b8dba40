// LoraEmbedding on cuda: peft's golden embedding case within 1e-5 in f32 (forward from every index
// form, backward dA and dB, merge, unmerge), and cpu parity in bf16 and f32 on random data with
// repeated indices, a padding index, 2-D indices, a mixed-adapter batch and two adapters; the
// backward is bitwise repeatable (dA sums each index's positions in order, no atomics).
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { lk, loadCase, expectClose, relErr, randomArray, DEVICE, PARITY } = require('./helpers');
const { LoraEmbedding, Tensor } = lk;

const TOL = 1e-5;

test(`golden embedding on ${DEVICE} (f32): y from each index form, dA, dB, merge, unmerge`, () => {
  const c = loadCase('embedding');
  const t = (n) => Tensor.from(c.f32(n), c.shape(n), { device: DEVICE });
  const make = () => {
    const layer = new LoraEmbedding({ weight: t('W') });
    layer.addAdapter('default', { r: c.meta.r, loraAlpha: c.meta.lora_alpha });
    assert.strictEqual(layer.loraA.get('default').device, DEVICE);
    layer.loraA.get('default').copyFrom(c.f32('A'));
    layer.loraB.get('default').copyFrom(c.f32('B'));
    return layer;
  };
  const idx64 = c.file.int64('indices');
  const idx32 = Int32Array.from(idx64, Number);
  for (const indices of [idx64, idx32, Tensor.from(idx64, [idx64.length]), Tensor.from(idx32, [idx32.length], { device: DEVICE })]) {
    const layer = make();
    const y = layer.forward(indices);
    assert.strictEqual(y.device, DEVICE);
    expectClose(y.toFloat32Array(), c.f32('y'), TOL, 'y');
    const { grads } = layer.backward(t('dy'));
    expectClose(grads.get('default').loraA.toFloat32Array(), c.f32('dA'), TOL, 'dA');
    expectClose(grads.get('default').loraB.toFloat32Array(), c.f32('dB'), TOL, 'dB');
  }
  const layer = make();
  layer.merge();
  expectClose(layer.weight.toFloat32Array(), c.f32('W_merged'), TOL, 'W_merged');
  layer.eval();
  expectClose(layer.forward(idx64).toFloat32Array(), c.f32('y'), TOL, 'y merged');
  layer.unmerge();
  assert.ok(relErr(layer.weight.toFloat32Array(), c.f32('W')) < 1e-6, 'unmerge');
});

for (const [dtype, tol] of [['f32', 1e-5], ['bf16', 1e-2]]) {
  test(`embedding ${dtype}: cuda matches the cpu (repeats, padding index, 2-D indices, mixed batch), repeatable backward`, PARITY, () => {
    const num = 300, dim = 264, r = 8;
    let seed = 900;
    const pair = (shape, scale) => {
      const data = randomArray(shape.reduce((a, b) => a * b, 1), seed++, scale);
      return { cpu: Tensor.from(data, shape, { dtype }), cuda: Tensor.from(data, shape, { dtype, device: DEVICE }) };
    };
    const W = pair([num, dim], 1);
    const build = (dev) => {
      const l = new LoraEmbedding({ weight: W[dev], paddingIdx: 7 });
      l.addAdapter('a', { r, loraAlpha: 16, dtype, initLoraWeights: false, seed: 5 });
      l.addAdapter('b', { r: r + 3, loraAlpha: 4, dtype, initLoraWeights: false, seed: 6 });
      l.setAdapter(['a', 'b']);
      return l;
    };
    const lc = build('cpu');
    const lg = build(DEVICE);
    // 2-D indices [6, 50] with many repeats and the padding index
    const idx = Int32Array.from({ length: 300 }, (_, i) => (i % 11 === 0 ? 7 : (i * 37) % 41));
    const ic = Tensor.from(idx, [6, 50]);
    const yc = lc.forward(ic).toFloat32Array();
    const yg = lg.forward(ic);
    assert.deepStrictEqual(yg.shape, [6, 50, dim]);
    assert.ok(relErr(yg.toFloat32Array(), yc) <= tol, 'y');
    const dy = pair([6, 50, dim], 1);
    const gc = lc.backward(dy.cpu).grads;
    const g1 = lg.backward(dy.cuda).grads;
    for (const name of ['a', 'b']) {
      for (const k of ['loraA', 'loraB']) {
        const e = relErr(g1.get(name)[k].toFloat32Array(), gc.get(name)[k].toFloat32Array());
        assert.ok(e <= tol, `${name}.${k}: ${e}`);
      }
      const dA = g1.get(name).loraA.toFloat32Array();
      for (let k = 0; k < (name === 'a' ? r : r + 3); k++) assert.strictEqual(dA[k * num + 7], 0, 'padding index gets no gradient');
    }
    lg.forward(ic);
    const g2 = lg.backward(dy.cuda).grads;
    for (const name of ['a', 'b'])
      assert.ok(g2.get(name).loraA.toFloat32Array().every((v, i) => Object.is(v, g1.get(name).loraA.toFloat32Array()[i])), 'dA repeatable');
    // mixed batch: one adapter name per row of the 2-D indices
    lc.eval();
    lg.eval();
    const names = ['a', '__base__', 'b', 'a', 'b', '__base__'];
    const mc = lc.forward(ic, { adapterNames: names }).toFloat32Array();
    const mg = lg.forward(ic, { adapterNames: names }).toFloat32Array();
    assert.ok(relErr(mg, mc) <= tol, 'mixed batch');
    lc.merge();
    lg.merge();
    assert.ok(relErr(lg.weight.toFloat32Array(), lc.weight.toFloat32Array()) <= (dtype === 'f32' ? 1e-6 : tol / 2), 'merged W');
  });
}
