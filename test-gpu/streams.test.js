// Streams: layers on streams of their own give the default stream's results bit for bit, also
// when they run at the same time, and tensors shared between streams are ordered by events:
// a read on another stream waits for the write, a write waits for earlier reads, and a block freed
// after use on another stream is not reused before that use ends. Each hazard is set up with a
// long queue of work on the other stream first, so a missing wait would show.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { lk, randomArray } = require('./helpers');
const { LoraLinear, Tensor, AdamW, cuda } = lk;

const same = (a, b) => a.length === b.length && a.every((v, i) => Object.is(v, b[i]));

function layer(seed, d = 1024, dtype = 'bf16') {
  const W = Tensor.from(randomArray(d * d, seed, 0.05), [d, d], { dtype, device: 'cuda' });
  const l = new LoraLinear({ weight: W });
  l.addAdapter('a', { r: 16, loraAlpha: 32, initLoraWeights: false, seed, dtype });
  return l;
}

const x = (n, seed, d = 1024, dtype = 'bf16') => Tensor.from(randomArray(n * d, seed), [n, d], { dtype, device: 'cuda' });

test('two layers on two streams, run at once with forwardAsync/backwardAsync, equal the default stream', async () => {
  const ref = [layer(1), layer(2)];
  const lay = [layer(1), layer(2)];
  const s = [cuda.createStream(), cuda.createStream()];
  lay[0].stream = s[0];
  lay[1].stream = s[1];
  assert.strictEqual(lay[0].stream, s[0]);
  const xs = [x(4096, 11), x(4096, 12)];
  const dys = [x(4096, 13), x(4096, 14)];
  const want = ref.map((l, i) => {
    const y = l.forward(xs[i]).toFloat32Array();
    const g = l.backward(dys[i]);
    return { y, dx: g.dx.toFloat32Array(), dA: g.grads.get('a').loraA.toFloat32Array() };
  });
  for (let rep = 0; rep < 3; rep++) {
    const ys = await Promise.all(lay.map((l, i) => l.forwardAsync(xs[i])));
    const gs = await Promise.all(lay.map((l, i) => l.backwardAsync(dys[i])));
    for (let i = 0; i < 2; i++) {
      assert.ok(same(ys[i].toFloat32Array(), want[i].y), `y ${i}`);
      assert.ok(same(gs[i].dx.toFloat32Array(), want[i].dx), `dx ${i}`);
      assert.ok(same(gs[i].grads.get('a').loraA.toFloat32Array(), want[i].dA), `dA ${i}`);
    }
  }
  s.forEach((t) => t.dispose());
});

// Each hazard below queues ~10 ms of GPU work on a stream (50 GEMMs of 4096³, ~40 µs of host time
// each) and then touches the shared tensor from the default stream with a fast device-side op, so
// without the event waits the second stream runs ahead and the check fails (verified by building
// with order_use() and the free-time waits disabled: bench/results/gpu-streams-negative-*.txt).
const D = 4096, N = 4096, BUSY = 50;

test('read after write: a result made on a busy stream reads back right on the default stream', () => {
  const l = layer(3, D);
  const xs = x(N, 31, D);
  const busy = x(N, 32, D); // different inputs, so a block reused on the stream holds other values
  const want = l.forward(xs).toFloat32Array();
  const s = cuda.createStream();
  l.stream = s;
  for (let rep = 0; rep < 3; rep++) {
    for (let i = 0; i < BUSY; i++) l.forward(busy).dispose();
    const y = l.forward(xs);
    // A device copy on the default stream (a copy to the host would not do: pageable copies
    // are synchronised by the driver anyway).
    const copy = y.clone();
    assert.ok(same(copy.toFloat32Array(), want), `rep ${rep}: the copy ran before the forward`);
    y.dispose();
    copy.dispose();
  }
  s.dispose();
});

test('write after read: overwriting an input on the default stream waits for the stream still reading it', () => {
  const l = layer(4, D);
  const xs = x(N, 41, D);
  const keep = xs.clone();
  const zeros = Tensor.zeros([N, D], { dtype: 'bf16', device: 'cuda' });
  const want = l.forward(xs).toFloat32Array();
  const s = cuda.createStream();
  l.stream = s;
  for (let rep = 0; rep < 3; rep++) {
    const ys = [];
    for (let i = 0; i < BUSY; i++) ys.push(l.forward(xs));
    xs.copyFrom(zeros); // a device copy on the default stream
    for (const i of [BUSY / 2, BUSY - 1]) assert.ok(same(ys[i].toFloat32Array(), want), `rep ${rep}: forward ${i} saw the overwritten input`);
    ys.forEach((y) => y.dispose());
    xs.copyFrom(keep);
  }
  s.dispose();
});

test('free after use on another stream: the block is not handed out while that stream still writes it', () => {
  const W = Tensor.from(randomArray(D * D, 5, 0.05), [D, D], { dtype: 'bf16', device: 'cuda' });
  const xs = x(N, 51, D);
  const fill = x(N, 52, D);
  const expect = fill.toFloat32Array();
  const s = cuda.createStream();
  for (let rep = 0; rep < 3; rep++) {
    const out = Tensor.empty([N, D], { dtype: 'bf16', device: 'cuda' }); // from the default stream's pool
    cuda.withStream(s, () => {
      for (let i = 0; i < BUSY; i++) cuda.baseGemm(xs, W, out);
    });
    out.dispose();
    const t = Tensor.empty([N, D], { dtype: 'bf16', device: 'cuda' }); // the same block, from the same pool
    t.copyFrom(fill); // a device copy on the default stream
    assert.ok(same(t.toFloat32Array(), expect), `rep ${rep}: the freed block was overwritten by the other stream`);
    t.dispose();
  }
  s.dispose();
});

test('training on a stream (forward, backward, AdamW on the default stream) equals training without one', () => {
  const run = (stream) => {
    const l = layer(6, 1024, 'f32');
    if (stream) l.stream = stream;
    const opt = new AdamW(l.parameters(), { lr: 1e-2 });
    for (let step = 0; step < 4; step++) {
      l.forward(x(512, 60 + step, 1024, 'f32'));
      l.backward(x(512, 70 + step, 1024, 'f32'));
      opt.step();
      opt.zeroGrad();
    }
    return [l.loraA.get('a').toFloat32Array(), l.loraB.get('a').toFloat32Array()];
  };
  const want = run(null);
  const s = cuda.createStream();
  const got = run(s);
  assert.ok(same(got[0], want[0]) && same(got[1], want[1]));
  s.dispose();
});

test('stream lifecycle: disposed streams refuse work with StateError; ids are reused; withStream nests', () => {
  const l = layer(7, 256);
  const xs = x(4, 71, 256);
  const want = l.forward(xs).toFloat32Array();
  const s = cuda.createStream();
  l.stream = s;
  s.dispose();
  assert.throws(() => l.forward(xs), (e) => e.name === 'StateError' && /stream: the cuda stream was disposed/.test(e.message));
  assert.throws(() => s.synchronize(), (e) => e.name === 'StateError');
  l.stream = null;
  const a = cuda.createStream();
  const b = cuda.createStream();
  const y = cuda.withStream(a, () => cuda.withStream(b, () => l.forward(xs)));
  assert.ok(same(y.toFloat32Array(), want));
  a.synchronize();
  b.synchronize();
  cuda.synchronize();
  a.dispose();
  b.dispose();
  assert.ok(same(l.forward(xs).toFloat32Array(), want), 'back on the default stream');
  const cpu = new LoraLinear({ weight: Tensor.zeros([4, 4]) });
  const c = cuda.createStream();
  assert.throws(() => {
    cpu.stream = c;
  }, (e) => e.name === 'LoraTypeError' && /only cuda layers/.test(e.message));
  c.dispose();
});
