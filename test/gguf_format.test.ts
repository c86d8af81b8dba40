/**
 * GGUF v3 reading and writing, and ggml's block formats: the TS codecs against a float64
 * transcription of ggml's formulas (test/helpers/ggml_blocks_ref.ts), the writer's layout
 * (alignment, padding, offsets) read back by the reader, every metadata value type, and clear
 * errors for malformed files.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Tensor } from '../lib';
import { mergeAdapter } from '../lib/kernels';
import { dequantize, dequantizeAsync, mergeRowsAsync, quantize, quantizeAsync } from '../lib/gguf/codecs';
import { GGML } from '../lib/gguf/ggml_types';
import { bf16ToFloat, dequantizeJs, floatToBf16, floatToHalf, halfToFloat, quantizeJs } from './helpers/ggml_blocks_f32';
import { GgufKV, array, kv } from '../lib/gguf/metadata';
import { GgufReader } from '../lib/gguf/reader';
import { GgufStreamWriter } from '../lib/gguf/writer';
import { BLOCK, BlockType, dequantizeRef, half, quantizeQ4_0Ref, quantizeQ8_0Ref, randomBlocks, toHalfRef } from './helpers/ggml_blocks_ref';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-gguf-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 4294967296;
  };
}
function gaussian(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = scale * Math.sqrt(-2 * Math.log(r() + 1e-12)) * Math.cos(2 * Math.PI * r());
  return out;
}
const TYPE_ID: Record<BlockType, number> = { Q4_0: 2, Q4_1: 3, Q5_0: 6, Q5_1: 7, Q8_0: 8, Q4_K: 12, Q5_K: 13, Q6_K: 14 };

describe('16-bit floats', () => {
  test('half: every bit pattern decodes exactly and f32 → half rounds to nearest even', () => {
    for (let h = 0; h < 65536; h++) {
      const v = halfToFloat(h);
      if (Number.isNaN(v)) continue;
      if (!Object.is(v, half(h)) || floatToHalf(v) !== h) throw new Error(`half 0x${h.toString(16)}: ${v} vs ${half(h)}, back ${floatToHalf(v)}`);
    }
    const r = rng(7);
    const f = new Float32Array(1);
    for (let i = 0; i < 20000; i++) {
      f[0] = (r() - 0.5) * Math.pow(2, Math.floor(r() * 44) - 28);
      if (floatToHalf(f[0]) !== toHalfRef(f[0])) throw new Error(`${f[0]}: ${floatToHalf(f[0])} vs ${toHalfRef(f[0])}`);
    }
    expect(floatToHalf(65519.99)).toBe(0x7bff);
    expect(floatToHalf(65520)).toBe(0x7c00);
    expect(floatToHalf(NaN)).toBe(0x7e00);
    expect(floatToHalf(-0)).toBe(0x8000);
  });

  test('bf16: round to nearest even on the upper 16 bits', () => {
    const f = new Float32Array(1);
    const u = new Uint32Array(f.buffer);
    for (const bits of [0x3f808000, 0x3f818000, 0x3f808001, 0xbf7fffff, 0x00000001]) {
      u[0] = bits;
      const lower = bits & 0xffff;
      const up = bits >>> 16;
      const want = lower > 0x8000 || (lower === 0x8000 && (up & 1) === 1) ? up + 1 : up;
      expect(floatToBf16(f[0])).toBe(want & 0xffff);
      expect(bf16ToFloat(want & 0xffff)).toBe(new Float32Array(new Uint32Array([(want & 0xffff) << 16]).buffer)[0]);
    }
  });
});

describe('block formats', () => {
  test.each(Object.keys(BLOCK) as BlockType[])('%s dequantizes as ggml\'s formulas give (float64 reference, within 1 ulp of the block scale)', (type) => {
    const nBlocks = BLOCK[type].qk === 256 ? 24 : 200;
    const data = randomBlocks(type, nBlocks, rng(TYPE_ID[type] * 31 + 5));
    const got = dequantizeJs(TYPE_ID[type], data, nBlocks * BLOCK[type].qk);
    const ref = dequantizeRef(type, data);
    const qk = BLOCK[type].qk;
    for (let b = 0; b < nBlocks; b++) {
      let mag = 0;
      for (let j = 0; j < qk; j++) mag = Math.max(mag, Math.abs(ref[b * qk + j]));
      const tol = 2 * Math.pow(2, -23) * mag; // f32 steps of a value of this block's magnitude
      for (let j = 0; j < qk; j++) {
        const i = b * qk + j;
        if (!(Math.abs(got[i] - ref[i]) <= tol)) throw new Error(`${type} block ${b} element ${j}: ${got[i]} vs ${ref[i]} (tol ${tol})`);
      }
    }
  });

  test('Q8_0 and Q4_0 quantize bit for bit as quantize_row_*_ref, with the expected error on Gaussian data', () => {
    const x = gaussian(32 * 512, 11, 0.02);
    // edge blocks: zeros, a tie at ±0.5 steps, the largest magnitude negative
    x.fill(0, 0, 32);
    for (let j = 0; j < 32; j++) x[32 + j] = (j - 16) * 0.5;
    x[64] = -3;
    const q8 = quantizeJs(GGML.Q8_0, x);
    const q4 = quantizeJs(GGML.Q4_0, x);
    expect(Buffer.compare(Buffer.from(q8), Buffer.from(quantizeQ8_0Ref(x)))).toBe(0);
    expect(Buffer.compare(Buffer.from(q4), Buffer.from(quantizeQ4_0Ref(x)))).toBe(0);
    const rel = (q: Uint8Array, t: number) => {
      const y = dequantizeJs(t, q, x.length);
      let num = 0;
      let den = 0;
      for (let i = 96; i < x.length; i++) {
        num += (y[i] - x[i]) ** 2;
        den += x[i] ** 2;
      }
      return Math.sqrt(num / den);
    };
    expect(rel(q8, GGML.Q8_0)).toBeGreaterThan(0.003);
    expect(rel(q8, GGML.Q8_0)).toBeLessThan(0.008); // measured on numpy: 0.0054
    expect(rel(q4, GGML.Q4_0)).toBeGreaterThan(0.06);
    expect(rel(q4, GGML.Q4_0)).toBeLessThan(0.11); // 0.086
  });

  test('sizes are checked and unsupported types are named', () => {
    expect(() => dequantizeJs(GGML.Q8_0, new Uint8Array(33), 32)).toThrow(/34 bytes, got 33/);
    expect(() => dequantizeJs(GGML.Q8_0, new Uint8Array(34), 31)).toThrow(/not a whole number of Q8_0 blocks/);
    expect(() => dequantizeJs(10, new Uint8Array(84), 256)).toThrow(/cannot dequantize Q2_K/);
    expect(() => quantizeJs(GGML.Q4_K, new Float32Array(256))).toThrow(/cannot write Q4_K/);
  });
});

describe('native codecs (native/cpu/ggml_blocks.cc) against the references', () => {
  const bits = (f: Float32Array) => Buffer.from(f.buffer, f.byteOffset, f.byteLength);

  test.each(Object.keys(BLOCK) as BlockType[])('%s: native dequantize is bit-identical to the f32 model and within 1 ulp of the float64 reference', async (type) => {
    const nBlocks = BLOCK[type].qk === 256 ? 64 : 700; // enough blocks to split over the pool
    const data = randomBlocks(type, nBlocks, rng(TYPE_ID[type] * 7 + 1));
    const n = nBlocks * BLOCK[type].qk;
    const got = dequantize(TYPE_ID[type], data, n);
    expect(bits(got).equals(bits(dequantizeJs(TYPE_ID[type], data, n)))).toBe(true);
    expect(bits(await dequantizeAsync(TYPE_ID[type], data, n)).equals(bits(got))).toBe(true);
    const ref = dequantizeRef(type, data);
    const qk = BLOCK[type].qk;
    for (let b = 0; b < nBlocks; b++) {
      let mag = 0;
      for (let j = 0; j < qk; j++) mag = Math.max(mag, Math.abs(ref[b * qk + j]));
      for (let j = 0; j < qk; j++) if (!(Math.abs(got[b * qk + j] - ref[b * qk + j]) <= 2 * Math.pow(2, -23) * mag)) throw new Error(`${type} block ${b}[${j}]`);
    }
  });

  test('F16, BF16, F64 and F32 read natively as the f32 model reads them (every half bit pattern)', () => {
    const all = new Uint8Array(65536 * 2);
    for (let h = 0; h < 65536; h++) [all[2 * h], all[2 * h + 1]] = [h & 255, h >> 8];
    for (const t of [GGML.F16, GGML.BF16]) {
      const a = dequantize(t, all, 65536);
      const b = dequantizeJs(t, all, 65536);
      for (let i = 0; i < 65536; i++) if (!(Object.is(a[i], b[i]) || (Number.isNaN(a[i]) && Number.isNaN(b[i])))) throw new Error(`type ${t} bits ${i}: ${a[i]} vs ${b[i]}`);
    }
    const f64 = new Float64Array([1 / 3, -1e-40, 1e39, Math.PI]);
    expect(Array.from(dequantize(GGML.F64, new Uint8Array(f64.buffer), 4))).toEqual(Array.from(Float32Array.from(f64)));
    const f32 = gaussian(77, 5);
    expect(bits(dequantize(GGML.F32, new Uint8Array(f32.buffer), 77)).equals(bits(f32))).toBe(true);
  });

  test('quantize: Q8_0 and Q4_0 bit-identical to quantize_row_*_ref, F16/BF16 to round-to-nearest-even, sync and async', async () => {
    const x = gaussian(32 * 4096, 23, 0.05);
    for (let j = 0; j < 32; j++) x[32 + j] = (j - 16) * 0.5; // ties
    x.fill(0, 0, 32);
    x[64] = -3;
    const eq = (a: Uint8Array, b: Uint8Array) => Buffer.from(a).equals(Buffer.from(b));
    expect(eq(quantize(GGML.Q8_0, x), quantizeQ8_0Ref(x))).toBe(true);
    expect(eq(quantize(GGML.Q4_0, x), quantizeQ4_0Ref(x))).toBe(true);
    expect(eq(await quantizeAsync(GGML.Q8_0, x), quantizeQ8_0Ref(x))).toBe(true);
    const edges = new Float32Array([0, -0, 65504, 65519.99, 65520, 1e-8, 2 ** -24, 2 ** -25, 3 * 2 ** -26, -(2 ** -14), 1 + 2 ** -11, 1 + 3 * 2 ** -11, NaN, -Infinity, ...gaussian(4000, 29, 1e-3)]);
    for (const t of [GGML.F16, GGML.BF16, GGML.F32]) expect(eq(quantize(t, edges), quantizeJs(t, edges))).toBe(true);
  });

  test('ggmlMergeRows = dequantize, W + s·B·A (the merge kernel), quantize, bit for bit', async () => {
    const rows = 12, cols = 512, r = 4;
    const src = randomBlocks('Q4_K', (rows * cols) / 256, rng(41));
    const A = gaussian(r * cols, 42, 0.1);
    const B = gaussian(rows * r, 43, 0.1);
    const W = Tensor.from(dequantize(GGML.Q4_K, src, rows * cols), [rows, cols]);
    const At = Tensor.from(A, [r, cols]);
    const Bt = Tensor.from(B, [rows, r]);
    mergeAdapter(W, { loraA: At, loraB: Bt, scaling: 1.5 });
    const want = quantize(GGML.Q8_0, W.toFloat32Array());
    [W, At, Bt].forEach((t) => t.dispose());
    const got = await mergeRowsAsync(GGML.Q4_K, src, rows, cols, A, B, 1.5, GGML.Q8_0);
    expect(Buffer.from(got).equals(Buffer.from(want))).toBe(true);
    await expect(mergeRowsAsync(GGML.Q4_K, src, rows, cols, A, B.subarray(1), 1.5, GGML.Q8_0)).rejects.toThrow(/B: expected rows·r = 48 values, got 47/);
    await expect(mergeRowsAsync(GGML.Q4_K, src, rows, cols, A, B, 1.5, 10)).rejects.toThrow(/outType: ggml type 10 cannot be written/);
  });

  test('bad arguments are typed errors naming them', () => {
    const expectErr = (fn: () => unknown, name: string, msg: RegExp) => {
      let e: Error | null = null;
      try {
        fn();
      } catch (err) {
        e = err as Error;
      }
      expect(e?.name).toBe(name);
      expect(e?.message).toMatch(msg);
    };
    expectErr(() => dequantize(10, new Uint8Array(84), 256), 'LoraTypeError', /type: ggml type 10 cannot be read/);
    expectErr(() => quantize(10, new Float32Array(256)), 'LoraTypeError', /type: ggml type 10 cannot be written/);
    expectErr(() => quantize(GGML.F64, new Float32Array(4)), 'LoraTypeError', /type: ggml type 28 cannot be written/);
    expectErr(() => dequantize(GGML.Q8_0, new Uint8Array(33), 32), 'LoraRangeError', /src: 32 values of this type take 34 bytes, got 33/);
    expectErr(() => dequantize(GGML.Q8_0, new Uint8Array(34), 31), 'LoraRangeError', /n: 31 values are not a whole number of blocks of 32/);
    expectErr(() => quantize(GGML.Q4_0, new Float32Array(33)), 'LoraRangeError', /src: 33 values/);
    expectErr(() => dequantize(GGML.F16, new Float32Array(2) as never, 4), 'LoraTypeError', /src: expected a Uint8Array/);
    expectErr(() => dequantize(-1, new Uint8Array(4), 1), 'LoraRangeError', /type/);
  });
});

function allTypesMetadata(): Array<[string, GgufKV]> {
  return [
    ['general.architecture', kv.str('llama')],
    ['t.u8', kv.u8(255)], ['t.i8', kv.i8(-128)], ['t.u16', kv.u16(65535)], ['t.i16', kv.i16(-32768)],
    ['t.u32', kv.u32(4294967295)], ['t.i32', kv.i32(-2147483648)], ['t.f32', kv.f32(0.5)], ['t.bool', kv.bool(true)],
    ['t.string', kv.str('héllo ▁ wörld')], ['t.u64', kv.u64(2n ** 64n - 1n)], ['t.i64', kv.i64(-(2n ** 63n))], ['t.f64', kv.f64(Math.PI)],
    ['t.arr.f32', kv.arr('f32', [1.5, -2, 3])], ['t.arr.str', kv.arr('string', ['a', '', 'ü'])], ['t.arr.bool', kv.arr('bool', [true, false])],
    ['t.arr.i64', kv.arr('i64', [1n, -5n])], ['t.arr.empty', kv.arr('u8', [])],
    ['t.arr.nested', kv.arr('array', [array('i32', [1, 2]), array('string', ['x']), array('array', [array('u8', [7])])])],
  ];
}

describe('GGUF files', () => {
  test('write → read: every value type, nested arrays, aligned tensors of every written type', () => {
    const file = path.join(dir, 'all.gguf');
    const x = gaussian(64 * 4, 3);
    const q4k = randomBlocks('Q4_K', 2, rng(9));
    const specs = [
      { name: 'a.f32', type: GGML.F32, shape: [4, 64] },
      { name: 'b.f16', type: GGML.F16, shape: [4, 64] },
      { name: 'c.bf16', type: GGML.BF16, shape: [4, 64] },
      { name: 'd.q8_0', type: GGML.Q8_0, shape: [4, 64] },
      { name: 'e.q4_0', type: GGML.Q4_0, shape: [4, 64] },
      { name: 'f.empty', type: GGML.F32, shape: [0, 8] },
      { name: 'g.q4_k', type: GGML.Q4_K, shape: [2, 256] },
      { name: 'h.vec', type: GGML.F32, shape: [3] },
    ];
    const w = new GgufStreamWriter(file, allTypesMetadata(), specs);
    for (const s of specs.slice(0, 5)) w.writeFloat32(s.name, x);
    w.write('g.q4_k', q4k.subarray(0, 100)); // in chunks
    w.write('g.q4_k', q4k.subarray(100));
    w.writeFloat32('h.vec', new Float32Array([1, 2, 3]));
    w.commit();

    const r = new GgufReader(file);
    try {
      expect(r.version).toBe(3);
      expect(r.alignment).toBe(32);
      expect(r.dataStart % 32).toBe(0);
      const md = Object.fromEntries([...r.metadata].map(([k, e]) => [k, e]));
      for (const [k, e] of allTypesMetadata()) {
        expect(md[k].type).toBe(e.type);
        expect(md[k].value).toEqual(e.value);
      }
      expect(r.names).toEqual(specs.map((s) => s.name));
      for (const t of r.tensors) expect(t.offset % 32).toBe(0);
      expect(r.tensor('a.f32').ne).toEqual([64, 4]);
      expect(r.tensor('d.q8_0').nbytes).toBe(8 * 34);
      expect(r.float32('a.f32')).toEqual(x);
      expect(r.float32('b.f16')).toEqual(Float32Array.from(x, (v) => halfToFloat(floatToHalf(v))));
      expect(r.float32('c.bf16')).toEqual(Float32Array.from(x, (v) => bf16ToFloat(floatToBf16(v))));
      expect(r.float32('d.q8_0')).toEqual(Float32Array.from(dequantizeRef('Q8_0', quantizeQ8_0Ref(x))));
      expect(r.float32('e.q4_0')).toEqual(Float32Array.from(dequantizeRef('Q4_0', quantizeQ4_0Ref(x))));
      expect(Buffer.from(r.bytes('g.q4_k')).equals(Buffer.from(q4k))).toBe(true);
      expect(r.rowsFloat32('d.q8_0', 1, 2)).toEqual(r.float32('d.q8_0').subarray(64, 192));
      expect(r.float32('f.empty').length).toBe(0);
      expect(r.getString('general.architecture')).toBe('llama');
      expect(() => r.getString('t.u8')).toThrow(/'t.u8'\] is a u8, expected a string/);
      expect(() => r.getNumber('t.u64')).toThrow(/is not a safe integer/);
      expect(r.getNumber('t.u32')).toBe(4294967295);
    } finally {
      r.close();
    }
    expect(fs.readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });

  test('general.alignment is honoured (64) and must be a u32 power of two', () => {
    const file = path.join(dir, 'al64.gguf');
    const w = new GgufStreamWriter(file, [['general.alignment', kv.u32(64)]], [
      { name: 'x', type: GGML.F32, shape: [3] },
      { name: 'y', type: GGML.F32, shape: [5] },
    ]);
    w.writeFloat32('x', new Float32Array(3));
    w.writeFloat32('y', new Float32Array([1, 2, 3, 4, 5]));
    w.commit();
    const r = new GgufReader(file);
    expect(r.alignment).toBe(64);
    expect(r.dataStart % 64).toBe(0);
    expect(r.tensor('y').offset).toBe(64);
    expect(Array.from(r.float32('y'))).toEqual([1, 2, 3, 4, 5]);
    r.close();
    expect(() => new GgufStreamWriter(path.join(dir, 'bad.gguf'), [['general.alignment', kv.u32(48)]], [])).toThrow(/power of two/);
    expect(() => new GgufStreamWriter(path.join(dir, 'bad.gguf'), [['general.alignment', kv.u64(64)]], [])).toThrow(/general.alignment/);
  });

  test('the writer checks order, sizes and completeness, and leaves no file behind on failure', () => {
    const file = path.join(dir, 'partial.gguf');
    const specs = [{ name: 'x', type: GGML.Q8_0, shape: [2, 32] }, { name: 'y', type: GGML.F32, shape: [2] }];
    const w = new GgufStreamWriter(file, [], specs);
    expect(() => w.write('y', new Uint8Array(8))).toThrow(/expected tensor 'x' next/);
    expect(() => w.write('x', new Uint8Array(69))).toThrow(/takes 68 bytes; got 1 too many/);
    w.write('x', new Uint8Array(68));
    expect(() => w.commit()).toThrow(/only 1 of 2 tensors/);
    expect(fs.existsSync(file)).toBe(false);
    expect(() => new GgufStreamWriter(file, [], [{ name: 'q', type: GGML.Q8_0, shape: [4, 30] }])).toThrow(/not a whole number of Q8_0 blocks/);
    expect(() => new GgufStreamWriter(file, [], [{ name: 'n'.repeat(64), type: GGML.F32, shape: [1] }])).toThrow(/1-63 bytes/);
    expect(() => new GgufStreamWriter(file, [['k', { type: 'u8', value: 256 }]], [])).toThrow(/256 is not a u8/);
    expect(fs.readdirSync(dir).filter((f) => f.includes('partial'))).toEqual([]);
  });
});

describe('malformed GGUF files give errors naming the field', () => {
  function valid(): Buffer {
    const file = path.join(dir, 'base.gguf');
    const w = new GgufStreamWriter(file, [['general.architecture', kv.str('llama')]], [
      { name: 'a', type: GGML.F32, shape: [8] },
      { name: 'b', type: GGML.F32, shape: [8] },
    ]);
    w.writeFloat32('a', new Float32Array(8));
    w.writeFloat32('b', new Float32Array(8));
    w.commit();
    return fs.readFileSync(file);
  }
  const open = (buf: Buffer) => {
    const f = path.join(dir, 'case.gguf');
    fs.writeFileSync(f, buf);
    return () => new GgufReader(f).close();
  };
  // Byte positions in valid(): magic 0, version 4, tensor count 8, kv count 16, key at 24.
  const kvEnd = 24 + 8 + 20 + 4 + 8 + 5; // 'general.architecture' = 'llama'
  const tensorA = kvEnd; // name len 8 + 'a' + n_dims 4 + ne 8 + type 4 + offset 8
  const posOf = { aType: tensorA + 8 + 1 + 4 + 8, aOffset: tensorA + 8 + 1 + 4 + 8 + 4, bOffset: tensorA + 33 + 8 + 1 + 4 + 8 + 4 };

  test.each([
    ['bad magic', (b: Buffer) => b.write('GGML', 0), /not "GGUF"/],
    ['version 1', (b: Buffer) => b.writeUInt32LE(1, 4), /version is 1/],
    ['big-endian version', (b: Buffer) => b.writeUInt32BE(3, 4), /big-endian/],
    ['huge tensor count', (b: Buffer) => b.writeBigUInt64LE(2n ** 62n, 8), /tensor_count is \d+, more than the tensor infos/],
    ['huge kv count', (b: Buffer) => b.writeBigUInt64LE(10n ** 9n, 16), /metadata_kv_count is/],
    ['huge string length', (b: Buffer) => b.writeBigUInt64LE(2n ** 40n, 24), /metadata\[0\] key length is/],
    ['unknown value type', (b: Buffer) => b.writeUInt32LE(13, 24 + 8 + 20), /value type is 13, not a GGUF value type/],
    ['unknown tensor type', (b: Buffer) => b.writeUInt32LE(99, posOf.aType), /tensor 'a' type is 99, not a ggml type/],
    ['misaligned offset', (b: Buffer) => b.writeBigUInt64LE(4n, posOf.aOffset), /tensor 'a' offset 4 is not a multiple of the alignment/],
    ['overlapping tensors', (b: Buffer) => b.writeBigUInt64LE(0n, posOf.bOffset), /tensors 'a' and 'b' overlap/],
    ['offset past the end', (b: Buffer) => b.writeBigUInt64LE(4096n, posOf.bOffset), /tensor 'b' .* runs past the end of the file/],
  ])('%s', (_what, edit, message) => {
    const b = valid();
    edit(b);
    expect(open(b)).toThrow(message);
  });

  test('truncated anywhere: a typed error, never a crash', () => {
    const b = valid();
    for (let n = 0; n < b.length; n += 3) {
      let err: Error | null = null;
      try {
        open(b.subarray(0, n))();
      } catch (e) {
        err = e as Error;
      }
      expect(err && ['LoraRangeError', 'LoraTypeError'].includes(err.name)).toBe(true);
    }
  });
});
