// The AVX-512 merge kernel (microkernel.h MergeRowsFn), included by microkernel_avx512.cc and
// microkernel_avx512bf16.cc with LK_MERGE (the target attribute), LK_MERGE_BF16_CVT and
// LK_MERGE_ENTRY (the function's name) defined. Per element: W widened, then r fused multiply-adds
// in order of q (as the AVX2 and scalar kernels), one rounding: every path gives the same bits.
// With LK_MERGE_BF16_CVT, bf16 rows are rounded by vcvtne2ps2bf16 (one instruction per 32 values
// instead of five per 16: at r = 16 the integer rounding and its shuffles took a third of the
// FP pipes' slots); that instruction flushes f32 denormals to zero, so a row holding one takes the
// integer rounding instead (vfpclassps finds them; a never-taken branch on real weights).
#include <immintrin.h>
#include <cstring>
#include "kernels_generic.h"
#include "merge_rows_blocks.h"
#include "microkernel.h"

namespace lorakit {
namespace {

// Sixteen elements of a row of dtype T widened to f32 (bf16: a shift; f16: F16C).
template <DType T>
LK_MERGE inline __m512 load16(const void* p, int64_t i) {
  if constexpr (T == DType::F32) {
    return _mm512_loadu_ps(static_cast<const float*>(p) + i);
  } else {
    __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i));
    if constexpr (T == DType::BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    else return _mm512_cvtph_ps(h);
  }
}

// Sixteen f32 lanes rounded once into T (round-to-nearest-even as f32_to_bf16 and the AVX2 path, so
// both paths give the same bits) and stored at element i.
template <DType T>
LK_MERGE inline void store16(void* p, int64_t i, __m512 v) {
  if constexpr (T == DType::F32) {
    _mm512_storeu_ps(static_cast<float*>(p) + i, v);
  } else if constexpr (T == DType::BF16) {
    // No quiet-NaN fix-up: as in the AVX2 kernel, the fused merge only sees finite factors
    // (MergeRowsFn), so a NaN here is one of W's, with zero low bits that the rounding add keeps.
    __m512i u = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(p) + i), _mm512_cvtepi32_epi16(r));
  } else {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(p) + i),
                        _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
}

// NP panels of one row (NP·16 lanes from element i) rounded into T and stored.
template <DType T, int NP>
LK_MERGE inline void store_panels(void* p, int64_t i, const __m512* v) {
#if LK_MERGE_BF16_CVT
  if constexpr (T == DType::BF16) {
    // vcvtne2ps2bf16 rounds as the integer code (NaNs here are W's, already quiet after the FMAs,
    // and keep their bits) except that it flushes denormals: those rows round below.
    constexpr int kDenormal = 0x20;
    __mmask16 sub = _mm512_fpclass_ps_mask(v[0], kDenormal);
    if constexpr (NP == 2) sub = _kor_mask16(sub, _mm512_fpclass_ps_mask(v[1], kDenormal));
    if (__builtin_expect(sub == 0, 1)) {
      uint16_t* d = static_cast<uint16_t*>(p) + i;
      if constexpr (NP == 2) _mm512_storeu_si512(d, (__m512i)_mm512_cvtne2ps_pbh(v[1], v[0]));
      else _mm256_storeu_si256(reinterpret_cast<__m256i*>(d), (__m256i)_mm512_cvtneps_pbh(v[0]));
      return;
    }
  }
#endif
  for (int h = 0; h < NP; h++) store16<T>(p, i + 16 * h, v[h]);
}

// MR rows × NP 16-column panels per step (NP·MR zmm accumulators starting at W), the same per-lane
// arithmetic as the AVX2 kernel: W, then r fused multiply-adds in order of q, one rounding.
template <DType T, int MR, int NP>
LK_MERGE void merge_panels(int64_t r, const float* p, const float* Q, int64_t steps, const void* w, int64_t ldw,
                            void* o, int64_t ldo) {
  for (int64_t s = 0; s < steps; s++) {
    const int64_t j = s * 16 * NP;
    const float* qp = Q + j * r;  // panel j/16; the next one starts 16·r further
    __m512 c[MR][NP];
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 2
      for (int h = 0; h < NP; h++) c[i][h] = load16<T>(w, i * ldw + j + 16 * h);
    int64_t q = 0;
    do {  // r >= 1: no zero-trip path for the compiler to keep the accumulators around for
      __m512 qv[NP];
#pragma GCC unroll 2
      for (int h = 0; h < NP; h++) qv[h] = _mm512_loadu_ps(qp + h * 16 * r + q * 16);
#pragma GCC unroll 16
      for (int i = 0; i < MR; i++) {
        const __m512 v = _mm512_set1_ps(p[i * r + q]);
#pragma GCC unroll 2
        for (int h = 0; h < NP; h++) c[i][h] = _mm512_fmadd_ps(v, qv[h], c[i][h]);
      }
    } while (++q < r);
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) store_panels<T, NP>(o, i * ldo + j, c[i]);
  }
}

// MR rows of a block: pairs of panels, a last single panel, then the last n % 16 columns through
// the f32 tile (merge_rows_blocks.h).
template <DType T, int MR>
LK_MERGE void merge_block(int64_t r, const float* p, const float* Q, int64_t n, const void* w, int64_t ldw, void* o,
                           int64_t ldo) {
  const int64_t panels = n / 16, pairs = panels / 2, full = panels * 16;
  merge_panels<T, MR, 2>(r, p, Q, pairs, w, ldw, o, ldo);
  if (panels % 2) {
    const int64_t j = pairs * 32;
    merge_panels<T, MR, 1>(r, p, Q + j * r, 1, elem_at<T>(w, j), ldw, elem_at<T>(o, j), ldo);
  }
  if (full == n) return;
  merge_tail_tile<T, MR>(n - full, elem_at<T>(w, full), ldw, elem_at<T>(o, full), ldo,
                         [&](float* t) LK_MERGE { merge_panels<DType::F32, MR, 1>(r, p, Q + full * r, 1, t, 16, t, 16); });
}

LK_MERGE void LK_MERGE_ENTRY(int64_t r, const float* p, int64_t rows, const float* Q, int64_t n, const void* w, DType wt,
                          int64_t ldw, void* o, DType ot, int64_t ldo) {
  const bool fused = for_each_merge_block<8>(wt, ot, rows, [&](auto t, auto mr, int64_t i) LK_MERGE {
    constexpr DType T = decltype(t)::value;
    merge_block<T, decltype(mr)::value>(r, p + i * r, Q, n, elem_at<T>(w, i * ldw), ldw, elem_at<T>(o, i * ldo), ldo);
  });
  if (!fused) generic::merge_rows(r, p, rows, Q, n, w, wt, ldw, o, ot, ldo);
}

}  // namespace
}  // namespace lorakit
