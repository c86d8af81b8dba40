// DoRA on cuda: peft's golden linear_dora case within 1e-5 in f32 (y, dx, dA, dB, dmagnitude, merge,
// y_merged, unmerge) and within 1e-2 in bf16; the magnitude's peft init (the weight norm) and cpu
// parity on random data with fanInFanOut and with dropout (the same masks as the cpu); the
// backward is bitwise repeatable.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { lk, loadCase, expectClose, relErr, randomArray, DEVICE, PARITY } = require('./helpers');
const { LoraLinear, Tensor } = lk;

const TOL = 1e-5;

test(`golden linear_dora on ${DEVICE}: y, dx, dA, dB, dmagnitude, merge, unmerge (f32) and bf16 within 1e-2`, () => {
  const c = loadCase('linear_dora');
  for (const dtype of ['f32', 'bf16']) {
    const t = (n) => Tensor.from(c.f32(n), c.shape(n), { dtype, device: DEVICE });
    const layer = new LoraLinear({ weight: t('W'), bias: t('bias') });
    layer.addAdapter('default', { r: c.meta.r, loraAlpha: c.meta.lora_alpha, useDora: true, dtype });
    assert.strictEqual(layer.loraMagnitude.get('default').device, DEVICE);
    layer.loraA.get('default').copyFrom(c.f32('A'));
    layer.loraB.get('default').copyFrom(c.f32('B'));
    layer.loraMagnitude.get('default').copyFrom(c.f32('magnitude'));
    const tol = dtype === 'f32' ? TOL : 1e-2;
    expectClose(layer.forward(t('x')).toFloat32Array(), c.f32('y'), tol, `${dtype} y`);
    const { dx, grads } = layer.backward(t('dy'));
    const g = grads.get('default');
    expectClose(dx.toFloat32Array(), c.f32('dx'), tol, `${dtype} dx`);
    expectClose(g.loraA.toFloat32Array(), c.f32('dA'), tol, `${dtype} dA`);
    expectClose(g.loraB.toFloat32Array(), c.f32('dB'), tol, `${dtype} dB`);
    expectClose(g.magnitude.toFloat32Array(), c.f32('dmagnitude'), tol, `${dtype} dmagnitude`);
    if (dtype !== 'f32') continue;
    layer.merge();
    expectClose(layer.weight.toFloat32Array(), c.f32('W_merged'), TOL, 'W_merged');
    layer.eval();
    expectClose(layer.forward(t('x')).toFloat32Array(), c.f32('y_merged'), TOL, 'y_merged');
    layer.unmerge();
    assert.ok(relErr(layer.weight.toFloat32Array(), c.f32('W')) < 1e-6, 'unmerge');
  }
});

for (const [dtype, tol] of [['f32', 1e-5], ['bf16', 1e-2]]) {
  for (const [fifo, p] of [[false, 0], [true, 0], [false, 0.25]]) {
    test(`DoRA ${dtype}${fifo ? ' fanInFanOut' : ''}${p ? ` dropout ${p}` : ''}: cuda matches the cpu, repeatable backward`, PARITY, () => {
      const inF = 72, outF = 40, n = 9, r = 8;
      let seed = 7000 + (fifo ? 10 : 0) + p * 100;
      const pair = (shape, scale) => {
        const data = randomArray(shape.reduce((a, b) => a * b, 1), seed++, scale);
        return { cpu: Tensor.from(data, shape, { dtype }), cuda: Tensor.from(data, shape, { dtype, device: DEVICE }) };
      };
      const W = pair(fifo ? [inF, outF] : [outF, inF], 0.2);
      const b = pair([outF], 0.3);
      const build = (dev) => {
        const l = new LoraLinear({ weight: W[dev], bias: b[dev], fanInFanOut: fifo });
        l.addAdapter('d', { r, loraAlpha: 16, dtype, useDora: true, initLoraWeights: false, seed: 21, loraDropout: p });
        l.manualSeed(5);
        return l;
      };
      const lc = build('cpu');
      const lg = build(DEVICE);
      // peft's init: magnitude = the weight norm, computed on each device
      const ei = relErr(lg.loraMagnitude.get('d').toFloat32Array(), lc.loraMagnitude.get('d').toFloat32Array());
      assert.ok(ei <= tol, `magnitude init: ${ei}`);
      const x = pair([n, inF], 1);
      const dy = pair([n, outF], 1);
      assert.ok(relErr(lg.forward(x.cuda).toFloat32Array(), lc.forward(x.cpu).toFloat32Array()) <= tol, 'y');
      const gc = lc.backward(dy.cpu);
      const gg = lg.backward(dy.cuda);
      assert.ok(relErr(gg.dx.toFloat32Array(), gc.dx.toFloat32Array()) <= tol, 'dx');
      for (const k of ['loraA', 'loraB', 'magnitude']) {
        const e = relErr(gg.grads.get('d')[k].toFloat32Array(), gc.grads.get('d')[k].toFloat32Array());
        assert.ok(e <= tol, `${k}: ${e}`);
      }
      lg.manualSeed(5);
      lg.forward(x.cuda);
      const g2 = lg.backward(dy.cuda);
      assert.ok(g2.dx.toFloat32Array().every((v, i) => Object.is(v, gg.dx.toFloat32Array()[i])), 'dx repeatable');
      lc.merge();
      lg.merge();
      const em = relErr(lg.weight.toFloat32Array(), lc.weight.toFloat32Array());
      assert.ok(em <= (dtype === 'f32' ? 1e-6 : tol / 2), `merged W: ${em}`);
    });
  }
}

// The shapes of the fast paths (cuBLASLt below 64 rows, the sm_90 one-pass kernel or cuBLASLt from
// 64, k in the epilogue or one pass over y), the LoRA backward of k⊙dy, and the cached norm after an
// optimizer step against the cpu and against a fresh layer (no cache).
for (const n of [40, 256]) {
  test(`DoRA bf16 n=${n}: eval and training match the cpu; the cached norm follows an optimizer step`, PARITY, () => {
    const inF = 256, outF = 512, r = 16, tol = 2e-2;
    let seed = 9100 + n;
    const data = (shape, scale) => randomArray(shape.reduce((a, b) => a * b, 1), seed++, scale);
    const Wd = data([outF, inF], 0.05), bd = data([outF], 0.3), xd = data([n, inF], 1), dyd = data([n, outF], 1);
    const build = (dev, W = Wd) => {
      const l = new LoraLinear({ weight: Tensor.from(W, [outF, inF], { dtype: 'bf16', device: dev }), bias: Tensor.from(bd, [outF], { dtype: 'bf16', device: dev }) });
      l.addAdapter('d', { r, loraAlpha: 32, dtype: 'bf16', useDora: true, initLoraWeights: false, seed: 4 });
      return l;
    };
    const lc = build('cpu');
    const lg = build(DEVICE);
    const x = { cpu: Tensor.from(xd, [n, inF], { dtype: 'bf16' }), cuda: Tensor.from(xd, [n, inF], { dtype: 'bf16', device: DEVICE }) };
    const dy = { cpu: Tensor.from(dyd, [n, outF], { dtype: 'bf16' }), cuda: Tensor.from(dyd, [n, outF], { dtype: 'bf16', device: DEVICE }) };
    const close = (a, b, what) => {
      const e = relErr(a.toFloat32Array(), b.toFloat32Array());
      assert.ok(e <= tol, `${what}: ${e}`);
    };
    lc.eval();
    lg.eval();
    close(lg.forward(x.cuda), lc.forward(x.cpu), 'eval y');
    close(lg.forward(x.cuda), lc.forward(x.cpu), 'eval y (cached norm)');
    lc.train();
    lg.train();
    close(lg.forward(x.cuda), lc.forward(x.cpu), 'train y');
    const gc = lc.backward(dy.cpu);
    const gg = lg.backward(dy.cuda);
    close(gg.dx, gc.dx, 'dx');
    for (const k of ['loraA', 'loraB', 'magnitude']) close(gg.grads.get('d')[k], gc.grads.get('d')[k], k);
    const step = (l) => new lk.SGD(l.parameters(), { lr: 0.5 }).step();
    step(lc);
    step(lg);
    lc.eval();
    lg.eval();
    const yg = lg.forward(x.cuda);
    close(yg, lc.forward(x.cpu), 'eval y after the step');
    const fresh = build(DEVICE);
    for (const k of ['loraA', 'loraB', 'loraMagnitude']) fresh[k].get('d').copyFrom(lg[k].get('d'));
    const yf = fresh.eval().forward(x.cuda).toFloat32Array();
    assert.ok(relErr(yg.toFloat32Array(), yf) <= 1e-6, 'cached norm after the step = a fresh layer');
  });
}

// The eval forward with k in the decode kernel's epilogue (n = 8: no pass over y; bf16/f16 on the
// tensor-core decode, f32 on the CUDA-core one) and through cuBLASLt with the pass over y (n = 40),
// against the cpu and the training forward (its pre buffer and a separate pass), with and without a bias.
for (const dtype of ['bf16', 'f16', 'f32'])
  for (const n of [8, 40])
    for (const withBias of [false, true])
      test(`DoRA ${dtype} eval forward, n=${n}${withBias ? ', bias' : ''}: matches the cpu and the training forward`, PARITY, () => {
        const inF = 256, outF = 384, r = 16, tol = dtype === 'f32' ? 1e-5 : 2e-2;
        let seed = 9300;
        const data = (shape, scale) => randomArray(shape.reduce((a, b) => a * b, 1), seed++, scale);
        const Wd = data([outF, inF], 0.05), xd = data([n, inF], 1), bd = data([outF], 0.5);
        const build = (dev) => {
          const bias = withBias ? Tensor.from(bd, [outF], { dtype, device: dev }) : undefined;
          const l = new LoraLinear({ weight: Tensor.from(Wd, [outF, inF], { dtype, device: dev }), bias });
          l.addAdapter('d', { r, loraAlpha: 32, dtype, useDora: true, initLoraWeights: false, seed: 6 });
          // a magnitude away from the norm, so k ≠ 1 shows
          const m = l.loraMagnitude.get('d').toFloat32Array().map((v, i) => v * (0.5 + (i % 7) / 7));
          l.loraMagnitude.get('d').copyFrom(Tensor.from(m, [outF], { dtype, device: dev }));
          return l;
        };
        const lc = build('cpu');
        const lg = build(DEVICE);
        const x = { cpu: Tensor.from(xd, [n, inF], { dtype }), cuda: Tensor.from(xd, [n, inF], { dtype, device: DEVICE }) };
        const yc = lc.eval().forward(x.cpu).toFloat32Array();
        const ye = lg.eval().forward(x.cuda).toFloat32Array();
        const e = relErr(ye, yc);
        assert.ok(e <= tol, `eval y against the cpu: ${e}`);
        const yt = lg.train().forward(x.cuda).toFloat32Array();
        const et = relErr(ye, yt);
        assert.ok(et <= tol, `eval y against the training forward: ${et}`);
      });

// n ≤ 16 with a 16-bit W and a stale norm: the decode kernel computes the norm from its own pass
// over W (M = W·Aᵀ on tensor cores, G from the shrink) and caches it. Against the norm of the separate
// path (a first forward at n = 40, through cuBLASLt): the later n = 40 outputs of the two layers
// must agree to well within what a wrong norm term would move them (each ≥ 1e-2 here).
for (const dtype of ['bf16', 'f16'])
  for (const [outF, r] of [[384, 16], [1000, 12], [4096, 8]])
    test(`DoRA ${dtype} out=${outF} r=${r}: the norm the decode kernel computes (n=8) equals the separate path's`, PARITY, () => {
      const inF = 512;
      let seed = 9700 + outF + r;
      const data = (shape, scale) => randomArray(shape.reduce((a, b) => a * b, 1), seed++, scale);
      const Wd = data([outF, inF], 0.05), x8 = data([8, inF], 1), x40 = data([40, inF], 1);
      const build = () => {
        const l = new LoraLinear({ weight: Tensor.from(Wd, [outF, inF], { dtype, device: DEVICE }) });
        return l.addAdapter('d', { r, loraAlpha: 2 * r, dtype, useDora: true, initLoraWeights: false, seed: 8 }).eval();
      };
      const fused = build();
      const separate = build();
      const t = (d, n) => Tensor.from(d, [n, inF], { dtype, device: DEVICE });
      const y8 = fused.forward(t(x8, 8)).toFloat32Array();  // the norm from the decode kernel
      const ya = fused.forward(t(x40, 40)).toFloat32Array();
      const yb = separate.forward(t(x40, 40)).toFloat32Array();  // the norm from the separate GEMMs
      const e = relErr(ya, yb);
      assert.ok(e <= (dtype === 'f16' ? 2e-4 : 2e-3), `n = 40 after the fused norm against the separate one: ${e}`);
      const y8b = separate.forward(t(x8, 8)).toFloat32Array();  // the cached separate norm, k in the decode epilogue
      assert.ok(relErr(y8, y8b) <= (dtype === 'f16' ? 2e-4 : 2e-3), `n = 8: ${relErr(y8, y8b)}`);
    });
