/**
 * The CPU kernels (packed GEMM, n = 1 GEMV, fused backward, merge) against float64 references on
 * shapes that hit every edge: n = 1, n and features not multiples of the register tiles or the
 * cache blocks (sized from the caches; gemm_blocks.test.ts forces odd ones), r = 1, 16-bit inputs,
 * fanInFanOut, several adapters.
 * CI runs this file once per dispatch path the CPU has (LORAKIT_CPU_PATH).
 */
import { FloatDType, LoraLinear, Tensor, backendInfo, kernels, setNumThreads } from '../lib';
import { seededTensor as rand } from './helpers/seeded_tensor';
import './cpu_merge_suite'; // merge/unmerge element by element against float64: runs with this file on every path

type Mat = Float64Array;

/** C[m, n] = Σ_k a(i, k)·b(k, j) in float64. */
function mm(m: number, n: number, k: number, a: (i: number, k: number) => number, b: (k: number, j: number) => number): Mat {
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let p = 0; p < k; p++) {
      const av = a(i, p);
      if (av === 0) continue;
      for (let j = 0; j < n; j++) c[i * n + j] += av * b(p, j);
    }
  return c;
}

function relErr(a: ArrayLike<number>, ref: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < ref.length; i++) {
    num += (a[i] - ref[i]) ** 2;
    den += ref[i] ** 2;
  }
  return Math.sqrt(num) / Math.max(Math.sqrt(den), 1e-30);
}

/** Tolerance for an output stored in dtype (one rounding) computed with f32 accumulation. */
const tolFor = (dt: FloatDType) => (dt === 'f32' ? 1e-5 : dt === 'bf16' ? 6e-3 : 8e-4);


interface FwdCase {
  n: number;
  inF: number;
  outF: number;
  rs: number[];
  fifo: boolean;
  xt: FloatDType;
  wt: FloatDType;
  bias: boolean;
}

const FWD_CASES: FwdCase[] = [
  { n: 1, inF: 300, outF: 259, rs: [1, 3], fifo: false, xt: 'f32', wt: 'f32', bias: true },
  { n: 1, inF: 300, outF: 259, rs: [4], fifo: true, xt: 'f32', wt: 'bf16', bias: false },
  { n: 1, inF: 37, outF: 70, rs: [2], fifo: false, xt: 'bf16', wt: 'f16', bias: true },
  { n: 7, inF: 33, outF: 17, rs: [1], fifo: false, xt: 'f32', wt: 'f32', bias: true },
  { n: 13, inF: 1, outF: 5, rs: [1], fifo: true, xt: 'f32', wt: 'f32', bias: false },
  { n: 97, inF: 300, outF: 259, rs: [5, 2], fifo: false, xt: 'f32', wt: 'f32', bias: true },
  { n: 97, inF: 300, outF: 259, rs: [3], fifo: true, xt: 'f32', wt: 'bf16', bias: true },
  { n: 50, inF: 64, outF: 96, rs: [8], fifo: false, xt: 'bf16', wt: 'bf16', bias: true },
  { n: 97, inF: 300, outF: 259, rs: [16], fifo: false, xt: 'bf16', wt: 'bf16', bias: false },
  { n: 200, inF: 520, outF: 300, rs: [4], fifo: true, xt: 'bf16', wt: 'bf16', bias: true },
  // bf16 blocks (amx, avx512bf16): K over several 256-step chunks and not a multiple of 32
  { n: 70, inF: 1030, outF: 70, rs: [2], fifo: false, xt: 'bf16', wt: 'bf16', bias: false },
  { n: 33, inF: 270, outF: 40, rs: [16], fifo: false, xt: 'f16', wt: 'f16', bias: false },
  { n: 500, inF: 40, outF: 33, rs: [1], fifo: false, xt: 'f32', wt: 'f32', bias: false },
];

// r·in >= 2^17 and at least 96 tokens per thread: the shrink runs as the packed GEMM (run with 1 thread).
const SHRINK_GEMM_CASES: FwdCase[] = [
  { n: 200, inF: 2048, outF: 40, rs: [64, 3], fifo: false, xt: 'f32', wt: 'f32', bias: true },
  { n: 200, inF: 2048, outF: 40, rs: [64], fifo: true, xt: 'bf16', wt: 'bf16', bias: false },
];

function checkForward(c: FwdCase): void {
  const x = rand([c.n, c.inF], 1, c.xt);
  const W = rand(c.fifo ? [c.inF, c.outF] : [c.outF, c.inF], 2, c.wt, 0.2);
  const b = c.bias ? rand([c.outF], 3) : null;
  const ads = c.rs.map((r, i) => ({
    A: rand([r, c.inF], 10 + i, 'f32', 0.3),
    B: rand([c.outF, r], 20 + i, 'f32', 0.3),
    s: 0.5 + i,
  }));
  const y = kernels.loraLinearForward(x.t, W.t, {
    bias: b?.t ?? null,
    fanInFanOut: c.fifo,
    adapters: ads.map((a) => ({ loraA: a.A.t, loraB: a.B.t, scaling: a.s })),
  });
  expect(y.dtype).toBe(c.xt);
  const wAt = c.fifo ? (k: number, j: number) => W.v[k * c.outF + j] : (k: number, j: number) => W.v[j * c.inF + k];
  const ref = mm(c.n, c.outF, c.inF, (i, k) => x.v[i * c.inF + k], wAt);
  for (let i = 0; i < c.n; i++) for (let j = 0; j < c.outF; j++) ref[i * c.outF + j] += b ? b.v[j] : 0;
  c.rs.forEach((r, a) => {
    const u = mm(c.n, r, c.inF, (i, k) => x.v[i * c.inF + k], (k, q) => ads[a].A.v[q * c.inF + k]);
    const d = mm(c.n, c.outF, r, (i, q) => u[i * r + q], (q, j) => ads[a].B.v[j * r + q]);
    for (let i = 0; i < ref.length; i++) ref[i] += ads[a].s * d[i];
  });
  expect(relErr(y.toFloat32Array(), ref)).toBeLessThanOrEqual(tolFor(c.xt));
}

describe('fused LoRA forward (base GEMM + expand in one pass, GEMV at n = 1)', () => {
  test.each(FWD_CASES)('n=$n in=$inF out=$outF r=$rs fifo=$fifo x=$xt W=$wt', checkForward);
});

describe('LoRA forward whose shrink runs as the packed GEMM (many tokens, large A)', () => {
  let threads = 0;
  beforeAll(() => {
    threads = backendInfo().threads;
    setNumThreads(1);
  });
  afterAll(() => setNumThreads(threads));
  test.each(SHRINK_GEMM_CASES)('n=$n in=$inF out=$outF r=$rs fifo=$fifo x=$xt W=$wt', checkForward);
});

describe('fused LoRA backward', () => {
  test.each([
    { n: 1, inF: 70, outF: 45, rs: [1], fifo: false, wt: 'f32' as FloatDType },
    { n: 5, inF: 70, outF: 45, rs: [3, 1], fifo: true, wt: 'f32' as FloatDType },
    { n: 101, inF: 260, outF: 270, rs: [4, 2], fifo: false, wt: 'bf16' as FloatDType },
    { n: 31, inF: 33, outF: 300, rs: [16], fifo: true, wt: 'f16' as FloatDType },
  ])('dx, dA, dB: n=$n in=$inF out=$outF r=$rs fifo=$fifo W=$wt', (c) => {
    const x = rand([c.n, c.inF], 5);
    const W = rand(c.fifo ? [c.inF, c.outF] : [c.outF, c.inF], 6, c.wt, 0.2);
    const layer = new LoraLinear({ weight: W.t, fanInFanOut: c.fifo });
    const names = c.rs.map((_, i) => `a${i}`);
    c.rs.forEach((r, i) => layer.addAdapter(names[i], { r, loraAlpha: 2 * r + i, initLoraWeights: false, seed: 40 + i }));
    layer.setAdapter(names);
    layer.train();
    layer.forward(x.t).dispose();
    const dy = rand([c.n, c.outF], 7);
    const { dx, grads } = layer.backward(dy.t);
    const wAt = c.fifo ? (k: number, j: number) => W.v[k * c.outF + j] : (k: number, j: number) => W.v[j * c.inF + k];
    // dx = dy·W (W as [out, in]) + Σ s·(dy·B)·A
    const dxRef = mm(c.n, c.inF, c.outF, (i, j) => dy.v[i * c.outF + j], (j, k) => wAt(k, j));
    names.forEach((name, a) => {
      const r = c.rs[a];
      const A = layer.loraA.get(name)!.toFloat32Array();
      const B = layer.loraB.get(name)!.toFloat32Array();
      const s = layer.scaling.get(name)!;
      const g = mm(c.n, r, c.outF, (i, j) => s * dy.v[i * c.outF + j], (j, q) => B[j * r + q]);
      const gA = mm(c.n, c.inF, r, (i, q) => g[i * r + q], (q, k) => A[q * c.inF + k]);
      for (let i = 0; i < dxRef.length; i++) dxRef[i] += gA[i];
      const u = mm(c.n, r, c.inF, (i, k) => x.v[i * c.inF + k], (k, q) => A[q * c.inF + k]);
      const dB = mm(c.outF, r, c.n, (j, i) => s * dy.v[i * c.outF + j], (i, q) => u[i * r + q]);
      const dA = mm(r, c.inF, c.n, (q, i) => g[i * r + q], (i, k) => x.v[i * c.inF + k]);
      expect(relErr(grads.get(name)!.loraB.toFloat32Array(), dB)).toBeLessThanOrEqual(1e-5);
      expect(relErr(grads.get(name)!.loraA.toFloat32Array(), dA)).toBeLessThanOrEqual(1e-5);
    });
    expect(relErr(dx.toFloat32Array(), dxRef)).toBeLessThanOrEqual(1e-5);
  });
});

describe('merge / unmerge: one pass over W, f32 accumulation, one rounding', () => {
  test.each([
    { rows: 1, cols: 1, r: 1, fifo: false, wt: 'f32' as FloatDType },
    { rows: 37, cols: 301, r: 3, fifo: false, wt: 'f32' as FloatDType },
    { rows: 300, cols: 41, r: 64, fifo: true, wt: 'f32' as FloatDType },
    { rows: 129, cols: 77, r: 5, fifo: false, wt: 'bf16' as FloatDType },
    { rows: 65, cols: 130, r: 2, fifo: true, wt: 'f16' as FloatDType },
  ])('W $rows x $cols r=$r fifo=$fifo $wt', (c) => {
    const inF = c.fifo ? c.rows : c.cols;
    const outF = c.fifo ? c.cols : c.rows;
    const W = rand([c.rows, c.cols], 8, c.wt);
    const A = rand([c.r, inF], 9, 'f32', 0.5);
    const B = rand([outF, c.r], 10, 'f32', 0.5);
    const s = 0.75;
    const out = Tensor.zeros([c.rows, c.cols], { dtype: c.wt });
    kernels.mergeAdapter(W.t, { loraA: A.t, loraB: B.t, scaling: s }, { fanInFanOut: c.fifo, out });
    const delta = mm(outF, inF, c.r, (o, q) => B.v[o * c.r + q], (q, i) => A.v[q * inF + i]);
    const ref = new Float64Array(c.rows * c.cols);
    for (let i = 0; i < c.rows; i++)
      for (let j = 0; j < c.cols; j++) ref[i * c.cols + j] = W.v[i * c.cols + j] + s * (c.fifo ? delta[j * inF + i] : delta[i * c.cols + j]);
    const got = out.toFloat32Array();
    expect(relErr(got, ref)).toBeLessThanOrEqual(tolFor(c.wt));
    // One rounding: in f32 every element is within an ulp-scale error of the exact sum.
    if (c.wt === 'f32') for (let i = 0; i < ref.length; i++) expect(Math.abs(got[i] - ref[i])).toBeLessThanOrEqual(1e-5 * (1 + Math.abs(ref[i])));
    // Unmerge in place brings W back (f32: to rounding error).
    kernels.unmergeAdapter(out, { loraA: A.t, loraB: B.t, scaling: s }, { fanInFanOut: c.fifo });
    expect(relErr(out.toFloat32Array(), W.v)).toBeLessThanOrEqual(c.wt === 'f32' ? 1e-6 : 2 * tolFor(c.wt));
  });
});

describe('dispatch and threads', () => {
  test('backendInfo reports the chosen path among the available ones; LORAKIT_CPU_PATH is honoured', () => {
    const info = backendInfo();
    expect(info.cpuPaths).toContain('portable');
    const forced = process.env.LORAKIT_CPU_PATH;
    // A forced path the CPU has is used (amx-emulated: the AMX packing with a scalar tile, always
    // available for tests); otherwise the best available path is.
    const expected = forced === 'amx-emulated' || (forced && info.cpuPaths.includes(forced)) ? forced : info.cpuPaths[0];
    expect(info.cpuPath).toBe(expected);
    if (forced !== 'amx-emulated') expect(info.cpuPaths).toContain(info.cpuPath);
  });

  test('setNumThreads changes the pool size and results are identical for any thread count', () => {
    const x = rand([130, 300], 11);
    const W = rand([259, 300], 12);
    const x1 = rand([1, 300], 13);
    // bf16 x and W: the bf16 block paths (amx, avx512bf16, amx-emulated) on edges of 32
    const xb = rand([130, 300], 16, 'bf16');
    const Wb = rand([259, 300], 17, 'bf16');
    const adapters = [{ loraA: rand([20, 300], 14).t, loraB: rand([259, 20], 15).t, scaling: 0.5 }];
    const before = backendInfo().threads;
    try {
      expect(setNumThreads(1)).toBe(1);
      expect(backendInfo().threads).toBe(1);
      const y1 = kernels.loraLinearForward(x.t, W.t, { adapters }).toFloat32Array();
      const g1 = kernels.loraLinearForward(x1.t, W.t, { adapters }).toFloat32Array();
      const b1 = kernels.loraLinearForward(xb.t, Wb.t, { adapters }).toFloat32Array();
      expect(setNumThreads(3)).toBe(3);
      const y3 = kernels.loraLinearForward(x.t, W.t, { adapters }).toFloat32Array();
      const g3 = kernels.loraLinearForward(x1.t, W.t, { adapters }).toFloat32Array();
      const b3 = kernels.loraLinearForward(xb.t, Wb.t, { adapters }).toFloat32Array();
      expect(Buffer.from(y3.buffer).equals(Buffer.from(y1.buffer))).toBe(true);
      expect(Buffer.from(g3.buffer).equals(Buffer.from(g1.buffer))).toBe(true);
      expect(Buffer.from(b3.buffer).equals(Buffer.from(b1.buffer))).toBe(true);
    } finally {
      setNumThreads(0);
    }
    expect(backendInfo().threads).toBe(before);
  });
});
