// The decode GEMV over a quantized W (few tokens): y[i, j] = Σ_k x[i, k]·deq(W)[j, k], reading
// W's bytes once and decoding them in registers. Per ISA (quant_gemv_avx512.cc, quant_gemv_avx2.cc;
// others use the portable decode-into-L1-and-dot path in quant_linear.cc), chosen from the kernel
// table's path.
#pragma once
#include <cstdint>
#include <type_traits>
#include <vector>
#include "../core/op_args.h"
#include "../core/quant_formats.h"
#include "quant.h"

namespace lorakit {
namespace cpu {

constexpr int64_t kGemvMaxTokens = 8;

// f(std::integral_constant<int, NT>{}) for n token rows, 1 ≤ n ≤ kGemvMaxTokens: the kernels keep
// each token's accumulators in registers, so NT is a template parameter. Always inlined, so that f
// (in a target region: quant_gemv_kquant.h) inlines into its caller.
template <class F>
inline __attribute__((always_inline)) void with_token_count(int64_t n, F&& f) {
  switch (n) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    default: return f(std::integral_constant<int, 8>{});
  }
}

// Rows [j0, j1) of W against n ≤ kGemvMaxTokens rows of arranged x (row stride cols; f32, or
// bf16 bits where QuantGemv::x_bf16) into y[i·ldy + j] (f32); bf16: with deq(W) rounded to bf16
// (bf16 activations, quant_linear.cc).
using QuantGemvFn = void (*)(const QuantWeight& W, const void* x, int64_t n, int64_t j0, int64_t j1, float* y,
                             int64_t ldy, bool bf16);

// How a kernel wants x (f32 [n, cols]) arranged, once per call:
//  Natural: as is;
//  Pairs32: nf4/fp4 (pairs in a byte, first value high): each 32-value group as its 16
//           even-indexed values, then its 16 odd-indexed ones;
//  Nibbles: nf4/fp4 read as 32-bit words shifted by 4·s: in each chunk of 8·lanes values, slot
//           s·lanes + k holds value 8k + (s ^ 1) (nibble s of word k; the high nibble comes first);
//  Words128: nf4/fp4 read as 16-bit words of four values (vdpbf16ps pairs): in each chunk of 128
//           values, slot 32·s + k holds value 4k + (s ^ 1) (nibble s of word k; the high nibble of
//           each byte comes first); a trailing 64 values: the 32 odd-indexed ones (low nibbles of
//           bytes widened to words), then the 32 even-indexed ones;
//  Q4Words64: q4_0, two blocks (b = 0, 1) of 32 per chunk of 64 values as 16-bit words: slots
//           16b + k hold the blocks' values k < 16 (low nibbles), slots 32 + 16b + k values 16 + k.
enum class GemvXOrder { Natural, Pairs32, Nibbles, Words128, Q4Words64 };
struct QuantGemv {
  QuantGemvFn fn = nullptr;  // null: the path has no kernel for the format (and rounding)
  GemvXOrder order = GemvXOrder::Natural;
  int64_t lanes = 0;    // Nibbles: f32 lanes per vector (8: the AVX2 kernel)
  int64_t cols = 0;     // Words128: the row length (where the trailing 64 values start)
  bool x_bf16 = false;  // x arranged as bf16 bits (the vdpbf16ps kernels), else f32
};
// Where value k of a row of x goes in the arranged row.
inline int64_t gemv_x_slot(const QuantGemv& g, int64_t k) {
  switch (g.order) {
    case GemvXOrder::Pairs32: return (k & ~int64_t(31)) + (k & 1) * 16 + ((k & 31) >> 1);
    case GemvXOrder::Nibbles: {
      const int64_t chunk = 8 * g.lanes, in = k % chunk;
      return k - in + ((in & 7) ^ 1) * g.lanes + in / 8;
    }
    case GemvXOrder::Words128: {
      const int64_t in = k & 127, base = k - in;
      if (base + 128 > g.cols) return (k & ~int64_t(63)) + ((k & 1) ? 0 : 32) + ((k & 63) >> 1);  // trailing 64
      return base + 32 * ((in & 3) ^ 1) + (in >> 2);
    }
    case GemvXOrder::Q4Words64: {
      const int64_t in = k & 63, b = in >> 5, v = in & 31;
      return (k & ~int64_t(63)) + (v < 16 ? 16 * b + v : 32 + 16 * b + v - 16);
    }
    default: return k;
  }
}
QuantGemv quant_gemv_kernel(const QuantSpec& s, bool bf16);

// int8 / q8_0 in the x86 kernels: groups of 32 values, so only rows they tile (with bf16 activations
// they round each decoded weight to bf16, as the portable path rounds its decoded rows).
inline bool gemv_8bit_covered(const QuantSpec& s) { return s.cols % 32 == 0; }

// How the k-quant kernels round deq(W) for a super-block with f16 scales d (and dmin): 0 not at all
// (f32 activations), 1 to bf16 for finite values only (every scale finite, so every product is),
// 2 to bf16 with NaN kept quiet (a file's scale may be inf or NaN).
inline int kquant_round_mode(bool bf16, uint16_t d, uint16_t dmin = 0) {
  auto finite = [](uint16_t h) { return (h & 0x7c00u) != 0x7c00u; };
  return !bf16 ? 0 : finite(d) && finite(dmin) ? 1 : 2;
}

// How far ahead of each stream the x86 kernels prefetch W's bytes into L1 (software prefetch, once
// per cache line): measured 25-30% faster on one thread beyond the LLC at 1-2 KB than with the
// hardware prefetchers alone, slower again at 4 KB.
constexpr int64_t kGemvPrefetchBytes = 2048;

// The data of rows j, j + S, …, j + (R − 1)·S of W, each row_bytes long (a row-stream step's rows).
template <int R>
inline void gemv_row_starts(const QuantWeight& W, const QuantLayout& L, int64_t j, int64_t S, int64_t row_bytes,
                            const uint8_t* (&row)[R]) {
  for (int r = 0; r < R; r++) row[r] = W.data + L.data_off + (j + r * S) * row_bytes;
}

// What a row-stream kernel (gemv_row_streams below) works on: W, its layout, x (arranged as the
// kernel's QuantGemv asked), y and its token stride, and whether deq(W) is rounded to bf16.
struct GemvRowsArgs {
  const QuantWeight& W;
  const QuantLayout& L;
  const float* x;
  float* y;
  int64_t ldy;
  bool bf16;
  template <int R>
  void row_starts(int64_t j, int64_t S, int64_t row_bytes, const uint8_t* (&row)[R]) const {
    gemv_row_starts<R>(W, L, j, S, row_bytes, row);
  }
};

// Rows [j0, j1) read R at a time as separate streams: rows j, j + S, ..., j + (R − 1)·S with
// S = (j1 − j0) / R, each a sequential read of its own pages (neighbouring rows interleaved in one
// page defeat the hardware prefetchers; R streams keep R times the misses in flight):
// run.rows<R>(j0 + i, S) for i < S, then run.rows<1>(j, 1) for the rest.
template <int R, class Run>
inline void gemv_row_streams(int64_t j0, int64_t j1, Run&& run) {
  const int64_t S = (j1 - j0) / R;
  for (int64_t i = 0; i < S; i++) run.template rows<R>(j0 + i, S);
  for (int64_t j = j0 + R * S; j < j1; j++) run.template rows<1>(j, 1);
}

// deq(W)[row, c0 .. c0 + len) as f32 (the decode of the packed GEMM's W panels).
using QuantDecodeFn = void (*)(const QuantWeight& W, int64_t row, int64_t c0, int64_t len, float* out);
// The path's decoder (the portable one is dequantize_segment).
QuantDecodeFn quant_decode_kernel();
QuantDecodeFn quant_decode_avx512();
QuantDecodeFn quant_decode_avx2();
// deq(W)[row, c0 .. c0 + len) rounded to nearest-even bf16 (bits): the bf16 GEMM's W panels.
// Null where the path has none for the format (the GEMM then rounds the f32 decode).
using QuantDecode16Fn = void (*)(const QuantWeight& W, int64_t row, int64_t c0, int64_t len, uint16_t* out);
QuantDecode16Fn quant_decode16_kernel(QuantFormat f);
QuantDecode16Fn quant_decode16_avx512(QuantFormat f);

// The per-ISA kernels (fn null for formats they do not cover, or in builds for other architectures).
QuantGemv quant_gemv_avx512(const QuantSpec& s, bool bf16);
QuantGemv quant_gemv_avx2(const QuantSpec& s, bool bf16);
// bf16 activations on CPUs with AVX512_BF16 (quant_gemv_avx512bf16.cc): nf4 / fp4 and q4_0 (with VBMI) by
// vpermw lookups into bf16 tables and vdpbf16ps; fn null for other formats and layouts.
QuantGemv quant_gemv_avx512bf16(const QuantSpec& s);

// q4_k / q6_k on the AVX2 path (quant_gemv_kquant.h): each 256-value super-block decoded in
// registers with the scalar decoder's products, each vector dotted with every token's row. (The
// AVX-512 path has its own, quant_gemv_kquant_avx512.h.)
QuantGemvFn quant_gemv_kquant_avx2();

// nf4 / fp4 row streams (gemv_row_streams): the code bytes of rows j, j + S, … and their absmax
// (with double quant reconstructed into amax, R · per-row entries).
template <int R>
inline void nf4_stream_rows(const QuantWeight& W, const QuantLayout& L, int64_t j, int64_t S, std::vector<float>& amax,
                            const uint8_t* (&row)[R], const float* (&a)[R]) {
  const QuantSpec& s = W.spec;
  const int64_t cols = s.cols, per_row = cols / s.block;
  for (int r = 0; r < R; r++) {
    const int64_t jr = j + r * S;
    row[r] = W.data + L.data_off + jr * cols / 2;
    a[r] = reinterpret_cast<const float*>(W.data + L.scale_off) + jr * per_row;
    if (s.double_quant) {
      dq_absmax(W, jr * per_row, per_row, amax.data() + r * per_row);
      a[r] = amax.data() + r * per_row;
    }
  }
}

}  // namespace cpu
}  // namespace lorakit
