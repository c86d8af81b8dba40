// Graph replay (cuda.setGraphReplay): a repeated LoraLinear forward is captured on its second call
// and replayed after; every replay must be bitwise the direct call's result, on the decode path
// (n ≤ 16), the cuBLASLt / sm_90 path (n 64, 512) and f32; in-place weight changes are read by the
// replay, a new scale, adapter set, output buffer or stream is a new graph; training-mode
// forwards (u kept for backward) give the same gradients; emptyCache frees the graphs.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { lk, randomArray } = require('./helpers');
const { LoraLinear, Tensor, cuda } = lk;

const IN = 1024;
const OUT = 2048;
let seed = 9100;
const dev = (shape, scale, dtype) =>
  Tensor.from(randomArray(shape.reduce((a, b) => a * b, 1), seed++, scale), shape, { dtype, device: 'cuda' });
const same = (a, b, what) => {
  const x = a.toFloat32Array();
  const y = b instanceof Float32Array ? b : b.toFloat32Array();
  assert.strictEqual(x.length, y.length, `${what}: length`);
  for (let i = 0; i < x.length; i++) if (!Object.is(x[i], y[i])) assert.fail(`${what}: element ${i} is ${x[i]}, direct ${y[i]}`);
};
const stats = () => cuda.kernelStats();

function makeLayer(dtype, { bias = true, two = false } = {}) {
  const l = new LoraLinear({ weight: dev([OUT, IN], 0.05, dtype), bias: bias ? dev([OUT], 0.5, dtype) : null });
  l.addAdapter('a', { r: 16, loraAlpha: 32, dtype, initLoraWeights: false, seed: 3 });
  l.addAdapter('b', { r: 8, loraAlpha: 8, dtype, initLoraWeights: false, seed: 4 });
  if (two) l.setAdapter(['a', 'b']);
  return l.eval();
}

test.afterEach(() => cuda.setGraphReplay(false));

for (const [dtype, n] of [['bf16', 1], ['bf16', 16], ['bf16', 64], ['bf16', 512], ['f16', 4], ['f32', 8], ['f32', 256]]) {
  test(`${dtype} n=${n}: replays are bitwise the direct call, with out and with fresh outputs`, () => {
    const layer = makeLayer(dtype, { two: n === 16 });
    const x = dev([n, IN], 1, dtype);
    cuda.setGraphReplay(false);
    const direct = layer.forward(x).toFloat32Array();
    cuda.setGraphReplay(true);
    const s0 = stats();
    const out = Tensor.empty([n, OUT], { dtype, device: 'cuda' });
    for (let i = 0; i < 4; i++) same(layer.forward(x, { out }), direct, `out, call ${i + 1}`);
    const s1 = stats();
    assert.strictEqual(s1.graphFallbacks, s0.graphFallbacks, 'no capture failed');
    assert.ok(s1.graphCaptures >= s0.graphCaptures + 1, 'captured');
    assert.ok(s1.graphReplays >= s0.graphReplays + 2, 'replayed');
    for (let i = 0; i < 4; i++) {
      const y = layer.forward(x);
      same(y, direct, `fresh y, call ${i + 1}`);
      y.dispose();
    }
    assert.ok(stats().graphReplays >= s1.graphReplays + 2, 'fresh outputs replay too (the allocator hands back the same block)');
    layer.dispose();
  });
}

test('in-place weight changes are read by the replay; a new scale or adapter set is a new graph', () => {
  const dtype = 'bf16';
  const layer = makeLayer(dtype);
  const x = dev([8, IN], 1, dtype);
  const A = layer.loraA.get('a');
  const A1 = A.toFloat32Array();
  const A2 = randomArray(A1.length, seed++, 0.05);
  const W = layer.weight;
  const W1 = W.toFloat32Array();
  const W2 = randomArray(W1.length, seed++, 0.05);
  const out = Tensor.empty([8, OUT], { dtype, device: 'cuda' });
  cuda.setGraphReplay(false);
  const ref = {};
  ref.base = layer.forward(x).toFloat32Array();
  A.copyFrom(A2);
  ref.a2 = layer.forward(x).toFloat32Array();
  W.copyFrom(W2);
  ref.w2 = layer.forward(x).toFloat32Array();
  W.copyFrom(W1);
  A.copyFrom(A1);
  layer.setScale('a', 0.5);
  ref.scale = layer.forward(x).toFloat32Array();
  layer.setScale('a', 1);
  layer.setAdapter(['a', 'b']);
  ref.both = layer.forward(x).toFloat32Array();
  layer.setAdapter('a');
  ref.again = layer.forward(x).toFloat32Array();
  same(Tensor.from(ref.again, [8, OUT]), ref.base, 'setScale(a, 1) restores alpha/r');
  cuda.setGraphReplay(true);
  for (let i = 0; i < 3; i++) same(layer.forward(x, { out }), ref.base, `warm ${i}`);
  let s = stats();
  A.copyFrom(A2);
  same(layer.forward(x, { out }), ref.a2, 'after A changed in place');
  W.copyFrom(W2);
  same(layer.forward(x, { out }), ref.w2, 'after W changed in place');
  assert.strictEqual(stats().graphCaptures, s.graphCaptures, 'in-place changes need no new graph');
  assert.ok(stats().graphReplays >= s.graphReplays + 2);
  W.copyFrom(W1);
  A.copyFrom(A1);
  s = stats();
  layer.setScale('a', 0.5);
  for (let i = 0; i < 3; i++) same(layer.forward(x, { out }), ref.scale, `new scale ${i}`);
  layer.setScale('a', 1);
  layer.setAdapter(['a', 'b']);
  for (let i = 0; i < 3; i++) same(layer.forward(x, { out }), ref.both, `two adapters ${i}`);
  layer.setAdapter('a');
  for (let i = 0; i < 3; i++) same(layer.forward(x, { out }), ref.again, `back to one ${i}`);
  assert.ok(stats().graphCaptures >= s.graphCaptures + 2, 'the scale and the adapter set each got a graph');
  layer.dispose();
});

test('two out buffers alternate: a graph each, each written correctly; a layer stream is its own key', () => {
  const dtype = 'bf16';
  const layer = makeLayer(dtype);
  const x = dev([2, IN], 1, dtype);
  cuda.setGraphReplay(false);
  const direct = layer.forward(x).toFloat32Array();
  cuda.setGraphReplay(true);
  const o1 = Tensor.empty([2, OUT], { dtype, device: 'cuda' });
  const o2 = Tensor.empty([2, OUT], { dtype, device: 'cuda' });
  for (let i = 0; i < 4; i++) {
    o1.copyFrom(new Float32Array(2 * OUT));
    o2.copyFrom(new Float32Array(2 * OUT));
    layer.forward(x, { out: o1 });
    same(o2, new Float32Array(2 * OUT), `o2 untouched by o1's call ${i}`);
    layer.forward(x, { out: o2 });
    same(o1, direct, `o1 ${i}`);
    same(o2, direct, `o2 ${i}`);
  }
  const s = cuda.createStream();
  layer.stream = s;
  for (let i = 0; i < 3; i++) same(layer.forward(x, { out: o1 }), direct, `on a stream ${i}`);
  layer.stream = null;
  s.dispose();
  layer.dispose();
});

test('training-mode forwards replay with u kept: the same gradients as direct calls', () => {
  const dtype = 'bf16';
  const x = dev([16, IN], 1, dtype);
  const dy = dev([16, OUT], 1, dtype);
  const layer = makeLayer(dtype).train();
  cuda.setGraphReplay(false);
  const y0 = layer.forward(x).toFloat32Array();
  const g0 = layer.backward(dy);
  const ref = { dx: g0.dx.toFloat32Array(), dA: g0.grads.get('a').loraA.toFloat32Array(), dB: g0.grads.get('a').loraB.toFloat32Array() };
  cuda.setGraphReplay(true);
  for (let i = 0; i < 4; i++) {
    const y = layer.forward(x);
    same(y, y0, `y ${i}`);
    const g = layer.backward(dy);
    same(g.dx, ref.dx, `dx ${i}`);
    same(g.grads.get('a').loraA, ref.dA, `dA ${i}`);
    same(g.grads.get('a').loraB, ref.dB, `dB ${i}`);
    y.dispose();
  }
  assert.ok(stats().graphReplays > 0);
  layer.dispose();
});

test('emptyCache and setGraphReplay(false) free the graphs and their scratch', () => {
  const dtype = 'bf16';
  const layer = makeLayer(dtype);
  const x = dev([4, IN], 1, dtype);
  cuda.setGraphReplay(true);
  for (let i = 0; i < 3; i++) layer.forward(x).dispose();
  assert.ok(stats().graphs >= 1);
  cuda.emptyCache();
  assert.strictEqual(stats().graphs, 0);
  for (let i = 0; i < 3; i++) layer.forward(x).dispose();
  assert.ok(stats().graphs >= 1);
  cuda.setGraphReplay(false);
  assert.strictEqual(stats().graphs, 0);
  assert.strictEqual(stats().graphHeldBytes, 0);
  layer.dispose();
});

test('async forwards replay graphs that sync calls captured, and never capture themselves', async () => {
  const dtype = 'bf16';
  const layer = makeLayer(dtype);
  const x = dev([4, IN], 1, dtype);
  const out = Tensor.empty([4, OUT], { dtype, device: 'cuda' });
  cuda.setGraphReplay(false);
  const direct = layer.forward(x).toFloat32Array();
  cuda.setGraphReplay(true);
  let s = stats();
  for (let i = 0; i < 3; i++) same(await layer.forwardAsync(x, { out }), direct, `async before any capture ${i}`);
  assert.strictEqual(stats().graphCaptures, s.graphCaptures, 'async calls do not capture');
  for (let i = 0; i < 2; i++) same(layer.forward(x, { out }), direct, `sync ${i}`);
  s = stats();
  assert.ok(s.graphs >= 1, 'the sync call captured');
  for (let i = 0; i < 3; i++) same(await layer.forwardAsync(x, { out }), direct, `async replay ${i}`);
  assert.ok(stats().graphReplays >= s.graphReplays + 3, 'async calls replay');
  layer.dispose();
});
