// LoraLinear over a quantized base on cuda (the TypeScript side: QuantizedTensor, layer, merge,
// model): every format quantizes to the same bytes as the cpu; forward, backward and dropout agree
// with the cpu layer within 1e-5 (f32); merge / unmerge give the bytes back exactly (also after
// switchMerged and with DoRA); a few AdamW steps on an nf4 base lower the loss and leave the bytes
// alone; LoraModel.fromPretrained({ quantize }) and mergeAndUnload({ dtype }) on cuda.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { lk, relErr, randomArray, DEVICE, PARITY } = require('./helpers');
const { LoraLinear, LoraModel, Tensor, AdamW, mseLoss, QUANT_FORMATS } = lk;

const N = 6;
const IN = 512;
const OUT = 40;
const TOL = 1e-5;

function layerOn(device, format, seed, opts = {}) {
  const w = Tensor.from(randomArray(OUT * IN, seed, 0.5), [OUT, IN], { device });
  const q = Tensor.quantize(w, format, opts.doubleQuant ? { doubleQuant: true } : {});
  const bias = Tensor.from(randomArray(OUT, seed + 1, 0.1), [OUT], { device });
  const layer = new LoraLinear({ weight: q, bias });
  for (const [i, name] of ['a', 'b'].entries())
    layer.addAdapter(name, { r: 4, loraAlpha: 8, initLoraWeights: false, seed: seed * 10 + i, loraDropout: opts.dropout ?? 0, useDora: opts.useDora ?? false });
  layer.setAdapter(opts.useDora ? ['a'] : ['a', 'b']);
  return { layer, q };
}

const same = (a, b) => Buffer.from(a).equals(Buffer.from(b));

for (const format of QUANT_FORMATS) {
  test(`${format}: cuda bytes = cpu bytes; forward and backward agree with the cpu (f32)`, PARITY, () => {
    const g = layerOn('cuda', format, 3);
    const c = layerOn('cpu', format, 3);
    assert.ok(same(g.q.bytes(), c.q.bytes()), 'quantized bytes differ between cuda and the cpu');
    const x = randomArray(N * IN, 9);
    const dy = randomArray(N * OUT, 10);
    const yg = g.layer.forward(Tensor.from(x, [N, IN], { device: 'cuda' }));
    const yc = c.layer.forward(Tensor.from(x, [N, IN]));
    assert.strictEqual(yg.device, 'cuda');
    assert.ok(relErr(yg.toFloat32Array(), yc.toFloat32Array()) < TOL, 'y');
    const bg = g.layer.backward(Tensor.from(dy, [N, OUT], { device: 'cuda' }));
    const bc = c.layer.backward(Tensor.from(dy, [N, OUT]));
    assert.ok(relErr(bg.dx.toFloat32Array(), bc.dx.toFloat32Array()) < TOL, 'dx');
    for (const n of ['a', 'b']) {
      assert.ok(relErr(bg.grads.get(n).loraA.toFloat32Array(), bc.grads.get(n).loraA.toFloat32Array()) < TOL, `dA ${n}`);
      assert.ok(relErr(bg.grads.get(n).loraB.toFloat32Array(), bc.grads.get(n).loraB.toFloat32Array()) < TOL, `dB ${n}`);
    }
  });

  test(`${format} on ${DEVICE}: merge / switchMerged / unmerge give the quantized bytes back exactly`, () => {
    const { layer, q } = layerOn(DEVICE, format, 5, { doubleQuant: format === 'nf4' });
    const b0 = q.bytes();
    layer.merge({ adapterNames: ['a'] });
    assert.ok(layer.mergeSideInfoBytes > 0);
    assert.ok(!same(q.bytes(), b0), 'merge changed nothing');
    layer.switchMerged(['b', 'a']);
    assert.deepStrictEqual(layer.mergedAdapters, ['b', 'a']);
    layer.unmerge();
    assert.ok(same(q.bytes(), b0), 'unmerge did not restore the bytes');
    assert.strictEqual(layer.mergeSideInfoBytes, 0);
    const W = layer.mergeAndUnload({ dtype: 'bf16' });
    assert.strictEqual(W.device, DEVICE);
    assert.strictEqual(W.dtype, 'bf16');
  });
}

test('nf4 with dropout and DoRA: cuda agrees with the cpu', PARITY, () => {
  for (const opts of [{ dropout: 0.2 }, { useDora: true }]) {
    const g = layerOn('cuda', 'nf4', 21, opts);
    const c = layerOn('cpu', 'nf4', 21, opts);
    g.layer.manualSeed(4);
    c.layer.manualSeed(4);
    const x = randomArray(N * IN, 22);
    const yg = g.layer.forward(Tensor.from(x, [N, IN], { device: 'cuda' })).toFloat32Array();
    const yc = c.layer.forward(Tensor.from(x, [N, IN])).toFloat32Array();
    assert.ok(relErr(yg, yc) < TOL, `y ${JSON.stringify(opts)}`);
    const dy = randomArray(N * OUT, 23);
    const dg = g.layer.backward(Tensor.from(dy, [N, OUT], { device: 'cuda' })).dx.toFloat32Array();
    const dc = c.layer.backward(Tensor.from(dy, [N, OUT])).dx.toFloat32Array();
    assert.ok(relErr(dg, dc) < TOL, `dx ${JSON.stringify(opts)}`);
  }
});

test(`QLoRA on ${DEVICE}: AdamW steps on an nf4 base lower the loss and leave the bytes alone`, async () => {
  const { layer, q } = layerOn(DEVICE, 'nf4', 31, { dropout: 0.1 });
  const b0 = q.bytes();
  const x = Tensor.from(randomArray(32 * IN, 32), [32, IN], { device: DEVICE });
  const target = Tensor.from(randomArray(32 * OUT, 33), [32, OUT], { device: DEVICE });
  const opt = new AdamW(layer.parameters(), { lr: 1e-2, weightDecay: 0 });
  const losses = [];
  for (let s = 0; s < 10; s++) {
    const y = await layer.forwardAsync(x);
    const { loss, grad } = mseLoss(y, target);
    losses.push(loss);
    opt.zeroGrad();
    await layer.backwardAsync(grad);
    opt.step();
  }
  assert.ok(losses[9] < losses[0] * 0.9, `losses ${losses.map((l) => l.toExponential(2)).join(' ')}`);
  assert.ok(same(q.bytes(), b0));
});

test(`LoraModel on ${DEVICE}: fromPretrained({ quantize: nf4 }) matches the dequantised float model; mergeAndUnload gives floats`, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-gpu-qmodel-'));
  const mods = () => [
    { name: 'q_proj', kind: 'linear', weight: Tensor.from(randomArray(64 * 128, 1, 0.3), [64, 128], { device: DEVICE }) },
    { name: 'up', kind: 'linear', weight: Tensor.from(randomArray(128 * 128, 2, 0.3), [128, 128], { device: DEVICE }) },
  ];
  const m0 = new LoraModel(mods(), { targetModules: ['q_proj'], r: 4, loraAlpha: 8, initLoraWeights: false, seed: 3 });
  m0.savePretrained(dir);
  m0.dispose();
  const model = LoraModel.fromPretrained(mods(), dir, { quantize: { format: 'nf4' } });
  const q = model.stateDict().get('q_proj.weight');
  const float = LoraModel.fromPretrained([{ name: 'q_proj', kind: 'linear', weight: q.dequantize() }], dir);
  const x = Tensor.from(randomArray(4 * 128, 4), [4, 128], { device: DEVICE });
  const y = model.layers.get('q_proj').eval().forward(x).toFloat32Array();
  const yf = float.layers.get('q_proj').eval().forward(x).toFloat32Array();
  assert.ok(relErr(y, yf) < TOL);
  const out = model.mergeAndUnload({ dtype: 'f32' });
  assert.strictEqual(out.get('up.weight').device, DEVICE);
  assert.deepStrictEqual(out.get('up.weight').shape, [128, 128]);
  float.dispose();
  fs.rmSync(dir, { recursive: true, force: true });
});
