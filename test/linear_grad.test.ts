/**
 * LoraLinear backward against central finite differences on random shapes (y is linear in x, in A
 * and in B separately, so the differences are exact up to f32 rounding), and the kernels against
 * float64 references on shapes that cross the GEMM's tile boundaries.
 */
import { LoraLinear, Tensor } from '../lib';
import { expectClose } from './helpers/golden';
import { loraLinearRef, matmul, randomArray } from './helpers/reference';

interface Setup {
  n: number;
  inF: number;
  outF: number;
  rs: number[];
  fifo: boolean;
  bias: boolean;
  dropout: number;
}

function build(s: Setup, seed: number): { layer: LoraLinear; x: Float32Array; dy: Float32Array } {
  const wShape = s.fifo ? [s.inF, s.outF] : [s.outF, s.inF];
  const layer = new LoraLinear({
    weight: Tensor.from(randomArray(s.inF * s.outF, seed), wShape),
    bias: s.bias ? Tensor.from(randomArray(s.outF, seed + 1), [s.outF]) : null,
    fanInFanOut: s.fifo,
  });
  s.rs.forEach((r, i) => layer.addAdapter(`a${i}`, { r, loraAlpha: 2 * r + i, initLoraWeights: false, seed: seed + 10 + i, loraDropout: s.dropout }));
  layer.setAdapter(s.rs.map((_, i) => `a${i}`));
  return { layer, x: randomArray(s.n * s.inF, seed + 2), dy: randomArray(s.n * s.outF, seed + 3) };
}

function loss(layer: LoraLinear, x: Float32Array, dy: Float32Array, shape: number[]): number {
  layer.manualSeed(99); // the same dropout masks on every evaluation
  const y = layer.forward(Tensor.from(x, shape)).toFloat32Array();
  let l = 0;
  for (let i = 0; i < y.length; i++) l += y[i] * dy[i];
  return l;
}

/** Checks `grad` against central differences of `loss` over a sample of coordinates of `param`. */
function checkParam(grad: Float32Array, values: Float32Array, set: (v: Float32Array) => void, f: () => number, what: string): void {
  const eps = 0.25;
  const step = Math.max(1, Math.floor(values.length / 24));
  let maxErr = 0;
  let scale = 1e-3;
  for (let i = 0; i < values.length; i += step) {
    const v = values.slice();
    v[i] = values[i] + eps;
    set(v);
    const lp = f();
    v[i] = values[i] - eps;
    set(v);
    const lm = f();
    const fd = (lp - lm) / (2 * eps);
    maxErr = Math.max(maxErr, Math.abs(fd - grad[i]));
    scale = Math.max(scale, Math.abs(fd));
  }
  set(values);
  if (maxErr / scale > 2e-3) throw new Error(`${what}: finite differences disagree (max error ${maxErr}, scale ${scale})`);
}

const SETUPS: Setup[] = [
  { n: 1, inF: 5, outF: 7, rs: [1], fifo: false, bias: true, dropout: 0 },
  { n: 6, inF: 13, outF: 9, rs: [3, 2], fifo: false, bias: false, dropout: 0 },
  { n: 4, inF: 11, outF: 17, rs: [4], fifo: true, bias: true, dropout: 0 },
  { n: 9, inF: 16, outF: 6, rs: [2, 5], fifo: true, bias: true, dropout: 0 },
  { n: 5, inF: 10, outF: 8, rs: [3], fifo: false, bias: true, dropout: 0.3 },
  { n: 7, inF: 12, outF: 9, rs: [2, 3], fifo: true, bias: false, dropout: 0.5 },
];

describe.each(SETUPS.map((s, i) => [i, s] as const))('finite differences, setup %i', (i, s) => {
  test(`n=${s.n} in=${s.inF} out=${s.outF} r=${s.rs} fifo=${s.fifo} dropout=${s.dropout}`, () => {
    const { layer, x, dy } = build(s, 100 + i * 17);
    const shape = [s.n, s.inF];
    layer.manualSeed(99);
    layer.forward(Tensor.from(x, shape));
    const { dx, grads } = layer.backward(Tensor.from(dy, [s.n, s.outF]));
    const f = () => loss(layer, xCur, dy, shape);
    let xCur = x;
    checkParam(dx.toFloat32Array(), x, (v) => (xCur = v), f, 'dx');
    xCur = x;
    for (const [name, g] of grads) {
      const A = layer.loraA.get(name)!;
      const B = layer.loraB.get(name)!;
      checkParam(g.loraA.toFloat32Array(), A.toFloat32Array(), (v) => A.copyFrom(v), f, `${name}.dA`);
      checkParam(g.loraB.toFloat32Array(), B.toFloat32Array(), (v) => B.copyFrom(v), f, `${name}.dB`);
    }
    expect(grads.size).toBe(s.rs.length);
  });
});

describe('dropout', () => {
  test('inverted scaling, keep fraction near 1 − p, off in eval, repeatable with manualSeed', () => {
    const inF = 64;
    const outF = 64;
    const n = 64;
    // W = 0 and B·A = I (r = in) isolate the dropped input: y = s·drop(x) with s = 1.
    const layer = new LoraLinear({ weight: Tensor.zeros([outF, inF]) });
    layer.addAdapter('d', { r: inF, loraAlpha: inF, loraDropout: 0.25 });
    const eye = new Float32Array(inF * inF).map((_, k) => (k % (inF + 1) === 0 ? 1 : 0));
    layer.loraA.get('d')!.copyFrom(eye);
    layer.loraB.get('d')!.copyFrom(eye);
    const x = Tensor.from(new Float32Array(n * inF).fill(1), [n, inF]);
    layer.manualSeed(5);
    const y1 = layer.forward(x).toFloat32Array();
    const kept = y1.filter((v) => v !== 0);
    expect(kept.every((v) => Math.abs(v - 1 / 0.75) < 1e-6)).toBe(true);
    expect(kept.length / y1.length).toBeGreaterThan(0.7);
    expect(kept.length / y1.length).toBeLessThan(0.8);
    const y2 = layer.forward(x).toFloat32Array();
    expect(Array.from(y2)).not.toEqual(Array.from(y1)); // a new mask each forward
    layer.manualSeed(5);
    expect(Array.from(layer.forward(x).toFloat32Array())).toEqual(Array.from(y1));
    layer.eval();
    expect(layer.forward(x).toFloat32Array().every((v) => Math.abs(v - 1) < 1e-6)).toBe(true);
  });
});

describe('kernels against float64 references across tile boundaries', () => {
  test.each([
    [1, 300, 270, [5]],
    [100, 300, 270, [5, 64]],
    [97, 257, 513, [16]],
  ])('n=%i in=%i out=%i r=%p', (n, inF, outF, rs) => {
    const W = randomArray(outF * inF, 1, 0.1);
    const b = randomArray(outF, 2);
    const x = randomArray(n * inF, 3);
    const dy = randomArray(n * outF, 4);
    const layer = new LoraLinear({ weight: Tensor.from(W, [outF, inF]), bias: Tensor.from(b, [outF]) });
    rs.forEach((r, i) => layer.addAdapter(`a${i}`, { r, loraAlpha: r + 3, initLoraWeights: false, seed: 7 + i }));
    layer.setAdapter(rs.map((_, i) => `a${i}`));
    const ads = rs.map((r, i) => ({
      A: layer.loraA.get(`a${i}`)!.toFloat32Array(),
      B: layer.loraB.get(`a${i}`)!.toFloat32Array(),
      r,
      s: layer.scaling.get(`a${i}`)!,
    }));
    const y = layer.forward(Tensor.from(x, [n, inF]));
    expectClose(y.toFloat32Array(), loraLinearRef(x, n, inF, outF, W, b, ads), 1e-5, 'y');
    const { dx, grads } = layer.backward(Tensor.from(dy, [n, outF]));
    // float64 reference: g = s·dy·B; dx = dy·W + Σ g·A; dA = gᵀ·x; dB = s·dyᵀ·(x·Aᵀ)
    const dxRef = matmul(n, inF, outF, (i, p) => dy[i * outF + p], (p, j) => W[p * inF + j]);
    ads.forEach((a, k) => {
      const g = matmul(n, a.r, outF, (i, p) => a.s * dy[i * outF + p], (p, j) => a.B[p * a.r + j]);
      const gA = matmul(n, inF, a.r, (i, p) => g[i * a.r + p], (p, j) => a.A[p * inF + j]);
      for (let i = 0; i < dxRef.length; i++) dxRef[i] += gA[i];
      const dA = matmul(a.r, inF, n, (i, p) => g[p * a.r + i], (p, j) => x[p * inF + j]);
      const u = matmul(n, a.r, inF, (i, p) => x[i * inF + p], (p, j) => a.A[j * inF + p]);
      const dB = matmul(outF, a.r, n, (i, p) => a.s * dy[p * outF + i], (p, j) => u[p * a.r + j]);
      expectClose(grads.get(`a${k}`)!.loraA.toFloat32Array(), dA, 1e-5, `dA[${k}]`);
      expectClose(grads.get(`a${k}`)!.loraB.toFloat32Array(), dB, 1e-5, `dB[${k}]`);
    });
    expectClose(dx.toFloat32Array(), dxRef, 1e-5, 'dx');
  });
});
