/**
 * The block codecs lib/gguf uses: ggml types ↔ f32. One place to choose the implementation.
 */
import { dequantizeJs, quantizeJs } from './blocks';

/** f32 values of `n` elements of ggml type `type` stored in `src`. */
export function dequantize(type: number, src: Uint8Array, n: number): Float32Array {
  return dequantizeJs(type, src, n);
}

/** `src` encoded as ggml type `type` (F32, F16, BF16, Q8_0, Q4_0). */
export function quantize(type: number, src: Float32Array): Uint8Array {
  return quantizeJs(type, src);
}
