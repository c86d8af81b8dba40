// pissa/olora on cuda layers: the factors and the rewritten W equal the cpu layer's bit for bit
// (both run the same float64 host computation), and the layer's output is unchanged at init.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { lk, relErr, randomArray } = require('./helpers');
const { LoraLinear, Tensor } = lk;

const same = (a, b) => a.length === b.length && a.every((v, i) => Object.is(v, b[i]));

for (const kind of ['pissa', 'olora']) {
  for (const [dtype, fifo] of [['f32', false], ['f32', true], ['bf16', false]]) {
    test(`${kind} ${dtype}${fifo ? ' fanInFanOut' : ''} on cuda: same factors and W as the cpu, output unchanged`, () => {
      const inF = 48, outF = 36, r = 6, n = 5;
      const w = randomArray(inF * outF, 91, 0.3);
      const xs = randomArray(n * inF, 92, 1);
      const shape = fifo ? [inF, outF] : [outF, inF];
      const build = (device) => new LoraLinear({ weight: Tensor.from(w, shape, { dtype, device }), fanInFanOut: fifo });
      const lc = build('cpu');
      const lg = build('cuda');
      const x = Tensor.from(xs, [n, inF], { dtype, device: 'cuda' });
      const before = lg.forward(x).toFloat32Array();
      for (const l of [lc, lg]) l.addAdapter('p', { r, loraAlpha: 12, initLoraWeights: kind, dtype });
      assert.strictEqual(lg.loraA.get('p').device, 'cuda');
      assert.strictEqual(lg.weight.device, 'cuda');
      assert.ok(same(lg.loraA.get('p').toFloat32Array(), lc.loraA.get('p').toFloat32Array()), 'A');
      assert.ok(same(lg.loraB.get('p').toFloat32Array(), lc.loraB.get('p').toFloat32Array()), 'B');
      assert.ok(same(lg.weight.toFloat32Array(), lc.weight.toFloat32Array()), 'W rewritten');
      const after = lg.forward(x).toFloat32Array();
      const e = relErr(after, before);
      assert.ok(e <= (dtype === 'f32' ? 1e-5 : 2e-2), `output changed by ${e}`);
      assert.ok(relErr(lg.weight.toFloat32Array(), w) > 1e-3, 'W was not rewritten');
    });
  }
}
