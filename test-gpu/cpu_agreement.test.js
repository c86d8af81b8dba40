// cuda against the cpu backend on fresh random data: forward (decode and GEMM paths), backward,
// merge, dropout masks, determinism, errors, the caching allocator and the optimizer steps.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { lk, relErr, randomArray } = require('./helpers');
const { LoraLinear, Tensor, cuda } = lk;

const TOL = { f32: 1e-5, f16: 5e-3, bf16: 1e-2 };
let seed = 1000;

function pair(shape, dtype, scale = 1) {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = randomArray(n, seed++, scale);
  return { cpu: Tensor.from(data, shape, { dtype }), gpu: Tensor.from(data, shape, { dtype, device: 'cuda' }) };
}

function layers(inF, outF, r, dtype, opts = {}) {
  const fifo = opts.fanInFanOut ?? false;
  const W = pair(fifo ? [inF, outF] : [outF, inF], dtype, 0.2);
  const b = pair([outF], dtype, 0.5);
  const mk = (dev) =>
    new LoraLinear({ weight: W[dev], bias: opts.noBias ? null : b[dev], fanInFanOut: fifo }).addAdapter('a', {
      r, loraAlpha: 2 * r, dtype, initLoraWeights: false, seed: 7, loraDropout: opts.dropout ?? 0,
    });
  const lc = mk('cpu');
  const lg = mk('gpu');
  if (opts.second) {
    lc.addAdapter('b', { r: r + 3, loraAlpha: 5, dtype, initLoraWeights: false, seed: 9 });
    lg.addAdapter('b', { r: r + 3, loraAlpha: 5, dtype, initLoraWeights: false, seed: 9 });
    lc.setAdapter(['a', 'b']);
    lg.setAdapter(['a', 'b']);
  }
  return { lc, lg };
}

const SHAPES = [
  // n, in, out, r
  [1, 64, 48, 4],
  [16, 256, 136, 8],
  [17, 256, 136, 8],
  [300, 520, 264, 16],
  [37, 33, 29, 3],
  [9, 40, 72, 64],
  [33, 192, 128, 24], // rows % 16 == 0, cols % 64 == 0: the tensor-core merge (r not a multiple of 16)
  [5, 256, 64, 64],
];

for (const dtype of ['f32', 'bf16', 'f16']) {
  for (const [n, inF, outF, r] of SHAPES) {
    for (const fifo of [false, true]) {
      test(`${dtype} n=${n} in=${inF} out=${outF} r=${r}${fifo ? ' fifo' : ''}: forward, backward, merge match the cpu`, () => {
        const { lc, lg } = layers(inF, outF, r, dtype, { fanInFanOut: fifo, second: r === 8 });
        const x = pair([n, inF], dtype);
        const dy = pair([n, outF], dtype);
        const tol = TOL[dtype];
        const ey = relErr(lg.forward(x.gpu).toFloat32Array(), lc.forward(x.cpu).toFloat32Array());
        assert.ok(ey <= tol, `y: ${ey}`);
        const gc = lc.backward(dy.cpu);
        const gg = lg.backward(dy.gpu);
        assert.ok(relErr(gg.dx.toFloat32Array(), gc.dx.toFloat32Array()) <= tol, 'dx');
        for (const name of gc.grads.keys()) {
          const eA = relErr(gg.grads.get(name).loraA.toFloat32Array(), gc.grads.get(name).loraA.toFloat32Array());
          const eB = relErr(gg.grads.get(name).loraB.toFloat32Array(), gc.grads.get(name).loraB.toFloat32Array());
          assert.ok(eA <= tol && eB <= tol, `${name}: dA ${eA} dB ${eB}`);
        }
        lc.merge();
        lg.merge();
        const em = relErr(lg.weight.toFloat32Array(), lc.weight.toFloat32Array());
        assert.ok(em <= (dtype === 'f32' ? 1e-6 : tol / 2), `W_merged: ${em}`);
      });
    }
  }
}

test('dropout: cpu and cuda draw the same masks (forward and backward agree in f32)', () => {
  for (const n of [5, 40]) {
    const { lc, lg } = layers(96, 80, 8, 'f32', { dropout: 0.3 });
    for (let step = 0; step < 2; step++) {
      const x = pair([n, 96], 'f32');
      const dy = pair([n, 80], 'f32');
      assert.ok(relErr(lg.forward(x.gpu).toFloat32Array(), lc.forward(x.cpu).toFloat32Array()) <= 1e-5, 'y');
      const gc = lc.backward(dy.cpu);
      const gg = lg.backward(dy.gpu);
      assert.ok(relErr(gg.dx.toFloat32Array(), gc.dx.toFloat32Array()) <= 1e-5, 'dx');
      assert.ok(relErr(gg.grads.get('a').loraA.toFloat32Array(), gc.grads.get('a').loraA.toFloat32Array()) <= 1e-5, 'dA');
    }
  }
  const x = pair([64, 128], 'f32');
  const oc = Tensor.zeros([64, 128]);
  const og = Tensor.zeros([64, 128], { device: 'cuda' });
  lk.kernels.backendInfo();
  require('../dist/native').call((b) => b.dropout(x.cpu.handle, 0.25, 123, 4, oc.handle));
  require('../dist/native').call((b) => b.dropout(x.gpu.handle, 0.25, 123, 4, og.handle));
  assert.deepStrictEqual(Array.from(og.toFloat32Array()), Array.from(oc.toFloat32Array()));
});

test('backward is deterministic run to run (bitwise)', () => {
  const { lg } = layers(1024, 768, 16, 'bf16');
  const x = pair([2048, 1024], 'bf16');
  const dy = pair([2048, 768], 'bf16');
  const run = () => {
    lg.forward(x.gpu);
    const g = lg.backward(dy.gpu);
    return [g.dx.toUint16Array(), g.grads.get('a').loraA.toUint16Array(), g.grads.get('a').loraB.toUint16Array()];
  };
  const a = run();
  const b = run();
  for (let i = 0; i < 3; i++) assert.ok(Buffer.from(a[i].buffer).equals(Buffer.from(b[i].buffer)), `output ${i} differs`);
});

test('errors come back as typed JS errors and the process lives on', () => {
  assert.throws(() => Tensor.zeros([1 << 20, 1 << 20], { device: 'cuda' }), (e) => e.name === 'LoraRangeError' && /out of memory/.test(e.message));
  const ok = Tensor.from([1, 2, 3], [3], { device: 'cuda' });
  assert.deepStrictEqual(Array.from(ok.toFloat32Array()), [1, 2, 3]);
  const W = Tensor.zeros([4, 8], { device: 'cuda' });
  const layer = new LoraLinear({ weight: W }).addAdapter('a', { r: 2 });
  assert.throws(() => layer.forward(Tensor.zeros([2, 8])), (e) => e.name === 'LoraTypeError' && /cuda/.test(e.message));
  assert.throws(() => layer.forward(Tensor.zeros([2, 8], { device: 'cuda', dtype: 'bf16' })), (e) => e.name === 'DTypeError');
  ok.dispose();
  assert.throws(() => ok.toFloat32Array(), (e) => e.name === 'StateError');
});

test('caching allocator: repeated allocations reuse blocks', () => {
  const before = cuda.memoryStats();
  for (let i = 0; i < 50; i++) Tensor.zeros([1024, 1024], { device: 'cuda' }).dispose();
  const after = cuda.memoryStats();
  assert.strictEqual(after.allocatedBytes, before.allocatedBytes);
  assert.ok(after.cachedBytes >= 4 << 20, JSON.stringify(after));
  assert.ok(after.cachedBytes - before.cachedBytes <= 4 << 20, 'one block reused, not 50 cached');
  assert.ok(after.deviceMallocs - before.deviceMallocs <= 1, `one cudaMalloc at most: ${JSON.stringify([before, after])}`);
  // With the cache emptied, a new block is a miss: exactly one more cudaMalloc.
  cuda.emptyCache();
  const m0 = cuda.memoryStats().deviceMallocs;
  const fresh = Tensor.zeros([(37 << 20) / 4], { device: 'cuda' });
  assert.strictEqual(cuda.memoryStats().deviceMallocs, m0 + 1);
  fresh.dispose();
  cuda.emptyCache();
  assert.strictEqual(cuda.memoryStats().cachedBytes, 0);
});

test('cross-device copies and dtype conversions round-trip', () => {
  const data = randomArray(1000, 77);
  for (const dt of ['f32', 'f16', 'bf16']) {
    const g = Tensor.from(data, [10, 100], { dtype: dt, device: 'cuda' });
    const back = g.to({ device: 'cpu', dtype: 'f32' });
    const ref = Tensor.from(data, [10, 100], { dtype: dt }).toFloat32Array();
    assert.deepStrictEqual(Array.from(back.toFloat32Array()), Array.from(ref));
    const g2 = g.to({ dtype: 'f32' });
    assert.strictEqual(g2.device, 'cuda');
    assert.deepStrictEqual(Array.from(g2.toFloat32Array()), Array.from(ref));
  }
});

function adamwRef(p, g, m, v, h) {
  const bc1 = 1 - h.beta1 ** h.step;
  const bc2 = 1 - h.beta2 ** h.step;
  for (let i = 0; i < p.length; i++) {
    p[i] *= 1 - h.lr * h.weightDecay;
    m[i] = h.beta1 * m[i] + (1 - h.beta1) * g[i];
    v[i] = h.beta2 * v[i] + (1 - h.beta2) * g[i] * g[i];
    p[i] -= (h.lr / bc1) * (m[i] / (Math.sqrt(v[i]) / Math.sqrt(bc2) + h.eps));
  }
}

test('AdamW step matches the PyTorch formula (float64 reference), 3 steps', () => {
  const n = 5000;
  const p0 = randomArray(n, 5);
  const p = Float64Array.from(p0);
  const m = new Float64Array(n);
  const v = new Float64Array(n);
  const P = Tensor.from(p0, [n], { device: 'cuda' });
  const M = Tensor.zeros([n], { device: 'cuda' });
  const V = Tensor.zeros([n], { device: 'cuda' });
  for (let step = 1; step <= 3; step++) {
    const g = randomArray(n, 50 + step);
    const h = { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1, step };
    adamwRef(p, g, m, v, h);
    cuda.adamwStep(P, Tensor.from(g, [n], { device: 'cuda' }), M, V, h);
  }
  const e = relErr(P.toFloat32Array(), p);
  assert.ok(e < 1e-6, `param: ${e}`);
  assert.ok(relErr(V.toFloat32Array(), v) < 1e-5, 'exp_avg_sq');
});

// PyTorch's two momentum forms: dampening without Nesterov, and Nesterov (which requires dampening 0).
for (const h of [
  { lr: 0.05, momentum: 0.9, dampening: 0.1, weightDecay: 0.01, nesterov: false },
  { lr: 0.05, momentum: 0.9, dampening: 0, weightDecay: 0.01, nesterov: true },
]) {
  test(`SGD step with momentum, weight decay, dampening ${h.dampening}, nesterov ${h.nesterov} matches the reference`, () => {
    const n = 3000;
    const p0 = randomArray(n, 8);
    const p = Float64Array.from(p0);
    const buf = new Float64Array(n);
    const P = Tensor.from(p0, [n], { device: 'cuda' });
    const Bf = Tensor.zeros([n], { device: 'cuda' });
    for (let step = 0; step < 3; step++) {
      const g = randomArray(n, 90 + step);
      for (let i = 0; i < n; i++) {
        let d = g[i] + h.weightDecay * p[i];
        buf[i] = step === 0 ? d : h.momentum * buf[i] + (1 - h.dampening) * d;
        d = h.nesterov ? d + h.momentum * buf[i] : buf[i];
        p[i] -= h.lr * d;
      }
      cuda.sgdStep(P, Tensor.from(g, [n], { device: 'cuda' }), Bf, { ...h, firstStep: step === 0 });
    }
    assert.ok(relErr(P.toFloat32Array(), p) < 1e-6);
  });
}

test('SGD with Nesterov and dampening is refused on cuda as on the cpu (PyTorch refuses it too)', () => {
  const P = Tensor.zeros([8], { device: 'cuda' });
  const G = Tensor.zeros([8], { device: 'cuda' });
  const Bf = Tensor.zeros([8], { device: 'cuda' });
  assert.throws(() => cuda.sgdStep(P, G, Bf, { lr: 0.1, momentum: 0.9, dampening: 0.1, nesterov: true, firstStep: true }),
    (e) => e.name === 'LoraRangeError' && /nesterov: needs momentum > 0 and dampening = 0/.test(e.message));
});
