// The decode GEMV over a quantized W (few tokens): y[i, j] = Σ_k x[i, k]·deq(W)[j, k], reading
// W's bytes once and decoding them in registers. Per ISA (quant_gemv_avx512.cc; others use the
// portable decode-into-L1-and-dot path in quant_linear.cc), chosen from the kernel table's path.
#pragma once
#include <cstdint>
#include "../core/op_args.h"

namespace lorakit {
namespace cpu {

constexpr int64_t kGemvMaxTokens = 8;

// x as the kernel wants it (f32 [n, cols]): nf4/fp4 (pairs in a byte, first value high) take each
// 32-value group as its 16 even-indexed values, then its 16 odd-indexed ones; other formats as is.
bool quant_gemv_interleaved(QuantFormat f);

// Rows [j0, j1) of W against n ≤ kGemvMaxTokens rows of arranged x (row stride cols) into
// y[i·ldy + j] (f32); bf16: with deq(W) rounded to bf16 (bf16 activations, quant_linear.cc). Null
// when the path has no kernel for the format (and rounding).
using QuantGemvFn = void (*)(const QuantWeight& W, const float* x, int64_t n, int64_t j0, int64_t j1, float* y,
                             int64_t ldy, bool bf16);
QuantGemvFn quant_gemv_kernel(QuantFormat f, bool bf16);

// deq(W)[row, c0 .. c0 + len) as f32 (the decode of the packed GEMM's W panels).
using QuantDecodeFn = void (*)(const QuantWeight& W, int64_t row, int64_t c0, int64_t len, float* out);
// The path's decoder (the portable one is dequantize_segment).
QuantDecodeFn quant_decode_kernel();
QuantDecodeFn quant_decode_avx512();

// The AVX-512 kernels (null for formats they do not cover, or in builds for other architectures).
QuantGemvFn quant_gemv_avx512(QuantFormat f, bool bf16);

}  // namespace cpu
}  // namespace lorakit
