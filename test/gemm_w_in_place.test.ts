/**
 * f32 weights read in place (native/cpu/gemm_w_in_place.cc): on paths with the in-place microkernel the
 * GEMM broadcasts W's rows instead of packing them. Its outputs must be the bits of the packed GEMM
 * (LORAKIT_GEMM_W_IN_PLACE=0) for every shape: partial tiles of W rows and of tokens, K across several
 * blocks, bias, LoRA segments, forward and backward, f32 and bf16 activations. On the AVX2 path the two
 * forms are timed per large call shape (these shapes are below the timing threshold, so they run in place);
 * gemm_blocks.test.ts's timed shape alternates them there and checks that every call gives the same bits.
 */
import { spawnSync } from 'child_process';
import * as path from 'path';

const ROOT = path.resolve(__dirname, '..');

const script = `
  const lk = require(${JSON.stringify(path.join(ROOT, 'dist'))});
  const crypto = require('crypto');
  const val = (i, s) => Math.sin(i * 0.37 + s) * 0.5;
  const mk = (shape, s, dtype) => lk.Tensor.from(Float32Array.from({ length: shape[0] * shape[1] }, (_, i) => val(i, s)), shape, dtype ? { dtype } : undefined);
  const hash = (t) => crypto.createHash('sha256').update(Buffer.from(t.toFloat32Array().buffer)).digest('hex');
  const out = [];
  // [tokens, d_in, d_out]: tokens past the GEMV cut (32) with last panels of 1-4 groups of 16, W rows not a
  // multiple of 6, K past one block.
  for (const [m, k, n] of [[131, 200, 150], [300, 65, 260], [64, 1000, 96], [97, 513, 37], [40, 300, 7], [33, 64, 1], [90, 129, 50], [640, 768, 131]]) {
    const x = mk([m, k], 1), W = mk([n, k], 2), bias = lk.Tensor.from(Float32Array.from({ length: n }, (_, i) => val(i, 3)), [n]);
    const A = mk([5, k], 4), B = mk([n, 5], 5);
    out.push(hash(lk.kernels.loraLinearForward(x, W)));
    out.push(hash(lk.kernels.loraLinearForward(x, W, { bias, adapters: [{ loraA: A, loraB: B, scaling: 0.5 }] })));
    out.push(hash(lk.kernels.loraLinearForward(mk([m, k], 1, 'bf16'), W)));
  }
  // A training step of a layer (forward, backward into dx, dA, dB).
  const layer = new lk.LoraLinear({ weight: mk([96, 160], 6), bias: null });
  layer.addAdapter('a', { r: 8, loraAlpha: 16, initLoraWeights: false, seed: 3 });
  layer.train();
  const x = mk([70, 160], 8);
  const y = layer.forward(x);
  const g = layer.backward(mk([70, 96], 9));
  out.push(hash(y), hash(g.dx), hash(g.grads.get('a').loraA), hash(g.grads.get('a').loraB));
  const blocks = lk.backendInfo().gemmBlocks;
  console.log(JSON.stringify({ path: lk.backendInfo().cpuPath, wInPlace: blocks.wInPlace, wInPlaceTimed: blocks.wInPlaceTimed, out }));
`;

function run(env: NodeJS.ProcessEnv): { path: string; wInPlace: boolean; wInPlaceTimed: boolean; out: string[] } {
  const r = spawnSync(process.execPath, ['-e', script], { env, encoding: 'utf8', maxBuffer: 1 << 26 });
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  return JSON.parse(r.stdout);
}

test.each([['the best path', null], ['avx2', 'avx2']])('f32 W read in place gives the bits of the packed GEMM (%s)', (_what, cpuPath) => {
  const env = { ...process.env };
  delete env.LORAKIT_GEMM_W_IN_PLACE;
  if (cpuPath) env.LORAKIT_CPU_PATH = cpuPath;
  const inPlace = run(env);
  const packed = run({ ...env, LORAKIT_GEMM_W_IN_PLACE: '0' });
  expect(packed.wInPlace).toBe(false);
  // The x86 paths have an in-place microkernel (AVX2's timed against packing per shape); portable and neon pack.
  expect(inPlace.wInPlace).toBe(['avx512', 'avx512bf16', 'amx', 'amx-emulated', 'avx2'].includes(inPlace.path));
  expect(inPlace.wInPlaceTimed).toBe(inPlace.path === 'avx2');
  expect(inPlace.out.length).toBe(28);
  expect(inPlace.out).toEqual(packed.out);
});
