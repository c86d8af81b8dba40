// The AVX2 path's q4_k / q6_k decode GEMV, included by quant_gemv_avx2.cc inside its target region
// (compiled with fp-contract off, so each product and difference rounds as in the scalar decoder).
// Values are the scalar decoder's (ggml_blocks.cc deq_k / deq_q6_k): (d·sc)·q − dmin·m for q4_k,
// (d·sc)·(q − 32) for q6_k. R rows advance together (gemv_row_streams: two at n = 1, as the
// path's other 4-bit kernels; 16 ymm registers), rows innermost so that consecutive FMAs go to
// different accumulators; bf16: each decoded vector rounded to bf16 first, as the portable path
// (quant_linear.cc) rounds its decoded rows. The AVX-512 path has its own (quant_gemv_kquant_avx512.h).
// At n = 1 on a Zen 4 (LORAKIT_CPU_PATH=avx2): q6_k 1.85x and q4_k 1.1x the one-row-at-a-time loop
// this replaced (bench/results/quant-kquant-gemv-avx2-2026-12-07-zen4.txt).
#pragma once
#include <immintrin.h>
#include <cstring>
#include "../core/dtype.h"
#include "../core/ggml_blocks.h"
#include "hsum_avx2.h"
#include "quant.h"
#include "quant_gemv.h"
#include "quant_q6k_codes.h"

namespace lorakit {
namespace cpu {
namespace {
namespace kq {

// Round to nearest even bf16 as dtype.h f32_to_bf16 (NaN kept quiet where quiet_nan: a file's d may
// be inf or NaN), kept as f32.
inline __m256 round_bf16(__m256 v, bool quiet_nan) {
  const __m256i u = _mm256_castps_si256(v), hi = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  const __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1))));
  if (!quiet_nan) return _mm256_castsi256_ps(_mm256_and_si256(r, hi));
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_castsi256_ps(_mm256_and_si256(_mm256_blendv_epi8(r, _mm256_or_si256(u, _mm256_set1_epi32(0x400000)), nan), hi));
}

// mode: 0 f32, 1 bf16 (finite scales), 2 bf16 with NaN kept quiet.
inline __m256 rounded(__m256 v, int mode) { return mode == 0 ? v : round_bf16(v, mode == 2); }

// The accumulators: R rows × 2·NT vectors.
template <int R, int NT>
inline void zero_acc(__m256 (&acc)[R][2 * NT]) {
  for (int r = 0; r < R; r++)
    for (int i = 0; i < 2 * NT; i++) acc[r][i] = _mm256_setzero_ps();
}
template <int R, int NT>
inline void store_acc(const __m256 (&acc)[R][2 * NT], float* y, int64_t j, int64_t S, int64_t ldy) {
  for (int r = 0; r < R; r++)
    for (int i = 0; i < NT; i++) y[j + r * S + i * ldy] = hsum_avx2(_mm256_add_ps(acc[r][2 * i], acc[r][2 * i + 1]));
}
// Accumulates w0 (values off .. off + 7) and w1 (off + 8 .. off + 15) against NT token rows.
template <int NT>
inline void fma16(__m256 w0, __m256 w1, const float* x, int64_t ldx, __m256* acc) {
  for (int t = 0; t < NT; t++) {
    acc[2 * t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + t * ldx), acc[2 * t]);
    acc[2 * t + 1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + t * ldx + 8), acc[2 * t + 1]);
  }
}

// q4_k (ggml super-blocks of 256: f16 d, dmin, 12 bytes of 6-bit scales and mins, 128 bytes of
// codes). Per super-block and row the 8 scales and mins are unpacked four at a time in 32-bit words
// (as ggml's kernels do) and multiplied by d and dmin; then 16 code bytes give 16 values of
// sub-block 2i (low nibbles) and 16 of 2i + 1 (high), each 8 widened, converted, a·q − b.
template <int NT>
struct Q4KRows : GemvRowsArgs {
  template <int R>
  void rows(int64_t j, int64_t S) {
    const int64_t cols = W.spec.cols, nb = cols / kQK_K;
    const uint8_t* row[R];
    row_starts<R>(j, S, nb * static_cast<int64_t>(sizeof(BlockQ4_K)), row);
    __m256 acc[R][2 * NT];
    zero_acc<R, NT>(acc);
    alignas(32) float ab[R][16];  // per row: d·sc_0..7, dmin·m_0..7
    int mode[R];
    const __m128i m4 = _mm_set1_epi8(0x0f);
    for (int64_t b = 0; b < nb; b++) {
      const float* xb = x + b * kQK_K;
      for (int r = 0; r < R; r++) {
        const uint8_t* p = row[r] + b * sizeof(BlockQ4_K);
        for (int l = 0; l < 3; l++) _mm_prefetch(reinterpret_cast<const char*>(p) + kGemvPrefetchBytes + 64 * l, _MM_HINT_T0);
        alignas(16) uint8_t sm[16];  // the 8 scales, then the 8 mins
        ggml_scales_mins_k4(p + 4, sm);
        uint16_t h[2];
        std::memcpy(h, p, 4);
        const __m128i smv = _mm_load_si128(reinterpret_cast<const __m128i*>(sm));
        _mm256_store_ps(ab[r], _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(h[0])), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(smv))));
        _mm256_store_ps(ab[r] + 8, _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(h[1])), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(smv, 8)))));
        mode[r] = kquant_round_mode(bf16, h[0], h[1]);
      }
      for (int i = 0; i < 4; i++)
        for (int hh = 0; hh < 2; hh++)
          for (int r = 0; r < R; r++) {
            const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row[r] + b * sizeof(BlockQ4_K) + 16 + 32 * i + 16 * hh));
            const __m128i ql = _mm_and_si128(q, m4), qh = _mm_and_si128(_mm_srli_epi16(q, 4), m4);
            const __m256 al = _mm256_set1_ps(ab[r][2 * i]), bl = _mm256_set1_ps(ab[r][8 + 2 * i]);
            const __m256 ah = _mm256_set1_ps(ab[r][2 * i + 1]), bh = _mm256_set1_ps(ab[r][8 + 2 * i + 1]);
            auto val = [&](__m128i v8, __m256 a, __m256 bb) {
              return rounded(_mm256_sub_ps(_mm256_mul_ps(a, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v8))), bb), mode[r]);
            };
            fma16<NT>(val(ql, al, bl), val(_mm_srli_si128(ql, 8), al, bl), xb + 64 * i + 16 * hh, cols, acc[r]);
            fma16<NT>(val(qh, ah, bh), val(_mm_srli_si128(qh, 8), ah, bh), xb + 64 * i + 32 + 16 * hh, cols, acc[r]);
          }
    }
    store_acc<R, NT>(acc, y, j, S, ldy);
  }
};

// q6_k (ggml super-blocks of 256: 128 bytes of low 4 bits, 64 of high 2 bits, 16 int8 scales, f16
// d). Per super-block and row the 6-bit codes are assembled 32 at a time (16-bit shifts place the
// high bits; bits shifted across a byte are the ones the masks clear), less 32, into a buffer, and
// d·sc of each 16-value group computed; then per 8 values a sign-extending load, a conversion and
// the multiply.
template <int NT>
struct Q6KRows : GemvRowsArgs {
  template <int R>
  void rows(int64_t j, int64_t S) {
    const int64_t cols = W.spec.cols, nb = cols / kQK_K;
    const uint8_t* row[R];
    row_starts<R>(j, S, nb * static_cast<int64_t>(sizeof(BlockQ6_K)), row);
    __m256 acc[R][2 * NT];
    zero_acc<R, NT>(acc);
    alignas(32) int8_t q[R][kQK_K];  // per row: the codes less 32, in value order
    alignas(32) float a[R][16];      // per row: d·sc per 16-value group
    int mode[R];
    for (int64_t b = 0; b < nb; b++) {
      const float* xb = x + b * kQK_K;
      for (int r = 0; r < R; r++) {
        const uint8_t* p = row[r] + b * sizeof(BlockQ6_K);
        for (int l = 0; l < 4; l++) _mm_prefetch(reinterpret_cast<const char*>(p) + kGemvPrefetchBytes + 64 * l, _MM_HINT_T0);
        const BlockQ6_K* blk = reinterpret_cast<const BlockQ6_K*>(p);
        q6k_codes(blk, q[r]);
        const float d = _cvtsh_ss(blk->d);
        const __m128i sc = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk->scales));
        _mm256_store_ps(a[r], _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc))));
        _mm256_store_ps(a[r] + 8, _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(sc, 8)))));
        mode[r] = kquant_round_mode(bf16, blk->d);
      }
      for (int g = 0; g < 16; g++)
        for (int r = 0; r < R; r++) {
          const __m256 s = _mm256_set1_ps(a[r][g]);
          const __m128i v = _mm_load_si128(reinterpret_cast<const __m128i*>(q[r] + 16 * g));
          const __m256 w0 = rounded(_mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v))), mode[r]);
          const __m256 w1 = rounded(_mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v, 8)))), mode[r]);
          fma16<NT>(w0, w1, xb + 16 * g, cols, acc[r]);
        }
    }
    store_acc<R, NT>(acc, y, j, S, ldy);
  }
};

// deq(W)[row, c0 .. c0 + len) of a q4_k W (the packed GEMM's W panels), c0 and len multiples of 16:
// (d·sc)·q − dmin·m as in Q4KRows, 16 values (one half of a sub-block's 32 code bytes) at a time.
inline void decode_q4k_segment(const QuantWeight& W, int64_t row, int64_t c0, int64_t len, float* out) {
  const QuantLayout L = quant_layout(W.spec);
  const int64_t nb = W.spec.cols / kQK_K;
  const int64_t row_bytes = nb * static_cast<int64_t>(sizeof(BlockQ4_K));
  const uint8_t* base = W.data + L.data_off + row * row_bytes;
  // The GEMM's packing decodes the same range of the next row next: its bytes are fetched ahead
  // (without it, the loads of W stalled this decoder more than the scalar one it replaces; the same
  // for q6_k, or on the AVX-512 path, measured no gain).
  if (row + 1 < W.spec.rows) {
    const uint8_t* next = base + row_bytes + (c0 / kQK_K) * static_cast<int64_t>(sizeof(BlockQ4_K));
    const int64_t bytes = ((c0 + len + kQK_K - 1) / kQK_K - c0 / kQK_K) * static_cast<int64_t>(sizeof(BlockQ4_K));
    for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch(reinterpret_cast<const char*>(next + o), _MM_HINT_T0);
  }
  Q4KScales k;
  for (int64_t c = c0; c < c0 + len; c += 16) {
    const uint8_t* p = k.at(base, c / kQK_K);
    const int sb = static_cast<int>((c % kQK_K) / 32), hh = static_cast<int>((c % 32) / 16);  // sub-block, its half
    const __m256 a = _mm256_set1_ps(k.d * k.sm[sb]), m = _mm256_set1_ps(k.dmin * k.sm[8 + sb]);
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 + 32 * (sb / 2) + 16 * hh));
    const __m128i v = _mm_and_si128(sb & 1 ? _mm_srli_epi16(q, 4) : q, _mm_set1_epi8(0x0f));  // odd: high nibbles
    const __m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)), f1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(v, 8)));
    _mm256_storeu_ps(out + (c - c0), _mm256_sub_ps(_mm256_mul_ps(a, f0), m));
    _mm256_storeu_ps(out + (c - c0) + 8, _mm256_sub_ps(_mm256_mul_ps(a, f1), m));
  }
}

// deq(W)[row, c0 .. c0 + len) of a q6_k W (the packed GEMM's W panels), c0 and len multiples of 16
// (Q6KRows' products).
inline void decode_q6k_segment(const QuantWeight& W, int64_t row, int64_t c0, int64_t len, float* out) {
  const QuantLayout L = quant_layout(W.spec);
  const int64_t nb = W.spec.cols / kQK_K;
  const uint8_t* base = W.data + L.data_off + row * nb * static_cast<int64_t>(sizeof(BlockQ6_K));
  Q6KCodes k;
  for (int64_t c = c0; c < c0 + len; c += 16) {
    const BlockQ6_K* blk = k.at(base, c / kQK_K);
    const int g = static_cast<int>((c % kQK_K) / 16);
    const __m256 a = _mm256_set1_ps(_cvtsh_ss(blk->d) * static_cast<float>(blk->scales[g]));
    for (int h = 0; h < 2; h++) {
      const __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(k.q + 16 * g + 8 * h))));
      _mm256_storeu_ps(out + (c - c0) + 8 * h, _mm256_mul_ps(a, f));
    }
  }
}

template <int NT>
void gemv_nt(const QuantWeight& W, const float* x, int64_t j0, int64_t j1, float* y, int64_t ldy, bool bf16) {
  const QuantLayout L = quant_layout(W.spec);
  constexpr int R = NT == 1 ? 2 : 1;  // read streams per thread, as the path's other 4-bit kernels
  if (W.spec.format == QuantFormat::Q4_K) gemv_row_streams<R>(j0, j1, Q4KRows<NT>{{W, L, x, y, ldy, bf16}});
  else gemv_row_streams<R>(j0, j1, Q6KRows<NT>{{W, L, x, y, ldy, bf16}});
}

void gemv(const QuantWeight& W, const void* xv, int64_t n, int64_t j0, int64_t j1, float* y, int64_t ldy, bool bf16) {
  const float* x = static_cast<const float*>(xv);
  with_token_count(n, [&](auto nt) { gemv_nt<decltype(nt)::value>(W, x, j0, j1, y, ldy, bf16); });
}

}  // namespace kq
}  // namespace
}  // namespace cpu
}  // namespace lorakit
