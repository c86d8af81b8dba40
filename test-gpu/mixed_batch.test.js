// Mixed-adapter batches on cuda (forward with adapterNames): peft's golden multi_adapter y.mixed
// within 1e-5 in f32 (also with the rows repeated so the batch takes the GEMM path), a 3-D bf16
// input within 1e-2, disabled adapters, and cpu parity on random data with four adapters, base
// rows and a batch large enough for several GEMM tiles; sync and async agree bit for bit.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { lk, loadCase, expectClose, relErr, randomArray, tileRows, DEVICE, PARITY } = require('./helpers');
const { LoraLinear, Tensor } = lk;

const TOL = 1e-5;

function goldenLayer(c, device) {
  const t = (n) => Tensor.from(c.f32(n), c.shape(n), { device });
  const layer = new LoraLinear({ weight: t('W'), bias: t('bias') });
  for (const [name, a] of Object.entries(c.meta.adapters)) {
    layer.addAdapter(name, { r: a.r, loraAlpha: a.lora_alpha });
    layer.loraA.get(name).copyFrom(c.f32(`A.${name}`));
    layer.loraB.get(name).copyFrom(c.f32(`B.${name}`));
  }
  return layer.eval();
}

test(`golden multi_adapter y.mixed on ${DEVICE} (f32), repeated rows, disabled adapters, 3-D bf16`, async () => {
  const c = loadCase('multi_adapter');
  const layer = goldenLayer(c, DEVICE);
  const names = Array.from(c.file.int64('mixed_index'), (i) => c.meta.mixed_names[Number(i)]);
  const x = Tensor.from(c.f32('x'), c.shape('x'), { device: DEVICE });
  const y = layer.forward(x, { adapterNames: names });
  assert.strictEqual(y.device, DEVICE);
  expectClose(y.toFloat32Array(), c.f32('y.mixed'), TOL, 'y.mixed');
  const ya = await layer.forwardAsync(x, { adapterNames: names });
  assert.ok(ya.toFloat32Array().every((v, i) => Object.is(v, y.toFloat32Array()[i])), 'async differs from sync');
  const [n, d] = c.shape('x');
  const reps = 40; // 280 rows: past the decode path
  const x40 = Tensor.from(tileRows(c.f32('x'), reps), [reps * n, d], { device: DEVICE });
  const names40 = Array.from({ length: reps }, () => names).flat();
  expectClose(layer.forward(x40, { adapterNames: names40 }).toFloat32Array(), tileRows(c.f32('y.mixed'), reps), TOL, 'y.mixed x40');
  const x3 = Tensor.from(c.f32('x'), [n, 1, d], { dtype: 'f32', device: DEVICE });
  const y3 = layer.forward(x3, { adapterNames: names });
  assert.deepStrictEqual(y3.shape, [n, 1, c.shape('y.mixed')[1]]);
  expectClose(y3.toFloat32Array(), c.f32('y.mixed'), TOL, 'y.mixed 3-D');
  layer.enableAdapters(false);
  expectClose(layer.forward(x, { adapterNames: names }).toFloat32Array(), c.f32('y.disabled'), TOL, 'mixed, disabled');

  const bf = new LoraLinear({ weight: Tensor.from(c.f32('W'), c.shape('W'), { dtype: 'bf16', device: DEVICE }), bias: Tensor.from(c.f32('bias'), c.shape('bias'), { dtype: 'bf16', device: DEVICE }) });
  for (const [name, a] of Object.entries(c.meta.adapters)) {
    bf.addAdapter(name, { r: a.r, loraAlpha: a.lora_alpha, dtype: 'bf16' });
    bf.loraA.get(name).copyFrom(c.f32(`A.${name}`));
    bf.loraB.get(name).copyFrom(c.f32(`B.${name}`));
  }
  bf.eval();
  const xb = Tensor.from(c.f32('x'), [n, 1, d], { dtype: 'bf16', device: DEVICE });
  const eb = relErr(bf.forward(xb, { adapterNames: names }).toFloat32Array(), c.f32('y.mixed'));
  assert.ok(eb < 1e-2, `bf16 y.mixed: ${eb}`);
});

for (const [dtype, tol] of [['f32', 1e-5], ['bf16', 1e-2]]) {
  test(`mixed batch ${dtype}, four adapters and base rows: cuda matches the cpu`, PARITY, () => {
    const inF = 264, outF = 520, n = 300;
    let seed = 77;
    const make = (shape, scale) => {
      const data = randomArray(shape.reduce((a, b) => a * b, 1), seed++, scale);
      return { cpu: Tensor.from(data, shape, { dtype }), cuda: Tensor.from(data, shape, { dtype, device: DEVICE }) };
    };
    const W = make([outF, inF], 0.1);
    const b = make([outF], 0.5);
    const x = make([n, inF], 1);
    const adapterNames = ['a0', 'a1', 'a2', 'a3'];
    const build = (dev) => {
      const l = new LoraLinear({ weight: W[dev], bias: b[dev] });
      adapterNames.forEach((name, i) => l.addAdapter(name, { r: 4 + 4 * i, loraAlpha: 8, dtype, initLoraWeights: false, seed: 10 + i }));
      return l.eval();
    };
    const lc = build('cpu');
    const lg = build(DEVICE);
    const rows = Array.from({ length: n }, (_, i) => (i % 5 === 4 ? '__base__' : adapterNames[(i * 7) % 4]));
    const yc = lc.forward(x.cpu, { adapterNames: rows }).toFloat32Array();
    const yg = lg.forward(x.cuda, { adapterNames: rows }).toFloat32Array();
    const e = relErr(yg, yc);
    assert.ok(e <= tol, `relative error ${e}`);
    // Every row got its own adapter: compare against a plain forward with only that adapter active.
    lg.setAdapter('a2');
    const only = lg.forward(x.cuda).toFloat32Array();
    const row = rows.indexOf('a2');
    const diff = Math.max(...Array.from({ length: outF }, (_, j) => Math.abs(only[row * outF + j] - yg[row * outF + j])));
    assert.ok(diff <= (dtype === 'f32' ? 1e-4 : 5e-2), `row ${row} (a2): max difference ${diff}`);
  });
}

// The segmented kernels' edges: ranks above one 64-rank pass (80) and r = 1, f16, a K that is
// not a multiple of the 128-wide chunk, tiles cut short (an adapter with 17 rows), f32 factors
// on a 16-bit layer, and a long batch (several thousand tiles).
for (const [dtype, factorDtype, n] of [['f16', 'f16', 61], ['bf16', 'f32', 37], ['f32', 'f32', 6000]]) {
  test(`mixed batch ${dtype} (factors ${factorDtype}), r = 80 and r = 1, ${n} rows: cuda matches the cpu`, PARITY, () => {
    const inF = 200, outF = 136;
    let seed = 300;
    const make = (shape, scale) => {
      const data = randomArray(shape.reduce((a, b) => a * b, 1), seed++, scale);
      return { cpu: Tensor.from(data, shape, { dtype }), cuda: Tensor.from(data, shape, { dtype, device: DEVICE }) };
    };
    const W = make([outF, inF], 0.1);
    const x = make([n, inF], 1);
    const build = (dev) => {
      const l = new LoraLinear({ weight: W[dev] });
      l.addAdapter('big', { r: 80, loraAlpha: 40, dtype: factorDtype, initLoraWeights: false, seed: 3 });
      l.addAdapter('one', { r: 1, loraAlpha: 2, dtype: factorDtype, initLoraWeights: false, seed: 4 });
      return l.eval();
    };
    const lc = build('cpu');
    const lg = build(DEVICE);
    const rows = Array.from({ length: n }, (_, i) => (i < 17 ? 'big' : i % 3 === 0 ? 'one' : i % 3 === 1 ? 'big' : '__base__'));
    const yc = lc.forward(x.cpu, { adapterNames: rows }).toFloat32Array();
    const yg = lg.forward(x.cuda, { adapterNames: rows }).toFloat32Array();
    const e = relErr(yg, yc);
    assert.ok(e <= (dtype === 'f32' ? 1e-5 : 1e-2), `relative error ${e}`);
    const again = lg.forward(x.cuda, { adapterNames: rows }).toFloat32Array();
    assert.ok(again.every((v, i) => Object.is(v, yg[i])), 'repeatable');
  });
}
