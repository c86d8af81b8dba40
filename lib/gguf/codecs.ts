/**
 * ggml's block formats ↔ f32 for lib/gguf, through the native op family ggmlDequantize /
 * ggmlQuantize (native/cpu/ggml_blocks.cc; block structs in native/core/ggml_blocks.h). Dequantize:
 * F32, F16, BF16, F64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K; quantize: all of these but F64
 * (F16, BF16 and the 32-value blocks bit-identical to ggml's quantize_row_*_ref; Q4_K, Q5_K, Q6_K by a
 * simpler one-pass quantizer of the same layout, README: GGUF and node-llama-cpp). The async forms run on libuv's pool.
 */
import { call, callAsync } from '../native';

/** f32 values of `n` elements of ggml type `type` stored in `src`. */
export function dequantize(type: number, src: Uint8Array, n: number): Float32Array {
  return call((b) => b.ggmlDequantize(type, src, n));
}

export function dequantizeAsync(type: number, src: Uint8Array, n: number): Promise<Float32Array> {
  return callAsync((b) => b.ggmlDequantizeAsync(type, src, n));
}

/** `src` encoded as ggml type `type` (any DEQUANTIZABLE type but F64). */
export function quantize(type: number, src: Float32Array): Uint8Array {
  return call((b) => b.ggmlQuantize(type, src));
}

export function quantizeAsync(type: number, src: Float32Array): Promise<Uint8Array> {
  return callAsync((b) => b.ggmlQuantizeAsync(type, src));
}

/**
 * Rows of a ggml-typed weight W [rows, cols] (`src`) merged as W + scale·B·A in f32 (A [r, cols],
 * B [rows, r]; peft's merge) and encoded as `outType`, in one native call on libuv's pool.
 */
export function mergeRowsAsync(type: number, src: Uint8Array, rows: number, cols: number, A: Float32Array, B: Float32Array, scale: number, outType: number): Promise<Uint8Array> {
  return callAsync((b) => b.ggmlMergeRowsAsync(type, src, rows, cols, A, B, scale, outType));
}
