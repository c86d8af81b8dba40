/**
 * The decode GEMV (n ≤ 8) over the block layouts its kernels split on: nf4 / fp4 with blocks of 64,
 * 128 and 256 (the AVX-512 kernel reads 128 values per load and scales them per 64-value half),
 * widths that are and are not multiples of 128, double quant, and every token count 1..8, against
 * float64 on deq(W), in f32 and with bf16 activations (the vdpbf16ps kernels: nf4 / fp4 blocks of
 * ≥ 64, q4_0 rows of a multiple of 64; 37 rows leave rows outside the 4- and 2-row streams). CI
 * runs it once per CPU path (.ci/run).
 */
import { Rng, Tensor } from '../lib';
import { QuantFormatName, call } from '../lib/native';
import { dequantizeNative, quantizeNative, specOf } from './helpers/quant_ref';
import { matmul } from './helpers/reference';

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

const CASES: [QuantFormatName, number, number, boolean][] = [
  ['nf4', 192, 64, false],
  ['nf4', 160, 32, false],
  ['nf4', 384, 128, true],
  ['nf4', 512, 256, false],
  ['fp4', 640, 64, true],
  ['q4_0', 96, 32, false],
  ['q4_0', 192, 32, false],
  ['q8_0', 160, 32, false],
  ['int8', 200, 200, false],
  ['int8', 256, 256, false],
  ['q4_k', 512, 256, false],
  ['q6_k', 768, 256, false],
];

describe.each(CASES)('%s, cols %d, block %d, double quant %s', (format, cols, blockSize, doubleQuant) => {
  const rows = 37;
  const spec = specOf(format, rows, cols, format === 'int8' || format.startsWith('q') ? {} : { blockSize, doubleQuant });
  const { q } = quantizeNative(gaussian(rows * cols, 7, 0.05), spec);
  const Wd = dequantizeNative(q, spec);
  afterAll(() => q.dispose());

  test.each([1, 2, 3, 4, 5, 6, 7, 8])('n = %d: y = x·deq(W)ᵀ', (n) => {
    const x = gaussian(n * cols, 100 + n);
    const xt = Tensor.from(x, [n, cols]);
    const y = Tensor.zeros([n, rows]);
    call((b) => b.quantLoraForward(xt.handle, q.handle, spec, null, [], y.handle));
    const ref = matmul(n, rows, cols, (i, p) => x[i * cols + p], (p, j) => Wd[j * cols + p]);
    expect(relErr(y.toFloat32Array(), ref)).toBeLessThan(1e-5);
    xt.dispose();
    y.dispose();
  });

  test.each([1, 2, 3, 8])('bf16 activations, f32 output, n = %d: float64 over deq(W) rounded to bf16', (n) => {
    const bf = (v: Float32Array) => Tensor.from(v, [v.length], { dtype: 'bf16' }).toFloat32Array();
    const x = bf(gaussian(n * cols, 70 + n));
    const Wb = bf(Wd);
    const xt = Tensor.from(x, [n, cols], { dtype: 'bf16' });
    const y = Tensor.zeros([n, rows]);
    call((b) => b.quantLoraForward(xt.handle, q.handle, spec, null, [], y.handle));
    const ref = matmul(n, rows, cols, (i, p) => x[i * cols + p], (p, j) => Wb[j * cols + p]);
    expect(relErr(y.toFloat32Array(), ref)).toBeLessThan(1e-5);
    xt.dispose();
    y.dispose();
  });

  test('bf16 activations, n = 3: float64 over deq(W) rounded to bf16, the result rounded once', () => {
    const n = 3;
    const bf = (v: Float32Array) => Tensor.from(v, [v.length], { dtype: 'bf16' }).toFloat32Array();
    const x = bf(gaussian(n * cols, 55));
    const Wb = bf(Wd);
    const xt = Tensor.from(x, [n, cols], { dtype: 'bf16' });
    const y = Tensor.zeros([n, rows], { dtype: 'bf16' });
    call((b) => b.quantLoraForward(xt.handle, q.handle, spec, null, [], y.handle));
    const ref = matmul(n, rows, cols, (i, p) => x[i * cols + p], (p, j) => Wb[j * cols + p]);
    const got = y.toFloat32Array();
    let m = 0;
    for (const v of ref) m = Math.max(m, Math.abs(v));
    for (let i = 0; i < got.length; i++) expect(Math.abs(got[i] - ref[i])).toBeLessThanOrEqual(Math.abs(ref[i]) * 2 ** -8 + 1e-5 * m);
    xt.dispose();
    y.dispose();
  });
});
