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

// One vector step of a register block, per kernel: K values of k from W (W_BYTES each) and from x,
// multiplied and added into f32 lanes; w/x(…, mask) read only the lanes of a mask(n) (the rest as 0).
// f32: W of dtype T widened (bf16: a shift; f16: F16C), one FMA per lane.
template <DType T>
struct F32Step {
  static constexpr int64_t K = 16, W_BYTES = T == DType::F32 ? 4 : 2;
  using X = float;
  using V = __m512;
  LK_GV512 static __mmask16 mask(int64_t n) { return static_cast<__mmask16>((1u << n) - 1); }
  LK_GV512 static __m512 widen(__m256i h) {
    if constexpr (T == DType::BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    else return _mm512_cvtph_ps(h);
  }
  LK_GV512 static __m512 w(const void* w, int64_t off) {
    if constexpr (T == DType::F32) return _mm512_loadu_ps(static_cast<const float*>(w) + off);
    else return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(w) + off)));
  }
  LK_GV512 static __m512 w(const void* w, int64_t off, __mmask16 mk) {
    if constexpr (T == DType::F32) return _mm512_maskz_loadu_ps(mk, static_cast<const float*>(w) + off);
    else return widen(_mm256_maskz_loadu_epi16(mk, static_cast<const uint16_t*>(w) + off));
  }
  LK_GV512 static __m512 x(const float* x) { return _mm512_loadu_ps(x); }
  LK_GV512 static __m512 x(const float* x, __mmask16 mk) { return _mm512_maskz_loadu_ps(mk, x); }
  LK_GV512 static __m512 madd(__m512 acc, __m512 w, __m512 x) { return _mm512_fmadd_ps(w, x, acc); }
};
// x and W both bf16: two exact products per lane per vdpbf16ps.
struct Bf16DotStep {
  static constexpr int64_t K = 32, W_BYTES = 2;
  using X = uint16_t;
  using V = __m512bh;
  LK_GVBF16 static __mmask32 mask(int64_t n) { return static_cast<__mmask32>((uint64_t(1) << n) - 1); }
  LK_GVBF16 static __m512bh w(const void* w, int64_t off) { return x(static_cast<const uint16_t*>(w) + off); }
  LK_GVBF16 static __m512bh w(const void* w, int64_t off, __mmask32 mk) { return x(static_cast<const uint16_t*>(w) + off, mk); }
  LK_GVBF16 static __m512bh x(const uint16_t* x) { return (__m512bh)_mm512_loadu_si512(x); }
  LK_GVBF16 static __m512bh x(const uint16_t* x, __mmask32 mk) { return (__m512bh)_mm512_maskz_loadu_epi16(mk, x); }
  LK_GVBF16 static __m512 madd(__m512 acc, __m512bh w, __m512bh x) { return _mm512_dpbf16_ps(acc, w, x); }
};

// R rows of W × M rows of x over all of k in steps of S; out[i·ldo + r] += each accumulator's lane
// sum. Always inlined into block_f32 / block_dp, whose targets let S's functions inline in turn.
template <class S, int R, int M>
LK_GV512 __attribute__((always_inline)) inline void block(int64_t k, const typename S::X* x, int64_t ldx, const void* w,
                                                          int64_t ldw, float* out, int64_t ldo) {
  __m512 acc[R][M];
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
#pragma GCC unroll 8
    for (int i = 0; i < M; i++) acc[r][i] = _mm512_setzero_ps();
  int64_t p = 0;
  for (; p + S::K <= k; p += S::K) {
    typename S::V wv[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
      _mm_prefetch(static_cast<const char*>(w) + (r * ldw + p) * S::W_BYTES + PF_BYTES, _MM_HINT_T0);
      wv[r] = S::w(w, r * ldw + p);
    }
#pragma GCC unroll 8
    for (int i = 0; i < M; i++) {
      const typename S::V xv = S::x(x + i * ldx + p);
#pragma GCC unroll 8
      for (int r = 0; r < R; r++) acc[r][i] = S::madd(acc[r][i], wv[r], xv);
    }
  }
  if (p < k) {  // k's last partial vector: masked loads, the lanes past k add 0·0
    const auto mk = S::mask(k - p);
    typename S::V wv[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) wv[r] = S::w(w, r * ldw + p, mk);
#pragma GCC unroll 8
    for (int i = 0; i < M; i++) {
      const typename S::V xv = S::x(x + i * ldx + p, mk);
#pragma GCC unroll 8
      for (int r = 0; r < R; r++) acc[r][i] = S::madd(acc[r][i], wv[r], xv);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
#pragma GCC unroll 8
    for (int i = 0; i < M; i++) out[i * ldo + r] += _mm512_reduce_add_ps(acc[r][i]);
}

template <DType T, int R, int M>
LK_GV512 __attribute__((noinline)) void block_f32(int64_t k, const float* x, int64_t ldx, const void* w, int64_t ldw,
                                                  float* out, int64_t ldo) {
  block<F32Step<T>, R, M>(k, x, ldx, w, ldw, out, ldo);
}

// x and W both bf16 (vdpbf16ps): the same blocking over 32-step vectors.
template <int R, int M>
LK_GVBF16 __attribute__((noinline)) void block_dp(int64_t k, const uint16_t* x, int64_t ldx, const uint16_t* w,
                                                  int64_t ldw, float* out, int64_t ldo) {
  block<Bf16DotStep, R, M>(k, x, ldx, w, ldw, out, ldo);
}

template <DType T>
LK_GV512 void rows_t(int64_t m, int64_t k, const float* x, int64_t ldx, const void* w, int64_t ldw, int64_t rows,
                     float* out, int64_t ldo) {
  constexpr int64_t es = T == DType::F32 ? 4 : 2;
  const char* wb = static_cast<const char*>(w);
  for_each_register_block<RB>(m, rows, [&](int64_t i0, int64_t j, auto r, auto size) {
    block_f32<T, decltype(r)::value, decltype(size)::value>(k, x + i0 * ldx, ldx, wb + j * ldw * es, ldw,
                                                            out + i0 * ldo + j, ldo);
  });
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
