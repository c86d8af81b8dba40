/**
 * quantLoraForward / quantLinearBackward on the CPU against a float64 reference computed on the
 * dequantised weight (relative error 1e-5 in f32 math), every format, two adapters and a bias, on
 * both the few-token path (each task decodes its own chunks) and the many-token path (wide chunks,
 * several of them), plus 16-bit activations and the async forms.
 */
import { Rng, Tensor } from '../lib';
import { QuantFormatName, call, callAsync } from '../lib/native';
import { dequantizeNative, quantizeNative, specOf } from './helpers/quant_ref';
import { matmul } from './helpers/reference';

const FORMATS: QuantFormatName[] = ['int8', 'nf4', 'fp4', 'q8_0', 'q4_0', 'q4_k', 'q6_k'];

function gaussian(n: number, seed: number, std = 1): Float32Array {
  return new Rng(seed).fillNormal(new Float32Array(n), 0, std);
}
function relErr(got: ArrayLike<number>, ref: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < ref.length; i++) {
    num = Math.max(num, Math.abs(got[i] - ref[i]));
    den = Math.max(den, Math.abs(ref[i]));
  }
  return num / den;
}

interface Case {
  n: number;
  rows: number; // out features
  cols: number; // in features
}
// n ≤ 8: the decode GEMV (rows 70: five tasks of 16 rows, the last one short); n = 12: chunks of
// 16 rows per task through the GEMM; rows 600 with n = 40: two 512-row chunks on the many-token
// path, forward and backward.
const CASES: Case[] = [
  { n: 1, rows: 70, cols: 256 },
  { n: 3, rows: 70, cols: 256 },
  { n: 12, rows: 70, cols: 256 },
  { n: 40, rows: 600, cols: 256 },
];

describe.each(CASES)('n = $n, W [$rows, $cols]', ({ n, rows, cols }) => {
  const w = gaussian(rows * cols, 1, 0.05);
  const x = gaussian(n * cols, 2);
  const bias = gaussian(rows, 3);
  const rs = [4, 8];
  const As = rs.map((r, i) => gaussian(r * cols, 10 + i, 0.1));
  const Bs = rs.map((r, i) => gaussian(rows * r, 20 + i, 0.1));
  const scales = [0.5, 2];
  const dy = gaussian(n * rows, 4);

  test.each(FORMATS)('%s: forward (u outputs too) and backward (dx, dA, dB) match float64 on deq(W)', (format) => {
    const spec = specOf(format, rows, cols, format === 'nf4' ? { doubleQuant: true } : {});
    const { q } = quantizeNative(w, spec);
    const Wd = dequantizeNative(q, spec);
    const xt = Tensor.from(x, [n, cols]);
    const At = As.map((a, i) => Tensor.from(a, [rs[i], cols]));
    const Bt = Bs.map((b, i) => Tensor.from(b, [rows, rs[i]]));
    const ut = rs.map((r) => Tensor.zeros([n, r]));
    const y = Tensor.zeros([n, rows]);
    const bt = Tensor.from(bias, [rows]);
    call((b) => b.quantLoraForward(xt.handle, q.handle, spec, bt.handle, rs.map((_, i) => [At[i].handle, Bt[i].handle, scales[i], ut[i].handle]), y.handle));

    const us = rs.map((r, a) => matmul(n, r, cols, (i, p) => x[i * cols + p], (p, j) => As[a][j * cols + p]));
    const yref = matmul(n, rows, cols, (i, p) => x[i * cols + p], (p, j) => Wd[j * cols + p]);
    for (let a = 0; a < rs.length; a++) {
      const d = matmul(n, rows, rs[a], (i, p) => us[a][i * rs[a] + p], (p, j) => Bs[a][j * rs[a] + p]);
      for (let i = 0; i < yref.length; i++) yref[i] += scales[a] * d[i];
    }
    for (let i = 0; i < yref.length; i++) yref[i] += bias[i % rows];
    expect(relErr(y.toFloat32Array(), yref)).toBeLessThan(1e-5);
    for (let a = 0; a < rs.length; a++) expect(relErr(ut[a].toFloat32Array(), us[a])).toBeLessThan(1e-5);

    const dyt = Tensor.from(dy, [n, rows]);
    const dx = Tensor.zeros([n, cols]);
    const dA = rs.map((r) => Tensor.zeros([r, cols]));
    const dB = rs.map((r) => Tensor.zeros([rows, r]));
    const terms = rs.map((_, a) => ({ xa: xt.handle, u: ut[a].handle, A: At[a].handle, B: Bt[a].handle, scale: scales[a], p: 0, seed: 0, stream: 0, dA: dA[a].handle, dB: dB[a].handle }));
    call((b) => b.quantLinearBackward(dyt.handle, q.handle, spec, terms, dx.handle));

    const dxref = matmul(n, cols, rows, (i, p) => dy[i * rows + p], (p, j) => Wd[p * cols + j]);
    for (let a = 0; a < rs.length; a++) {
      const r = rs[a];
      const g = matmul(n, r, rows, (i, p) => scales[a] * dy[i * rows + p], (p, j) => Bs[a][p * r + j]);
      const gA = matmul(n, cols, r, (i, p) => g[i * r + p], (p, j) => As[a][p * cols + j]);
      for (let i = 0; i < dxref.length; i++) dxref[i] += gA[i];
      const dAref = matmul(r, cols, n, (i, p) => g[p * r + i], (p, j) => x[p * cols + j]);
      const dBref = matmul(rows, r, n, (i, p) => scales[a] * dy[p * rows + i], (p, j) => us[a][p * r + j]);
      expect(relErr(dA[a].toFloat32Array(), dAref)).toBeLessThan(1e-5);
      expect(relErr(dB[a].toFloat32Array(), dBref)).toBeLessThan(1e-5);
    }
    expect(relErr(dx.toFloat32Array(), dxref)).toBeLessThan(1e-5);

    // Without adapters and dx only; no dx at all is allowed too.
    const dx2 = Tensor.zeros([n, cols]);
    call((b) => b.quantLinearBackward(dyt.handle, q.handle, spec, [], dx2.handle));
    const base = matmul(n, cols, rows, (i, p) => dy[i * rows + p], (p, j) => Wd[p * cols + j]);
    expect(relErr(dx2.toFloat32Array(), base)).toBeLessThan(1e-5);
    expect(() => call((b) => b.quantLinearBackward(dyt.handle, q.handle, spec, terms, null))).not.toThrow();
    for (const t of [q, xt, y, bt, dyt, dx, dx2, ...At, ...Bt, ...ut, ...dA, ...dB]) t.dispose();
  });
});

describe('the same results as the float ops on deq(W)', () => {
  test.each([2, 20])('n = %d: backward with a dropout term equals linearBackward over the dequantised f32 W', (n) => {
    const rows = 96;
    const cols = 128;
    const spec = specOf('nf4', rows, cols);
    const { q } = quantizeNative(gaussian(rows * cols, 31, 0.05), spec);
    const W = Tensor.from(dequantizeNative(q, spec), [rows, cols]);
    const x = Tensor.from(gaussian(n * cols, 32), [n, cols]);
    const dy = Tensor.from(gaussian(n * rows, 33), [n, rows]);
    const A = [Tensor.from(gaussian(4 * cols, 34, 0.1), [4, cols]), Tensor.from(gaussian(2 * cols, 35, 0.1), [2, cols])];
    const B = [Tensor.from(gaussian(rows * 4, 36, 0.1), [rows, 4]), Tensor.from(gaussian(rows * 2, 37, 0.1), [rows, 2])];
    const u = [Tensor.zeros([n, 4]), Tensor.zeros([n, 2])];
    const y1 = Tensor.zeros([n, rows]);
    const y2 = Tensor.zeros([n, rows]);
    const ad = A.map((a, i) => [a.handle, B[i].handle, 0.5 + i, u[i].handle] as [typeof a.handle, typeof a.handle, number, typeof a.handle]);
    call((b) => b.loraForward(x.handle, W.handle, null, false, ad, y1.handle));
    call((b) => b.quantLoraForward(x.handle, q.handle, spec, null, ad, y2.handle));
    expect(relErr(y2.toFloat32Array(), y1.toFloat32Array())).toBeLessThan(1e-5);
    const run = (quant: boolean) => {
      const dx = Tensor.zeros([n, cols]);
      const dA = A.map((a) => Tensor.zeros(a.shape));
      const terms = A.map((a, i) => ({ xa: x.handle, u: u[i].handle, A: a.handle, B: B[i].handle, scale: 0.5 + i, p: i === 1 ? 0.3 : 0, seed: 5, stream: 9, dA: dA[i].handle, dB: null }));
      if (quant) call((b) => b.quantLinearBackward(dy.handle, q.handle, spec, terms, dx.handle));
      else call((b) => b.linearBackward(dy.handle, W.handle, false, terms, dx.handle));
      return [dx, ...dA].map((t) => t.toFloat32Array());
    };
    const ref = run(false);
    const got = run(true);
    for (let i = 0; i < ref.length; i++) expect(relErr(got[i], ref[i])).toBeLessThan(1e-5);
  });
});

// bf16 activations use deq(W) rounded to bf16 (bnb dequantises to its compute dtype): the
// reference is float64 over those weights, the result rounded once to bf16.
describe('bf16 activations and the async forms', () => {
  const bf = (v: Float32Array) => Tensor.from(v, [v.length], { dtype: 'bf16' }).toFloat32Array();
  test.each(['q4_0', 'nf4', 'int8', 'q8_0', 'q4_k', 'q6_k'] as const)('%s: bf16 x, y, A, B and an f16 bias, n = 5 (decode GEMV) and n = 20 (GEMM); dx; dequantize to bf16', async (format) => {
    const rows = 48;
    const cols = 256;
    const spec = specOf(format, rows, cols);
    const { q } = quantizeNative(gaussian(rows * cols, 7, 0.05), spec);
    const Wd = dequantizeNative(q, spec);
    const Wb = bf(Wd);
    const bias = Tensor.from(gaussian(rows, 9), [rows], { dtype: 'f16' });
    const A = Tensor.from(gaussian(4 * cols, 10, 0.1), [4, cols], { dtype: 'bf16' });
    const B = Tensor.from(gaussian(rows * 4, 11, 0.1), [rows, 4], { dtype: 'bf16' });
    const [Av, Bv, bv] = [A.toFloat32Array(), B.toFloat32Array(), bias.toFloat32Array()];
    const check = (got: Float32Array, ref: Float64Array) => {
      const m = Math.max(...Array.from(ref, Math.abs));
      for (let i = 0; i < got.length; i++) expect(Math.abs(got[i] - ref[i])).toBeLessThanOrEqual(Math.abs(ref[i]) * 2 ** -8 + 1e-5 * m);
    };
    for (const n of [5, 20]) {
      const x = Tensor.from(gaussian(n * cols, 8 + n), [n, cols], { dtype: 'bf16' });
      const xv = x.toFloat32Array();
      const y = Tensor.zeros([n, rows], { dtype: 'bf16' });
      await callAsync((b) => b.quantLoraForwardAsync(x.handle, q.handle, spec, bias.handle, [[A.handle, B.handle, 1.5, null]], y.handle));
      const u = matmul(n, 4, cols, (i, p) => xv[i * cols + p], (p, j) => Av[j * cols + p]);
      const ref = matmul(n, rows, cols, (i, p) => xv[i * cols + p], (p, j) => Wb[j * cols + p]);
      const d = matmul(n, rows, 4, (i, p) => u[i * 4 + p], (p, j) => Bv[j * 4 + p]);
      for (let i = 0; i < ref.length; i++) ref[i] += 1.5 * d[i] + bv[i % rows];
      check(y.toFloat32Array(), ref);
      const dy = Tensor.from(gaussian(n * rows, 12), [n, rows], { dtype: 'bf16' });
      const dyv = dy.toFloat32Array();
      const dx = Tensor.zeros([n, cols], { dtype: 'bf16' });
      call((b) => b.quantLinearBackward(dy.handle, q.handle, spec, [], dx.handle));
      check(dx.toFloat32Array(), matmul(n, cols, rows, (i, p) => dyv[i * rows + p], (p, j) => Wb[p * cols + j]));
    }
    const deq = Tensor.zeros([rows, cols], { dtype: 'bf16' });
    await callAsync((b) => b.dequantizeAsync(q.handle, spec, deq.handle));
    expect(Array.from(deq.toFloat32Array())).toEqual(Array.from(Wb));
  });
});
