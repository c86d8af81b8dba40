/**
 * The quantized-base ops on the CPU (native/cpu/quant_*.cc, binding native/napi/quant.cc): code
 * books and layouts against their definitions (test/helpers/quant_ref.ts), ggml formats byte-equal
 * to ggmlQuantize, round-trip error bounds on Gaussian weights (measured figures in the test
 * names), forward and backward against a float64 reference on the dequantised weight, bad specs.
 */
import { Rng, Tensor } from '../lib';
import { QuantFormatName, QuantSpecArg, call, callAsync } from '../lib/native';
import {
  FP4, GGML_TYPE_ID, NF4, blockAbsmax, bytesOf, dequantizeNative, doubleQuantRef, dynamicMapRef, int8Ref, layoutRef,
  quantizeNative, specOf,
} from './helpers/quant_ref';

const f = Math.fround;
const FORMATS: QuantFormatName[] = ['int8', 'nf4', 'fp4', 'q8_0', 'q4_0', 'q4_k', 'q6_k'];

function gaussian(n: number, seed: number, std = 1): Float32Array {
  return new Rng(seed).fillNormal(new Float32Array(n), 0, std);
}
function f32At(bytes: Uint8Array, off: number, n: number): Float32Array {
  return new Float32Array(bytes.buffer.slice(bytes.byteOffset + off, bytes.byteOffset + off + n * 4));
}
function expectErr(fn: () => unknown, name: string, msg: RegExp): void {
  let thrown: unknown;
  try {
    fn();
  } catch (e) {
    thrown = e;
  }
  expect(thrown).toBeDefined();
  expect((thrown as Error).name).toBe(name);
  expect((thrown as Error).message).toMatch(msg);
}

describe('code books and the dynamic map', () => {
  test('quantDynamicMap is bnb create_dynamic_map(signed, 7 exponent bits, 8 bits) in f32, ascending', () => {
    const map = call((b) => b.quantDynamicMap());
    expect(map.length).toBe(256);
    expect(Array.from(map)).toEqual(Array.from(dynamicMapRef()));
    expect(map[0]).toBeCloseTo(-0.99297, 4);
    expect(map[255]).toBe(1);
    expect(map.indexOf(0)).toBe(127);
  });

  // A block whose absmax is exactly 1 and whose other values are exact code values decodes to
  // those values, and each byte holds the first value of its pair in the high nibble.
  test.each([
    ['nf4', NF4],
    ['fp4', FP4],
  ] as const)('%s: code book values round-trip exactly, first value in the high nibble', (format, code) => {
    const one = format === 'nf4' ? 15 : 3; // the code of 1.0: each block's absmax is exactly 1
    // every code in each run of 16; fp4's -0.0 (code 8) would quantize as +0.0 (code 0)
    const idx = Array.from({ length: 128 }, (_, i) => (i % 64 === 0 ? one : (i * 5 + (i >> 4)) % 16)).map((k) => (format === 'fp4' && k === 8 ? 0 : k));
    const w = Float32Array.from(idx.map((k) => code[k]));
    const spec = specOf(format, 2, 64);
    const { q, bytes } = quantizeNative(w, spec);
    const L = layoutRef(spec);
    expect(Array.from(f32At(bytes, L.sections.scale, 2))).toEqual([1, 1]);
    for (let i = 0; i < 64; i++) expect(bytes[L.dataOffset + i]).toBe((idx[2 * i] << 4) | idx[2 * i + 1]);
    expect(Array.from(dequantizeNative(q, spec))).toEqual(Array.from(w));
  });

  test('nf4 / fp4 codes are the nearest code value to x / absmax (the bnb decision trees)', () => {
    const w = gaussian(8 * 128, 3);
    for (const [format, code] of [['nf4', NF4], ['fp4', FP4]] as const) {
      const spec = specOf(format, 8, 128);
      const { bytes } = quantizeNative(w, spec);
      const L = layoutRef(spec);
      const amax = f32At(bytes, L.sections.scale, L.nblocks);
      expect(Array.from(amax)).toEqual(Array.from(blockAbsmax(w, 64)));
      for (let i = 0; i < w.length; i++) {
        const byte = bytes[L.dataOffset + (i >> 1)];
        const k = i % 2 === 0 ? byte >> 4 : byte & 15;
        const v = f(w[i] * f(1 / amax[Math.floor(i / 64)]));
        const best = Math.min(...code.map((c) => Math.abs(c - v)));
        expect(Math.abs(code[k] - v)).toBeLessThanOrEqual(best + 1e-6);
      }
    }
  });

  // bnb's trees send the NaN of 0·(1/0) to code 0 (nf4: −1.0) or 0 (fp4: 0.0), on cpu and cuda alike:
  // times absmax 0 that is zero; with double quant the block's absmax is reconstructed only to
  // within the dynamic map's step, so nf4 gives −(that small residual).
  test('an all-zero block dequantizes to zeros (nf4, fp4, int8), and to the absmax residual with double quant', () => {
    const w = new Float32Array(2 * 64);
    for (let i = 64; i < 128; i++) w[i] = i % 3 === 0 ? 0.5 : -0.25;
    for (const spec of [specOf('nf4', 2, 64), specOf('fp4', 2, 64), specOf('int8', 2, 64), specOf('fp4', 2, 64, { doubleQuant: true })]) {
      const back = dequantizeNative(quantizeNative(w, spec).q, spec);
      for (let i = 0; i < 64; i++) expect(back[i] === 0).toBe(true);
    }
    const spec = specOf('nf4', 2, 64, { doubleQuant: true });
    const back = dequantizeNative(quantizeNative(w, spec).q, spec);
    for (let i = 0; i < 64; i++) expect(Math.abs(back[i])).toBeLessThanOrEqual(0.5 * 0.01);
  });
});

describe('layouts', () => {
  const shapes: Array<[number, number]> = [[3, 256], [37, 512], [300, 1024]];
  test.each(FORMATS.flatMap((fmt) => shapes.map(([r, c]) => [fmt, r, c] as const)))('%s [%d, %d]: quantLayout follows the section rules', (fmt, r, c) => {
    for (const dq of fmt === 'nf4' || fmt === 'fp4' ? [false, true] : [false]) {
      for (const blockSize of fmt === 'nf4' || fmt === 'fp4' ? [64, 256] : [specOf(fmt, r, c).blockSize]) {
        const spec = specOf(fmt, r, c, { doubleQuant: dq, blockSize });
        const L = call((b) => b.quantLayout(spec));
        const ref = layoutRef(spec);
        expect(L).toEqual({ nbytes: ref.nbytes, dataOffset: ref.dataOffset, dataBytes: ref.dataBytes, nblocks: ref.nblocks });
        expect(L.nbytes % 16).toBe(0);
      }
    }
  });

  test('a blockSize of 0 takes the format default (nf4 64, q4_k 256, int8 cols)', () => {
    expect(call((b) => b.quantLayout({ format: 'nf4', rows: 4, cols: 128, blockSize: 0, doubleQuant: false })).nblocks).toBe(8);
    expect(call((b) => b.quantLayout({ format: 'q4_k', rows: 4, cols: 512, blockSize: 0, doubleQuant: false })).nblocks).toBe(8);
    expect(call((b) => b.quantLayout({ format: 'int8', rows: 4, cols: 100, blockSize: 0, doubleQuant: false })).nblocks).toBe(4);
  });

  test('int8: row scales then int8 rows, rounded half away from zero as the contract defines', () => {
    const rows = 9;
    const cols = 160;
    const w = gaussian(rows * cols, 5);
    w[3] = 0.5; // ties: with absmax 127 in a row, x·127/absmax lands on .5 exactly
    for (let c = 0; c < cols; c++) w[8 * cols + c] = c === 0 ? -127 : ((c % 9) - 4) * 0.5;
    const spec = specOf('int8', rows, cols);
    const { bytes } = quantizeNative(w, spec);
    const L = layoutRef(spec);
    const ref = int8Ref(w, rows, cols);
    expect(Array.from(f32At(bytes, L.sections.scale, rows))).toEqual(Array.from(ref.scale));
    expect(Array.from(new Int8Array(bytes.buffer, bytes.byteOffset + L.dataOffset, rows * cols))).toEqual(Array.from(ref.q));
    expect(ref.q[8 * cols + 1]).toBe(-2); // -1.5 rounds away from zero
    expect(ref.q[8 * cols + 8]).toBe(2);
  });

  test('double quant: offset, absmax2 and the absmax codes as the contract defines; same 4-bit codes', () => {
    const rows = 64;
    const cols = 512; // 512 blocks of 64: two double-quant blocks
    const w = gaussian(rows * cols, 9);
    for (let i = 0; i < cols; i++) w[5 * cols + i] *= 4; // absmax values that differ
    const map = dynamicMapRef();
    for (const format of ['nf4', 'fp4'] as const) {
      const plain = quantizeNative(w, specOf(format, rows, cols));
      const spec = specOf(format, rows, cols, { doubleQuant: true });
      const { q, bytes } = quantizeNative(w, spec);
      const L = layoutRef(spec);
      const amax = blockAbsmax(w, 64);
      const ref = doubleQuantRef(amax, map);
      expect(f32At(bytes, L.sections.offset, 1)[0]).toBe(ref.offset);
      expect(Array.from(f32At(bytes, L.sections.scale2, 2))).toEqual(Array.from(ref.amax2));
      expect(Array.from(bytes.subarray(L.sections.qscale, L.sections.qscale + L.nblocks))).toEqual(Array.from(ref.q));
      const pl = layoutRef(specOf(format, rows, cols));
      expect(Buffer.from(bytes.subarray(L.dataOffset, L.dataOffset + L.dataBytes)).equals(Buffer.from(plain.bytes.subarray(pl.dataOffset, pl.dataOffset + pl.dataBytes)))).toBe(true);
      // Dequantisation uses the reconstructed absmax map[q]·absmax2 + offset.
      const code = format === 'nf4' ? NF4 : FP4;
      const back = dequantizeNative(q, spec);
      for (const i of [0, 1, 777, 5 * cols + 3, rows * cols - 1]) {
        const b = Math.floor(i / 64);
        const a = f(f(map[ref.q[b]] * ref.amax2[b >> 8]) + ref.offset);
        const byte = bytes[L.dataOffset + (i >> 1)];
        expect(back[i]).toBe(f(code[i % 2 === 0 ? byte >> 4 : byte & 15] * a));
      }
    }
  });
});

describe('ggml formats are the bytes of ggmlQuantize', () => {
  test.each(['q8_0', 'q4_0', 'q4_k', 'q6_k'] as const)('%s: quantize and dequantize equal ggmlQuantize / ggmlDequantize row for row', (fmt) => {
    const rows = 6;
    const cols = 512;
    const w = gaussian(rows * cols, 11, 0.02);
    const spec = specOf(fmt, rows, cols);
    const { q, bytes } = quantizeNative(w, spec);
    const L = layoutRef(spec);
    const ref = call((b) => b.ggmlQuantize(GGML_TYPE_ID[fmt], w));
    expect(L.dataOffset).toBe(0);
    expect(Buffer.from(bytes.subarray(0, L.dataBytes)).equals(Buffer.from(ref))).toBe(true);
    expect(Array.from(dequantizeNative(q, spec))).toEqual(Array.from(call((b) => b.ggmlDequantize(GGML_TYPE_ID[fmt], ref, rows * cols))));
  });
});

// Round-trip error on N(0, 1) weights [256, 1024]: each format's bound per element (relative to its
// block's absmax a) and the measured RMS error relative to the weights' RMS.
describe('quantize → dequantize error on Gaussian weights', () => {
  const rows = 256;
  const cols = 1024;
  const w = gaussian(rows * cols, 21);
  // Max |error| / a per element: int8 half a step (a/254); nf4, fp4 half the widest code gap;
  // q8_0 half a step plus the f16 rounding of d; q4_0 one step (a/8: the clamp at +7); K formats: RMS only.
  const bound: Record<QuantFormatName, number | null> = {
    int8: 0.5 / 127 + 1e-6,
    nf4: (1 - 0.6961928009986877) / 2 + 1e-6, // the widest gap, −1 to −0.696
    fp4: (1 - 8 / 12) / 2 + 1e-6,
    q8_0: 0.5 / 127 + 1e-3,
    q4_0: 1 / 8 + 1e-3,
    q4_k: null,
    q6_k: null,
  };
  const rmsBound: Record<QuantFormatName, number> = { int8: 0.01, nf4: 0.11, fp4: 0.16, q8_0: 0.006, q4_0: 0.13, q4_k: 0.1, q6_k: 0.025 };
  const measured = FORMATS.map((fmt) => {
    const spec = specOf(fmt, rows, cols);
    const { q } = quantizeNative(w, spec);
    const back = dequantizeNative(q, spec);
    q.dispose();
    const block = fmt === 'int8' ? cols : spec.blockSize;
    const amax = blockAbsmax(w, block);
    let worst = 0;
    let num = 0;
    let den = 0;
    for (let i = 0; i < w.length; i++) {
      const e = Math.abs(back[i] - w[i]);
      worst = Math.max(worst, e / amax[Math.floor(i / block)]);
      num += e * e;
      den += w[i] * w[i];
    }
    return { fmt, worst, rms: Math.sqrt(num / den) };
  });
  test.each(measured.map((m) => [m.fmt, m.rms.toFixed(4), m.worst.toFixed(4), m] as const))(
    '%s: relative RMS error %s, max |error| / block absmax %s',
    (fmt, _rms, _worst, m) => {
      const b = bound[fmt];
      if (b !== null) expect(m.worst).toBeLessThanOrEqual(b);
      expect(m.rms).toBeLessThanOrEqual(rmsBound[fmt]);
      expect(m.rms).toBeGreaterThan(0);
    },
  );
});

describe('bad input gets typed errors naming the argument', () => {
  const w = Tensor.from(gaussian(4 * 128, 1), [4, 128]);
  const spec = specOf('nf4', 4, 128);
  const q = Tensor.zeros([call((b) => b.quantLayout(spec)).nbytes / 4], { dtype: 'i32' });
  const layout = (s: Partial<QuantSpecArg> | Record<string, unknown>) => () => call((b) => b.quantLayout({ ...spec, ...s } as QuantSpecArg));

  test('specs', () => {
    expectErr(layout({ format: 'nf5' }), 'LoraTypeError', /^spec\.format: unknown format 'nf5' \(expected one of int8, nf4, fp4, q8_0, q4_0, q4_k, q6_k\)/);
    expectErr(layout({ format: 3 }), 'LoraTypeError', /^spec\.format: /);
    expectErr(layout({ cols: 100 }), 'LoraRangeError', /^spec\.cols: the input dimension 100 is not a multiple of the block size 64 \(pad/);
    expectErr(layout({ format: 'q4_k', blockSize: 256, cols: 300 }), 'LoraRangeError', /^spec\.cols: the input dimension 300 is not a multiple of the block size 256/);
    expectErr(layout({ blockSize: 48 }), 'LoraRangeError', /^spec\.blockSize: block must be a power of two/);
    expectErr(layout({ format: 'q4_0', blockSize: 64 }), 'LoraRangeError', /^spec\.blockSize: q4_0 blocks hold 32 values/);
    expectErr(layout({ format: 'int8', blockSize: 64 }), 'LoraRangeError', /^spec\.blockSize: int8 has one scale per row/);
    expectErr(layout({ format: 'q8_0', blockSize: 32, doubleQuant: true }), 'LoraRangeError', /^spec\.doubleQuant: /);
    expectErr(layout({ doubleQuant: 1 }), 'LoraTypeError', /^spec\.doubleQuant: expected a boolean/);
    for (const v of [0, -1, 1.5, NaN, 2 ** 60]) expectErr(layout({ rows: v }), 'LoraRangeError', /^spec\.rows: /);
    expectErr(layout({ cols: '8' }), 'LoraTypeError', /^spec\.cols: expected a number/);
    expectErr(() => call((b) => b.quantLayout(null as unknown as QuantSpecArg)), 'LoraTypeError', /^spec: expected \{format/);
  });

  test('tensors: the quantized tensor\'s dtype and size, float operands, shapes', () => {
    expectErr(() => call((b) => b.quantize(w.handle, spec, Tensor.zeros([7], { dtype: 'i32' }).handle)), 'LoraRangeError', /^out: a nf4 \[4, 128\] weight takes \d+ i32 words/);
    expectErr(() => call((b) => b.quantize(w.handle, spec, Tensor.zeros([q.shape[0]]).handle)), 'LoraTypeError', /^out: expected the i32 tensor of a quantized weight, got f32/);
    expectErr(() => call((b) => b.quantize(w.handle, { ...spec, rows: 8 }, q.handle)), 'LoraRangeError', /^w: expected shape \[8, 128\]/);
    const x = Tensor.from(gaussian(2 * 128, 2), [2, 128]);
    const y = Tensor.zeros([2, 4]);
    expectErr(() => call((b) => b.quantLoraForward(q.handle, q.handle, spec, null, [], y.handle)), 'LoraTypeError', /^x: expected a float tensor/);
    expectErr(() => call((b) => b.quantLoraForward(x.handle, w.handle, spec, null, [], y.handle)), 'LoraTypeError', /^q: expected the i32 tensor/);
    expectErr(() => call((b) => b.quantLoraForward(x.handle, q.handle, spec, null, [], Tensor.zeros([2, 5]).handle)), 'LoraRangeError', /^y: expected shape \[2, 4\]/);
    expectErr(() => call((b) => b.quantLoraForward(Tensor.zeros([2, 64]).handle, q.handle, spec, null, [], y.handle)), 'LoraRangeError', /^x: expected last dimension 128/);
    expectErr(() => call((b) => b.quantLoraForward(x.handle, q.handle, spec, Tensor.zeros([5]).handle, [], y.handle)), 'LoraRangeError', /^bias: /);
    const A = Tensor.zeros([2, 64]);
    const B = Tensor.zeros([4, 2]);
    expectErr(() => call((b) => b.quantLoraForward(x.handle, q.handle, spec, null, [[A.handle, B.handle, 1, null]], y.handle)), 'LoraRangeError', /^adapters\[0\]\.A: expected shape \[r, 128\]/);
    expectErr(() => call((b) => b.dequantize(q.handle, spec, Tensor.zeros([4, 127]).handle)), 'LoraRangeError', /^out: expected shape \[4, 128\]/);
    expectErr(() => call((b) => b.quantLinearBackward(Tensor.zeros([2, 3]).handle, q.handle, spec, [], null)), 'LoraRangeError', /^dy: expected last dimension 4/);
  });

  test('the async forms check the same way and run', async () => {
    await expect(callAsync((b) => b.quantizeAsync(w.handle, { ...spec, format: 'nf5' as QuantFormatName }, q.handle))).rejects.toThrow(
      expect.objectContaining({ name: 'LoraTypeError', message: expect.stringMatching(/^spec\.format: unknown format/) }),
    );
    await callAsync((b) => b.quantizeAsync(w.handle, spec, q.handle));
    expect(Buffer.from(bytesOf(q)).equals(Buffer.from(quantizeNative(w.toFloat32Array(), spec).bytes))).toBe(true);
  });
});
