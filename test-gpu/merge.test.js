// Merge/unmerge kernels on cuda against a float64 reference: each element of W + s·B·A must be
// within one unit in the last place of W's dtype plus the f32 sum's own error (one rounding), over shapes
// that cross the tensor-core kernel's 64×128 tiles, both layouts, 16-bit and f32 factors, r up to
// and past the tensor-core limit (128), in place and into another tensor, and blocks that walk
// several row tiles.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { lk, randomArray } = require('./helpers');
const { Tensor, kernels } = lk;

// One unit in the last place at |v| for each storage dtype (normal range).
const MANTISSA = { f32: 23, bf16: 7, f16: 10 };
function ulp(v, dtype) {
  const a = Math.max(Math.abs(v), dtype === 'f16' ? 6.1e-5 : 1e-30);
  return 2 ** (Math.floor(Math.log2(a)) - MANTISSA[dtype]);
}

// [rows, cols, r, fanInFanOut, W dtype, factor dtype]
const CASES = [
  [64, 128, 16, false, 'bf16', 'bf16'],
  [1000, 1032, 64, false, 'bf16', 'bf16'],
  [130, 264, 8, true, 'bf16', 'bf16'],
  [200, 136, 5, false, 'f16', 'f16'],
  [77, 520, 128, false, 'bf16', 'bf16'],
  [96, 256, 130, false, 'bf16', 'bf16'], // past the tensor-core limit: CUDA-core kernel
  [150, 1024, 24, false, 'f32', 'bf16'],
  [65, 192, 33, true, 'f16', 'bf16'],
  [38400, 128, 8, false, 'bf16', 'bf16'], // one strip, two row tiles per block
  [20000, 256, 16, true, 'bf16', 'f16'],
  [90, 96, 12, false, 'bf16', 'f32'], // f32 factors: CUDA-core kernel
];

for (const [rows, cols, r, fifo, wdt, fdt] of CASES) {
  test(`merge ${wdt} W ${rows}x${cols}, ${fdt} factors r=${r}${fifo ? ' fanInFanOut' : ''}: within 1 ulp of float64, unmerge returns`, () => {
    const seed = rows * 7 + cols * 3 + r;
    // Factor sizes make the delta comparable to W, so a wrong term cannot hide under W's rounding.
    const [outF, inF] = fifo ? [cols, rows] : [rows, cols];
    const W = Tensor.from(randomArray(rows * cols, seed, 1), [rows, cols], { dtype: wdt, device: 'cuda' });
    const A = Tensor.from(randomArray(r * inF, seed + 1, 1 / Math.sqrt(r)), [r, inF], { dtype: fdt, device: 'cuda' });
    const B = Tensor.from(randomArray(outF * r, seed + 2, 1), [outF, r], { dtype: fdt, device: 'cuda' });
    const scaling = 0.75;
    const w0 = W.toFloat32Array();
    const a = A.toFloat32Array();
    const b = B.toFloat32Array();
    const ref = new Float64Array(rows * cols);
    const mag = new Float64Array(rows * cols); // |W| + s·Σ|B·A|: bounds the f32 accumulation's error
    for (let i = 0; i < rows; i++)
      for (let j = 0; j < cols; j++) {
        let acc = 0;
        let abs = 0;
        // delta[o][n] = Σ_k B[o][k]·A[k][n]; W's element (i, j) is (o, n) = (i, j), or (j, i) with fanInFanOut.
        const o = fifo ? j : i, n = fifo ? i : j;
        for (let k = 0; k < r; k++) {
          const p = b[o * r + k] * a[k * inF + n];
          acc += p;
          abs += Math.abs(p);
        }
        ref[i * cols + j] = w0[i * cols + j] + scaling * acc;
        mag[i * cols + j] = Math.abs(w0[i * cols + j]) + scaling * abs;
      }
    const adapter = { loraA: A, loraB: B, scaling };
    const out = Tensor.empty([rows, cols], { dtype: wdt, device: 'cuda' });
    kernels.mergeAdapter(W, adapter, { fanInFanOut: fifo, out });
    kernels.mergeAdapter(W, adapter, { fanInFanOut: fifo }); // in place
    for (const [what, t] of [['out', out], ['in place', W]]) {
      const got = t.toFloat32Array();
      let worst = 0;
      for (let e = 0; e < got.length; e++) {
        // one rounding (≤ 1 ulp once the f32 sum's own error, ≤ r·2⁻²⁴ of the magnitude, is allowed)
        const err = Math.abs(got[e] - ref[e]) / (ulp(ref[e], wdt) + r * 2 ** -23 * mag[e]);
        if (!(err <= worst)) worst = err;
      }
      assert.ok(worst <= 1, `${what}: worst error ${worst} ulp`);
    }
    kernels.unmergeAdapter(W, adapter, { fanInFanOut: fifo });
    const back = W.toFloat32Array();
    let worst = 0;
    for (let e = 0; e < back.length; e++) worst = Math.max(worst, Math.abs(back[e] - w0[e]) / (ulp(Math.abs(ref[e]) + Math.abs(w0[e]), wdt) + r * 2 ** -22 * mag[e]));
    assert.ok(worst <= 2, `unmerge: worst error ${worst} ulp of the merged magnitude`);
    [W, A, B, out].forEach((x) => x.dispose());
  });
}
