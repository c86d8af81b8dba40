/**
 * QuantizedTensor: every format's bytes against its definition (bnb's NF4/FP4 code books and nibble
 * order, LLM.int8's per-row absmax, ggml's quantize_row_*_ref bytes), quantize → dequantize error on
 * Gaussian weights, the byte layouts, fromBytes/bytes/to/clone/dispose and the typed errors.
 */
import { LoraEmbedding, LoraLinear, QUANT_FORMATS, QuantFormatName, QuantizedTensor, Tensor, quantize, quantizeGgml } from '../lib';
import { GGML } from '../lib/gguf';
import { native } from '../lib/native';
import { randomArray } from './helpers/reference';

const NF4 = [
  -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
  0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
];
// bnb's FP4 (e2m1 magnitudes / 12, sign bit 8): codes 0..7 positive, 8..15 their negatives.
const FP4_POS = [0, 0.0052083333, 0.6666667, 1.0, 0.3333333, 0.5, 0.1666667, 0.25];

/** Gaussian values (Box–Muller over the deterministic uniform generator). */
export function gaussian(n: number, seed: number, std = 1): Float32Array {
  const u = randomArray(2 * n, seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const a = Math.max(1e-12, (u[2 * i] + 1) / 2);
    out[i] = std * Math.sqrt(-2 * Math.log(a)) * Math.cos(Math.PI * (u[2 * i + 1] + 1));
  }
  return out;
}

function rmsRel(got: Float32Array, want: Float32Array): number {
  let e = 0;
  let d = 0;
  for (let i = 0; i < want.length; i++) {
    e += (got[i] - want[i]) ** 2;
    d += want[i] ** 2;
  }
  return Math.sqrt(e / d);
}

// Relative RMS error bounds on N(0, 1) weights; the measured figures are printed by the test.
const BOUND: Record<QuantFormatName, number> = { int8: 0.012, nf4: 0.11, fp4: 0.16, q8_0: 0.006, q4_0: 0.13, q4_k: 0.1, q6_k: 0.025 };
const GGML_TYPE: Partial<Record<QuantFormatName, number>> = { q8_0: GGML.Q8_0, q4_0: GGML.Q4_0, q4_k: GGML.Q4_K, q6_k: GGML.Q6_K };

describe('QuantizedTensor formats', () => {
  const rows = 16;
  const cols = 512;
  const w = gaussian(rows * cols, 7);

  test.each(QUANT_FORMATS)('%s: layout, bytes per weight and quantize → dequantize error on Gaussian weights', (format) => {
    const W = Tensor.from(w, [rows, cols]);
    const q = Tensor.quantize(W, format);
    const L = native().quantLayout(q.spec);
    expect(q.nbytes).toBe(L.nbytes);
    expect(q.nbytes % 16).toBe(0);
    expect(q.shape).toEqual([rows, cols]);
    expect(q.device).toBe('cpu');
    const perWeight = { int8: 1 + 4 / cols, nf4: 0.5 + 4 / 64, fp4: 0.5 + 4 / 64, q8_0: 34 / 32, q4_0: 18 / 32, q4_k: 144 / 256, q6_k: 210 / 256 }[format];
    expect(q.bytesPerWeight).toBeCloseTo(perWeight, 6);
    const d = q.dequantize().toFloat32Array();
    const err = rmsRel(d, w);
    console.log(`${format}: ${q.bytesPerWeight.toFixed(4)} bytes/weight, relative RMS error ${err.toExponential(3)} on N(0,1)`);
    expect(err).toBeLessThan(BOUND[format]);
    expect(q.toString()).toMatch(new RegExp(`^QuantizedTensor\\(${format} \\[16, 512\\]`));
    W.dispose();
    q.dispose();
  });

  test.each(['q8_0', 'q4_0', 'q4_k', 'q6_k'] as QuantFormatName[])('%s: the bytes of ggml quantize_row_*_ref, used as they are', (format) => {
    const q = quantize(Tensor.from(w, [rows, cols]), format);
    const ref = quantizeGgml(GGML_TYPE[format]!, w);
    const L = native().quantLayout(q.spec);
    expect(L.dataOffset).toBe(0);
    expect(L.dataBytes).toBe(ref.length);
    expect(Buffer.from(q.bytes().subarray(0, ref.length)).equals(Buffer.from(ref))).toBe(true);
    // a GGUF tensor's data comes in as it is
    const g = QuantizedTensor.fromBytes(format, [rows, cols], ref);
    expect(Array.from(g.dequantize().toFloat32Array())).toEqual(Array.from(q.dequantize().toFloat32Array()));
  });

  test('nf4 and fp4: code books, first value in the high nibble, absmax per block of 64', () => {
    const row = new Float32Array(64);
    const scale = 2.5;
    for (let k = 0; k < 16; k++) row[k] = NF4[k] * scale; // NF4[15] = 1: absmax = scale
    const q = Tensor.quantize(Tensor.from(row, [1, 64]), 'nf4');
    const L = native().quantLayout(q.spec);
    const b = q.bytes();
    for (let k = 0; k < 16; k += 2) expect(b[L.dataOffset + k / 2]).toBe((k << 4) | (k + 1));
    expect(new Float32Array(b.buffer.slice(0, 4))[0]).toBe(scale);
    const d = q.dequantize().toFloat32Array();
    for (let k = 0; k < 16; k++) expect(d[k]).toBeCloseTo(NF4[k] * scale, 6);
    const fp = new Float32Array(64);
    for (let k = 0; k < 8; k++) {
      fp[k] = FP4_POS[k] * scale;
      fp[8 + k] = -FP4_POS[k] * scale;
    }
    const f = Tensor.quantize(Tensor.from(fp, [1, 64]), 'fp4');
    const fd = f.dequantize().toFloat32Array();
    for (let k = 0; k < 16; k++) expect(fd[k]).toBeCloseTo(fp[k], 5);
    const fb = f.bytes();
    expect(fb[L.dataOffset + 1]).toBe((2 << 4) | 3);
    expect(fb[L.dataOffset + 5]).toBe(((8 + 2) << 4) | (8 + 3));
  });

  test('int8: one absmax scale per row, |deq − x| ≤ half a step', () => {
    const n = 4 * 96;
    const x = gaussian(n, 3);
    const q = Tensor.quantize(Tensor.from(x, [4, 96]), 'int8');
    expect(q.blockSize).toBe(96);
    const d = q.dequantize().toFloat32Array();
    for (let r = 0; r < 4; r++) {
      let amax = 0;
      for (let c = 0; c < 96; c++) amax = Math.max(amax, Math.abs(x[r * 96 + c]));
      const s = amax / 127;
      for (let c = 0; c < 96; c++) expect(Math.abs(d[r * 96 + c] - x[r * 96 + c])).toBeLessThanOrEqual(s * 0.5 * (1 + 1e-5));
    }
  });

  test('doubleQuant: fewer bytes, the error of plain nf4 within 2%, and the dynamic map', () => {
    const W = Tensor.from(w, [rows, cols]);
    const plain = Tensor.quantize(W, 'nf4');
    const dq = Tensor.quantize(W, 'nf4', { doubleQuant: true });
    expect(dq.doubleQuant).toBe(true);
    expect(dq.nbytes).toBeLessThan(plain.nbytes);
    const e0 = rmsRel(plain.dequantize().toFloat32Array(), w);
    const e1 = rmsRel(dq.dequantize().toFloat32Array(), w);
    console.log(`nf4 ${plain.bytesPerWeight.toFixed(4)} B/w err ${e0.toExponential(3)}; with doubleQuant ${dq.bytesPerWeight.toFixed(4)} B/w err ${e1.toExponential(3)}`);
    expect(e1).toBeLessThan(e0 * 1.02);
    const map = native().quantDynamicMap();
    expect(map.length).toBe(256);
    for (let i = 1; i < 256; i++) expect(map[i]).toBeGreaterThanOrEqual(map[i - 1]);
    expect(Array.from(map)).toContain(0);
    expect(map[255]).toBeCloseTo(1, 6);
  });

  test('blockSize: other powers of two for nf4/fp4', () => {
    const W = Tensor.from(w, [rows, cols]);
    for (const blockSize of [32, 128, 512]) {
      const q = Tensor.quantize(W, 'fp4', { blockSize });
      expect(q.blockSize).toBe(blockSize);
      expect(rmsRel(q.dequantize().toFloat32Array(), w)).toBeLessThan(0.2);
    }
  });

  test('bytes / fromBytes / to / clone / dispose', async () => {
    const q = Tensor.quantize(Tensor.from(w, [rows, cols]), 'nf4', { doubleQuant: true });
    const bytes = q.bytes();
    expect(bytes.length).toBe(q.nbytes);
    const back = QuantizedTensor.fromBytes('nf4', [rows, cols], bytes, { doubleQuant: true });
    expect(Buffer.from(back.bytes()).equals(Buffer.from(bytes))).toBe(true);
    const c = q.clone();
    const moved = q.to({ device: 'cpu' });
    expect(Buffer.from(c.bytes()).equals(Buffer.from(bytes))).toBe(true);
    expect(Buffer.from(moved.bytes()).equals(Buffer.from(bytes))).toBe(true);
    const asyncDeq = await q.dequantizeAsync({ dtype: 'bf16' });
    expect(asyncDeq.dtype).toBe('bf16');
    const qa = await QuantizedTensor.quantizeAsync(Tensor.from(w, [rows, cols]), 'nf4', { doubleQuant: true });
    expect(Buffer.from(qa.bytes()).equals(Buffer.from(bytes))).toBe(true);
    expect(q.toFloat32Array().length).toBe(rows * cols);
    q.dispose();
    expect(q.disposed).toBe(true);
    q.dispose();
    expect(() => q.dequantize()).toThrow(expect.objectContaining({ name: 'StateError', message: expect.stringMatching(/used after dispose/) }));
    expect(String(q)).toMatch(/disposed/);
    expect(() => QuantizedTensor.fromBytes('nf4', [rows, cols], bytes.subarray(1), { doubleQuant: true })).toThrow(
      expect.objectContaining({ name: 'ShapeError', message: expect.stringMatching(/^bytes: nf4 \[16, 512\] with doubleQuant takes \d+ bytes, got/) }),
    );
  });
});

describe('QuantizedTensor bad input', () => {
  const W = Tensor.from(randomArray(4 * 100, 1), [4, 100]);
  test('unknown format lists the valid ones', () => {
    expect(() => Tensor.quantize(W, 'nf5' as QuantFormatName)).toThrow(
      expect.objectContaining({ name: 'LoraTypeError', code: 'LORAKIT_TYPE', message: "format: unknown quantized format 'nf5' (valid: int8, nf4, fp4, q8_0, q4_0, q4_k, q6_k)" }),
    );
  });
  test('an input dimension that is not a multiple of the block says so and says pad', () => {
    expect(() => Tensor.quantize(W, 'nf4')).toThrow(
      expect.objectContaining({ name: 'ShapeError', message: expect.stringMatching(/^w: the input dimension 100 \(shape \[4, 100\]\) is not a multiple of nf4's block size 64; pad the columns with zeros to 128/) }),
    );
    expect(() => Tensor.quantize(W, 'q4_k')).toThrow(expect.objectContaining({ name: 'ShapeError', message: expect.stringMatching(/block size 256; pad/) }));
    expect(() => Tensor.quantize(W, 'int8')).not.toThrow();
  });
  test('non-float, non-2-D, disposed, already quantized', () => {
    expect(() => Tensor.quantize(Tensor.zeros([4, 64], { dtype: 'i32' }), 'nf4')).toThrow(expect.objectContaining({ name: 'DTypeError', message: expect.stringMatching(/^w: quantize takes a float tensor/) }));
    expect(() => Tensor.quantize(Tensor.zeros([64]), 'nf4')).toThrow(expect.objectContaining({ name: 'ShapeError', message: expect.stringMatching(/^w: quantize takes a 2-D weight/) }));
    const q = Tensor.quantize(Tensor.zeros([2, 64]), 'nf4');
    expect(() => Tensor.quantize(q as unknown as Tensor, 'nf4')).toThrow(expect.objectContaining({ name: 'DTypeError', message: expect.stringMatching(/call \.dequantize\(\)/) }));
    const gone = Tensor.zeros([2, 64]);
    gone.dispose();
    expect(() => Tensor.quantize(gone, 'nf4')).toThrow(expect.objectContaining({ name: 'StateError' }));
  });
  test('options: blockSize and doubleQuant checked per format', () => {
    const W64 = Tensor.zeros([2, 256]);
    expect(() => Tensor.quantize(W64, 'nf4', { blockSize: 48 })).toThrow(expect.objectContaining({ name: 'LoraRangeError', message: expect.stringMatching(/^opts.blockSize: nf4 needs a power of two/) }));
    expect(() => Tensor.quantize(W64, 'q8_0', { blockSize: 64 })).toThrow(expect.objectContaining({ name: 'LoraRangeError', message: expect.stringMatching(/q8_0 blocks hold 32 values/) }));
    expect(() => Tensor.quantize(W64, 'int8', { doubleQuant: true })).toThrow(expect.objectContaining({ name: 'LoraTypeError', message: expect.stringMatching(/^opts.doubleQuant: double quantisation is for nf4 and fp4 only/) }));
    expect(() => Tensor.quantize(W64, 'nf4', { block: 64 } as never)).toThrow(expect.objectContaining({ name: 'LoraTypeError', message: expect.stringMatching(/unknown option 'block'/) }));
  });
  test('a QuantizedTensor where a float tensor is needed says to dequantize', () => {
    const q = Tensor.quantize(Tensor.zeros([4, 64]), 'nf4');
    const layer = new LoraLinear({ weight: Tensor.zeros([4, 64]) });
    expect(() => layer.forward(q as unknown as Tensor)).toThrow(
      expect.objectContaining({ name: 'DTypeError', message: 'x: expected a float Tensor, got a QuantizedTensor (nf4): call .dequantize() for a float copy' }),
    );
    expect(() => new LoraEmbedding({ weight: q as unknown as Tensor })).toThrow(
      expect.objectContaining({ name: 'DTypeError', message: expect.stringMatching(/^opts.weight: expected a float Tensor, got a QuantizedTensor \(nf4\): call \.dequantize\(\) .*LoraLinear takes a QuantizedTensor as its weight/) }),
    );
    expect(() => Tensor.zeros([4, 64]).copyFrom(q as unknown as Tensor)).toThrow(expect.objectContaining({ message: expect.stringMatching(/QuantizedTensor/) }));
  });
});
