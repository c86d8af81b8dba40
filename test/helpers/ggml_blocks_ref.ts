/**
 * A float64 reference of ggml's block formats, transcribed from the block structs of ggml-common.h
 * and the formulas of ggml-quants.c (dequantize_row_*, quantize_row_q8_0_ref / q4_0_ref / q4_1_ref / q5_0_ref / q5_1_ref), written
 * for clarity, not speed: each block is unpacked field by field with a DataView, values are computed
 * exactly in float64. Quantization emulates ggml's f32 arithmetic (Math.fround at each step) because
 * its rounding decisions are made in f32; that is what "bitwise" compares against.
 */

export const BLOCK = {
  Q4_0: { qk: 32, bytes: 18 }, Q4_1: { qk: 32, bytes: 20 }, Q5_0: { qk: 32, bytes: 22 }, Q5_1: { qk: 32, bytes: 24 }, Q8_0: { qk: 32, bytes: 34 },
  Q4_K: { qk: 256, bytes: 144 }, Q5_K: { qk: 256, bytes: 176 }, Q6_K: { qk: 256, bytes: 210 },
} as const;
export type BlockType = keyof typeof BLOCK;

/** IEEE half bits → value (exact). */
export function half(bits: number): number {
  const s = bits >> 15 ? -1 : 1;
  const e = (bits >> 10) & 31;
  const m = bits & 1023;
  if (e === 0) return s * m * Math.pow(2, -24);
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * Math.pow(2, e - 15);
}

function k4ScaleMin(scales: Uint8Array, j: number): { sc: number; m: number } {
  // 12 bytes: 8 six-bit scales and 8 six-bit mins; sub-blocks 0-3 in the low 6 bits of bytes 0-3 / 4-7,
  // sub-blocks 4-7 split into a low nibble (bytes 8-11) and two high bits (top of bytes 0-3 / 4-7).
  if (j < 4) return { sc: scales[j] & 0x3f, m: scales[j + 4] & 0x3f };
  return { sc: (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4), m: (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4) };
}

/** Values of one block (float64, exact). */
export function dequantizeBlockRef(type: BlockType, b: Uint8Array): number[] {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const out: number[] = [];
  switch (type) {
    case 'Q8_0': {
      const d = half(dv.getUint16(0, true));
      for (let j = 0; j < 32; j++) out.push(d * dv.getInt8(2 + j));
      return out;
    }
    case 'Q4_0':
    case 'Q4_1': {
      const d = half(dv.getUint16(0, true));
      const m = type === 'Q4_1' ? half(dv.getUint16(2, true)) : 0;
      const qs = type === 'Q4_1' ? 4 : 2;
      const q = (j: number) => (j < 16 ? b[qs + j] & 15 : b[qs + j - 16] >> 4); // element j: low nibbles first, then high
      for (let j = 0; j < 32; j++) out.push(type === 'Q4_0' ? d * (q(j) - 8) : d * q(j) + m);
      return out;
    }
    case 'Q5_0':
    case 'Q5_1': {
      const one = type === 'Q5_1';
      const d = half(dv.getUint16(0, true));
      const m = one ? half(dv.getUint16(2, true)) : 0;
      const qh = dv.getUint32(one ? 4 : 2, true); // bit j = 5th bit of element j
      const qs = one ? 8 : 6;
      for (let j = 0; j < 32; j++) {
        const low = j < 16 ? b[qs + j] & 15 : b[qs + j - 16] >> 4;
        const q = low + 16 * ((qh >>> j) & 1);
        out.push(one ? d * q + m : d * (q - 16));
      }
      return out;
    }
    case 'Q4_K':
    case 'Q5_K': {
      const five = type === 'Q5_K';
      const d = half(dv.getUint16(0, true));
      const dmin = half(dv.getUint16(2, true));
      const scales = b.subarray(4, 16);
      const qh = b.subarray(16, 48); // Q5_K: bit s of qh[l] is the 5th bit of element l of sub-block s
      const qs = b.subarray(five ? 48 : 16);
      for (let s = 0; s < 8; s++) {
        const { sc, m } = k4ScaleMin(scales, s);
        for (let l = 0; l < 32; l++) {
          const byte = qs[32 * (s >> 1) + l]; // sub-blocks 2i and 2i+1 share 32 bytes: low then high nibble
          let q = s % 2 === 0 ? byte & 15 : byte >> 4;
          if (five) q += 16 * ((qh[l] >> s) & 1);
          out.push(d * sc * q - dmin * m);
        }
      }
      return out;
    }
    case 'Q6_K': {
      const ql = b.subarray(0, 128);
      const qh = b.subarray(128, 192);
      const sc = new Int8Array(b.buffer, b.byteOffset + 192, 16);
      const d = half(dv.getUint16(208, true));
      for (let i = 0; i < 256; i++) {
        const half128 = i >> 7; // two halves of 128 values: 64 bytes of ql and 32 of qh each
        const r = i & 127;
        const quarter = r >> 5; // 0..3: which nibble / which 2 bits
        const l = r & 31;
        const lowByte = ql[64 * half128 + l + (quarter & 1 ? 32 : 0)];
        const low = quarter < 2 ? lowByte & 15 : lowByte >> 4;
        const high = (qh[32 * half128 + l] >> (2 * quarter)) & 3;
        const q = (low | (high << 4)) - 32;
        out.push(d * sc[8 * half128 + 2 * quarter + (l >> 4)] * q);
      }
      return out;
    }
  }
}

export function dequantizeRef(type: BlockType, data: Uint8Array): number[] {
  const { bytes } = BLOCK[type];
  const out: number[] = [];
  for (let o = 0; o < data.length; o += bytes) out.push(...dequantizeBlockRef(type, data.subarray(o, o + bytes)));
  return out;
}

/** f32 → half bits, round to nearest even, computed from the value (not the bits). */
export function toHalfRef(x: number): number {
  if (Number.isNaN(x)) return 0x7e00;
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a >= 65520) return sign | 0x7c00;
  let e = a < Math.pow(2, -14) ? -14 : Math.floor(Math.log2(a));
  if (Math.pow(2, e) > a) e--; // log2 rounding
  if (Math.pow(2, e + 1) <= a) e++;
  e = Math.max(e, -14);
  const ulp = Math.pow(2, e - 10);
  const q = a / ulp;
  const f = Math.floor(q);
  const r = q - f > 0.5 || (q - f === 0.5 && f % 2 === 1) ? f + 1 : f;
  const v = r * ulp; // rounded magnitude
  if (v === 0) return sign;
  let he = Math.floor(Math.log2(v));
  if (Math.pow(2, he) > v) he--;
  if (he < -14) return sign | Math.round(v / Math.pow(2, -24));
  return sign | ((he + 15) << 10) | Math.round((v / Math.pow(2, he) - 1) * 1024);
}

const fr = Math.fround;

/** quantize_row_q8_0_ref: d = amax/127, q = roundf(x/d) (ggml computes x·(1/d) in f32). */
export function quantizeQ8_0Ref(x: Float32Array): Uint8Array {
  const out = new Uint8Array((x.length / 32) * 34);
  for (let blk = 0; blk < x.length / 32; blk++) {
    const v = x.subarray(blk * 32, blk * 32 + 32);
    let amax = 0;
    for (const t of v) amax = amax > Math.abs(t) ? amax : Math.abs(t);
    const d = fr(amax / 127);
    const id = d !== 0 ? fr(1 / d) : 0;
    const o = blk * 34;
    const h = toHalfRef(d);
    out[o] = h & 255;
    out[o + 1] = h >> 8;
    for (let j = 0; j < 32; j++) {
      const t = fr(v[j] * id);
      const q = Math.sign(t) * Math.floor(Math.abs(t) + 0.5); // roundf: halves away from zero
      out[o + 2 + j] = q & 255;
    }
  }
  return out;
}

/** quantize_row_q4_0_ref: d = max/−8 with max the value of largest magnitude, q = min(15, trunc(x/d + 8.5)). */
export function quantizeQ4_0Ref(x: Float32Array): Uint8Array {
  const out = new Uint8Array((x.length / 32) * 18);
  for (let blk = 0; blk < x.length / 32; blk++) {
    const v = x.subarray(blk * 32, blk * 32 + 32);
    let amax = 0;
    let max = 0;
    for (const t of v) {
      if (Math.abs(t) > amax) {
        amax = Math.abs(t);
        max = t;
      }
    }
    const d = fr(max / -8);
    const id = d !== 0 ? fr(1 / d) : 0;
    const o = blk * 18;
    const h = toHalfRef(d);
    out[o] = h & 255;
    out[o + 1] = h >> 8;
    const q = (t: number) => Math.min(15, Math.trunc(fr(fr(t * id) + 8.5)));
    for (let j = 0; j < 16; j++) out[o + 2 + j] = q(v[j]) | (q(v[j + 16]) << 4);
  }
  return out;
}

function putHalf(out: Uint8Array, o: number, x: number): void {
  const h = toHalfRef(x);
  out[o] = h & 255;
  out[o + 1] = h >> 8;
}

/**
 * quantize_row_q4_1_ref / q5_1_ref: d = (max − min)/(2^bits − 1), m = min, q = trunc((x − min)·(1/d) + 0.5)
 * (Q4_1 clamps to 15, Q5_1 does not); the fifth bits go to qh as in quantize_row_q5_0_ref.
 */
export function quantizeMinRef(type: 'Q4_1' | 'Q5_1', x: Float32Array): Uint8Array {
  const five = type === 'Q5_1';
  const bytes = BLOCK[type].bytes;
  const out = new Uint8Array((x.length / 32) * bytes);
  for (let blk = 0; blk < x.length / 32; blk++) {
    const v = x.subarray(blk * 32, blk * 32 + 32);
    let min = Infinity;
    let max = -Infinity;
    for (const t of v) {
      if (t < min) min = t;
      if (t > max) max = t;
    }
    const d = fr(fr(max - min) / (five ? 31 : 15));
    const id = d !== 0 ? fr(1 / d) : 0;
    const o = blk * bytes;
    putHalf(out, o, d);
    putHalf(out, o + 2, min);
    const q = (t: number) => {
      const r = Math.trunc(fr(fr(fr(t - min) * id) + 0.5));
      return five ? r : Math.min(15, r);
    };
    let qh = 0;
    const qs = o + (five ? 8 : 4);
    for (let j = 0; j < 16; j++) {
      const q0 = q(v[j]);
      const q1 = q(v[j + 16]);
      out[qs + j] = (q0 & 15) | ((q1 & 15) << 4);
      qh |= ((q0 >> 4) << j) | ((q1 >> 4) << (j + 16));
    }
    if (five) for (let k = 0; k < 4; k++) out[o + 4 + k] = (qh >>> (8 * k)) & 255;
  }
  return out;
}

/** quantize_row_q5_0_ref: d = max/−16 with max the value of largest magnitude, q = min(31, trunc(x/d + 16.5)). */
export function quantizeQ5_0Ref(x: Float32Array): Uint8Array {
  const out = new Uint8Array((x.length / 32) * 22);
  for (let blk = 0; blk < x.length / 32; blk++) {
    const v = x.subarray(blk * 32, blk * 32 + 32);
    let amax = 0;
    let max = 0;
    for (const t of v) {
      if (Math.abs(t) > amax) {
        amax = Math.abs(t);
        max = t;
      }
    }
    const d = fr(max / -16);
    const id = d !== 0 ? fr(1 / d) : 0;
    const o = blk * 22;
    putHalf(out, o, d);
    const q = (t: number) => Math.min(31, Math.trunc(fr(fr(t * id) + 16.5)));
    let qh = 0;
    for (let j = 0; j < 16; j++) {
      const q0 = q(v[j]);
      const q1 = q(v[j + 16]);
      out[o + 6 + j] = (q0 & 15) | ((q1 & 15) << 4);
      qh |= ((q0 >> 4) << j) | ((q1 >> 4) << (j + 16));
    }
    for (let k = 0; k < 4; k++) out[o + 2 + k] = (qh >>> (8 * k)) & 255;
  }
  return out;
}

/** Random blocks of a type with finite scales (f16 scale fields drawn from normal halves). */
export function randomBlocks(type: BlockType, nBlocks: number, rand: () => number): Uint8Array {
  const { bytes } = BLOCK[type];
  const out = new Uint8Array(nBlocks * bytes);
  for (let i = 0; i < out.length; i++) out[i] = Math.floor(rand() * 256);
  const halfAt = (o: number, mag: number) => {
    const h = toHalfRef((rand() - 0.5) * mag);
    out[o] = h & 255;
    out[o + 1] = h >> 8;
  };
  for (let blk = 0; blk < nBlocks; blk++) {
    const o = blk * bytes;
    if (type === 'Q6_K') halfAt(o + 208, 0.02);
    else {
      halfAt(o, 0.05);
      if (type === 'Q4_1' || type === 'Q5_1' || type === 'Q4_K' || type === 'Q5_K') halfAt(o + 2, 0.05);
    }
  }
  return out;
}
