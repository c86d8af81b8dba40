// The fused LoRA gradient kernel (native/cuda/lora_grad.cu: g = s·dy·B and dB = s·dyᵀ·u from one
// read of dy), forced with LORAKIT_CUDA_GRAD=fused: LoraLinear.backward on cuda (dA, dB, dx) against
// a float64 reference computed here from the same 16-bit values, with two adapters active at once
// (one with f32 factors, one in the layer's dtype), r 1, 8, 16, 24, 32 and 64, 5 to 4096 rows,
// out_features 1000 (not a multiple of the kernel's column strips), bf16 and f16. A second
// backward must give the same bits, and a child process on the cuBLASLt path (=gemm) must agree
// within tolerance but not bit for bit (so the fused path is what ran here). out_features 999
// (rows not 16-byte aligned) falls back to cuBLASLt and is checked the same way.
'use strict';
if (!process.env.LORAKIT_GRAD_CHILD) process.env.LORAKIT_CUDA_GRAD = 'fused'; // read at the first backward
const { spawnSync } = require('child_process');
const { lk, relErr, randomArray } = require('./helpers');
const { LoraLinear, Tensor } = lk;

const TOL = 1e-2;
const IN = 40;

// Runs forward and two backwards; returns the device results and a float64 reference.
function runCase(dtype, n, outF, ranks) {
  let seed = 1000 + n + 7 * outF + ranks[0];
  const W = Tensor.from(randomArray(outF * IN, seed++, 0.1), [outF, IN], { dtype, device: 'cuda' });
  const layer = new LoraLinear({ weight: W });
  const names = ranks.map((_, i) => `a${i}`);
  ranks.forEach((r, i) =>
    layer.addAdapter(names[i], { r, loraAlpha: 16, dtype: i === 0 ? 'f32' : dtype, initLoraWeights: false, seed: seed++ }),
  );
  layer.setAdapter(names);
  const x = Tensor.from(randomArray(n * IN, seed++), [n, IN], { dtype, device: 'cuda' });
  const dy = Tensor.from(randomArray(n * outF, seed++), [n, outF], { dtype, device: 'cuda' });
  layer.forward(x).dispose();
  const b1 = layer.backward(dy);
  const b2 = layer.backward(dy);
  const f64 = (t) => Float64Array.from(t.toFloat32Array());
  const got = {
    dx: b1.dx.toFloat32Array(),
    dA: names.map((nm) => b1.grads.get(nm).loraA.toFloat32Array()),
    dB: names.map((nm) => b1.grads.get(nm).loraB.toFloat32Array()),
    again: {
      dx: b2.dx.toFloat32Array(),
      dA: names.map((nm) => b2.grads.get(nm).loraA.toFloat32Array()),
      dB: names.map((nm) => b2.grads.get(nm).loraB.toFloat32Array()),
    },
  };
  const ref = reference(
    f64(x),
    f64(W),
    f64(dy),
    names.map((nm, i) => ({ A: f64(layer.loraA.get(nm)), B: f64(layer.loraB.get(nm)), r: ranks[i], s: 16 / ranks[i] })),
    n,
    outF,
  );
  for (const b of [b1, b2]) {
    b.dx.dispose();
    for (const g of b.grads.values()) {
      g.loraA.dispose();
      g.loraB.dispose();
    }
  }
  for (const t of [x, dy, W]) t.dispose();
  return { got, ref };
}

// u = x·Aᵀ, g = s·dy·B, dB = s·dyᵀ·u, dA = gᵀ·x, dx = dy·W + Σ g·A, all in float64.
function reference(x, W, dy, adapters, n, outF) {
  const dx = new Float64Array(n * IN);
  for (let i = 0; i < n; i++)
    for (let o = 0; o < outF; o++) {
      const d = dy[i * outF + o];
      for (let k = 0; k < IN; k++) dx[i * IN + k] += d * W[o * IN + k];
    }
  const dA = [];
  const dB = [];
  for (const { A, B, r, s } of adapters) {
    const u = new Float64Array(n * r);
    const g = new Float64Array(n * r);
    const db = new Float64Array(outF * r);
    const da = new Float64Array(r * IN);
    for (let i = 0; i < n; i++)
      for (let q = 0; q < r; q++) {
        let v = 0;
        for (let k = 0; k < IN; k++) v += x[i * IN + k] * A[q * IN + k];
        u[i * r + q] = v;
      }
    for (let i = 0; i < n; i++)
      for (let o = 0; o < outF; o++) {
        const d = dy[i * outF + o];
        for (let q = 0; q < r; q++) {
          g[i * r + q] += d * B[o * r + q];
          db[o * r + q] += d * u[i * r + q];
        }
      }
    for (let e = 0; e < g.length; e++) g[e] *= s;
    for (let e = 0; e < db.length; e++) db[e] *= s;
    for (let i = 0; i < n; i++)
      for (let q = 0; q < r; q++) {
        const gv = g[i * r + q];
        for (let k = 0; k < IN; k++) {
          da[q * IN + k] += gv * x[i * IN + k];
          dx[i * IN + k] += gv * A[q * IN + k];
        }
      }
    dA.push(da);
    dB.push(db);
  }
  return { dx, dA, dB };
}

const sameBits = (a, b) => a.length === b.length && Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)) === 0;

const CHILD_CASE = ['bf16', 100, 1000, [8, 16]];

if (process.env.LORAKIT_GRAD_CHILD) {
  const { got } = runCase(...CHILD_CASE);
  process.stdout.write(JSON.stringify({ dA: got.dA.map((a) => Array.from(a)), dB: got.dB.map((a) => Array.from(a)) }));
} else {
  const test = require('node:test');
  const assert = require('node:assert');

  const check = (t, what, got, ref) => {
    const errs = { dx: 0, dA: 0, dB: 0 };
    const e = (a, b, key, name) => {
      const v = relErr(a, b);
      assert.ok(v <= TOL, `${what} ${name}: relative error ${v.toExponential(3)} exceeds ${TOL}`);
      errs[key] = Math.max(errs[key], v);
    };
    e(got.dx, ref.dx, 'dx', 'dx');
    got.dA.forEach((a, i) => e(a, ref.dA[i], 'dA', `dA[${i}]`));
    got.dB.forEach((a, i) => e(a, ref.dB[i], 'dB', `dB[${i}]`));
    assert.ok(sameBits(got.dx, got.again.dx), `${what}: dx differs between two backward calls`);
    got.dA.forEach((a, i) => assert.ok(sameBits(a, got.again.dA[i]), `${what}: dA[${i}] differs between two backward calls`));
    got.dB.forEach((a, i) => assert.ok(sameBits(a, got.again.dB[i]), `${what}: dB[${i}] differs between two backward calls`));
    t.diagnostic(`${what}: relative error dA ${errs.dA.toExponential(2)}, dB ${errs.dB.toExponential(2)}, dx ${errs.dx.toExponential(2)}`);
  };

  for (const dtype of ['bf16', 'f16'])
    for (const n of [5, 17, 100, 4096])
      for (const ranks of [
        [1, 64],
        [8, 16],
        [24, 32],
      ]) {
        const what = `${dtype} n ${n} out 1000 r ${ranks.join('+')}`;
        test(`fused LoRA gradients, ${what}: float64 reference, bitwise repeatable`, (t) => {
          const { got, ref } = runCase(dtype, n, 1000, ranks);
          check(t, what, got, ref);
        });
      }

  test('out_features 999 (fallback to cuBLASLt): float64 reference, bitwise repeatable', (t) => {
    const { got, ref } = runCase('bf16', 100, 999, [8, 64]);
    check(t, 'bf16 n 100 out 999 r 8+64', got, ref);
  });

  test('the cuBLASLt path (LORAKIT_CUDA_GRAD=gemm, child process) agrees within tolerance, not bit for bit', () => {
    const child = spawnSync(process.execPath, [__filename], {
      env: { ...process.env, LORAKIT_CUDA_GRAD: 'gemm', LORAKIT_GRAD_CHILD: '1' },
      encoding: 'utf8',
      maxBuffer: 64 << 20,
    });
    assert.strictEqual(child.status, 0, child.stderr);
    const gemm = JSON.parse(child.stdout);
    const { got } = runCase(...CHILD_CASE);
    let identical = true;
    for (const key of ['dA', 'dB'])
      got[key].forEach((a, i) => {
        const b = Float32Array.from(gemm[key][i]);
        const e = relErr(a, b);
        assert.ok(e <= TOL, `${key}[${i}]: fused vs gemm relative difference ${e}`);
        if (!sameBits(a, b)) identical = false;
      });
    assert.ok(!identical, 'fused and gemm results are bitwise identical: was the fused path used?');
  });
}
