// Shared helpers for the GPU tests (plain node:test scripts: jest does not travel to the GPU machine).
'use strict';
const path = require('path');
const fs = require('fs');
const lk = require('../dist');
const { SafetensorsFile } = require('../dist/io/safetensors');

// LORAKIT_GOLDEN, else golden/ staged beside the package (the GPU machine), else ../shared/golden.
const GOLDEN =
  process.env.LORAKIT_GOLDEN ||
  [path.resolve(__dirname, '../golden'), path.resolve(__dirname, '../../shared/golden')].find((p) => fs.existsSync(p)) ||
  path.resolve(__dirname, '../golden');

// The device the golden suites run on: 'cuda', or 'cpu' when scripts/check-cpu-golden.sh runs the
// same files once per forced CPU path (LORAKIT_TEST_DEVICE=cpu). Tests that compare cuda with the
// cpu pass PARITY as their options: skipped on the cpu, where they would compare the cpu with itself.
const DEVICE = process.env.LORAKIT_TEST_DEVICE || 'cuda';
if (DEVICE !== 'cuda' && DEVICE !== 'cpu') throw new Error(`LORAKIT_TEST_DEVICE: expected cuda or cpu, got ${DEVICE}`);
const PARITY = { skip: DEVICE === 'cpu' ? 'compares cuda with the cpu' : false };
if (DEVICE === 'cuda' && !lk.cuda.isAvailable())
  throw new Error(`test-gpu needs the CUDA build and a usable NVIDIA GPU; backendInfo(): ${JSON.stringify(lk.backendInfo())}`);

function loadCase(name) {
  const p = path.join(GOLDEN, `${name}.safetensors`);
  if (!fs.existsSync(p)) throw new Error(`golden case missing: ${p} (set LORAKIT_GOLDEN)`);
  const file = SafetensorsFile.read(p);
  return { file, meta: JSON.parse(file.metadata.case || '{}'), f32: (n) => file.float32(n), shape: (n) => file.entry(n).shape };
}

/** ‖a − b‖ / ‖b‖ in float64; NaN never passes. */
function relErr(a, b) {
  if (a.length !== b.length) throw new Error(`length mismatch: ${a.length} vs ${b.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    num += d * d;
    den += b[i] * b[i];
  }
  const e = den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
  return Number.isNaN(e) ? Infinity : e;
}

function expectClose(actual, expected, tol, what) {
  const e = relErr(actual, expected);
  if (!(e <= tol)) throw new Error(`${what}: relative error ${e.toExponential(3)} exceeds ${tol}`);
  return e;
}

/** Uniform values in [-scale, scale) from a seeded xorshift (fresh data per seed). */
function randomArray(n, seed, scale = 1) {
  let s = seed >>> 0 || 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    out[i] = ((s / 4294967296) * 2 - 1) * scale;
  }
  return out;
}

/** Repeats the rows of a [n, d] array k times. */
function tileRows(a, k) {
  const out = new Float32Array(a.length * k);
  for (let i = 0; i < k; i++) out.set(a, i * a.length);
  return out;
}

module.exports = { lk, loadCase, relErr, expectClose, randomArray, tileRows, GOLDEN, DEVICE, PARITY };
