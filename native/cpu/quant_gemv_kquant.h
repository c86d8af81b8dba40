// The AVX2 path's q4_k / q6_k decode GEMV, included by quant_gemv_avx2.cc inside its target region
// (the AVX-512 path has its own k-quant kernels, quant_gemv_kquant_avx512.h, which ran 2.0-2.7x an
// AVX-512 build of this one at n = 1 on a Zen 4). Each 256-value super-block is decoded
// in registers with the scalar decoder's products (ggml_blocks.cc, ggml's dequantize_row_q4_K /
// q6_K: d·sc·q − dmin·m and (d·sc)·(q − 32), mul and sub rounded apart, as there), each vector
// going straight into every token's FMA; bf16: each vector rounded to bf16 first (in registers), as
// the portable path (quant_linear.cc) rounds its decoded rows.
#pragma once
#include <immintrin.h>
#include <cstring>
#include "../core/dtype.h"
#include "../core/ggml_blocks.h"
#include "hsum_avx2.h"
#include "quant.h"
#include "quant_gemv.h"

namespace lorakit {
namespace cpu {
namespace {
namespace kq {

// One f32 vector (AVX2) and the few operations the kernel needs, as intrinsics.
using vf = __m256;
constexpr int kLanes = 8;
inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline float vsum(vf v) { return hsum_avx2(v); }
inline vf vround_bf16(vf v) {  // as dtype.h f32_to_bf16 (round to nearest even; NaN kept quiet)
  const __m256i u = _mm256_castps_si256(v), hi = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  const __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1))));
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_castsi256_ps(_mm256_and_si256(_mm256_blendv_epi8(r, _mm256_or_si256(u, _mm256_set1_epi32(0x400000)), nan), hi));
}
template <class Sink>
inline void put_q4(int off, __m128i q, float a, float b, Sink&& sink) {
  const __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b);
  for (int h = 0; h < 2; h++, q = _mm_srli_si128(q, 8))
    sink(off + 8 * h, _mm256_sub_ps(_mm256_mul_ps(va, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q))), vb));
}
template <class Sink>
inline void put_q6(int off, __m128i q, float a, Sink&& sink) {
  const __m256 va = _mm256_set1_ps(a), c = _mm256_set1_ps(32.f);
  for (int h = 0; h < 2; h++, q = _mm_srli_si128(q, 8))
    sink(off + 8 * h, _mm256_mul_ps(va, _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q)), c)));
}

inline __m128i ld16(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
inline __m128i bytes(int v) { return _mm_set1_epi8(static_cast<char>(v)); }

// 256 values: four 64-value halves, low nibbles of 32 bytes then their high nibbles.
template <class Sink>
inline void deq_q4_k(const uint8_t* blk, Sink&& w) {
  BlockQ4_K b;
  std::memcpy(&b, blk, sizeof b);
  const float d = f16_to_f32(b.d), dmin = f16_to_f32(b.dmin);
  for (int j = 0; j < 4; j++) {
    uint8_t sc, m;
    ggml_scale_min_k4(2 * j, b.scales, sc, m);
    const float d1 = d * sc, m1 = dmin * m;
    ggml_scale_min_k4(2 * j + 1, b.scales, sc, m);
    const float d2 = d * sc, m2 = dmin * m;
    for (int h = 0; h < 2; h++) {
      const __m128i q = ld16(b.qs + 32 * j + 16 * h);
      put_q4(64 * j + 16 * h, _mm_and_si128(q, bytes(15)), d1, m1, w);
      put_q4(64 * j + 32 + 16 * h, _mm_and_si128(_mm_srli_epi16(q, 4), bytes(15)), d2, m2, w);
    }
  }
}

// 256 values: two 128-value halves; 4 low bits from ql, 2 high bits from qh, 16-value scales.
// 16-bit shifts move bits across bytes only into positions the byte masks clear.
template <class Sink>
inline void deq_q6_k(const uint8_t* blk, Sink&& w) {
  BlockQ6_K b;
  std::memcpy(&b, blk, sizeof b);
  const float d = f16_to_f32(b.d);
  const __m128i m4 = bytes(15), m30 = bytes(0x30);
  for (int n = 0; n < 2; n++) {
    const uint8_t* ql = b.ql + 64 * n;
    const uint8_t* qh = b.qh + 32 * n;
    const int8_t* sc = b.scales + 8 * n;
    const int y = 128 * n;
    for (int h = 0; h < 2; h++) {  // l = 16h .. 16h + 15: scale index h (+2, +4, +6)
      const __m128i a = ld16(ql + 16 * h), c = ld16(ql + 32 + 16 * h), e = ld16(qh + 16 * h);
      const __m128i ah = _mm_and_si128(_mm_srli_epi16(a, 4), m4), ch = _mm_and_si128(_mm_srli_epi16(c, 4), m4);
      const __m128i q1 = _mm_or_si128(_mm_and_si128(a, m4), _mm_and_si128(_mm_slli_epi16(e, 4), m30));  // (e & 3) << 4
      const __m128i q2 = _mm_or_si128(_mm_and_si128(c, m4), _mm_and_si128(_mm_slli_epi16(e, 2), m30));  // ((e >> 2) & 3) << 4
      const __m128i q3 = _mm_or_si128(ah, _mm_and_si128(e, m30));                                       // ((e >> 4) & 3) << 4
      const __m128i q4 = _mm_or_si128(ch, _mm_and_si128(_mm_srli_epi16(e, 2), m30));                  // ((e >> 6) & 3) << 4
      put_q6(y + 16 * h, q1, d * sc[h], w);
      put_q6(y + 32 + 16 * h, q2, d * sc[h + 2], w);
      put_q6(y + 64 + 16 * h, q3, d * sc[h + 4], w);
      put_q6(y + 96 + 16 * h, q4, d * sc[h + 6], w);
    }
  }
}

template <int NT>
void gemv_nt(const QuantWeight& W, const float* x, int64_t j0, int64_t j1, float* y, int64_t ldy, bool bf16) {
  const bool q4 = W.spec.format == QuantFormat::Q4_K;
  const int64_t cols = W.spec.cols, nb = cols / kQK_K;
  const size_t bytes = q4 ? sizeof(BlockQ4_K) : sizeof(BlockQ6_K);
  const uint8_t* data = W.data + quant_layout(W.spec).data_off;
  for (int64_t j = j0; j < j1; j++) {
    vf acc[NT][2];
    for (int i = 0; i < NT; i++) acc[i][0] = acc[i][1] = vzero();
    const uint8_t* row = data + j * nb * bytes;
    for (int64_t b = 0; b < nb; b++) {
      const float* xb = x + b * kQK_K;
      // Each decoded vector goes straight into every token's FMA; bf16: rounded first, as the
      // portable path rounds its decoded rows.
      auto fma_all = [&](int off, vf v) {
        if (bf16) v = vround_bf16(v);
        for (int i = 0; i < NT; i++) acc[i][(off / kLanes) & 1] = vfma(v, vload(xb + i * cols + off), acc[i][(off / kLanes) & 1]);
      };
      if (q4) deq_q4_k(row + b * bytes, fma_all);
      else deq_q6_k(row + b * bytes, fma_all);
    }
    for (int i = 0; i < NT; i++) y[i * ldy + j] = vsum(acc[i][0]) + vsum(acc[i][1]);
  }
}

void gemv(const QuantWeight& W, const void* xv, int64_t n, int64_t j0, int64_t j1, float* y, int64_t ldy, bool bf16) {
  const float* x = static_cast<const float*>(xv);
  with_token_count(n, [&](auto nt) { gemv_nt<decltype(nt)::value>(W, x, j0, j1, y, ldy, bf16); });
}

}  // namespace kq
}  // namespace
}  // namespace cpu
}  // namespace lorakit
