// The one-pass sm_90 LoRA GEMM (native/cuda/gemm_sm90.cu): forward y = x·Wᵀ + Σ s·u·Bᵀ + b and
// backward dx = dy·W + Σ g·A against the cpu backend, on shapes that cut tiles short, adapters
// whose rank spans two K blocks, several adapters with different scales, fan_in_fan_out (the other
// B layout), f16, and the fallbacks it must leave to cuBLASLt. kernelStats() tells which path ran.
'use strict';
// This file forces the kernel (read once by the addon, at its first GEMM) unless the runner asked
// for cuBLASLt; the default choice by timing is checked in a child process below.
if (process.env.LORAKIT_CUDA_GEMM !== 'cublas') process.env.LORAKIT_CUDA_GEMM = 'sm90';
const test = require('node:test');
const assert = require('node:assert');
const path = require('path');
const { spawnSync } = require('child_process');
const { lk, relErr, randomArray } = require('./helpers');
const { LoraLinear, Tensor, cuda } = lk;

const TOL = { f16: 5e-3, bf16: 1e-2 };
const hopper = /\(sm_90/.test(lk.backendInfo().cudaDevice || '');
const expectKernel = hopper && process.env.LORAKIT_CUDA_GEMM === 'sm90';
let seed = 5000;

function pair(shape, dtype, scale) {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = randomArray(n, seed++, scale);
  return { cpu: Tensor.from(data, shape, { dtype }), gpu: Tensor.from(data, shape, { dtype, device: 'cuda' }) };
}

// Two identical layers (cpu, cuda); adapters: [{ r, alpha }], B random so the LoRA term is large.
function layers({ inF, outF, adapters, dtype, fifo = false, bias = true }) {
  const W = pair(fifo ? [inF, outF] : [outF, inF], dtype, 0.05);
  const b = pair([outF], dtype, 0.5);
  const mk = (dev) => {
    const l = new LoraLinear({ weight: W[dev], bias: bias ? b[dev] : null, fanInFanOut: fifo });
    adapters.forEach((a, i) => l.addAdapter(`a${i}`, { r: a.r, loraAlpha: a.alpha, dtype, initLoraWeights: false, seed: 11 + i }));
    l.setAdapter(adapters.map((_, i) => `a${i}`));
    return l;
  };
  return { lc: mk('cpu'), lg: mk('gpu') };
}

function check(opts, n, { expectLaunch = expectKernel } = {}) {
  const { lc, lg } = layers(opts);
  const tol = TOL[opts.dtype];
  const x = pair([n, opts.inF], opts.dtype, 1);
  const dy = pair([n, opts.outF], opts.dtype, 1);
  const before = cuda.kernelStats().sm90GemmLaunches;
  const yg = lg.forward(x.gpu);
  const afterForward = cuda.kernelStats().sm90GemmLaunches;
  const yc = lc.forward(x.cpu);
  const ey = relErr(yg.toFloat32Array(), yc.toFloat32Array());
  assert.ok(ey <= tol, `y: ${ey}`);
  const gg = lg.backward(dy.gpu);
  const afterBackward = cuda.kernelStats().sm90GemmLaunches;
  const gc = lc.backward(dy.cpu);
  const edx = relErr(gg.dx.toFloat32Array(), gc.dx.toFloat32Array());
  assert.ok(edx <= tol, `dx: ${edx}`);
  for (const name of gc.grads.keys()) {
    const eA = relErr(gg.grads.get(name).loraA.toFloat32Array(), gc.grads.get(name).loraA.toFloat32Array());
    const eB = relErr(gg.grads.get(name).loraB.toFloat32Array(), gc.grads.get(name).loraB.toFloat32Array());
    assert.ok(eA <= tol && eB <= tol, `${name}: dA ${eA}, dB ${eB}`);
  }
  assert.strictEqual(afterForward - before, expectLaunch ? 1 : 0, 'sm_90 launches in the forward');
  assert.strictEqual(afterBackward - afterForward, expectLaunch ? 1 : 0, 'sm_90 launches in the backward');
  // The same call twice gives the same bits.
  const y2 = lg.forward(x.gpu);
  assert.deepStrictEqual(y2.toFloat32Array(), yg.toFloat32Array());
  return { ey, edx };
}

test('kernelStats reports the sm_90 kernel usable exactly on a cc 9.0 GPU', () => {
  const s = cuda.kernelStats();
  assert.strictEqual(s.sm90GemmUsable, hopper, `${lk.backendInfo().cudaDevice}: ${JSON.stringify(s)}`);
  assert.strictEqual(typeof s.sm90GemmLaunches, 'number');
});

const CASES = [
  // tiles cut short in every direction; one adapter
  ['bf16, one adapter, 300x1000 -> 520', { inF: 1000, outF: 520, adapters: [{ r: 16, alpha: 32 }], dtype: 'bf16' }, 300],
  // rank 72: the adapter spans two K blocks, the second with one k16 step
  ['bf16, r = 72 and r = 8 with different scales', { inF: 512, outF: 264, adapters: [{ r: 72, alpha: 5 }, { r: 8, alpha: 64 }], dtype: 'bf16' }, 130],
  // fan_in_fan_out: W is [in, out], the other B layout in both passes
  ['bf16, fan_in_fan_out, no bias', { inF: 136, outF: 264, adapters: [{ r: 8, alpha: 16 }], dtype: 'bf16', fifo: true, bias: false }, 257],
  ['f16, two adapters', { inF: 256, outF: 776, adapters: [{ r: 16, alpha: 16 }, { r: 32, alpha: 8 }], dtype: 'f16' }, 200],
  // four adapters: the most one launch takes
  ['bf16, four adapters', { inF: 384, outF: 512, adapters: [8, 16, 24, 32].map((r) => ({ r, alpha: r / 2 })), dtype: 'bf16' }, 96],
  // many tiles (group ordering over 16 x 3 tiles)
  ['bf16, 2048x1024 -> 768, r 64', { inF: 1024, outF: 768, adapters: [{ r: 64, alpha: 128 }], dtype: 'bf16' }, 2048],
];
for (const [name, opts, n] of CASES) test(`sm_90 path: ${name}`, () => check(opts, n));

test('fallbacks to cuBLASLt: rank not a multiple of 8, five adapters, width not a multiple of 8', () => {
  check({ inF: 256, outF: 264, adapters: [{ r: 12, alpha: 24 }], dtype: 'bf16' }, 100, { expectLaunch: false });
  check({ inF: 256, outF: 264, adapters: [8, 8, 8, 8, 8].map((r) => ({ r, alpha: 8 })), dtype: 'bf16' }, 100, { expectLaunch: false });
  check({ inF: 256, outF: 260, adapters: [{ r: 8, alpha: 8 }], dtype: 'bf16' }, 100, { expectLaunch: false });
});

test('forced, the kernel also takes small batches (40 rows)', () => {
  check({ inF: 256, outF: 264, adapters: [{ r: 8, alpha: 8 }], dtype: 'bf16' }, 40);
});

test('by default the path is chosen by timing once per shape and then kept', () => {
  // A child without LORAKIT_CUDA_GEMM: the first forward times both paths (5 kernel launches: 2
  // warm-up, 3 timed) and runs the faster; later calls of that shape repeat the choice.
  const script = `
    const lk = require(${JSON.stringify(path.resolve(__dirname, '../dist'))});
    const { LoraLinear, Tensor, cuda } = lk;
    const W = Tensor.from(new Float32Array(1024 * 1024).map((_, i) => Math.sin(i) * 0.05), [1024, 1024], { dtype: 'bf16', device: 'cuda' });
    const l = new LoraLinear({ weight: W }).addAdapter('a', { r: 16, loraAlpha: 32, dtype: 'bf16', initLoraWeights: false, seed: 1 }).eval();
    const x = Tensor.from(new Float32Array(512 * 1024).map((_, i) => Math.cos(i)), [512, 1024], { dtype: 'bf16', device: 'cuda' });
    const counts = [];
    const small = Tensor.from(new Float32Array(40 * 1024).fill(0.5), [40, 1024], { dtype: 'bf16', device: 'cuda' });
    l.forward(small); counts.push(cuda.kernelStats().sm90GemmLaunches);
    const y1 = l.forward(x).toFloat32Array(); counts.push(cuda.kernelStats().sm90GemmLaunches);
    const y2 = l.forward(x).toFloat32Array(); counts.push(cuda.kernelStats().sm90GemmLaunches);
    const y3 = l.forward(x).toFloat32Array(); counts.push(cuda.kernelStats().sm90GemmLaunches);
    console.log(JSON.stringify({ counts, same: y1.every((v, i) => v === y2[i] && v === y3[i]) }));`;
  const env = { ...process.env };
  delete env.LORAKIT_CUDA_GEMM;
  const r = spawnSync(process.execPath, ['-e', script], { env, encoding: 'utf8' });
  assert.strictEqual(r.status, 0, r.stderr);
  const { counts, same } = JSON.parse(r.stdout.trim().split('\n').pop());
  assert.ok(same, 'repeated calls give the same bits');
  assert.strictEqual(counts[0], 0, 'below 64 rows the kernel is not considered');
  if (!hopper) return assert.deepStrictEqual(counts, [0, 0, 0, 0]);
  const chose = counts[1] === 6;
  assert.deepStrictEqual(counts, chose ? [0, 6, 7, 8] : [0, 5, 5, 5], `launch counts ${counts}`);
});

test('the LoRA term is large enough here that dropping it would fail the tolerance', () => {
  // Same layer with the adapter disabled on the gpu only: the outputs must differ by far more than TOL.
  const { lc, lg } = layers({ inF: 1000, outF: 520, adapters: [{ r: 16, alpha: 32 }], dtype: 'bf16' });
  const x = pair([300, 1000], 'bf16', 1);
  lg.enableAdapters(false);
  const e = relErr(lg.forward(x.gpu).toFloat32Array(), lc.forward(x.cpu).toFloat32Array());
  assert.ok(e > 0.1, `the adapter's share of y is only ${e}`);
});

// DoRA's eval forward through the kernel: k = m/‖W + s·B·A‖ per column and the bias come from the
// tile's epilogue table (shared memory). Columns 520 cut the second 256-wide tile short; a magnitude
// far from the norm makes a wrong or shifted k fail, and so does a bias read for the wrong column.
for (const withBias of [false, true])
  test(`DoRA eval forward${withBias ? ' with a bias' : ''} through the kernel: k and the bias per column match the cpu`, () => {
    const inF = 1000, outF = 520, n = 300, dtype = 'bf16';
    const W = pair([outF, inF], dtype, 0.05), b = pair([outF], dtype, 0.5), x = pair([n, inF], dtype, 1);
    const mk = (dev) => {
      const l = new LoraLinear({ weight: W[dev], bias: withBias ? b[dev] : null });
      l.addAdapter('d', { r: 16, loraAlpha: 32, dtype, useDora: true, initLoraWeights: false, seed: 21 });
      const m = l.loraMagnitude.get('d').toFloat32Array().map((v, i) => v * (0.25 + (i % 11) / 5));
      l.loraMagnitude.get('d').copyFrom(Tensor.from(m, [outF], { dtype, device: dev === 'gpu' ? 'cuda' : 'cpu' }));
      return l.eval();
    };
    const lc = mk('cpu'), lg = mk('gpu');
    const yc = lc.forward(x.cpu).toFloat32Array();
    lg.forward(x.gpu); // the first eval call computes and caches the norm
    const before = cuda.kernelStats().sm90GemmLaunches;
    const yg = lg.forward(x.gpu).toFloat32Array();
    assert.strictEqual(cuda.kernelStats().sm90GemmLaunches - before, expectKernel ? 1 : 0, 'sm_90 launches');
    const e = relErr(yg, yc);
    assert.ok(e <= TOL.bf16, `y: ${e}`);
    // k matters here: the same layer without DoRA's scale is far off
    const plain = new LoraLinear({ weight: W.gpu, bias: withBias ? b.gpu : null });
    plain.addAdapter('d', { r: 16, loraAlpha: 32, dtype, initLoraWeights: false, seed: 21 });
    assert.ok(relErr(plain.forward(x.gpu).toFloat32Array(), yc) > 0.1, 'k is close to 1 here');
  });
