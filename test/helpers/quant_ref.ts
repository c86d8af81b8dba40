/**
 * Reference definitions of the quantized-base formats (native/core/quant_formats.h), written from
 * their sources rather than from the native code: bitsandbytes' NF4 / FP4 code books and dynamic
 * map, LLM.int8's row quantisation as the contract defines it, and the byte layout rules.
 */
import { Tensor } from '../../lib';
import { QuantSpecArg, call } from '../../lib/native';

const f = Math.fround;

/** bitsandbytes' NF4 code book (functional.py NF4 / csrc dDequantizeNF4), code index order. */
export const NF4 = [
  -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
  -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
  0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
].map(f);

/** bitsandbytes' FP4 (dDequantizeFP4Tree): bit 3 the sign, bits 0-2 the magnitudes 0, 1/16, 8, 12, 4, 6, 2, 3, over 12. */
export const FP4 = (() => {
  const mag = [0, 0.0625, 8, 12, 4, 6, 2, 3].map((v) => f(v / 12));
  return [...mag, ...mag.map((v) => -v)];
})();

/** bnb create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8) in f32, sorted. */
export function dynamicMapRef(): Float32Array {
  const data: number[] = [];
  for (let i = 0; i < 7; i++) {
    const items = 2 ** i + 1;
    const step = f(f(1 - f(0.1)) / (items - 1));
    const bounds = Array.from({ length: items }, (_, k) => (k === items - 1 ? 1 : f(f(0.1) + f(step * k))));
    const p = f(10 ** (i - 6));
    for (let k = 0; k + 1 < items; k++) {
      const mean = f(f(bounds[k] + bounds[k + 1]) / 2);
      data.push(f(p * mean), -f(p * mean));
    }
  }
  data.push(0, 1);
  return Float32Array.from(data.sort((a, b) => a - b));
}

const align16 = (n: number) => Math.ceil(n / 16) * 16;
const GGML: Record<string, [number, number]> = { q8_0: [32, 34], q4_0: [32, 18], q4_k: [256, 144], q6_k: [256, 210] };
export const GGML_TYPE_ID: Record<string, number> = { q8_0: 8, q4_0: 2, q4_k: 12, q6_k: 14 };

/** Section offsets by the layout rules of quant_formats.h (16-byte aligned sections, in order). */
export function layoutRef(s: QuantSpecArg): { nbytes: number; dataOffset: number; dataBytes: number; nblocks: number; sections: Record<string, number> } {
  const n = s.rows * s.cols;
  const sections: Record<string, number> = {};
  let at = 0;
  const add = (name: string, bytes: number) => {
    sections[name] = at;
    at = align16(at + bytes);
  };
  let nblocks: number;
  let dataBytes: number;
  if (s.format === 'int8') {
    nblocks = s.rows;
    add('scale', s.rows * 4);
    dataBytes = n;
  } else if (s.format in GGML) {
    const [block, bytes] = GGML[s.format];
    nblocks = n / block;
    dataBytes = nblocks * bytes;
  } else {
    nblocks = n / s.blockSize;
    if (s.doubleQuant) {
      add('offset', 4);
      add('scale2', Math.ceil(nblocks / 256) * 4);
      add('qscale', nblocks);
    } else {
      add('scale', nblocks * 4);
    }
    dataBytes = n / 2;
  }
  const dataOffset = at;
  add('data', dataBytes);
  return { nbytes: at, dataOffset, dataBytes, nblocks, sections };
}

/** The contract's int8 row quantisation: s = a/127, q = round-half-away((x·127)/a), each op in f32. */
export function int8Ref(w: Float32Array, rows: number, cols: number): { scale: Float32Array; q: Int8Array } {
  const scale = new Float32Array(rows);
  const q = new Int8Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    let a = 0;
    for (let c = 0; c < cols; c++) a = Math.max(a, Math.abs(w[r * cols + c]));
    scale[r] = f(a / 127);
    for (let c = 0; c < cols; c++) {
      if (a === 0) continue;
      const t = f(f(w[r * cols + c] * 127) / a);
      const v = Math.sign(t) * Math.floor(Math.abs(t) + 0.5);
      q[r * cols + c] = Math.max(-127, Math.min(127, v));
    }
  }
  return { scale, q };
}

/** Per-block absmax of a row-major weight, blocks of `block` along the rows. */
export function blockAbsmax(w: Float32Array, block: number): Float32Array {
  const out = new Float32Array(w.length / block);
  for (let b = 0; b < out.length; b++) {
    let a = 0;
    for (let i = 0; i < block; i++) a = Math.max(a, Math.abs(w[b * block + i]));
    out[b] = a;
  }
  return out;
}

/** The contract's double quantisation of an absmax list: offset, absmax2 per 256, nearest map index. */
export function doubleQuantRef(amax: Float32Array, map: Float32Array): { offset: number; amax2: Float32Array; q: Uint8Array } {
  let sum = 0;
  for (const a of amax) sum += a;
  const offset = f(sum / amax.length);
  const nb2 = Math.ceil(amax.length / 256);
  const amax2 = new Float32Array(nb2);
  const q = new Uint8Array(amax.length);
  for (let j = 0; j < nb2; j++) {
    const b0 = j * 256;
    const b1 = Math.min(amax.length, b0 + 256);
    let m = 0;
    for (let b = b0; b < b1; b++) m = Math.max(m, Math.abs(f(amax[b] - offset)));
    amax2[j] = m;
    const inv = f(1 / m);
    for (let b = b0; b < b1; b++) {
      const t = m === 0 ? 0 : f(f(amax[b] - offset) * inv);
      let best = 0;
      let bd = Infinity;
      for (let k = 0; k < 256; k++) {
        const d = Math.abs(f(map[k] - t));
        if (d < bd) {
          bd = d;
          best = k;
        }
      }
      q[b] = best;
    }
  }
  return { offset, amax2, q };
}

/** The bytes of a quantized i32 tensor. */
export function bytesOf(t: Tensor): Uint8Array {
  return new Uint8Array(t.toInt32Array().buffer);
}

/** Quantizes w (f32 [rows, cols]) natively; returns the i32 tensor and its bytes. */
export function quantizeNative(w: Float32Array, spec: QuantSpecArg): { q: Tensor; bytes: Uint8Array } {
  const layout = call((b) => b.quantLayout(spec));
  const q = Tensor.zeros([layout.nbytes / 4], { dtype: 'i32' });
  const wt = Tensor.from(w, [spec.rows, spec.cols]);
  call((b) => b.quantize(wt.handle, spec, q.handle));
  wt.dispose();
  return { q, bytes: bytesOf(q) };
}

/** The dequantised weight of q, natively. */
export function dequantizeNative(q: Tensor, spec: QuantSpecArg): Float32Array {
  const out = Tensor.zeros([spec.rows, spec.cols]);
  call((b) => b.dequantize(q.handle, spec, out.handle));
  const v = out.toFloat32Array();
  out.dispose();
  return v;
}

/** spec with the format's block size (int8: cols; ggml: fixed; nf4/fp4: 64 unless given). */
export function specOf(format: QuantSpecArg['format'], rows: number, cols: number, o: Partial<QuantSpecArg> = {}): QuantSpecArg {
  const blockSize = format === 'int8' ? cols : format in GGML ? GGML[format][0] : 64;
  return { format, rows, cols, blockSize, doubleQuant: false, ...o };
}
