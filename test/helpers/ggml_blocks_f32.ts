/**
 * An f32-exact TypeScript model of ggml's block formats (it was lib/gguf's codec before the native
 * one in native/cpu/ggml_blocks.cc; kept as the test's bit-level reference): dequantize F16, BF16, F64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
 * Q4_K, Q5_K, Q6_K to f32 and quantize f32 to F16, BF16, Q8_0, Q4_0 (round to nearest, as ggml's
 * quantize_row_*_ref). Every step is rounded to f32 (Math.fround) in ggml's order, so the values
 * are bit-identical to ggml's scalar code. The formulas, per block of 32 (Q*_0/1) or 256 (K):
 *   Q8_0 x = d·q (q int8)          Q4_0 x = d·(q − 8)        Q4_1 x = d·q + m
 *   Q5_0 x = d·(q5 − 16)           Q5_1 x = d·q5 + m          (q5 = low nibble | high bit << 4)
 *   Q4_K x = d·sc_j·q − dmin·m_j    Q5_K likewise with 5-bit q (6-bit sc/m packed in 12 bytes)
 *   Q6_K x = d·sc_j·(q6 − 32)       (16 sub-blocks of 16, int8 scales)
 */
import { LoraRangeError, LoraTypeError } from '../../lib/errors';
import { typedArrayKind } from '../../lib/tensor';
import { GGML, ggmlType, tensorBytes, typeName } from '../../lib/gguf/ggml_types';

// ---- 16-bit floats (ggml's GGML_FP32_TO_FP16 / BF16 rounding) --------------------------------
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** IEEE half → f32 (exact). */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const man = h & 0x3ff;
  if (exp === 0) return sign * man * 2 ** -24;
  if (exp === 31) return man ? NaN : sign * Infinity;
  return sign * (1024 + man) * 2 ** (exp - 25);
}

/** f32 → IEEE half, round to nearest even (as ggml's GGML_FP32_TO_FP16; NaN → 0x7E00 with sign). */
export function floatToHalf(x: number): number {
  f32[0] = x;
  const w = u32[0];
  const sign = (w >>> 16) & 0x8000;
  const abs = w & 0x7fffffff;
  if (abs > 0x7f800000) return sign | 0x7e00;
  if (abs >= 0x477ff000) return sign | 0x7c00; // rounds to ≥ 65520: infinity
  if (abs < 0x38800000) {
    // half subnormal (or zero): value / 2^-24, rounded to nearest even
    f32[0] = Math.abs(x);
    const q = f32[0] * 2 ** 24;
    const fl = Math.floor(q);
    const diff = q - fl;
    const r = diff > 0.5 || (diff === 0.5 && (fl & 1) === 1) ? fl + 1 : fl;
    return sign | r;
  }
  const exp = (abs >>> 23) - 127 + 15;
  const man = abs & 0x7fffff;
  let h = (exp << 10) | (man >>> 13);
  const rest = man & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (h & 1) === 1)) h += 1; // carries into the exponent correctly
  return sign | h;
}

/** bfloat16 → f32 (exact). */
export function bf16ToFloat(b: number): number {
  u32[0] = (b & 0xffff) << 16;
  return f32[0];
}

/** f32 → bfloat16, round to nearest even; NaN is kept quiet (ggml_compute_fp32_to_bf16). */
export function floatToBf16(x: number): number {
  f32[0] = x;
  const u = u32[0];
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 64) & 0xffff;
  return ((u + (0x7fff + ((u >>> 16) & 1))) >>> 16) & 0xffff;
}

const fr = Math.fround;

let halfTable: Float32Array | null = null;
function halves(): Float32Array {
  if (!halfTable) {
    halfTable = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) halfTable[i] = halfToFloat(i);
  }
  return halfTable;
}

const u16 = (b: Uint8Array, o: number) => b[o] | (b[o + 1] << 8);
const i8 = (v: number) => (v << 24) >> 24;

/** The 6-bit scale and min of sub-block j of a Q4_K/Q5_K super-block (ggml's get_scale_min_k4). */
function scaleMin(q: Uint8Array, o: number, j: number): [number, number] {
  if (j < 4) return [q[o + j] & 63, q[o + j + 4] & 63];
  return [(q[o + j + 4] & 0xf) | ((q[o + j - 4] >> 6) << 4), (q[o + j + 4] >> 4) | ((q[o + j] >> 6) << 4)];
}

function checkSize(type: number, src: Uint8Array, n: number): void {
  if (typedArrayKind(src) !== 'Uint8Array') throw new LoraTypeError('src: expected a Uint8Array');
  if (!Number.isSafeInteger(n) || n < 0) throw new LoraRangeError(`n: expected a non-negative integer, got ${n}`);
  const need = tensorBytes(type, [n], `${typeName(type)} data`);
  if (src.byteLength !== need) throw new LoraRangeError(`src: ${n} ${typeName(type)} values take ${need} bytes, got ${src.byteLength}`);
}

/** f32 values of `n` elements stored in ggml type `type`. */
export function dequantizeJs(type: number, src: Uint8Array, n: number, into?: Float32Array): Float32Array {
  checkSize(type, src, n);
  const out = into ?? new Float32Array(n);
  if (typedArrayKind(out) !== 'Float32Array' || out.length !== n) throw new LoraRangeError(`out: expected ${n} values, got ${out.length}`);
  const h = halves();
  const b = src;
  switch (type) {
    case GGML.F32:
      out.set(new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)));
      return out;
    case GGML.F64: {
      const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
      for (let i = 0; i < n; i++) out[i] = dv.getFloat64(i * 8, true);
      return out;
    }
    case GGML.F16:
      for (let i = 0; i < n; i++) out[i] = h[u16(b, 2 * i)];
      return out;
    case GGML.BF16:
      for (let i = 0; i < n; i++) out[i] = bf16ToFloat(u16(b, 2 * i));
      return out;
    case GGML.Q8_0:
      for (let k = 0, o = 0; k < n; k += 32, o += 34) {
        const d = h[u16(b, o)];
        for (let j = 0; j < 32; j++) out[k + j] = fr(i8(b[o + 2 + j]) * d);
      }
      return out;
    case GGML.Q4_0:
      for (let k = 0, o = 0; k < n; k += 32, o += 18) {
        const d = h[u16(b, o)];
        for (let j = 0; j < 16; j++) {
          out[k + j] = fr(((b[o + 2 + j] & 0xf) - 8) * d);
          out[k + j + 16] = fr(((b[o + 2 + j] >> 4) - 8) * d);
        }
      }
      return out;
    case GGML.Q4_1:
      for (let k = 0, o = 0; k < n; k += 32, o += 20) {
        const d = h[u16(b, o)];
        const m = h[u16(b, o + 2)];
        for (let j = 0; j < 16; j++) {
          out[k + j] = fr(fr((b[o + 4 + j] & 0xf) * d) + m);
          out[k + j + 16] = fr(fr((b[o + 4 + j] >> 4) * d) + m);
        }
      }
      return out;
    case GGML.Q5_0:
    case GGML.Q5_1: {
      const one = type === GGML.Q5_1;
      const size = one ? 24 : 22;
      for (let k = 0, o = 0; k < n; k += 32, o += size) {
        const d = h[u16(b, o)];
        const m = one ? h[u16(b, o + 2)] : 0;
        const p = one ? o + 4 : o + 2;
        const qh = (b[p] | (b[p + 1] << 8) | (b[p + 2] << 16) | (b[p + 3] << 24)) >>> 0;
        for (let j = 0; j < 16; j++) {
          const x0 = (b[p + 4 + j] & 0xf) | (((qh >>> j) << 4) & 0x10);
          const x1 = (b[p + 4 + j] >> 4) | ((qh >>> (j + 12)) & 0x10);
          out[k + j] = one ? fr(fr(x0 * d) + m) : fr((x0 - 16) * d);
          out[k + j + 16] = one ? fr(fr(x1 * d) + m) : fr((x1 - 16) * d);
        }
      }
      return out;
    }
    case GGML.Q4_K:
    case GGML.Q5_K: {
      const five = type === GGML.Q5_K;
      const size = five ? 176 : 144;
      for (let k = 0, o = 0; k < n; k += 256, o += size) {
        const d = h[u16(b, o)];
        const dmin = h[u16(b, o + 2)];
        const qh = o + 16; // Q5_K only
        let ql = five ? o + 48 : o + 16;
        let y = k;
        for (let j = 0, is = 0; j < 256; j += 64, is += 2) {
          const [sc1, m1] = scaleMin(b, o + 4, is);
          const [sc2, m2] = scaleMin(b, o + 4, is + 1);
          const d1 = fr(d * sc1);
          const mm1 = fr(dmin * m1);
          const d2 = fr(d * sc2);
          const mm2 = fr(dmin * m2);
          const u1 = 1 << (is), u2 = 2 << (is); // high bits of this pair of sub-blocks
          for (let l = 0; l < 32; l++) out[y++] = fr(fr(d1 * ((b[ql + l] & 0xf) + (five && b[qh + l] & u1 ? 16 : 0))) - mm1);
          for (let l = 0; l < 32; l++) out[y++] = fr(fr(d2 * ((b[ql + l] >> 4) + (five && b[qh + l] & u2 ? 16 : 0))) - mm2);
          ql += 32;
        }
      }
      return out;
    }
    case GGML.Q6_K:
      for (let k = 0, o = 0; k < n; k += 256, o += 210) {
        const d = h[u16(b, o + 208)];
        let ql = o;
        let qh = o + 128;
        let sc = o + 192;
        for (let base = k; base < k + 256; base += 128) {
          for (let l = 0; l < 32; l++) {
            const is = l >> 4;
            const q1 = ((b[ql + l] & 0xf) | (((b[qh + l] >> 0) & 3) << 4)) - 32;
            const q2 = ((b[ql + l + 32] & 0xf) | (((b[qh + l] >> 2) & 3) << 4)) - 32;
            const q3 = ((b[ql + l] >> 4) | (((b[qh + l] >> 4) & 3) << 4)) - 32;
            const q4 = ((b[ql + l + 32] >> 4) | (((b[qh + l] >> 6) & 3) << 4)) - 32;
            out[base + l] = fr(fr(d * i8(b[sc + is])) * q1);
            out[base + l + 32] = fr(fr(d * i8(b[sc + is + 2])) * q2);
            out[base + l + 64] = fr(fr(d * i8(b[sc + is + 4])) * q3);
            out[base + l + 96] = fr(fr(d * i8(b[sc + is + 6])) * q4);
          }
          ql += 64;
          qh += 32;
          sc += 8;
        }
      }
      return out;
    default:
      throw new LoraTypeError(`type: lorakit cannot dequantize ${ggmlType(type)?.name ?? `type id ${type}`} (it reads F32, F16, BF16, F64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)`);
  }
}

/** roundf: to nearest, halves away from zero. */
const roundf = (x: number) => (x < 0 ? -Math.floor(-x + 0.5) : Math.floor(x + 0.5));

/** `src` (f32 values) encoded in ggml type `type` (F32, F16, BF16, Q8_0, Q4_0). */
export function quantizeJs(type: number, src: Float32Array): Uint8Array {
  if (typedArrayKind(src) !== 'Float32Array') throw new LoraTypeError('src: expected a Float32Array');
  const n = src.length;
  const out = new Uint8Array(tensorBytes(type, [n], `${typeName(type)} data`));
  switch (type) {
    case GGML.F32:
      out.set(new Uint8Array(src.buffer, src.byteOffset, src.byteLength));
      return out;
    case GGML.F16:
    case GGML.BF16: {
      const conv = type === GGML.F16 ? floatToHalf : floatToBf16;
      for (let i = 0; i < n; i++) {
        const v = conv(src[i]);
        out[2 * i] = v & 0xff;
        out[2 * i + 1] = v >> 8;
      }
      return out;
    }
    case GGML.Q8_0:
      for (let k = 0, o = 0; k < n; k += 32, o += 34) {
        let amax = 0;
        for (let j = 0; j < 32; j++) amax = amax > Math.abs(src[k + j]) ? amax : Math.abs(src[k + j]); // ggml's MAX()
        const d = fr(amax / 127);
        const id = d ? fr(1 / d) : 0;
        const dh = floatToHalf(d);
        out[o] = dh & 0xff;
        out[o + 1] = dh >> 8;
        for (let j = 0; j < 32; j++) out[o + 2 + j] = roundf(fr(src[k + j] * id)) & 0xff;
      }
      return out;
    case GGML.Q4_0:
      for (let k = 0, o = 0; k < n; k += 32, o += 18) {
        let amax = 0;
        let max = 0;
        for (let j = 0; j < 32; j++) {
          const v = src[k + j];
          if (amax < Math.abs(v)) {
            amax = Math.abs(v);
            max = v;
          }
        }
        const d = fr(max / -8);
        const id = d ? fr(1 / d) : 0;
        const dh = floatToHalf(d);
        out[o] = dh & 0xff;
        out[o + 1] = dh >> 8;
        for (let j = 0; j < 16; j++) {
          const x0 = Math.min(15, Math.trunc(fr(fr(src[k + j] * id) + 8.5)));
          const x1 = Math.min(15, Math.trunc(fr(fr(src[k + 16 + j] * id) + 8.5)));
          out[o + 2 + j] = x0 | (x1 << 4);
        }
      }
      return out;
    default:
      throw new LoraTypeError(`type: lorakit cannot write ${ggmlType(type)?.name ?? `type id ${type}`} (it writes F32, F16, BF16, Q8_0, Q4_0)`);
  }
}
