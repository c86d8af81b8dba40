// lora_bias and a trainable base bias (peft's bias modes) on cuda: forward, backward (d b_B = s·Σ dy,
// d b = Σ dy from the columnSum kernel), merge and unmerge of the bias, against the cpu in f32 and bf16;
// and a weighted adapter's factors on the layer's device. The peft values themselves are checked on the
// cpu by test/peft_cases.test.ts.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { lk, relErr, randomArray, DEVICE, PARITY } = require('./helpers');
const { LoraLinear, Tensor } = lk;

for (const dtype of ['f32', 'bf16']) {
  test(`lora_bias and a trainable bias, ${dtype}: ${DEVICE} matches the cpu (forward, backward, merge, unmerge)`, PARITY, () => {
    const tol = dtype === 'f32' ? 1e-5 : 1e-2;
    const [n, inF, outF, r] = [40, 64, 48, 4];
    const build = (device) => {
      const layer = new LoraLinear({
        weight: Tensor.from(randomArray(outF * inF, 1, 0.2), [outF, inF], { dtype, device }),
        bias: Tensor.from(randomArray(outF, 2), [outF], { dtype, device }),
      });
      layer.addAdapter('a', { r, loraAlpha: 8, loraBias: true, initLoraWeights: false, seed: 5, dtype });
      layer.trainableBias = true;
      layer.parameters(); // hand the Parameters out, as an optimizer would
      return layer;
    };
    const lc = build('cpu');
    const lg = build(DEVICE);
    const x = randomArray(n * inF, 3);
    const dy = randomArray(n * outF, 4);
    const on = (device, a, shape) => Tensor.from(a, shape, { dtype, device });
    assert.ok(relErr(lg.forward(on(DEVICE, x, [n, inF])).toFloat32Array(), lc.forward(on('cpu', x, [n, inF])).toFloat32Array()) <= tol, 'y');
    const gc = lc.backward(on('cpu', dy, [n, outF]));
    const gg = lg.backward(on(DEVICE, dy, [n, outF]));
    assert.strictEqual(gg.bias.device, DEVICE);
    assert.ok(relErr(gg.bias.toFloat32Array(), gc.bias.toFloat32Array()) <= 1e-5, 'd bias');
    assert.ok(relErr(gg.grads.get('a').loraBBias.toFloat32Array(), gc.grads.get('a').loraBBias.toFloat32Array()) <= 1e-5, 'd b_B');
    assert.ok(relErr(lg.biasParameter().grad.toFloat32Array(), gc.bias.toFloat32Array()) <= 1e-5, 'bias Parameter grad');
    const b0 = lg.bias.toFloat32Array().slice();
    lc.merge();
    lg.merge();
    assert.ok(relErr(lg.bias.toFloat32Array(), lc.bias.toFloat32Array()) <= tol, 'merged bias');
    lg.unmerge();
    assert.ok(relErr(lg.bias.toFloat32Array(), b0) <= tol, 'unmerged bias');
  });
}
