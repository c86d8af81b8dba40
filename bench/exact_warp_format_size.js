#!/usr/bin/env node
// Size of a warp-parallel side-information format for exact merges (a design estimate, not the
// shipped format: core/exact_format.h). The shipped segments are decoded one byte stream per
// segment, which on the GPU costs ~115 instructions per weight (bench/results/gpu-exact-stage-
// 2026-12-07-h100.txt). The candidate: per 32 weights a 32-bit nonzero mask (present only for
// groups with a nonzero, flagged by one bit per group in the segment header), then 2 bits of class
// per nonzero and a 4-bit payload for |c| in 2..9, so that lane j finds its entry by
// popc(mask & ((1 << j) − 1)). This script emulates bf16 merges of a Gaussian W (σ 0.02) with a
// rank-16 delta scaled to ‖ΔW‖/‖W‖ = 1%, 5%, 10% (f32 delta, round-to-nearest-even as the kernels)
// and prints the share of nonzero corrections and the candidate's bits per weight (|c| > 9: rare,
// not counted).
//   node bench/exact_warp_format_size.js [--rows 512] [--cols 1024]
'use strict';
const arg = (n, d) => (process.argv.includes(n) ? Number(process.argv[process.argv.indexOf(n) + 1]) : d);
const rows = arg('--rows', 512), cols = arg('--cols', 1024), r = 16;
const f32 = Math.fround;
const view = new DataView(new ArrayBuffer(4));
const bitsOf = (v) => (view.setFloat32(0, v), view.getUint32(0));
const fromBits = (u) => (view.setUint32(0, u >>> 0), view.getFloat32(0));
/** f32 → bf16 bits, round to nearest even (finite values). */
const toBf16 = (v) => {
  const u = bitsOf(v);
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 0) >>> 16;
};
const bf16Value = (b) => fromBits(b << 16);
const key16 = (b) => b ^ (b & 0x8000 ? 0xffff : 0x8000); // exact_format.h key16

let seed = 1; // a fixed LCG: the same figures every run
const uniform = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
const gauss = () => Math.sqrt(-2 * Math.log(uniform() + 1e-12)) * Math.cos(2 * Math.PI * uniform());

const W = Uint16Array.from({ length: rows * cols }, () => toBf16(gauss() * 0.02));
const A = Float32Array.from({ length: r * cols }, gauss);
const B = Float32Array.from({ length: rows * r }, gauss);
const D = new Float32Array(rows * cols); // B·A in f32, k in order (as the merge kernels)
let dNorm = 0, wNorm = 0;
for (let i = 0; i < rows; i++)
  for (let j = 0; j < cols; j++) {
    let a = 0;
    for (let q = 0; q < r; q++) a = f32(a + f32(B[i * r + q] * A[q * cols + j]));
    D[i * cols + j] = a;
    dNorm += a * a;
    wNorm += bf16Value(W[i * cols + j]) ** 2;
  }

console.log(`# bf16 W [${rows}, ${cols}] (Gaussian, σ 0.02), rank-${r} delta; corrections c = key(x) − key(round(round(x + d) − d))`);
for (const rel of [0.01, 0.05, 0.1]) {
  const s = rel * Math.sqrt(wNorm / dNorm);
  const c = new Int32Array(W.length);
  let nonzero = 0, large = 0;
  for (let e = 0; e < W.length; e++) {
    const d = f32(s * D[e]);
    const merged = toBf16(f32(bf16Value(W[e]) + d));
    c[e] = key16(W[e]) - key16(toBf16(f32(bf16Value(merged) - d)));
    if (c[e]) nonzero++;
    if (Math.abs(c[e]) > 1) large++;
  }
  let maskBits = 0, groupsWithNonzero = 0; // one 32-bit mask for every group of 32
  for (let g = 0; g < W.length; g += 32) {
    let k = 0;
    for (let e = g; e < g + 32; e++)
      if (c[e]) {
        k++;
        maskBits += 2 + (Math.abs(c[e]) > 1 ? 4 : 0);
      }
    maskBits += 32;
    if (k) groupsWithNonzero++;
  }
  // Two-level: a bit per group in each 256-weight segment's header, masks only where set.
  const twoLevel = maskBits - (W.length / 32 - groupsWithNonzero) * 32 + (W.length / 256) * 8;
  console.log(`‖ΔW‖/‖W‖ ${rel}: nonzero corrections ${((100 * nonzero) / W.length).toFixed(1)}% (|c| > 1: ${((100 * large) / W.length).toFixed(2)}%); ` +
    `a mask per group ${(maskBits / W.length).toFixed(3)} bits/weight, two-level ${(twoLevel / W.length).toFixed(3)} bits/weight`);
}
