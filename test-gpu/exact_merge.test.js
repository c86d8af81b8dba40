// Exact merge on cuda (native/cuda/exact_merge.cu), mirroring test/exact_merge.test.ts at a smaller
// count: random merge / unmerge / switch sequences over Linear (fan_in_fan_out too), DoRA,
// Embedding and Conv2d layers leave W bit-identical in f32, f16 and bf16; a switch equals a fresh
// merge bitwise; the cuda records and merged weights equal the cpu's bit for bit (same delta, same
// rounding; DoRA aside, whose norm comes from each device's own kernel); large deltas take the
// deferred-segment path; side information is freed on unmerge and dispose.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { lk, randomArray } = require('./helpers');
const { Tensor, LoraLinear, LoraEmbedding, LoraConv2d } = lk;

const SEQUENCES = 120; // per dtype

function gen(seed) {
  let s = seed >>> 0 || 1;
  const next = () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 4294967296;
  };
  return {
    next,
    int: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)),
    pick: (a) => a[Math.floor(next() * a.length)],
    subset(a) {
      const out = a.filter(() => next() < 0.5);
      for (let i = out.length - 1; i > 0; i--) {
        const j = Math.floor(next() * (i + 1));
        [out[i], out[j]] = [out[j], out[i]];
      }
      return out;
    },
  };
}

const bits = (t) => (t.dtype === 'f32' ? new Uint32Array(t.toFloat32Array().buffer) : t.toUint16Array());
const same = (a, b) => a.length === b.length && a.every((v, i) => v === b[i]);

function makeLayer(g, kind, dtype, seed, device) {
  const rows = g.int(1, 300);
  const cols = g.int(1, 700);
  const wScale = g.pick([0.02, 0.5, 3]);
  const T = (n, shape) => Tensor.from(randomArray(n, seed, wScale), shape, { dtype, device });
  let layer;
  if (kind === 'conv2d') {
    const k = g.pick([1, 3]);
    const cin = g.int(1, 12);
    layer = new LoraConv2d({ weight: T(rows * cin * k * k, [rows, cin, k, k]), padding: 1 });
  } else if (kind === 'embedding') layer = new LoraEmbedding({ weight: T(rows * cols, [rows, cols]) });
  else layer = new LoraLinear({ weight: T(rows * cols, [rows, cols]), fanInFanOut: kind === 'fifo' });
  const names = [];
  for (let a = 0; a < g.int(1, 3); a++) {
    layer.addAdapter(`a${a}`, { r: g.int(1, 24), loraAlpha: g.pick([1, 8, 16, 64]), initLoraWeights: false, seed: seed * 7 + a, useDora: kind === 'dora' && g.next() < 0.7, dtype: g.pick(['f32', dtype]) });
    names.push(`a${a}`);
  }
  return { layer, names };
}

for (const dtype of ['f32', 'f16', 'bf16']) {
  test(`${dtype}: ${SEQUENCES} random merge / unmerge / switch sequences restore W bit for bit on cuda`, () => {
    const g = gen(dtype === 'f32' ? 21 : dtype === 'f16' ? 22 : 23);
    const kinds = ['linear', 'fifo', 'dora', 'embedding', 'conv2d'];
    for (let sq = 0; sq < SEQUENCES; sq++) {
      const kind = kinds[sq % kinds.length];
      const { layer, names } = makeLayer(g, kind, dtype, sq + 1, 'cuda');
      const W = layer.weight;
      const w0 = bits(W);
      for (let o = 0; o < g.int(1, 5); o++) {
        const op = g.int(0, 2);
        if (op === 0) layer.merge({ adapterNames: g.subset(names) });
        else if (op === 1) {
          layer.unmerge();
          assert.strictEqual(layer.mergeSideInfoBytes, 0);
          assert.ok(same(bits(W), w0), `sequence ${sq} (${kind}): unmerge did not restore W`);
        } else {
          const target = g.subset(names);
          layer.switchMerged(target);
          const switched = bits(W);
          layer.unmerge();
          assert.ok(same(bits(W), w0), `sequence ${sq} (${kind}): unmerge after a switch did not restore W`);
          layer.merge({ adapterNames: target });
          assert.ok(same(bits(W), switched), `sequence ${sq} (${kind}): switch to [${target}] differs from a fresh merge`);
        }
      }
      layer.unmerge();
      assert.ok(same(bits(W), w0), `sequence ${sq} (${kind}): the final unmerge did not restore W`);
      layer.dispose();
      assert.strictEqual(layer.mergeSideInfoBytes, 0);
      W.dispose();
    }
  });

  test(`${dtype}: cuda merges to the cpu's bits and records (small and large deltas), and undoes them`, () => {
    // Fractional scales and the weight's own dtype for the factors too (a 4096-wide layer: 16
    // strips of the cuda kernel), as the GPU benchmarks merge them.
    const cases = [[257, 300, 8, false, 1, 'f32'], [129, 520, 16, true, 1, 'f32'], [512, 768, 16, false, 40, 'f32'], [33, 7, 3, false, 4, 'f32'],
      [70, 4096, 16, false, 0.11, dtype], [70, 4096, 16, false, 0.11, 'f32'], [257, 300, 8, true, 0.3, dtype],
      [1024, 4096, 16, false, 0.112, dtype], [4096, 4096, 16, false, 0.112, dtype]];
    for (const [rows, cols, r, fifo, scale, factors] of cases) {
      const w = randomArray(rows * cols, rows + cols, 0.05);
      const make = (device) => {
        const l = new LoraLinear({ weight: Tensor.from(w, [rows, cols], { dtype, device }), fanInFanOut: fifo });
        l.addAdapter('a', { r, initLoraWeights: false, seed: 9, dtype: factors });
        l.setScale('a', scale);
        return l;
      };
      const cpu = make('cpu');
      const gpu = make('cuda');
      gpu.loraA.get('a').copyFrom(cpu.loraA.get('a').toFloat32Array());
      gpu.loraB.get('a').copyFrom(cpu.loraB.get('a').toFloat32Array());
      const w0 = bits(gpu.weight);
      cpu.merge();
      gpu.merge();
      assert.ok(!same(bits(gpu.weight), w0), `${rows}x${cols} (${factors} factors, scale ${scale}): the merge changed nothing`);
      assert.ok(same(bits(gpu.weight), bits(cpu.weight)), `${rows}x${cols} (${factors} factors, scale ${scale}): the merged weights differ between devices`);
      assert.strictEqual(gpu.mergeSideInfoBytes, cpu.mergeSideInfoBytes, `${rows}x${cols}: record sizes differ`);
      gpu.unmerge();
      assert.ok(same(bits(gpu.weight), w0));
      for (const l of [cpu, gpu]) {
        l.dispose();
        l.weight.dispose();
      }
    }
  });
}

test('exact: false keeps the peft merge on cuda (no side information)', () => {
  const W = Tensor.from(randomArray(64 * 48, 5, 0.05), [64, 48], { dtype: 'bf16', device: 'cuda' });
  const layer = new LoraLinear({ weight: W });
  layer.addAdapter('a', { r: 4, initLoraWeights: false, seed: 3, dtype: 'bf16' });
  const ref = W.clone();
  lk.kernels.mergeAdapter(ref, { loraA: layer.loraA.get('a'), loraB: layer.loraB.get('a'), scaling: layer.scaling.get('a') });
  layer.merge({ exact: false });
  assert.strictEqual(layer.mergeSideInfoBytes, 0);
  assert.ok(same(bits(W), bits(ref)));
  layer.unmerge();
  layer.dispose();
  ref.dispose();
  W.dispose();
});
