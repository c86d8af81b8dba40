// Multi-row GEMV (AVX2 + FMA), W read in place: out[i·ldo + j] += Σ_k x[i·ldx + k]·W[j·ldw + k] for
// 2 ≤ m ≤ 8 rows of x (the AVX2 table's gemv_rows_max; peft: F.linear(x, W) on a handful of tokens).
// The AVX-512 kernel's scheme (gemv_rows_avx512.cc) with 16 ymm registers: RB = 2 rows of W × up to
// 6 rows of x (gemv_rows_groups.h) in 12 accumulators, one pass over K per x group (the W block in
// L2 after the first). Lane l of an accumulator sums k ≡ l (mod 8) in order, then a fixed reduction, whatever the
// block shapes: row i's result does not depend on the other rows.
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include <algorithm>
#include "gemv_rows_groups.h"
#include "hsum_avx2.h"

#define LK_GV2 __attribute__((target("avx2,fma,f16c")))

namespace lorakit {
namespace {

constexpr int RB = 2;

template <DType T>
LK_GV2 inline __m256 load_w(const void* w, int64_t off) {
  if constexpr (T == DType::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(w) + off);
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + off));
    if constexpr (T == DType::BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    else return _mm256_cvtph_ps(h);
  }
}

// Lanes [0, n) of a vector from element off (n < 8), the rest zero, without reading past element
// off + n − 1.
template <DType T>
LK_GV2 inline __m256 load_w_part(const void* w, int64_t off, __m256i mask, int64_t n) {
  if constexpr (T == DType::F32) {
    return _mm256_maskload_ps(static_cast<const float*>(w) + off, mask);
  } else {
    alignas(32) float t[8] = {};
    for (int64_t q = 0; q < n; q++) t[q] = load_f32(w, T, off + q);
    return _mm256_load_ps(t);
  }
}

template <DType T, int R, int M>
LK_GV2 __attribute__((noinline)) void block(int64_t k, const float* x, int64_t ldx, const void* w, int64_t ldw, float* out, int64_t ldo) {
  __m256 acc[R][M];
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
#pragma GCC unroll 8
    for (int i = 0; i < M; i++) acc[r][i] = _mm256_setzero_ps();
  int64_t p = 0;
  for (; p + 8 <= k; p += 8) {
    __m256 wv[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) wv[r] = load_w<T>(w, r * ldw + p);
#pragma GCC unroll 8
    for (int i = 0; i < M; i++) {
      const __m256 xv = _mm256_loadu_ps(x + i * ldx + p);
#pragma GCC unroll 8
      for (int r = 0; r < R; r++) acc[r][i] = _mm256_fmadd_ps(wv[r], xv, acc[r][i]);
    }
  }
  if (p < k) {  // k's last partial vector: the lanes past k add 0·0
    const int64_t n = k - p;
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 wv[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) wv[r] = load_w_part<T>(w, r * ldw + p, mask, n);
#pragma GCC unroll 8
    for (int i = 0; i < M; i++) {
      const __m256 xv = _mm256_maskload_ps(x + i * ldx + p, mask);
#pragma GCC unroll 8
      for (int r = 0; r < R; r++) acc[r][i] = _mm256_fmadd_ps(wv[r], xv, acc[r][i]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
#pragma GCC unroll 8
    for (int i = 0; i < M; i++) out[i * ldo + r] += hsum_avx2(acc[r][i]);
}

template <DType T>
LK_GV2 void rows_t(int64_t m, int64_t k, const float* x, int64_t ldx, const void* w, int64_t ldw, int64_t rows,
                   float* out, int64_t ldo) {
  constexpr int64_t es = T == DType::F32 ? 4 : 2;
  const char* wb = static_cast<const char*>(w);
  for_each_register_block<RB>(m, rows, [&](int64_t i0, int64_t j, auto r, auto size) {
    block<T, decltype(r)::value, decltype(size)::value>(k, x + i0 * ldx, ldx, wb + j * ldw * es, ldw, out + i0 * ldo + j,
                                                        ldo);
  });
}

}  // namespace

LK_GV2 void gemv_rows_avx2(int64_t m, int64_t k, const float* x, int64_t ldx, const void* w, DType wt, int64_t ldw,
                           int64_t rows, float* out, int64_t ldo) {
  switch (wt) {
    case DType::F32: return rows_t<DType::F32>(m, k, x, ldx, w, ldw, rows, out, ldo);
    case DType::BF16: return rows_t<DType::BF16>(m, k, x, ldx, w, ldw, rows, out, ldo);
    case DType::F16: return rows_t<DType::F16>(m, k, x, ldx, w, ldw, rows, out, ldo);
    default: return gemv_rows_generic(m, k, x, ldx, w, wt, ldw, rows, out, ldo);
  }
}

}  // namespace lorakit
#endif
