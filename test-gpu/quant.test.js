// Quantized bases on cuda (native/cuda/quant.cu, quant_linear.cu) through the raw binding: for every
// format the cuda quantize writes the cpu's bytes (several shapes, f32 and bf16 weights, double
// quant), dequantize gives the cpu's values bit for bit (f32, f16, bf16 outputs), and
// quantLoraForward / quantLinearBackward (two adapters, bias; f32, f16, bf16; the n ≤ 16 decode
// kernel and the chunked-GEMM path, with a weight big enough for several chunks) match a float64
// reference computed on the dequantised weight: 1e-5 in f32, 1e-2 in 16-bit; for n > 16 the forward
// through the sm_90 kernel (W decoded into wgmma's register operand; every tile shape) and the
// chunked path, each forced (LORAKIT_QUANT_GEMM), and the default path.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { lk, relErr, randomArray, DEVICE, PARITY } = require('./helpers');
const { call } = require('../dist/native');
const { Tensor } = lk;

const FORMATS = ['int8', 'nf4', 'fp4', 'q8_0', 'q4_0', 'q4_k', 'q6_k'];
const BLOCK = { q8_0: 32, q4_0: 32, q4_k: 256, q6_k: 256 };
const spec = (format, rows, cols, opts = {}) => ({
  format,
  rows,
  cols,
  blockSize: format === 'int8' ? cols : opts.blockSize || BLOCK[format] || 64,
  doubleQuant: !!opts.doubleQuant,
});

/** Roughly Gaussian weights (sum of uniforms), seeded. */
function gaussian(n, seed, scale) {
  const u = [0, 1, 2, 3].map((k) => randomArray(n, seed * 7 + k, 1));
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (u[0][i] + u[1][i] + u[2][i] + u[3][i]) * 0.866 * scale;
  return out;
}

function quantize(w, s, device) {
  const nbytes = call((b) => b.quantLayout(s)).nbytes;
  const q = Tensor.zeros([nbytes / 4], { dtype: 'i32', device });
  call((b) => b.quantize(w.handle, s, q.handle));
  return q;
}

function dequantize(q, s, dtype, device) {
  const out = Tensor.empty([s.rows, s.cols], { dtype, device });
  call((b) => b.dequantize(q.handle, s, out.handle));
  return out;
}

const sameBytes = (a, b, what) => {
  const x = Buffer.from(a.buffer, a.byteOffset, a.byteLength);
  const y = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  if (x.equals(y)) return;
  let i = 0;
  while (i < x.length && x[i] === y[i]) i++;
  assert.fail(`${what}: bytes differ first at ${i} of ${x.length} (cuda ${x[i]}, cpu ${y[i]})`);
};

// [format, rows, cols, opts]
const BYTE_CASES = [];
for (const f of FORMATS) {
  BYTE_CASES.push([f, 48, 512, {}]);
  BYTE_CASES.push([f, 33, 768, { wdtype: 'bf16' }]);
}
BYTE_CASES.push(['int8', 20, 200, {}]);
BYTE_CASES.push(['nf4', 40, 512, { doubleQuant: true }]);
BYTE_CASES.push(['nf4', 300, 1024, { doubleQuant: true, blockSize: 64 }]);  // 4800 absmax: several 256-blocks
BYTE_CASES.push(['fp4', 64, 256, { doubleQuant: true, blockSize: 128 }]);
BYTE_CASES.push(['nf4', 8, 4096, { blockSize: 4096 }]);
BYTE_CASES.push(['fp4', 17, 96, { blockSize: 32 }]);

for (const [format, rows, cols, opts] of BYTE_CASES) {
  const name = `${format} [${rows}, ${cols}]${opts.doubleQuant ? ' dq' : ''}${opts.blockSize ? ` block ${opts.blockSize}` : ''}${opts.wdtype ? ` ${opts.wdtype} w` : ''}`;
  test(`quantize ${name}: cuda bytes = cpu bytes; dequantize equal (f32, f16, bf16)`, PARITY, () => {
    const s = spec(format, rows, cols, opts);
    const data = gaussian(rows * cols, rows * 31 + cols, 0.05);
    data[3] = 0.3;  // an outlier, as real weights have
    const wdtype = opts.wdtype || 'f32';
    const qc = quantize(Tensor.from(data, [rows, cols], { dtype: wdtype }), s, 'cpu');
    const qg = quantize(Tensor.from(data, [rows, cols], { dtype: wdtype, device: DEVICE }), s, DEVICE);
    sameBytes(qg.toInt32Array(), qc.toInt32Array(), name);
    for (const dtype of ['f32', 'f16', 'bf16']) {
      const dc = dequantize(qc, s, dtype, 'cpu');
      const dg = dequantize(qg, s, dtype, DEVICE);
      if (dtype === 'f32') sameBytes(dg.toFloat32Array(), dc.toFloat32Array(), `${name} dequantize f32`);
      else sameBytes(dg.handle.read('bits'), dc.handle.read('bits'), `${name} dequantize ${dtype}`);
      dc.dispose();
      dg.dispose();
    }
    // The format's error on these weights stays within its bound (relative, norm-wise).
    const deq = dequantize(qc, s, 'f32', 'cpu').toFloat32Array();
    const bound = { int8: 0.01, nf4: 0.12, fp4: 0.2, q8_0: 0.01, q4_0: 0.15, q4_k: 0.15, q6_k: 0.05 }[format];
    assert.ok(relErr(deq, data) < bound, `${name}: quantisation error ${relErr(deq, data)} over ${bound}`);
  });
}

/** The float64 reference of the forward and the backward on the dequantised weight. */
function reference({ x, W, bias, ads, dy, n, inF, outF }) {
  const y = new Float64Array(n * outF);
  const us = ads.map((a) => {
    const u = new Float64Array(n * a.r);
    for (let i = 0; i < n; i++)
      for (let q = 0; q < a.r; q++) {
        let s = 0;
        for (let k = 0; k < inF; k++) s += x[i * inF + k] * a.A[q * inF + k];
        u[i * a.r + q] = s;
      }
    return u;
  });
  for (let i = 0; i < n; i++)
    for (let j = 0; j < outF; j++) {
      let s = bias ? bias[j] : 0;
      for (let k = 0; k < inF; k++) s += x[i * inF + k] * W[j * inF + k];
      ads.forEach((a, t) => {
        let l = 0;
        for (let q = 0; q < a.r; q++) l += us[t][i * a.r + q] * a.B[j * a.r + q];
        s += a.scale * l;
      });
      y[i * outF + j] = s;
    }
  const dx = new Float64Array(n * inF);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < outF; j++) {
      const d = dy[i * outF + j];
      if (d === 0) continue;
      for (let k = 0; k < inF; k++) dx[i * inF + k] += d * W[j * inF + k];
    }
  const grads = ads.map((a, t) => {
    const g = new Float64Array(n * a.r);  // scale·dy·B
    for (let i = 0; i < n; i++)
      for (let q = 0; q < a.r; q++) {
        let s = 0;
        for (let j = 0; j < outF; j++) s += dy[i * outF + j] * a.B[j * a.r + q];
        g[i * a.r + q] = a.scale * s;
      }
    for (let i = 0; i < n; i++)
      for (let q = 0; q < a.r; q++) {
        const gv = g[i * a.r + q];
        for (let k = 0; k < inF; k++) dx[i * inF + k] += gv * a.A[q * inF + k];
      }
    const dA = new Float64Array(a.r * inF);
    for (let q = 0; q < a.r; q++)
      for (let i = 0; i < n; i++) {
        const gv = g[i * a.r + q];
        for (let k = 0; k < inF; k++) dA[q * inF + k] += gv * x[i * inF + k];
      }
    const dB = new Float64Array(outF * a.r);
    for (let j = 0; j < outF; j++)
      for (let q = 0; q < a.r; q++) {
        let s = 0;
        for (let i = 0; i < n; i++) s += dy[i * outF + j] * us[t][i * a.r + q];
        dB[j * a.r + q] = a.scale * s;
      }
    return { dA, dB };
  });
  return { y, dx, grads };
}

/** A quantized layer's inputs: W quantized on the device (and its dequantised f32 values), x, a bias
 * and `adapters` adapters (r 8 and 16, scales 2 and 0.5), all seeded from `seed`. */
function layerInputs(format, outF, inF, n, dtype, opts, seed, adapters = 2) {
  const s = spec(format, outF, inF, opts);
  const make = (shape, scale) => Tensor.from(randomArray(shape.reduce((a, b) => a * b, 1), seed++, scale), shape, { dtype, device: DEVICE });
  const w = Tensor.from(gaussian(outF * inF, seed++, 0.05), [outF, inF], { device: DEVICE });
  const q = quantize(w, s, DEVICE);
  const W = dequantize(q, s, 'f32', DEVICE).toFloat32Array();
  const x = make([n, inF], 1);
  const bias = make([outF], 0.5);
  const ads = [
    { r: 8, scale: 2, A: make([8, inF], 0.1), B: make([outF, 8], 0.1) },
    { r: 16, scale: 0.5, A: make([16, inF], 0.1), B: make([outF, 16], 0.1) },
  ].slice(0, adapters);
  const dispose = () => [w, q, x, bias, ...ads.flatMap((a) => [a.A, a.B])].forEach((t) => t.dispose());
  return { s, make, q, W, x, bias, ads, dispose };
}

/** Relative (norm-wise) error of got against want within tol, or a message naming what and the error. */
function assertClose(got, want, what, tol) {
  const e = relErr(got, want);
  assert.ok(e <= tol, `${what}: relative error ${e.toExponential(3)} over ${tol}`);
}

// [format, out, in, n, dtype, opts]: n ≤ 16 with a 16-bit x takes the decode kernel, the rest the chunked GEMMs.
const LINEAR_CASES = [];
for (const f of FORMATS) {
  LINEAR_CASES.push([f, 72, 512, 3, 'bf16', {}]);
  LINEAR_CASES.push([f, 40, 768, 16, 'f16', {}]);
  LINEAR_CASES.push([f, 56, 512, 7, 'f32', {}]);
  LINEAR_CASES.push([f, 64, 256, 37, 'bf16', {}]);
}
LINEAR_CASES.push(['nf4', 96, 4096, 2, 'bf16', { doubleQuant: true }]);  // split K in the decode kernel
LINEAR_CASES.push(['nf4', 200, 1024, 9, 'bf16', { doubleQuant: true }]);  // a partial feature group
LINEAR_CASES.push(['fp4', 48, 512, 24, 'f32', { doubleQuant: true, blockSize: 128 }]);
LINEAR_CASES.push(['int8', 30, 200, 5, 'bf16', {}]);  // in not a multiple of 32: chunked path
LINEAR_CASES.push(['nf4', 2304, 2048, 20, 'f32', {}]);  // 18.9 MB of f32 weight: two row chunks and two column chunks

for (const [format, outF, inF, n, dtype, opts] of LINEAR_CASES) {
  const name = `${format}${opts.doubleQuant ? ' dq' : ''} [${outF}, ${inF}] n=${n} ${dtype}`;
  test(`quantLoraForward / quantLinearBackward ${name}: two adapters and bias against float64`, () => {
    const L = layerInputs(format, outF, inF, n, dtype, opts, outF * 7 + inF + n);
    const { s, make, q, W, x, bias, ads } = L;
    const us = ads.map((a) => Tensor.empty([n, a.r], { dtype, device: DEVICE }));
    const y = Tensor.empty([n, outF], { dtype, device: DEVICE });
    call((b) => b.quantLoraForward(x.handle, q.handle, s, bias.handle, ads.map((a, i) => [a.A.handle, a.B.handle, a.scale, us[i].handle]), y.handle));
    const dy = make([n, outF], 1);
    const dx = Tensor.empty([n, inF], { dtype, device: DEVICE });
    const dA = ads.map((a) => Tensor.empty([a.r, inF], { dtype, device: DEVICE }));
    const dB = ads.map((a) => Tensor.empty([outF, a.r], { dtype, device: DEVICE }));
    const terms = ads.map((a, i) => ({ xa: x.handle, u: us[i].handle, A: a.A.handle, B: a.B.handle, scale: a.scale, p: 0, seed: 0, stream: 0, dA: dA[i].handle, dB: dB[i].handle }));
    call((b) => b.quantLinearBackward(dy.handle, q.handle, s, terms, dx.handle));
    const f = (t) => t.toFloat32Array();
    const ref = reference({
      x: f(x), W, bias: f(bias), dy: f(dy), n, inF, outF,
      ads: ads.map((a) => ({ r: a.r, scale: a.scale, A: f(a.A), B: f(a.B) })),
    });
    const tol = dtype === 'f32' ? 1e-5 : 1e-2;
    const check = (got, want, what, t = tol) => assertClose(got, want, `${name} ${what}`, t);
    check(f(y), ref.y, 'y');
    check(f(dx), ref.dx, 'dx');
    ads.forEach((a, i) => {
      check(f(dA[i]), ref.grads[i].dA, `dA[${i}]`, 2 * tol);
      check(f(dB[i]), ref.grads[i].dB, `dB[${i}]`, 2 * tol);
    });
    // dx may be null (a first layer): the adapters' gradients alone, unchanged.
    const dA2 = Tensor.empty([ads[0].r, inF], { dtype, device: DEVICE });
    call((b) => b.quantLinearBackward(dy.handle, q.handle, s, [{ ...terms[0], dA: dA2.handle, dB: null }], null));
    check(f(dA2), ref.grads[0].dA, 'dA (dx null)', 2 * tol);
    [y, dy, dx, dA2, ...us, ...dA, ...dB].forEach((t) => t.dispose());
    L.dispose();
  });
}

test('quantLoraForward is bitwise repeatable (decode kernel with split K, and chunked GEMMs)', () => {
  for (const [n, dtype] of [[4, 'bf16'], [64, 'bf16']]) {
    const s = spec('nf4', 256, 4096, { doubleQuant: true });
    const q = quantize(Tensor.from(gaussian(256 * 4096, 5, 0.05), [256, 4096], { device: DEVICE }), s, DEVICE);
    const x = Tensor.from(randomArray(n * 4096, 6, 1), [n, 4096], { dtype, device: DEVICE });
    const A = Tensor.from(randomArray(16 * 4096, 7, 0.1), [16, 4096], { dtype, device: DEVICE });
    const B = Tensor.from(randomArray(256 * 16, 8, 0.1), [256, 16], { dtype, device: DEVICE });
    const run = () => {
      const y = Tensor.empty([n, 256], { dtype, device: DEVICE });
      call((b) => b.quantLoraForward(x.handle, q.handle, s, null, [[A.handle, B.handle, 2, null]], y.handle));
      return y.handle.read('bits');
    };
    assert.deepStrictEqual(run(), run());
  }
});

// n above the decode kernel's range, 16-bit x, nf4/fp4: on Hopper the one-pass sm_90 kernel with W's
// codes decoded into wgmma's register operand (gemm_sm90_quant.cuh). y against float64 and against
// the chunked path (LORAKIT_QUANT_GEMM=sm90 / chunked force each); partial tiles of W's rows, of x's
// rows and of K (in % 64 = 32), double quant, blocks of 32 and 128, more row tiles than a tile group
// (9 > 8), and no adapters.
const SM90_CASES = [];
for (const n of [40, 256, 1024])
  for (const dtype of ['bf16', 'f16']) {
    SM90_CASES.push(['nf4', 320, 512, n, dtype, {}]);
    SM90_CASES.push(['fp4', 264, 544, n, dtype, { blockSize: 32, doubleQuant: n === 256 }]);
  }
SM90_CASES.push(['nf4', 512, 1024, 200, 'bf16', { doubleQuant: true, blockSize: 128 }]);
SM90_CASES.push(['nf4', 1152, 2048, 600, 'f16', {}]);
SM90_CASES.push(['fp4', 136, 96, 300, 'bf16', { blockSize: 32, adapters: 0 }]);

function forwardRef(x, W, bias, ads, n, inF, outF) {
  const us = ads.map((a) => {
    const u = new Float64Array(n * a.r);
    for (let i = 0; i < n; i++)
      for (let q = 0; q < a.r; q++) {
        let s = 0;
        for (let k = 0; k < inF; k++) s += x[i * inF + k] * a.A[q * inF + k];
        u[i * a.r + q] = s;
      }
    return u;
  });
  const y = new Float64Array(n * outF);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < outF; j++) {
      let s = bias[j];
      for (let k = 0; k < inF; k++) s += x[i * inF + k] * W[j * inF + k];
      ads.forEach((a, t) => {
        let l = 0;
        for (let q = 0; q < a.r; q++) l += us[t][i * a.r + q] * a.B[j * a.r + q];
        s += a.scale * l;
      });
      y[i * outF + j] = s;
    }
  return y;
}

for (const [format, outF, inF, n, dtype, opts] of SM90_CASES) {
  const name = `${format}${opts.doubleQuant ? ' dq' : ''}${opts.blockSize ? ` block ${opts.blockSize}` : ''} [${outF}, ${inF}] n=${n} ${dtype}${opts.adapters === 0 ? ' no adapters' : ''}`;
  test(`quantLoraForward ${name} (sm_90 kernel where usable): ${opts.adapters === 0 ? 'no adapters' : 'two adapters'} and bias against float64 and the chunked path`, PARITY, () => {
    const L = layerInputs(format, outF, inF, n, dtype, opts, outF * 13 + inF + n, opts.adapters ?? 2);
    const { s, q, W, x, bias, ads } = L;
    const forward = () => {
      const y = Tensor.empty([n, outF], { dtype, device: DEVICE });
      call((b) => b.quantLoraForward(x.handle, q.handle, s, bias.handle, ads.map((a) => [a.A.handle, a.B.handle, a.scale, null]), y.handle));
      const out = y.toFloat32Array();
      y.dispose();
      return out;
    };
    const withEnv = (env) => {
      Object.assign(process.env, env);
      try {
        return forward();
      } finally {
        for (const k of Object.keys(env)) delete process.env[k];
      }
    };
    const before = lk.cuda.kernelStats().sm90GemmLaunches;
    const y = withEnv({ LORAKIT_QUANT_GEMM: 'sm90' });
    if (lk.cuda.kernelStats().sm90GemmUsable)
      assert.strictEqual(lk.cuda.kernelStats().sm90GemmLaunches, before + 1, `${name}: the sm_90 kernel should take this forward`);
    const yChunked = withEnv({ LORAKIT_QUANT_GEMM: 'chunked' });
    const yDefault = forward();  // whichever path is the default gives one of the two
    const f = (t) => t.toFloat32Array();
    const ref = forwardRef(f(x), W, f(bias), ads.map((a) => ({ r: a.r, scale: a.scale, A: f(a.A), B: f(a.B) })), n, inF, outF);
    assertClose(y, ref, `${name} y (sm_90) against float64`, 1e-2);
    assertClose(yChunked, ref, `${name} y (chunked) against float64`, 1e-2);
    assertClose(y, yChunked, `${name} y against the chunked path`, 1e-2);
    assertClose(yDefault, y, `${name} the default path against sm_90`, 1e-2);
    // Every tile shape of the kernel: x tiles of 128 or 256 rows, clusters of 1 or 2 CTAs.
    for (const tn of ['128', '256'])
      for (const cluster of ['1', '2']) {
        const yv = withEnv({ LORAKIT_QUANT_GEMM: 'sm90', LORAKIT_SM90_QUANT_TN: tn, LORAKIT_SM90_QUANT_CLUSTER: cluster });
        assertClose(yv, ref, `${name} y (sm_90, x tile ${tn}, cluster ${cluster}) against float64`, 1e-2);
      }
    L.dispose();
  });
}
