// Multi-row GEMV (AVX-512), W read in place: out[i·ldo + j] += Σ_k x[i·ldx + k]·W[j·ldw + k] for a
// few rows of x (1 ≤ m ≤ GEMV_ROWS_MAX, peft: F.linear(x, W) on a handful of tokens). The packed
// GEMM would repack W on every call and run its tile at a few rows; here a block of RB rows of W
// meets up to 6 rows of x (gemv_rows_groups.h) in RB·6 zmm accumulators (16 lanes of k each, summed
// at the end), so each widened W vector feeds 6 FMAs; the x groups after the first find the W block in L2.
// Numerics: f32 products and accumulation; lane l of an accumulator sums k ≡ l (mod 16) in order of
// k, then a fixed reduction: the same for every block shape, so row i's result does not depend on
// which other rows are in the batch. The bf16 kernel (vdpbf16ps, x and W both bf16) adds two exact
// products per lane per step, like the GEMM's bf16 blocks (bf16 denormal inputs count as zero).
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <algorithm>
#include "gemv_rows_groups.h"

#define LK_GV512 __attribute__((target("avx512f,avx512vl,avx512bw,avx2,fma,f16c")))
#define LK_GVBF16 __attribute__((target("avx512f,avx512vl,avx512bw,avx512bf16,avx2,fma,f16c")))

namespace lorakit {
namespace {

// Measured in a standalone harness on the 2-vCPU Zen 5 EPYC (d 4096, 2 threads; noisy, shared):
// 4 × 6 beat 6 × 4 and 8 × 3 by 10-60% at m ≥ 8; cutting K in chunks that keep a W block in L1
// (256-2048 steps, accumulators parked between chunks) was 5-45% slower than one pass with the
// block in L2; prefetching W 1 KiB ahead gained 0-10%.
constexpr int RB = 4;              // W rows per register block
constexpr int64_t PF_BYTES = 1024;  // software prefetch distance along a W row

// Sixteen W values from element `off`, widened to f32; lanes at or past `mk` read as zero.
template <DType T>
LK_GV512 inline __m512 load_w(const void* w, int64_t off, __mmask16 mk) {
  if constexpr (T == DType::F32) {
    return _mm512_maskz_loadu_ps(mk, static_cast<const float*>(w) + off);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(mk, static_cast<const uint16_t*>(w) + off);
    if constexpr (T == DType::BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    else return _mm512_cvtph_ps(h);
  }
}
template <DType T>
LK_GV512 inline __m512 load_w(const void* w, int64_t off) {
  if constexpr (T == DType::F32) {
    return _mm512_loadu_ps(static_cast<const float*>(w) + off);
  } else {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(w) + off));
    if constexpr (T == DType::BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    else return _mm512_cvtph_ps(h);
  }
}

// R rows of W × M rows of x over all of k; out[i·ldo + r] += each accumulator's lane sum.
template <DType T, int R, int M>
LK_GV512 __attribute__((noinline)) void block(int64_t k, const float* x, int64_t ldx, const void* w, int64_t ldw, float* out, int64_t ldo) {
  __m512 acc[R][M];
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
#pragma GCC unroll 8
    for (int i = 0; i < M; i++) acc[r][i] = _mm512_setzero_ps();
  int64_t p = 0;
  for (; p + 16 <= k; p += 16) {
    __m512 wv[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
      _mm_prefetch(static_cast<const char*>(w) + (r * ldw + p) * (T == DType::F32 ? 4 : 2) + PF_BYTES, _MM_HINT_T0);
      wv[r] = load_w<T>(w, r * ldw + p);
    }
#pragma GCC unroll 8
    for (int i = 0; i < M; i++) {
      const __m512 xv = _mm512_loadu_ps(x + i * ldx + p);
#pragma GCC unroll 8
      for (int r = 0; r < R; r++) acc[r][i] = _mm512_fmadd_ps(wv[r], xv, acc[r][i]);
    }
  }
  if (p < k) {  // k's last partial vector: masked loads, the lanes past k add 0·0
    const __mmask16 mk = static_cast<__mmask16>((1u << (k - p)) - 1);
    __m512 wv[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) wv[r] = load_w<T>(w, r * ldw + p, mk);
#pragma GCC unroll 8
    for (int i = 0; i < M; i++) {
      const __m512 xv = _mm512_maskz_loadu_ps(mk, x + i * ldx + p);
#pragma GCC unroll 8
      for (int r = 0; r < R; r++) acc[r][i] = _mm512_fmadd_ps(wv[r], xv, acc[r][i]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
#pragma GCC unroll 8
    for (int i = 0; i < M; i++) out[i * ldo + r] += _mm512_reduce_add_ps(acc[r][i]);
}

template <DType T>
LK_GV512 void rows_t(int64_t m, int64_t k, const float* x, int64_t ldx, const void* w, int64_t ldw, int64_t rows,
                     float* out, int64_t ldo) {
  constexpr int64_t es = T == DType::F32 ? 4 : 2;
  const char* wb = static_cast<const char*>(w);
  for_each_register_block<RB>(m, rows, [&](int64_t i0, int64_t j, auto r, auto size) {
    block<T, decltype(r)::value, decltype(size)::value>(k, x + i0 * ldx, ldx, wb + j * ldw * es, ldw, out + i0 * ldo + j,
                                                        ldo);
  });
}

// x and W both bf16, two products per lane per vdpbf16ps: the same blocking over 32-step vectors.
template <int R, int M>
LK_GVBF16 __attribute__((noinline)) void block_dp(int64_t k, const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t ldw, float* out, int64_t ldo) {
  __m512 acc[R][M];
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
#pragma GCC unroll 8
    for (int i = 0; i < M; i++) acc[r][i] = _mm512_setzero_ps();
  int64_t p = 0;
  for (; p + 32 <= k; p += 32) {
    __m512bh wv[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
      _mm_prefetch(reinterpret_cast<const char*>(w + r * ldw + p) + PF_BYTES, _MM_HINT_T0);
      wv[r] = (__m512bh)_mm512_loadu_si512(w + r * ldw + p);
    }
#pragma GCC unroll 8
    for (int i = 0; i < M; i++) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + i * ldx + p);
#pragma GCC unroll 8
      for (int r = 0; r < R; r++) acc[r][i] = _mm512_dpbf16_ps(acc[r][i], wv[r], xv);
    }
  }
  if (p < k) {
    const __mmask32 mk = static_cast<__mmask32>((uint64_t(1) << (k - p)) - 1);
    __m512bh wv[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) wv[r] = (__m512bh)_mm512_maskz_loadu_epi16(mk, w + r * ldw + p);
#pragma GCC unroll 8
    for (int i = 0; i < M; i++) {
      const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(mk, x + i * ldx + p);
#pragma GCC unroll 8
      for (int r = 0; r < R; r++) acc[r][i] = _mm512_dpbf16_ps(acc[r][i], wv[r], xv);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
#pragma GCC unroll 8
    for (int i = 0; i < M; i++) out[i * ldo + r] += _mm512_reduce_add_ps(acc[r][i]);
}


}  // namespace

LK_GV512 void gemv_rows_avx512(int64_t m, int64_t k, const float* x, int64_t ldx, const void* w, DType wt, int64_t ldw,
                               int64_t rows, float* out, int64_t ldo) {
  switch (wt) {
    case DType::F32: return rows_t<DType::F32>(m, k, x, ldx, w, ldw, rows, out, ldo);
    case DType::BF16: return rows_t<DType::BF16>(m, k, x, ldx, w, ldw, rows, out, ldo);
    case DType::F16: return rows_t<DType::F16>(m, k, x, ldx, w, ldw, rows, out, ldo);
    default: return gemv_rows_generic(m, k, x, ldx, w, wt, ldw, rows, out, ldo);
  }
}

LK_GVBF16 void gemv_rows_bf16_avx512bf16(int64_t m, int64_t k, const uint16_t* x, int64_t ldx, const uint16_t* w,
                                         int64_t ldw, int64_t rows, float* out, int64_t ldo) {
  for_each_register_block<RB>(m, rows, [&](int64_t i0, int64_t j, auto r, auto size) {
    block_dp<decltype(r)::value, decltype(size)::value>(k, x + i0 * ldx, ldx, w + j * ldw, ldw, out + i0 * ldo + j,
                                                        ldo);
  });
}

}  // namespace lorakit
#endif
