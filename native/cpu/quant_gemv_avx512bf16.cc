// The decode GEMV with bf16 activations on CPUs with AVX512_BF16 (quant_gemv.h):
//   y[i, j] = Σ_k bf16(deq(W)[j, k])·x[i, k]
// (peft over bnb: the weight dequantised to the bf16 compute dtype, then the matmul; quant_linear.cc
// rounds deq(W) the same way on every path). Two exact bf16 products per f32 lane per vdpbf16ps,
// summed in f32; like the avx512bf16 GEMM it reads bf16 denormals as zero. Each block's scaled
// table (bnb code × absmax, or ggml's (q − 8)·d: the f32 products of the scalar decoder) is rounded
// to nearest-even bf16 by vcvtne2ps2bf16 into 32 words that vpermw indexes with 5 bits:
//  nf4 / fp4 (blocks of ≥ 64): 64 bytes (128 values) as 32 words, four nibbles each looked up in
//    turn, index bit 4 the word's half, the table's halves two blocks (x in GemvXOrder::Words128);
//  q4_0 (rows of a multiple of 64 values, CPUs with VBMI too): two blocks' 16 bytes side by side,
//    the table's halves the two blocks' tables, index bit 4 set to the block (x in
//    GemvXOrder::Q4Words64); the d of 8 blocks converted together (quant_gemv_q4_scales.h).
// Per 64 values: two vpermw and 2·n vdpbf16ps (the f32-activation kernel needs four vpermps, two
// index steps and 4·n FMAs). R rows advance together as separate read streams (gemv_row_streams).
// Formats: core/quant_formats.h (bnb functional.quantize_4bit, ggml-common.h block_q4_0).
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <cstring>
#include <vector>
#include "../core/ggml_blocks.h"
#include "quant.h"
#include "quant_gemv.h"
#include "quant_gemv_q4_scales.h"

#define LK_B __attribute__((target("avx512f,avx512bw,avx512bf16,avx2,fma,f16c")))
#define LK_BV __attribute__((target("avx512f,avx512bw,avx512vbmi,avx512bf16,avx2,fma,f16c")))  // q4_0

namespace lorakit {
namespace cpu {
namespace {

// 32 bf16 words: lo's 16 values rounded to nearest even in words 0..15, hi's in 16..31.
LK_B inline __m512i bf16_words(__m512 lo, __m512 hi) { return (__m512i)_mm512_cvtne2ps_pbh(hi, lo); }

LK_B inline __m512 dot2(__m512 acc, __m512i w, const uint16_t* x) {
  return _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)_mm512_loadu_si512(x));
}

// One 64-value chunk of R rows: w[r][0] pairs with x's first 32 arranged words, w[r][1] with the
// next 32; NT token rows (stride ldx) into acc[r][2i], acc[r][2i + 1].
template <int NT, int R>
LK_B inline void dot_chunk(const __m512i (&w)[R][2], const uint16_t* x, int64_t ldx, __m512 (&acc)[R][2 * NT]) {
  for (int r = 0; r < R; r++)
    for (int i = 0; i < NT; i++) {
      acc[r][2 * i] = dot2(acc[r][2 * i], w[r][0], x + i * ldx);
      acc[r][2 * i + 1] = dot2(acc[r][2 * i + 1], w[r][1], x + i * ldx + 32);
    }
}

template <int NT, int R>
LK_B inline void store_rows(__m512 (&acc)[R][2 * NT], float* y, int64_t S, int64_t ldy) {
  for (int r = 0; r < R; r++)
    for (int i = 0; i < NT; i++) y[r * S + i * ldy] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][2 * i], acc[r][2 * i + 1]));
}

// nf4 / fp4: R rows from j (stride S), their absmax reconstructed first with double quant. Chunks
// of 128 values: one 64-byte load read as 32 words, each word's four nibbles looked up in turn by
// vpermw after a shift (no widening), with index bit 4 set to the word's half (words 16..31 hold
// the second 64 values), so that the table's halves can be two blocks of 64: per 128 values one
// load, three shifts, four index masks, four vpermw, 2 scale multiplies, one conversion and 4·n
// vdpbf16ps (the 64-value chunk needed a widening per 64 values and a table per block: 1.74 against
// 1.17 ns per 64 weights in L2, one thread). A trailing 64 (cols ≡ 64 mod 128, blocks of 64) is
// widened as before (x in GemvXOrder::Words128).
template <int NT>
struct Nf4Rows {
  const QuantWeight& W;
  const QuantLayout& L;
  __m512 code;
  const uint16_t* x;
  float* y;
  int64_t ldy;
  std::vector<float>& amax;
  template <int R>
  LK_B void rows(int64_t j, int64_t S) {
    const QuantSpec& s = W.spec;
    const int64_t cols = s.cols, pairs = cols / 128, bpc = s.block / 64;  // bpc: 64-value halves per block
    const uint8_t* row[R];
    const float* a[R];
    nf4_stream_rows<R>(W, L, j, S, amax, row, a);
    __m512 acc[R][2 * NT];
    for (int r = 0; r < R; r++)
      for (int i = 0; i < 2 * NT; i++) acc[r][i] = _mm512_setzero_ps();
    const __m512i m15 = _mm512_set1_epi16(15);
    const __m512i half = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(16), 1);
    // Block of value 128·c: c·2/bpc (blocks of ≥ 128 values cover both halves: the table is doubled).
    const int64_t shift = __builtin_ctzll(static_cast<uint64_t>(bpc));
    __m512i t[R];
    for (int64_t c = 0; c < pairs; c++) {
      if (bpc == 1) {
        for (int r = 0; r < R; r++)
          t[r] = bf16_words(_mm512_mul_ps(code, _mm512_set1_ps(a[r][2 * c])), _mm512_mul_ps(code, _mm512_set1_ps(a[r][2 * c + 1])));
      } else if (((2 * c) & (bpc - 1)) == 0) {
        for (int r = 0; r < R; r++) {
          const __m512 f = _mm512_mul_ps(code, _mm512_set1_ps(a[r][(2 * c) >> shift]));
          t[r] = bf16_words(f, f);
        }
      }
      const uint16_t* xc = x + 128 * c;
      for (int r = 0; r < R; r++) {
        _mm_prefetch(reinterpret_cast<const char*>(row[r] + 64 * c) + kGemvPrefetchBytes, _MM_HINT_T0);
        const __m512i v = _mm512_loadu_si512(row[r] + 64 * c);
        __m512i w[4];
        w[0] = _mm512_permutexvar_epi16(_mm512_ternarylogic_epi32(half, v, m15, 0xF8), t[r]);  // half | (v & 15)
        w[1] = _mm512_permutexvar_epi16(_mm512_ternarylogic_epi32(half, _mm512_srli_epi16(v, 4), m15, 0xF8), t[r]);
        w[2] = _mm512_permutexvar_epi16(_mm512_ternarylogic_epi32(half, _mm512_srli_epi16(v, 8), m15, 0xF8), t[r]);
        w[3] = _mm512_permutexvar_epi16(_mm512_or_si512(half, _mm512_srli_epi16(v, 12)), t[r]);
        for (int i = 0; i < NT; i++)
          for (int q = 0; q < 4; q++) {
            __m512& ac = acc[r][2 * i + (q & 1)];
            ac = dot2(ac, w[q], xc + i * cols + 32 * q);
          }
      }
    }
    if (cols % 128) {  // blocks of 64: the last block, widened to words
      const int64_t c = cols / 64 - 1;
      __m512i w[R][2];
      for (int r = 0; r < R; r++) {
        const __m512 f = _mm512_mul_ps(code, _mm512_set1_ps(a[r][c]));
        const __m512i tl = bf16_words(f, f);
        const __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row[r] + 32 * c)));
        w[r][0] = _mm512_permutexvar_epi16(v, tl);                         // low nibbles: odd values
        w[r][1] = _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 4), tl);  // high nibbles: even values
      }
      dot_chunk<NT, R>(w, x + 64 * c, cols, acc);
    }
    store_rows<NT, R>(acc, y + j, S, ldy);
  }
};

// q4_0 (VBMI as well): blocks g, g + 1 of R rows (row r's d at d[r · kQ4ScaleChunk] and the next):
// the two blocks' tables (q − 8)·d rounded side by side into 32 words; their 34 bytes (16 codes,
// the second block's d, 16 codes) in one masked load, widened to words by one vpermi2b with the
// second block's words' bit 8 set (index bit 4 after the shift; a widening of two inserted
// halves and an OR took 9% longer per 64 weights).
template <int NT, int R>
LK_BV inline void q4_pair(const uint8_t* const (&row)[R], int64_t g, const float* d, const uint16_t* x, int64_t ldx,
                          __m512 (&acc)[R][2 * NT]) {
  const __m512 table = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
  // vpermi2b: word k < 16 takes byte k of the load and byte 64 (0, of hi) above it; word 16 + k
  // byte 18 + k and byte 65 (1).
  alignas(64) static const uint8_t words[64] = {
      0, 64, 1, 64, 2, 64, 3, 64, 4, 64, 5, 64, 6, 64, 7, 64,
      8, 64, 9, 64, 10, 64, 11, 64, 12, 64, 13, 64, 14, 64, 15, 64,
      18, 65, 19, 65, 20, 65, 21, 65, 22, 65, 23, 65, 24, 65, 25, 65,
      26, 65, 27, 65, 28, 65, 29, 65, 30, 65, 31, 65, 32, 65, 33, 65,
  };
  const __m512i sel = _mm512_load_si512(words), hi = _mm512_setr_epi32(0x100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i blk = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(16), 1), m15 = _mm512_set1_epi16(15);
  __m512i w[R][2];
  for (int r = 0; r < R; r++) {
    const uint8_t* q = row[r] + g * sizeof(BlockQ4_0) + 2;
    _mm_prefetch(reinterpret_cast<const char*>(q) + kGemvPrefetchBytes, _MM_HINT_T0);  // every 36 bytes
    const float* dr = d + r * kQ4ScaleChunk;
    const __m512i t = bf16_words(_mm512_mul_ps(table, _mm512_set1_ps(dr[0])), _mm512_mul_ps(table, _mm512_set1_ps(dr[1])));
    const __m512i v = _mm512_permutex2var_epi8(_mm512_maskz_loadu_epi8(0x3FFFFFFFFull, q), sel, hi);
    w[r][0] = _mm512_permutexvar_epi16(_mm512_ternarylogic_epi32(blk, v, m15, 0xF8), t);  // blk | (v & 15)
    w[r][1] = _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 4), t);
  }
  dot_chunk<NT, R>(w, x + 32 * g, ldx, acc);
}

// q4_0: R rows from j (stride S), two blocks per 64 values; the d of each 8 blocks converted
// together one chunk ahead (quant_gemv_q4_scales.h), the last groups % 8 pair by pair. n = 1,
// one thread, W in L2: 1.26 ns per 64 weights (1.59 with a vpbroadcastw + vcvtph2ps per block).
template <int NT>
struct Q4Rows {
  const QuantWeight& W;
  const QuantLayout& L;
  const uint16_t* x;
  float* y;
  int64_t ldy;
  template <int R>
  LK_BV void rows(int64_t j, int64_t S) {
    const int64_t cols = W.spec.cols, groups = cols / 32;  // groups even
    const uint8_t* row[R];
    gemv_row_starts<R>(W, L, j, S, groups * static_cast<int64_t>(sizeof(BlockQ4_0)), row);
    __m512 acc[R][2 * NT];
    for (int r = 0; r < R; r++)
      for (int i = 0; i < 2 * NT; i++) acc[r][i] = _mm512_setzero_ps();
    q4_blocks_with_scales<2>(row, groups, [&](int64_t g, const float* d) LK_BV { q4_pair<NT, R>(row, g, d, x, cols, acc); });
    store_rows<NT, R>(acc, y + j, S, ldy);
  }
};

template <int NT>
constexpr int kStreams = NT == 1 ? 4 : NT == 2 ? 2 : 1;

template <int NT>
LK_B void gemv_nt(const QuantWeight& W, const uint16_t* x, int64_t j0, int64_t j1, float* y, int64_t ldy) {
  const QuantSpec& s = W.spec;
  const QuantLayout L = quant_layout(s);
  constexpr int R = kStreams<NT>;
  if (s.format == QuantFormat::Q4_0) {
    gemv_row_streams<R>(j0, j1, Q4Rows<NT>{W, L, x, y, ldy});
  } else {
    std::vector<float> amax(s.double_quant ? static_cast<size_t>(R * (s.cols / s.block)) : 0);
    const __m512 code = _mm512_loadu_ps(s.format == QuantFormat::NF4 ? kNF4Code : kFP4Code);
    gemv_row_streams<R>(j0, j1, Nf4Rows<NT>{W, L, code, x, y, ldy, amax});
  }
}

void gemv(const QuantWeight& W, const void* xv, int64_t n, int64_t j0, int64_t j1, float* y, int64_t ldy, bool) {
  const uint16_t* x = static_cast<const uint16_t*>(xv);
  with_token_count(n, [&](auto nt) { gemv_nt<decltype(nt)::value>(W, x, j0, j1, y, ldy); });
}

}  // namespace

QuantGemv quant_gemv_avx512bf16(const QuantSpec& s) {
  QuantGemv g;
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") || !__builtin_cpu_supports("avx512bf16"))
    return g;
  if ((s.format == QuantFormat::NF4 || s.format == QuantFormat::FP4) && s.block >= 64) {
    g.order = GemvXOrder::Words128;
    g.cols = s.cols;
  } else if (s.format == QuantFormat::Q4_0 && s.cols % 64 == 0 && __builtin_cpu_supports("avx512vbmi")) {
    g.order = GemvXOrder::Q4Words64;
  } else {
    return g;
  }
  g.fn = gemv;
  g.x_bf16 = true;
  return g;
}

}  // namespace cpu
}  // namespace lorakit
#else
#include "quant_gemv.h"
namespace lorakit {
namespace cpu {
QuantGemv quant_gemv_avx512bf16(const QuantSpec&) { return {}; }
}  // namespace cpu
}  // namespace lorakit
#endif
