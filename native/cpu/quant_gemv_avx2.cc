// The AVX2 decode GEMV over a quantized W (quant_gemv.h), y[i, j] = Σ_k x[i, k]·deq(W)[j, k]
// (peft: x @ dequantize(W).T), for CPUs without AVX-512. nf4 / fp4: one 32-byte load per 64
// values (one block: block sizes are multiples of 64), nibble s of each 32-bit word selected by a
// shift of 4·s; the 16-entry table scaled by the block's absmax (rounded to bf16 for bf16
// activations) is looked up as two 8-entry vpermps halves, blended on the nibble's bit 3. q4_0:
// 16 bytes of a block widened to (q − 8), converted and multiplied by d (the scalar decoder's
// product), d converted where its block is read; int8 and q8_0 widen 8 int8 at a time and scale
// per row / per block; q4_k / q6_k: quant_gemv_kquant.h (row streams too). At n = 1 two rows half the thread's range
// apart advance together as separate read streams (gemv_row_streams; 16 ymm registers hold two
// rows' tables and accumulators). Every token's accumulators stay in registers. Also the packed
// GEMM's W-panel decoder for this path (decode).
// Formats: core/quant_formats.h (bnb functional.quantize_4bit, LLM.int8, ggml-common.h).
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <cstring>
#include <vector>
#include "../core/dtype.h"
#include "../core/ggml_blocks.h"
#include "hsum_avx2.h"
#include "quant.h"
#include "quant_gemv.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#pragma GCC optimize("fp-contract=off")
#include "quant_gemv_kquant.h"
#pragma GCC pop_options

#define LK_A2 __attribute__((target("avx2,fma,f16c")))

namespace lorakit {
namespace cpu {
namespace {

// Round to nearest even bf16, kept as f32 (finite values).
LK_A2 inline __m256 round_bf16(__m256 v) {
  const __m256i b = _mm256_castps_si256(v);
  const __m256i bias = _mm256_add_epi32(_mm256_set1_epi32(0x7fff), _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1)));
  return _mm256_castsi256_ps(_mm256_and_si256(_mm256_add_epi32(b, bias), _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
}

// Accumulates 8 weights w against x[off .. off + 8) of NT token rows.
template <int NT>
LK_A2 inline void fma8(__m256 w, const float* x, int64_t ldx, __m256* acc) {
  for (int i = 0; i < NT; i++) acc[i] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + i * ldx), acc[i]);
}

// nf4 / fp4, x in GemvXOrder::Nibbles (8 lanes), R rows at once (rows of a gemv_row_streams step;
// row r's outputs at y + r·S): chunk c is a row's bytes [32c, 32c + 32), one block's 64 values;
// slot 8s + k of the chunk's x holds value 8k + (s ^ 1). a[r]: row r's absmax.
template <int NT, int R>
LK_A2 void rows_nibbles(int64_t chunks, int64_t block, const uint8_t* const (&row)[R], const float* const (&a)[R],
                        const float* code, bool bf16, const float* x, int64_t ldx, float* y, int64_t S, int64_t ldy) {
  __m256 acc0[R][NT], acc1[R][NT];
  for (int r = 0; r < R; r++)
    for (int i = 0; i < NT; i++) acc0[r][i] = acc1[r][i] = _mm256_setzero_ps();
  // One flat loop over the chunks; the tables change where a block starts.
  const int64_t cpb = block / 64, shift = __builtin_ctzll(static_cast<uint64_t>(cpb));
  __m256 tlo[R], thi[R];
  for (int64_t c = 0; c < chunks; c++) {
    if ((c & (cpb - 1)) == 0)
      for (int r = 0; r < R; r++) {
        const __m256 sc = _mm256_set1_ps(a[r][c >> shift]);
        tlo[r] = _mm256_mul_ps(_mm256_loadu_ps(code), sc);
        thi[r] = _mm256_mul_ps(_mm256_loadu_ps(code + 8), sc);
        if (bf16) {
          tlo[r] = round_bf16(tlo[r]);
          thi[r] = round_bf16(thi[r]);
        }
      }
    for (int r = 0; r < R; r++) {
      if ((c & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(row[r] + 32 * c) + kGemvPrefetchBytes, _MM_HINT_T0);
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row[r] + 32 * c));
      const float* xc = x + 64 * c;
      for (int s = 0; s < 8; s++) {
        // vpermps reads the low 3 bits of its index; the blend takes the high half where bit 3 is set.
        const __m256i idx = _mm256_srli_epi32(v, 4 * s), sel = _mm256_slli_epi32(v, 28 - 4 * s);
        const __m256 w =
            _mm256_blendv_ps(_mm256_permutevar8x32_ps(tlo[r], idx), _mm256_permutevar8x32_ps(thi[r], idx), _mm256_castsi256_ps(sel));
        fma8<NT>(w, xc + 8 * s, ldx, s & 1 ? acc1[r] : acc0[r]);
      }
    }
  }
  for (int r = 0; r < R; r++)
    for (int i = 0; i < NT; i++) y[r * S + i * ldy] = hsum_avx2(_mm256_add_ps(acc0[r][i], acc1[r][i]));
}

// q4_0, x natural, R rows at once: per block of 32, d (f16, converted where the block is read:
// F16C, exact as dtype.h f16_to_f32) then 16 bytes, low nibbles values 0..15, high 16..31.
template <int NT, int R>
LK_A2 void rows_q4_0(int64_t groups, const uint8_t* const (&row)[R], bool bf16, const float* x, int64_t ldx, float* y,
                     int64_t S, int64_t ldy) {
  __m256 acc0[R][NT], acc1[R][NT];
  for (int r = 0; r < R; r++)
    for (int i = 0; i < NT; i++) acc0[r][i] = acc1[r][i] = _mm256_setzero_ps();
  const __m128i m4 = _mm_set1_epi8(0x0f);
  const __m256i eight = _mm256_set1_epi32(8);
  for (int64_t g = 0; g < groups; g++)
    for (int r = 0; r < R; r++) {
      int16_t h;
      std::memcpy(&h, row[r] + g * sizeof(BlockQ4_0), 2);
      const __m256 dv = _mm256_cvtph_ps(_mm_set1_epi16(h));
      if ((g & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(row[r] + g * sizeof(BlockQ4_0)) + kGemvPrefetchBytes, _MM_HINT_T0);
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row[r] + g * sizeof(BlockQ4_0) + 2));
      const __m128i lo = _mm_and_si128(v, m4), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
      const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
      for (int p = 0; p < 4; p++) {
        __m256 w = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(parts[p]), eight)), dv);
        if (bf16) w = round_bf16(w);
        fma8<NT>(w, x + g * 32 + 8 * p, ldx, p & 1 ? acc1[r] : acc0[r]);
      }
    }
  for (int r = 0; r < R; r++)
    for (int i = 0; i < NT; i++) y[r * S + i * ldy] = hsum_avx2(_mm256_add_ps(acc0[r][i], acc1[r][i]));
}

// Row streams (gemv_row_streams) of nf4 / fp4 and of q4_0: the rows' pointers and absmax
// (reconstructed first with double quant).
template <int NT>
struct Rows4bit : GemvRowsArgs {
  std::vector<float>& amax;  // R rows of reconstructed absmax (double quant)
  template <int R>
  LK_A2 void rows(int64_t j, int64_t S) {
    const QuantSpec& s = W.spec;
    const int64_t cols = s.cols, groups = cols / 32;
    const uint8_t* row[R];
    const float* a[R];
    if (s.format == QuantFormat::Q4_0) {
      gemv_row_starts<R>(W, L, j, S, groups * static_cast<int64_t>(sizeof(BlockQ4_0)), row);
      return rows_q4_0<NT, R>(groups, row, bf16, x, cols, y + j, S, ldy);
    }
    nf4_stream_rows<R>(W, L, j, S, amax, row, a);
    rows_nibbles<NT, R>(cols / 64, s.block, row, a, s.format == QuantFormat::NF4 ? kNF4Code : kFP4Code, bf16, x, cols, y + j, S, ldy);
  }
};

// int8 values: 32 per group at q(g), scale per group scale(g) (the row's, or a q8_0 block's); bf16:
// each q·scale rounded to bf16 before its product (deq(W) in the compute dtype, as the portable path).
template <int NT, class Q, class Scale>
LK_A2 void row_8bit(int64_t groups, Q q, Scale scale, bool bf16, const float* x, int64_t ldx, float* y, int64_t ldy) {
  __m256 acc0[NT], acc1[NT];
  for (int i = 0; i < NT; i++) acc0[i] = acc1[i] = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; g++) {
    const int8_t* p = q(g);
    const __m256 s = _mm256_set1_ps(scale(g));
    for (int k = 0; k < 4; k++) {
      const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * k));
      const __m256 w = _mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)));
      fma8<NT>(bf16 ? round_bf16(w) : w, x + g * 32 + 8 * k, ldx, k & 1 ? acc1 : acc0);
    }
  }
  for (int i = 0; i < NT; i++) y[i * ldy] = hsum_avx2(_mm256_add_ps(acc0[i], acc1[i]));
}

template <int NT>
LK_A2 void gemv_nt(const QuantWeight& W, const float* x, int64_t j0, int64_t j1, float* y, int64_t ldy, bool bf16) {
  const QuantSpec& s = W.spec;
  const QuantLayout L = quant_layout(s);
  const int64_t cols = s.cols, groups = cols / 32;
  const uint8_t* data = W.data + L.data_off;
  if (s.format == QuantFormat::NF4 || s.format == QuantFormat::FP4 || s.format == QuantFormat::Q4_0) {
    constexpr int R = NT == 1 ? 2 : 1;  // read streams per thread (gemv_row_streams); 16 ymm registers
    std::vector<float> amax(s.double_quant ? static_cast<size_t>(R * cols / s.block) : 0);
    gemv_row_streams<R>(j0, j1, Rows4bit<NT>{{W, L, x, y, ldy, bf16}, amax});
  } else if (s.format == QuantFormat::INT8) {
    const float* rs = reinterpret_cast<const float*>(W.data + L.scale_off);
    for (int64_t j = j0; j < j1; j++) {
      const int8_t* row = reinterpret_cast<const int8_t*>(data) + j * cols;
      const float sc = rs[j];
      row_8bit<NT>(groups, [&](int64_t g) { return row + g * 32; }, [&](int64_t) { return sc; }, bf16, x, cols, y + j, ldy);
    }
  } else {  // Q8_0
    for (int64_t j = j0; j < j1; j++) {
      const uint8_t* row = data + j * groups * sizeof(BlockQ8_0);
      auto scale = [&](int64_t g) LK_A2 {
        uint16_t h;
        std::memcpy(&h, row + g * sizeof(BlockQ8_0), 2);
        return _cvtsh_ss(h);
      };
      row_8bit<NT>(groups, [&](int64_t g) { return reinterpret_cast<const int8_t*>(row + g * sizeof(BlockQ8_0) + 2); }, scale,
                   bf16, x, cols, y + j, ldy);
    }
  }
}

void gemv(const QuantWeight& W, const void* xv, int64_t n, int64_t j0, int64_t j1, float* y, int64_t ldy, bool bf16) {
  const float* x = static_cast<const float*>(xv);
  with_token_count(n, [&](auto nt) { gemv_nt<decltype(nt)::value>(W, x, j0, j1, y, ldy, bf16); });
}

// deq(W)[row, c0 .. c0 + len) in natural order for the packed GEMM's W panels; c0 and len multiples
// of 32 (16 for q6_k; else, and for q4_k, the scalar decoder). The products are those of the scalar
// decoders: code·absmax, (q − 8)·d, q·d, q·s, and q6_k's (quant_gemv_kquant.h).
LK_A2 void decode(const QuantWeight& W, int64_t row, int64_t c0, int64_t len, float* out) {
  const QuantSpec& s = W.spec;
  if (s.format == QuantFormat::Q6_K && c0 % 16 == 0 && len % 16 == 0) return kq::decode_q6k_segment(W, row, c0, len, out);
  if (s.format == QuantFormat::Q4_K && c0 % 16 == 0 && len % 16 == 0) return kq::decode_q4k_segment(W, row, c0, len, out);
  if (c0 % 32 != 0 || len % 32 != 0 || s.format == QuantFormat::Q4_K || s.format == QuantFormat::Q6_K)
    return dequantize_segment(W, row, c0, len, out);
  const QuantLayout L = quant_layout(s);
  const int64_t cols = s.cols;
  if (s.format == QuantFormat::Q4_0 || s.format == QuantFormat::Q8_0) {  // blocks of 32: d, then the values
    const bool q4 = s.format == QuantFormat::Q4_0;
    const size_t bytes = q4 ? sizeof(BlockQ4_0) : sizeof(BlockQ8_0);
    const uint8_t* blk = W.data + L.data_off + (row * cols + c0) / 32 * bytes;
    for (int64_t c = 0; c < len; c += 32, blk += bytes) {
      uint16_t h;
      std::memcpy(&h, blk, 2);
      const __m256 d = _mm256_set1_ps(_cvtsh_ss(h));
      if (q4) {  // low nibbles are values 0..15, high nibbles 16..31
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2)), m4 = _mm_set1_epi8(0x0f);
        const __m128i lo = _mm_and_si128(v, m4), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
        const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
        for (int p = 0; p < 4; p++)
          _mm256_storeu_ps(out + c + 8 * p, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(parts[p]), _mm256_set1_epi32(8))), d));
      } else {
        for (int p = 0; p < 4; p++) {
          const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 2 + 8 * p));
          _mm256_storeu_ps(out + c + 8 * p, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d));
        }
      }
    }
    return;
  }
  if (s.format == QuantFormat::INT8) {
    const __m256 sc = _mm256_set1_ps(reinterpret_cast<const float*>(W.data + L.scale_off)[row]);
    const int8_t* q = reinterpret_cast<const int8_t*>(W.data + L.data_off) + row * cols + c0;
    for (int64_t c = 0; c < len; c += 8)
      _mm256_storeu_ps(out + c, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + c)))), sc));
    return;
  }
  // nf4 / fp4: byte k holds values 2k (high nibble) and 2k + 1 (low); each byte's word is doubled,
  // shifted by 4 or 0 and looked up in the block's scaled table (two vpermps halves and a blend).
  const float* code = s.format == QuantFormat::NF4 ? kNF4Code : kFP4Code;
  const __m256 clo = _mm256_loadu_ps(code), chi = _mm256_loadu_ps(code + 8);
  const __m256i dup_a = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3), dup_b = _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7);
  const __m256i sh = _mm256_setr_epi32(4, 0, 4, 0, 4, 0, 4, 0);
  const uint8_t* packed = W.data + L.data_off + (row * cols + c0) / 2;
  const float* amax = reinterpret_cast<const float*>(W.data + L.scale_off);
  const int64_t e0 = row * cols + c0, shift = __builtin_ctzll(static_cast<uint64_t>(s.block));  // block: a power of two
  int64_t cur = -1;
  __m256 tlo = clo, thi = chi;
  for (int64_t c = 0; c < len; c += 16) {
    const int64_t b = (e0 + c) >> shift;
    if (b != cur) {
      float a;
      if (s.double_quant) dq_absmax(W, b, 1, &a);
      else a = amax[b];
      tlo = _mm256_mul_ps(clo, _mm256_set1_ps(a));
      thi = _mm256_mul_ps(chi, _mm256_set1_ps(a));
      cur = b;
    }
    const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(packed + c / 2)));
    for (int h = 0; h < 2; h++) {
      const __m256i idx = _mm256_srlv_epi32(_mm256_permutevar8x32_epi32(v, h ? dup_b : dup_a), sh);
      const __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));  // bit 3 of the nibble
      _mm256_storeu_ps(out + c + 8 * h, _mm256_blendv_ps(_mm256_permutevar8x32_ps(tlo, idx), _mm256_permutevar8x32_ps(thi, idx), sel));
    }
  }
}

}  // namespace

QuantDecodeFn quant_decode_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") ? decode : nullptr;
}

QuantGemv quant_gemv_avx2(const QuantSpec& s, bool bf16) {
  QuantGemv g;
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || !__builtin_cpu_supports("f16c")) return g;
  switch (s.format) {
    case QuantFormat::NF4:
    case QuantFormat::FP4:
      // 64-value chunks inside one block: the block a multiple of 64 (bnb's sizes are), a power of two.
      if (s.block % 64 != 0 || (s.block & (s.block - 1)) != 0) return g;
      g.fn = gemv;
      g.order = GemvXOrder::Nibbles;
      g.lanes = 8;
      return g;
    case QuantFormat::Q4_0: g.fn = gemv; return g;
    case QuantFormat::INT8:
    case QuantFormat::Q8_0: g.fn = gemv_8bit_covered(s) ? gemv : nullptr; return g;
    case QuantFormat::Q4_K:
    case QuantFormat::Q6_K: g.fn = quant_gemv_kquant_avx2(); return g;
    default: return g;
  }
}

QuantGemvFn quant_gemv_kquant_avx2() { return __builtin_cpu_supports("avx2") ? kq::gemv : nullptr; }

}  // namespace cpu
}  // namespace lorakit
#else
#include "quant_gemv.h"
namespace lorakit {
namespace cpu {
QuantGemv quant_gemv_avx2(const QuantSpec&, bool) { return {}; }
QuantGemvFn quant_gemv_kquant_avx2() { return nullptr; }
QuantDecodeFn quant_decode_avx2() { return nullptr; }
}  // namespace cpu
}  // namespace lorakit
#endif
