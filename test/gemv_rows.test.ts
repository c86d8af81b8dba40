/**
 * The multi-row GEMV (2 ≤ n ≤ 32 tokens, W read in place: native/cpu/gemv_rows*.cc) against float64
 * element by element, on shapes that hit its edges: K not a multiple of the vector (16 / 32 steps),
 * W rows not a multiple of the row block, every n from 2 to 16 and some up to 32 (the splits into x
 * groups), f32 / bf16 / f16 W, bf16 x with bf16 W (vdpbf16ps on avx512bf16), several adapters (K
 * segments with their own scale), bias; fanInFanOut (W as columns: the packed GEMM) for the same n.
 * One bf16·bf16 row (the same kernel on avx512bf16). Paths without the kernel run the packed GEMM
 * (or the n = 1 GEMV) on the same cases. CI runs this file once per path.
 */
import { FloatDType, Tensor, backendInfo, kernels, setNumThreads } from '../lib';
import { randomArray } from './helpers/reference';
import { seededTensor as rand } from './helpers/seeded_tensor';


interface Case {
  n: number;
  inF: number;
  outF: number;
  rs: number[];
  fifo: boolean;
  xt: FloatDType;
  wt: FloatDType;
  bias: boolean;
}

const DTYPES: [FloatDType, FloatDType][] = [
  ['f32', 'f32'],
  ['bf16', 'bf16'],
  ['f32', 'bf16'],
  ['f16', 'f16'],
  ['f32', 'f16'],
  ['bf16', 'f32'],
];
const IN = [1, 15, 17, 31, 33, 47, 64, 100, 257, 1030, 16, 32, 2, 513, 95];
const OUT = [1, 3, 5, 7, 13, 66, 259, 4, 9, 17, 2, 130, 31, 8, 6];

// Every n in 2..16 and some up to 32 on its own shape (K tails 1..31, W rows 1..259), dtypes and adapter sets cycled.
const CASES: Case[] = [];
for (const n of [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 19, 23, 24, 25, 31, 32]) {
  const q = n <= 16 ? n - 2 : n % IN.length;
  const [xt, wt] = DTYPES[q % DTYPES.length];
  CASES.push({ n, inF: IN[q], outF: OUT[q], rs: [[], [1], [3, 16]][q % 3], fifo: false, xt, wt, bias: q % 2 === 0 });
}
// Larger K (several prefetch distances, 16-bit tails), a full row block plus a remainder of W rows.
CASES.push({ n: 8, inF: 4100, outF: 11, rs: [4], fifo: false, xt: 'bf16', wt: 'bf16', bias: true });
CASES.push({ n: 16, inF: 2049, outF: 9, rs: [], fifo: false, xt: 'f32', wt: 'f32', bias: false });
CASES.push({ n: 3, inF: 777, outF: 21, rs: [2], fifo: false, xt: 'f32', wt: 'f16', bias: true });
// W as columns (fanInFanOut): gemm keeps the packed path; same n range.
for (const n of [2, 5, 16, 32]) CASES.push({ n, inF: 33, outF: 19, rs: [2], fifo: true, xt: 'f32', wt: 'bf16', bias: true });
// One bf16·bf16 row: the vdpbf16ps kernel on avx512bf16 (dot_rows elsewhere), K tails of 1..31.
for (const inF of [1, 31, 33, 1030]) CASES.push({ n: 1, inF, outF: 37, rs: [3], fifo: false, xt: 'bf16', wt: 'bf16', bias: inF > 31 });
// bf16·bf16 at the edge of its range (24 rows), then past it and past the f32 range: the packed GEMM.
CASES.push({ n: 24, inF: 1030, outF: 37, rs: [2], fifo: false, xt: 'bf16', wt: 'bf16', bias: true });
CASES.push({ n: 25, inF: 77, outF: 37, rs: [], fifo: false, xt: 'bf16', wt: 'bf16', bias: false });
CASES.push({ n: 33, inF: 33, outF: 19, rs: [2], fifo: false, xt: 'bf16', wt: 'bf16', bias: true });

/** Half an ulp of a value stored in dtype, relative. */
const unitRound = (dt: FloatDType) => (dt === 'f32' ? 2 ** -24 : dt === 'bf16' ? 2 ** -9 : 2 ** -11);

function check(c: Case): void {
  const x = rand([c.n, c.inF], 100 + c.n, c.xt);
  const W = rand(c.fifo ? [c.inF, c.outF] : [c.outF, c.inF], 200 + c.n, c.wt, 0.3);
  const b = c.bias ? rand([c.outF], 300 + c.n) : null;
  const ads = c.rs.map((r, a) => ({
    A: rand([r, c.inF], 400 + a, 'f32', 0.3),
    B: rand([c.outF, r], 500 + a, 'f32', 0.3),
    s: 0.5 + a,
  }));
  const y = kernels
    .loraLinearForward(x.t, W.t, {
      bias: b?.t ?? null,
      fanInFanOut: c.fifo,
      adapters: ads.map((a) => ({ loraA: a.A.t, loraB: a.B.t, scaling: a.s })),
    })
    .toFloat32Array();
  expect(y.length).toBe(c.n * c.outF);
  const w = c.fifo ? (k: number, j: number) => W.v[k * c.outF + j] : (k: number, j: number) => W.v[j * c.inF + k];
  // Per element: |y − ref| ≤ (a few K-length f32 sums of the absolute terms) + one rounding into x's dtype.
  const kTot = c.inF + c.rs.reduce((s, r) => s + r, 0) + 2;
  for (let i = 0; i < c.n; i++)
    for (let j = 0; j < c.outF; j++) {
      let ref = b ? b.v[j] : 0;
      let abs = Math.abs(ref);
      for (let k = 0; k < c.inF; k++) {
        const t = x.v[i * c.inF + k] * w(k, j);
        ref += t;
        abs += Math.abs(t);
      }
      c.rs.forEach((r, a) => {
        for (let q = 0; q < r; q++) {
          let u = 0;
          let ua = 0;
          for (let k = 0; k < c.inF; k++) {
            const t = x.v[i * c.inF + k] * ads[a].A.v[q * c.inF + k];
            u += t;
            ua += Math.abs(t);
          }
          ref += ads[a].s * u * ads[a].B.v[j * r + q];
          abs += ads[a].s * ua * Math.abs(ads[a].B.v[j * r + q]);
        }
      });
      const tol = 4 * kTot * 2 ** -24 * abs + 2 * unitRound(c.xt) * Math.abs(ref) + 1e-30;
      const got = y[i * c.outF + j];
      if (!(Math.abs(got - ref) <= tol))
        throw new Error(`n=${c.n} in=${c.inF} out=${c.outF}: y[${i}, ${j}] = ${got}, float64 ${ref} (tolerance ${tol})`);
    }
}

describe('multi-row GEMV (2..32 tokens, W read in place) against float64, element by element', () => {
  test(`path ${backendInfo().cpuPath}`, () => {
    expect(backendInfo().cpuPaths).toContain('portable');
  });
  test.each(CASES)('n=$n in=$inF out=$outF r=$rs fifo=$fifo x=$xt W=$wt bias=$bias', check);
});

describe('a row does not depend on the batch it is in, nor on the thread count', () => {
  const bits = (t: Tensor) => Buffer.from(t.toFloat32Array().buffer);
  // Within one kernel's range: the AVX2 kernel takes up to 8 rows (gemv_rows.h), the AVX-512 one 32,
  // bf16·bf16 with vdpbf16ps 24; past them the packed GEMM (whose rows are batch-independent too).
  const pathMax = ['avx2', 'amx-emulated'].includes(backendInfo().cpuPath) ? 8 : 32;
  // One bf16·bf16 row takes the same kernel where vdpbf16ps exists (avx512bf16).
  const bf16Min = backendInfo().cpuPath === 'avx512bf16' ? 1 : 2;
  test.each([
    ['f32', 'f32', 2, Math.min(32, pathMax)],
    ['bf16', 'bf16', bf16Min, Math.min(24, pathMax)],
    ['f32', 'f16', 2, Math.min(32, pathMax)],
  ] as [FloatDType, FloatDType, number, number][])('x=%s W=%s: rows of n = %d..%d equal the same rows at the largest n, bit for bit', (xt, wt, nMin, nMax) => {
    const inF = 131;
    const outF = 70;
    const x = randomArray(nMax * inF, 7, 1);
    const W = rand([outF, inF], 8, wt, 0.3);
    const adapters = [{ loraA: rand([5, inF], 9).t, loraB: rand([outF, 5], 10).t, scaling: 0.75 }];
    const full = kernels.loraLinearForward(Tensor.from(x, [nMax, inF], { dtype: xt }), W.t, { adapters });
    const fullBits = bits(full);
    for (let n = nMin; n <= nMax; n++) {
      const y = kernels.loraLinearForward(Tensor.from(x.subarray(0, n * inF), [n, inF], { dtype: xt }), W.t, { adapters });
      expect(bits(y).equals(fullBits.subarray(0, bits(y).length))).toBe(true);
    }
  });

  test('1 thread and 3 threads give the same bits', () => {
    const x = rand([9, 300], 11, 'bf16');
    const W = rand([259, 300], 12, 'bf16', 0.3);
    const xf = rand([6, 300], 13);
    const adapters = [{ loraA: rand([8, 300], 14).t, loraB: rand([259, 8], 15).t, scaling: 0.5 }];
    try {
      setNumThreads(1);
      const a1 = bits(kernels.loraLinearForward(x.t, W.t, { adapters }));
      const f1 = bits(kernels.loraLinearForward(xf.t, W.t, { adapters }));
      setNumThreads(3);
      expect(bits(kernels.loraLinearForward(x.t, W.t, { adapters })).equals(a1)).toBe(true);
      expect(bits(kernels.loraLinearForward(xf.t, W.t, { adapters })).equals(f1)).toBe(true);
    } finally {
      setNumThreads(0);
    }
  });
});
