/**
 * The CPU GEMM's block sizes (mc, kc, nc) come from the machine's measured caches (native/cpu/caches.cc,
 * gemm_blocks.cc): they satisfy the kernels' units and fit the caches they were sized for, and results do not
 * depend on them (a child process with odd blocks forced by LORAKIT_GEMM_BLOCKS matches float64). Where
 * two derivations apply (microkernels that continue each element's chain from C), the first large calls
 * time both and keep the faster; every call's output is the same bits whichever ran it.
 */
import { spawnSync } from 'child_process';
import * as path from 'path';
import { call } from '../lib/native';

const ROOT = path.resolve(__dirname, '..');

test('measurePeaks reports the caches and the blocks derived from them', () => {
  const p = call((b) => b.measurePeaks(1 << 20));
  const { caches, gemmBlocks: g } = p;
  expect(caches.l1dBytes).toBeGreaterThan(0);
  expect(caches.l2Bytes).toBeGreaterThan(0);
  expect(['sysfs', 'sysconf', 'default']).toContain(caches.source);
  for (const v of [g.mc, g.kc, g.nc]) expect(v % 32).toBe(0);
  if (process.env.LORAKIT_GEMM_BLOCKS === undefined) {
    expect(g.source.split(';')[0]).toBe(caches.source);
    expect(g.kc).toBeGreaterThanOrEqual(64);
    // the A block takes at most half of L2 (unless one row unit of 96 is already more)
    expect(g.mc * g.kc * 4 <= caches.l2Bytes / 2 || g.mc === 96).toBe(true);
    expect(g.nc * g.kc * 4 <= caches.l2Bytes / 4 || g.nc === 32).toBe(true);
  }
});

test('odd blocks forced by LORAKIT_GEMM_BLOCKS give the same products (several k blocks, column tasks, segments)', () => {
  // y = x·Wᵀ + bias + s·(x·Aᵀ)·Bᵀ for shapes that cross many 64-step k blocks and 64-column tasks.
  const script = `
    const lk = require(${JSON.stringify(path.join(ROOT, 'dist'))});
    const { call } = require(${JSON.stringify(path.join(ROOT, 'dist', 'native'))});
    const g = call((b) => b.measurePeaks(1 << 20)).gemmBlocks;
    const val = (i, s) => Math.sin(i * 0.37 + s) * 0.5;
    const mk = (shape, s) => lk.Tensor.from(Float32Array.from({ length: shape[0] * shape[1] }, (_, i) => val(i, s)), shape);
    const out = [];
    for (const [m, k, n] of [[131, 200, 150], [7, 333, 97], [300, 65, 260]]) {
      const x = mk([m, k], 1), W = mk([n, k], 2), bias = lk.Tensor.from(Float32Array.from({ length: n }, (_, i) => val(i, 3)), [n]);
      const A = mk([5, k], 4), B = mk([n, 5], 5);
      const y = lk.kernels.loraLinearForward(x, W, { bias, adapters: [{ loraA: A, loraB: B, scaling: 0.5 }] });
      out.push({ m, k, n, y: Array.from(y.toFloat32Array()) });
    }
    console.log(JSON.stringify({ g, out }));
  `;
  const r = spawnSync(process.execPath, ['-e', script], { env: { ...process.env, LORAKIT_GEMM_BLOCKS: '40,40,40' }, encoding: 'utf8', maxBuffer: 1 << 26 });
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  const { g, out } = JSON.parse(r.stdout) as { g: { mc: number; kc: number; nc: number; source: string }; out: Array<{ m: number; k: number; n: number; y: number[] }> };
  expect(g.source).toBe('LORAKIT_GEMM_BLOCKS');
  expect(g.kc).toBe(64);
  expect(g.nc).toBe(64);
  expect(g.mc % 32).toBe(0);
  const vals = (len: number, s: number) => Float64Array.from({ length: len }, (_, i) => Math.fround(Math.sin(i * 0.37 + s) * 0.5));
  for (const { m, k, n, y } of out) {
    const x = vals(m * k, 1), W = vals(n * k, 2), bias = vals(n, 3), A = vals(5 * k, 4), B = vals(n * 5, 5);
    const dot = (a: Float64Array, i: number, b: Float64Array, j: number) => {
      let t = 0;
      for (let p = 0; p < k; p++) t += a[i * k + p] * b[j * k + p];
      return t;
    };
    let num = 0;
    let den = 0;
    for (let i = 0; i < m; i++) {
      const u = [0, 1, 2, 3, 4].map((q) => dot(x, i, A, q));
      for (let j = 0; j < n; j++) {
        let acc = bias[j] + dot(x, i, W, j);
        for (let q = 0; q < 5; q++) acc += 0.5 * u[q] * B[j * 5 + q];
        num += (y[i * n + j] - acc) ** 2;
        den += acc ** 2;
      }
    }
    expect(Math.sqrt(num / den)).toBeLessThan(1e-5);
  }
});

test('two blockings timed on the first large calls: the same bits from each, the faster kept', () => {
  // 2·m·n·k = 2^28.6 FLOPs per call: above the timing threshold (2^28), so the first six alternate.
  const script = `
    const lk = require(${JSON.stringify(path.join(ROOT, 'dist'))});
    const crypto = require('crypto');
    const before = lk.backendInfo().gemmBlocks;
    const val = (i, s) => Math.sin(i * 0.37 + s) * 0.5;
    const mk = (shape, s) => lk.Tensor.from(Float32Array.from({ length: shape[0] * shape[1] }, (_, i) => val(i, s)), shape);
    const x = mk([320, 768], 1), W = mk([640, 768], 2);
    const hashes = [];
    for (let i = 0; i < 8; i++) {
      const y = lk.kernels.loraLinearForward(x, W);
      hashes.push(crypto.createHash('sha256').update(Buffer.from(y.toFloat32Array().buffer)).digest('hex'));
      y.dispose();
    }
    console.log(JSON.stringify({ path: lk.backendInfo().cpuPath, before, after: lk.backendInfo().gemmBlocks, hashes }));
  `;
  const env = { ...process.env };
  delete env.LORAKIT_GEMM_BLOCKS;
  const runs = [null, 'avx2'].map((p) => {
    const r = spawnSync(process.execPath, ['-e', script], { env: p ? { ...env, LORAKIT_CPU_PATH: p } : env, encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    return JSON.parse(r.stdout) as { path: string; before: { source: string }; after: { mc: number; kc: number; nc: number; source: string }; hashes: string[] };
  });
  for (const { path: cpuPath, before, after, hashes } of runs) {
    expect(new Set(hashes).size).toBe(1);
    const two = /(\d+,\d+,\d+) and (\d+,\d+,\d+) to be timed/.exec(before.source);
    if (['avx512', 'avx512bf16', 'amx'].includes(cpuPath)) expect(two).not.toBeNull();
    if (cpuPath === 'avx2' || cpuPath === 'portable' || cpuPath === 'neon') expect(two).toBeNull();
    if (!two) {
      expect(after.source).not.toMatch(/timed/);
      continue;
    }
    expect(two[1]).not.toBe(two[2]);
    const m = /timed: (\d+,\d+,\d+) at [\d.]+ GFLOP\/s against (\d+,\d+,\d+)/.exec(after.source);
    expect(m).not.toBeNull();
    expect([two[1], two[2]].sort()).toEqual([m![1], m![2]].sort());
    expect(`${after.mc},${after.kc},${after.nc}`).toBe(m![1]);
  }
});
