/**
 * The f32 → Q4_1 / Q5_0 / Q5_1 / Q4_K / Q5_K / Q6_K quantizers (native/cpu/ggml_blocks.cc): the
 * 32-value formats bit for bit against a transcription of ggml's quantize_row_*_ref; the K-quants
 * (lorakit's one-pass quantizer, not ggml's search) by their round-trip error on Gaussian data and by
 * their block layout read back with the independent float64 decoder; and a GGUF merge with
 * `outtype: 'same'` into Q4_K and Q5_1 weights, which keep their types.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { dequantize, quantize, quantizeAsync } from '../lib/gguf/codecs';
import { GGML } from '../lib/gguf/ggml_types';
import { mergeGguf } from '../lib/gguf/merge';
import { kv } from '../lib/gguf/metadata';
import { GgufReader } from '../lib/gguf/reader';
import { GgufStreamWriter } from '../lib/gguf/writer';
import { BLOCK, BlockType, dequantizeRef, half, quantizeMinRef, quantizeQ5_0Ref } from './helpers/ggml_blocks_ref';

function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296;
  };
}
function gaussian(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = scale * Math.sqrt(-2 * Math.log(r() + 1e-12)) * Math.cos(2 * Math.PI * r());
  return out;
}
function relRms(x: Float32Array, y: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < x.length; i++) {
    num += (y[i] - x[i]) ** 2;
    den += x[i] ** 2;
  }
  return Math.sqrt(num / den);
}
const eq = (a: Uint8Array, b: Uint8Array) => Buffer.from(a).equals(Buffer.from(b));

// Relative RMS error of quantize → dequantize on N(0, 0.02²), 256·512 values, as measured here. For
// comparison (measured once, outside this suite): Q4_0 0.086; ggml's searching quantize_row_q*_K_ref
// of llama.cpp as node-llama-cpp 3.21.1 ships it: Q4_K 0.071, Q5_K 0.036, Q6_K 0.018.
const MEASURED: Array<[BlockType, number, number]> = [
  ['Q4_1', GGML.Q4_1, 0.078], ['Q5_0', GGML.Q5_0, 0.043], ['Q5_1', GGML.Q5_1, 0.038],
  ['Q4_K', GGML.Q4_K, 0.080], ['Q5_K', GGML.Q5_K, 0.039], ['Q6_K', GGML.Q6_K, 0.019],
];
const errs: Record<string, number> = {};
afterAll(() => console.log(`quantize → dequantize, relative RMS on Gaussian data: ${Object.entries(errs).map(([k, v]) => `${k} ${v.toFixed(4)}`).join(', ')}`));

describe('Q4_1, Q5_0, Q5_1: bit for bit as quantize_row_*_ref', () => {
  const x = gaussian(32 * 2048, 7, 0.05);
  x.fill(0, 0, 32); // a zero block: d = 0
  for (let j = 0; j < 32; j++) x[32 + j] = (j - 16) * 0.5; // ties at half steps
  x[64] = -3; // the largest magnitude negative
  for (let j = 0; j < 32; j++) x[96 + j] = 1.25; // a constant block: max = min
  const refs: Array<[string, number, (v: Float32Array) => Uint8Array]> = [
    ['Q4_1', GGML.Q4_1, (v) => quantizeMinRef('Q4_1', v)],
    ['Q5_0', GGML.Q5_0, quantizeQ5_0Ref],
    ['Q5_1', GGML.Q5_1, (v) => quantizeMinRef('Q5_1', v)],
  ];
  test.each(refs)('%s, sync and async', async (_name, id, ref) => {
    const want = ref(x);
    expect(eq(quantize(id, x), want)).toBe(true);
    expect(eq(await quantizeAsync(id, x), want)).toBe(true);
  });
});

describe.each(MEASURED)('%s round trip', (name, id, measured) => {
  const x = gaussian(256 * 512, 11, 0.02);
  const q = quantize(id, x);
  const y = dequantize(id, q, x.length);

  test('error on Gaussian data as measured', () => {
    expect(q.length).toBe((x.length / BLOCK[name].qk) * BLOCK[name].bytes);
    errs[name] = relRms(x, y);
    expect(errs[name]).toBeGreaterThan(measured * 0.9);
    expect(errs[name]).toBeLessThan(measured * 1.1);
  });

  test('the float64 reference decoder reads the same values (layout)', () => {
    const ref = dequantizeRef(name, q.subarray(0, 64 * BLOCK[name].bytes));
    for (let i = 0; i < ref.length; i++) expect(Math.abs(ref[i] - y[i])).toBeLessThanOrEqual(1e-6 * Math.abs(ref[i]) + 1e-12);
  });
});

// The 6-bit (sc, m) of sub-block j of a Q4_K/Q5_K super-block (ggml's get_scale_min_k4).
function scaleMin(s: Uint8Array, j: number): [number, number] {
  if (j < 4) return [s[j] & 63, s[j + 4] & 63];
  return [(s[j + 4] & 15) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4)];
}

describe('K-quant scales decode to ranges that fit each sub-block', () => {
  const x = gaussian(256 * 64, 13, 0.02);
  test.each([['Q4_K', GGML.Q4_K, 15], ['Q5_K', GGML.Q5_K, 31]] as const)('%s: d·sc·nmax − dmin·m ≥ max, −dmin·m ≤ min, steps no wider than needed', (name, id, nmax) => {
    const q = quantize(id, x);
    const bytes = BLOCK[name].bytes;
    for (let b = 0; b < x.length / 256; b++) {
      const blk = q.subarray(b * bytes, (b + 1) * bytes);
      const d = half(blk[0] | (blk[1] << 8));
      const dmin = half(blk[2] | (blk[3] << 8));
      for (let j = 0; j < 8; j++) {
        const v = x.subarray(b * 256 + j * 32, b * 256 + j * 32 + 32);
        const [sc, m] = scaleMin(blk.subarray(4, 16), j);
        const lo = -dmin * m;
        const hi = d * sc * nmax - dmin * m;
        expect(lo).toBeLessThanOrEqual(Math.min(...v) + 1e-3 * (hi - lo)); // slack: an f16 d/dmin may round down at sc/m = 63
        expect(hi).toBeGreaterThanOrEqual(Math.max(...v) - 1e-3 * (hi - lo));
        expect(hi - lo).toBeLessThan(Math.max(...v) - Math.min(...v, 0) + 2 * d * nmax + 2 * dmin); // one 6-bit step of slack each
      }
    }
  });

  test('Q6_K: |d·sc|·32 covers each sub-block of 16, within one int8 step', () => {
    const q = quantize(GGML.Q6_K, x);
    for (let b = 0; b < x.length / 256; b++) {
      const blk = q.subarray(b * 210, (b + 1) * 210);
      const d = half(blk[208] | (blk[209] << 8));
      for (let j = 0; j < 16; j++) {
        const sc = (blk[192 + j] << 24) >> 24;
        const amax = Math.max(...Array.from(x.subarray(b * 256 + j * 16, b * 256 + j * 16 + 16), Math.abs));
        expect(Math.abs(d * sc) * 32).toBeGreaterThan(amax * 0.95);
        expect(Math.abs(d * sc) * 32).toBeLessThan(amax + 32 * Math.abs(d));
      }
    }
  });

  test('zero and constant super-blocks come back exactly or within a step', () => {
    const z = new Float32Array(512);
    z.fill(0.5, 256);
    for (const id of [GGML.Q4_K, GGML.Q5_K, GGML.Q6_K]) {
      const y = dequantize(id, quantize(id, z), z.length);
      for (let i = 0; i < 256; i++) expect(Math.abs(y[i])).toBe(0); // −0 from d·q − dmin·m is fine
      for (let i = 256; i < 512; i++) expect(Math.abs(y[i] - 0.5)).toBeLessThan(0.5 / 15);
    }
  });
});

describe('GGUF merge with outtype same into Q4_K and Q5_1 weights', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-gguf-quant-'));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  const H = 256, F = 64, r = 4, alpha = 8;
  const up = gaussian(F * H, 21, 0.02); // ffn_up [F, H]: rows of 256, Q4_K
  const down = gaussian(H * F, 22, 0.02); // ffn_down [H, F]: rows of 64, Q5_1
  const norm = gaussian(H, 23, 1);
  const A = { up: gaussian(r * H, 24, 0.05), down: gaussian(r * F, 25, 0.05) };
  const B = { up: gaussian(F * r, 26, 0.05), down: gaussian(H * r, 27, 0.05) };
  const base = path.join(dir, 'base.gguf');
  const lora = path.join(dir, 'lora.gguf');

  beforeAll(() => {
    const meta = [['general.architecture', kv.str('llama')], ['llama.block_count', kv.u32(1)], ['llama.embedding_length', kv.u32(H)],
      ['llama.attention.head_count', kv.u32(4)]] as Array<[string, ReturnType<typeof kv.str>]>;
    const w = new GgufStreamWriter(base, meta, [
      { name: 'blk.0.attn_norm.weight', type: GGML.F32, shape: [H] },
      { name: 'blk.0.ffn_up.weight', type: GGML.Q4_K, shape: [F, H] },
      { name: 'blk.0.ffn_down.weight', type: GGML.Q5_1, shape: [H, F] },
    ]);
    w.writeFloat32('blk.0.attn_norm.weight', norm);
    w.writeFloat32('blk.0.ffn_up.weight', up);
    w.writeFloat32('blk.0.ffn_down.weight', down);
    w.commit();
    const l = new GgufStreamWriter(lora, [['general.architecture', kv.str('llama')], ['general.type', kv.str('adapter')], ['adapter.type', kv.str('lora')],
      ['adapter.lora.alpha', kv.f32(alpha)]], [
      { name: 'blk.0.ffn_up.weight.lora_a', type: GGML.F32, shape: [r, H] }, { name: 'blk.0.ffn_up.weight.lora_b', type: GGML.F32, shape: [F, r] },
      { name: 'blk.0.ffn_down.weight.lora_a', type: GGML.F32, shape: [r, F] }, { name: 'blk.0.ffn_down.weight.lora_b', type: GGML.F32, shape: [H, r] },
    ]);
    for (const [n, v] of [['blk.0.ffn_up.weight.lora_a', A.up], ['blk.0.ffn_up.weight.lora_b', B.up], ['blk.0.ffn_down.weight.lora_a', A.down], ['blk.0.ffn_down.weight.lora_b', B.down]] as const)
      l.writeFloat32(n, v);
    l.commit();
  });

  test('each merged tensor keeps its type and is the f32 merge within its format\'s error; no warning', async () => {
    const out = path.join(dir, 'merged.gguf');
    const warnings: string[] = [];
    const res = await mergeGguf({ base, adapter: lora, out, outtype: 'same', warn: (m) => warnings.push(m) });
    expect(res.merged.sort()).toEqual(['blk.0.ffn_down.weight', 'blk.0.ffn_up.weight']);
    expect(warnings).toEqual([]);
    const rb = new GgufReader(base);
    const ro = new GgufReader(out);
    try {
      expect(ro.tensors.map((t) => t.type)).toEqual([GGML.F32, GGML.Q4_K, GGML.Q5_1]);
      expect(Buffer.from(ro.bytes('blk.0.attn_norm.weight')).equals(Buffer.from(rb.bytes('blk.0.attn_norm.weight')))).toBe(true);
      const cases: Array<[string, number, number, Float32Array, Float32Array, number]> = [
        ['blk.0.ffn_up.weight', F, H, A.up, B.up, 0.09], ['blk.0.ffn_down.weight', H, F, A.down, B.down, 0.045],
      ];
      for (const [name, rows, cols, a, b, bound] of cases) {
        const want = rb.float32(name); // the base as stored, merged in f64: W + (α/r)·B·A
        for (let i = 0; i < rows; i++)
          for (let j = 0; j < cols; j++) {
            let s = 0;
            for (let k = 0; k < r; k++) s += b[i * r + k] * a[k * cols + j];
            want[i * cols + j] += (alpha / r) * s;
          }
        const e = relRms(want, ro.float32(name));
        errs[`merge ${name}`] = e;
        expect(e).toBeGreaterThan(0.005); // re-quantized, not copied
        expect(e).toBeLessThan(bound);
      }
    } finally {
      rb.close();
      ro.close();
    }
  });
});
