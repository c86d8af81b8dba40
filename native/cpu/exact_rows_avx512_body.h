// The AVX-512 exact_rows kernel (microkernel.h ExactRowsFn), included by exact_rows_avx512.cc and
// exact_rows_avx512bf16.cc with LK_EXACT (the target attribute), LK_EXACT_BF16_CVT and
// LK_EXACT_ENTRY (the exported name) defined. 8 rows × 32 columns per step: the delta as 16 zmm
// accumulators of fused multiply-adds (as the merge's kernel), then the rounding to the weight's
// dtype and the reconstruction R in registers. No branch on the data: a merge stores the corrections
// (0 where R = x), x and the mask R ≠ x of every vector (about half the vectors hold a flag at
// realistic deltas, so a branch on it mispredicts and stalls the long convert chain); an undo
// applies c to every lane (0 where nothing is flagged) in key space. 16-bit dtypes stay packed (a
// ymm of 16 bit patterns); f32 bit patterns are zmm lanes.
#include <immintrin.h>
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>
#include "../core/exact_format.h"
#include "exact_rows.h"

namespace lorakit {
namespace {

constexpr int kRows = 8, kLanes = 16;

// Bit patterns (32-bit lanes) to f32.
template <DType T>
LK_EXACT inline __m512 widen(__m512i b) {
  if constexpr (T == DType::F32) return _mm512_castsi512_ps(b);
  else if constexpr (T == DType::BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(b, 16));
  else return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(b));
}

// Round-to-nearest-even into T as bit patterns in 32-bit lanes. bf16 by vcvtneps2bf16 where the
// path has it (NaN made quiet; like the path's other bf16 instructions it treats denormals as zero),
// else by integer rounding, with the quiet-NaN fix-up only when nan_safe (a NaN from f32 factors may
// carry payload bits that the rounding add would push into the exponent; bf16 weights widen to
// NaNs with clear low bits). Either way merge and undo round with the same instructions.
template <DType T>
LK_EXACT inline __m512i narrow(__m512 v, bool nan_safe) {
  if constexpr (T == DType::F32) {
    return _mm512_castps_si512(v);
  } else if constexpr (T == DType::BF16) {
#if LK_EXACT_BF16_CVT
    (void)nan_safe;
    return _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(v));
#else
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    if (!nan_safe) return r;
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    return _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
#endif
  } else {
    (void)nan_safe;
    return _mm512_cvtepu16_epi32(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
}

template <DType T>
using Bits = typename std::conditional<T == DType::F32, uint32_t, uint16_t>::type;

// 16-bit dtypes kept as 16 packed bit patterns (a ymm): one conversion each way, no repacking.
template <DType T>
LK_EXACT inline __m512 widen16(__m256i b) {
  if constexpr (T == DType::BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
  else return _mm512_cvtph_ps(b);
}

template <DType T>
LK_EXACT inline __m256i narrow16(__m512 v, bool nan_safe) {
#if LK_EXACT_BF16_CVT
  if constexpr (T == DType::BF16) {
    (void)nan_safe;
    return (__m256i)_mm512_cvtneps_pbh(v);
  }
#endif
  if constexpr (T == DType::BF16) return _mm512_cvtepi32_epi16(narrow<T>(v, nan_safe));
  (void)nan_safe;
  return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// The order key of core/exact_format.h without its constant flip of the sign bit: b ^ (negative ?
// all ones but the sign : 0), an involution; key differences are the same modulo the width.
LK_EXACT inline __m256i key16v(__m256i b) {
  return _mm256_ternarylogic_epi32(b, _mm256_srai_epi16(b, 15), _mm256_set1_epi16(0x7fff), 0x78);  // a ^ (b & c)
}
LK_EXACT inline __m512i key32v(__m512i b) {
  return _mm512_ternarylogic_epi32(b, _mm512_srai_epi32(b, 31), _mm512_set1_epi32(0x7fffffff), 0x78);
}

// The corrections (core/exact_format.h correction()) of 16 lanes as bytes, 0 outside m: the key
// difference modulo the width where it is within ±kSmallMax and R is no NaN, else kRaw.
template <DType T>
LK_EXACT inline __m128i correction16(__m256i x, __m256i R, __mmask16 m) {
  const __m256i d = _mm256_sub_epi16(key16v(x), key16v(R));
  const uint16_t nan_at = T == DType::BF16 ? 0x7f80u : 0x7c00u;
  const __mmask16 nan = _mm256_cmpgt_epu16_mask(_mm256_and_si256(R, _mm256_set1_epi16(0x7fff)), _mm256_set1_epi16(static_cast<short>(nan_at)));
  const __mmask16 small = _mm256_mask_cmple_epu16_mask(static_cast<__mmask16>(~nan), _mm256_add_epi16(d, _mm256_set1_epi16(exact::kSmallMax)),
                                                       _mm256_set1_epi16(2 * exact::kSmallMax));
  const __m256i c = _mm256_mask_mov_epi16(_mm256_set1_epi16(exact::kRaw), small, d);
  return _mm256_maskz_cvtepi16_epi8(m, c);
}
LK_EXACT inline __m128i correction32(__m512i x, __m512i R, __mmask16 m) {
  const __m512i d = _mm512_sub_epi32(key32v(x), key32v(R));
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(R, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
  const __mmask16 small = _mm512_mask_cmple_epu32_mask(static_cast<__mmask16>(~nan), _mm512_add_epi32(d, _mm512_set1_epi32(exact::kSmallMax)),
                                                       _mm512_set1_epi32(2 * exact::kSmallMax));
  const __m512i c = _mm512_mask_mov_epi32(_mm512_set1_epi32(exact::kRaw), small, d);
  return _mm512_maskz_cvtepi32_epi8(m, c);
}

// One vector of a step, after its delta dv: row i, lanes 16·h.. of the 8 × 32 block at column j of
// the segment (px: its weights; lanes outside lv are padding). Dora: 0 none, 1 one scale per
// row, 2 one per column.
template <DType T, bool Undo, int Dora>
LK_EXACT inline void finish(Bits<T>* px, int64_t i0, int nr, int64_t j, int i, int h, __mmask16 lv, const ExactRowStep& st,
                            __m512 dv) {
  using U = Bits<T>;
  const bool safe = st.nan_safe;
  const __m512 k = Dora == 1   ? _mm512_set1_ps(st.k[i0 + std::min(i, nr - 1)])
                   : Dora == 2 ? _mm512_maskz_loadu_ps(lv, st.k + j + 16 * h)
                               : _mm512_set1_ps(1.f);
  const int64_t e = (i0 + i) * exact::kSeg + j + 16 * h;
  if constexpr (T != DType::F32) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(px));
    const __m512 v = widen16<T>(x);
    if (Undo) {
      const __m256i R = narrow16<T>(Dora ? _mm512_sub_ps(_mm512_div_ps(v, k), dv) : _mm512_sub_ps(v, dv), safe);
      const __m128i c8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(st.c + e));
      const __m256i y = key16v(_mm256_add_epi16(key16v(R), _mm256_cvtepi8_epi16(c8)));
      const __mmask16 raw = _mm_cmpeq_epi8_mask(c8, _mm_set1_epi8(exact::kRaw));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(px), _mm256_mask_loadu_epi16(y, raw, static_cast<const U*>(st.aux) + e));
    } else {
      const __m256i a = narrow16<T>(Dora ? _mm512_mul_ps(k, _mm512_add_ps(v, dv)) : _mm512_add_ps(v, dv), safe);
      const __m512 va = widen16<T>(a);
      const __m256i R = narrow16<T>(Dora ? _mm512_sub_ps(_mm512_div_ps(va, k), dv) : _mm512_sub_ps(va, dv), safe);
      const __mmask16 m = _mm256_mask_cmpneq_epi16_mask(lv, R, x);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(st.c + e), correction16<T>(x, R, m));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<U*>(st.aux) + e), x);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(px), a);
    }
    return;
  }
  const __m512i x = _mm512_loadu_si512(px);
  const __m512 v = widen<T>(x);
  if (Undo) {
    const __m512i R = narrow<T>(Dora ? _mm512_sub_ps(_mm512_div_ps(v, k), dv) : _mm512_sub_ps(v, dv), safe);
    const __m128i c8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(st.c + e));
    const __m512i y = key32v(_mm512_add_epi32(key32v(R), _mm512_cvtepi8_epi32(c8)));
    const __mmask16 raw = _mm_cmpeq_epi8_mask(c8, _mm_set1_epi8(exact::kRaw));
    _mm512_storeu_si512(px, _mm512_mask_loadu_epi32(y, raw, static_cast<const U*>(st.aux) + e));
  } else {
    const __m512i a = narrow<T>(Dora ? _mm512_mul_ps(k, _mm512_add_ps(v, dv)) : _mm512_add_ps(v, dv), safe);
    const __m512 va = widen<T>(a);
    const __m512i R = narrow<T>(Dora ? _mm512_sub_ps(_mm512_div_ps(va, k), dv) : _mm512_sub_ps(va, dv), safe);
    const __mmask16 m = _mm512_mask_cmpneq_epi32_mask(lv, R, x);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(st.c + e), correction32(x, R, m));
    _mm512_storeu_si512(static_cast<U*>(st.aux) + e, x);
    _mm512_storeu_si512(px, a);
  }
}

// The delta of an 8 × 32 block as 16 accumulators (two 16-column panels share each broadcast of p,
// as in the merge's kernel), r fused multiply-adds in order of q from zero; after each q, `between`
// runs (the software pipeline below puts the previous block's vectors there).
template <class Between>
LK_EXACT inline void block_delta(const float* qp, int64_t r, const float* pt, __m512 (&d)[kRows][2], Between&& between) {
#pragma GCC unroll 8
  for (int i = 0; i < kRows; i++) d[i][0] = d[i][1] = _mm512_setzero_ps();
  for (int64_t q = 0; q < r; q++) {
    const __m512 q0 = _mm512_loadu_ps(qp + q * kLanes), q1 = _mm512_loadu_ps(qp + (r + q) * kLanes);
#pragma GCC unroll 8
    for (int i = 0; i < kRows; i++) {
      const __m512 pv = _mm512_set1_ps(pt[q * kRows + i]);
      d[i][0] = _mm512_fmadd_ps(pv, q0, d[i][0]);
      d[i][1] = _mm512_fmadd_ps(pv, q1, d[i][1]);
    }
    between(q);
  }
}

// One step over a partial 8 × 32 block (rows past nr and lanes outside live are padding: the
// caller copies it into a zeroed tile, row stride ldw).
template <DType T, bool Undo, int Dora>
LK_EXACT void step_block(Bits<T>* w, int64_t ldw, int64_t i0, int nr, int64_t j, uint32_t live, const ExactRowStep& st,
                         const float* pt) {
  __m512 d[kRows][2];
  block_delta(st.Q + j * st.r, st.r, pt, d, [](int64_t) LK_EXACT {});
  for (int h = 0; h < 2; h++)
    for (int i = 0; i < kRows; i++)
      finish<T, Undo, Dora>(w + i * ldw + 16 * h, i0, nr, j, i, h, static_cast<__mmask16>(live >> (16 * h)), st, d[i][h]);
}

// One step over nb full 8 × 32 blocks from column 0 of w, software-pipelined: the 16 vectors of
// block b − 1 are finished (rounded, compared, stored), one after each of the first 16 of the r
// fused multiply-add rounds of block b, from its deltas parked in L1. The multiply-adds keep the
// FMA units busy and the finishing work (conversions, integer and mask operations, stores) runs
// beside them; one after the other, a block's multiply-adds alone nearly fill the out-of-order
// window, and the two did not overlap (the step took the sum of both).
template <DType T, bool Undo, int Dora>
LK_EXACT void step_run(Bits<T>* w, int64_t ldw, int64_t i0, int64_t nb, const ExactRowStep& st, const float* pt) {
  alignas(64) float park[2][kRows * 2][kLanes];
  const int64_t r = st.r;
  for (int64_t b = 0; b <= nb; b++) {
    const float(*prev)[kLanes] = park[(b + 1) & 1];
    const int64_t jp = 32 * (b - 1);
    Bits<T>* wp = w + jp;
    int v = 0;
    if (b < nb) {
      const float* qp = st.Q + 32 * b * r;
      __m512 d[kRows][2];
#pragma GCC unroll 8
      for (int i = 0; i < kRows; i++) d[i][0] = d[i][1] = _mm512_setzero_ps();
      for (int64_t q = 0; q < r; q++) {
        const __m512 q0 = _mm512_loadu_ps(qp + q * kLanes), q1 = _mm512_loadu_ps(qp + (r + q) * kLanes);
#pragma GCC unroll 8
        for (int i = 0; i < kRows; i++) {
          const __m512 pv = _mm512_set1_ps(pt[q * kRows + i]);
          d[i][0] = _mm512_fmadd_ps(pv, q0, d[i][0]);
          d[i][1] = _mm512_fmadd_ps(pv, q1, d[i][1]);
        }
        if (b > 0 && v < 2 * kRows) {  // vector v of block b − 1: row v / 2, half v % 2
          finish<T, Undo, Dora>(wp + (v >> 1) * ldw + 16 * (v & 1), i0, kRows, jp, v >> 1, v & 1, static_cast<__mmask16>(0xffff), st,
                                _mm512_load_ps(prev[v]));
          v++;
        }
      }
      float(*cur)[kLanes] = park[b & 1];
#pragma GCC unroll 8
      for (int i = 0; i < kRows; i++) {
        _mm512_store_ps(cur[2 * i], d[i][0]);
        _mm512_store_ps(cur[2 * i + 1], d[i][1]);
      }
    }
    if (b > 0)
      for (; v < 2 * kRows; v++)
        finish<T, Undo, Dora>(wp + (v >> 1) * ldw + 16 * (v & 1), i0, kRows, jp, v >> 1, v & 1, static_cast<__mmask16>(0xffff), st,
                              _mm512_load_ps(prev[v]));
  }
}

// pts[s]: step s's p for rows i0.. as [r][kRows] (one base pointer for the 8 broadcasts of each q).
template <DType T>
LK_EXACT void block(Bits<T>* w, int64_t ldw, int64_t i0, int nr, int64_t j, uint32_t live, const ExactRowStep* steps,
                     int nsteps, const float* const* pts) {
  for (int s = 0; s < nsteps; s++) {
    const ExactRowStep& st = steps[s];
    const float* pt = pts[s];
    const int dora = !st.k ? 0 : st.k_per_col ? 2 : 1;
    if (st.undo) {
      if (dora == 0) step_block<T, true, 0>(w, ldw, i0, nr, j, live, st, pt);
      else if (dora == 1) step_block<T, true, 1>(w, ldw, i0, nr, j, live, st, pt);
      else step_block<T, true, 2>(w, ldw, i0, nr, j, live, st, pt);
    } else {
      if (dora == 0) step_block<T, false, 0>(w, ldw, i0, nr, j, live, st, pt);
      else if (dora == 1) step_block<T, false, 1>(w, ldw, i0, nr, j, live, st, pt);
      else step_block<T, false, 2>(w, ldw, i0, nr, j, live, st, pt);
    }
  }
}

// Every step over nb full blocks from column 0 (each step a pipelined run; w stays in L1 between them).
template <DType T>
LK_EXACT void run_full(Bits<T>* w, int64_t ldw, int64_t i0, int64_t nb, const ExactRowStep* steps, int nsteps,
                       const float* const* pts) {
  for (int s = 0; s < nsteps; s++) {
    const ExactRowStep& st = steps[s];
    const float* pt = pts[s];
    const int dora = !st.k ? 0 : st.k_per_col ? 2 : 1;
    if (st.undo) {
      if (dora == 0) step_run<T, true, 0>(w, ldw, i0, nb, st, pt);
      else if (dora == 1) step_run<T, true, 1>(w, ldw, i0, nb, st, pt);
      else step_run<T, true, 2>(w, ldw, i0, nb, st, pt);
    } else {
      if (dora == 0) step_run<T, false, 0>(w, ldw, i0, nb, st, pt);
      else if (dora == 1) step_run<T, false, 1>(w, ldw, i0, nb, st, pt);
      else step_run<T, false, 2>(w, ldw, i0, nb, st, pt);
    }
  }
}

template <DType T>
LK_EXACT void rows_t(void* w, int64_t ldw, int64_t rows, int64_t n, const ExactRowStep* steps, int nsteps) {
  using U = Bits<T>;
  constexpr int kCols = 2 * kLanes;
  U* wp = static_cast<U*>(w);
  static thread_local std::vector<float> ptbuf;
  static thread_local std::vector<const float*> pts;  // no allocation per call (one per 8 × 256 block)
  if (pts.size() < static_cast<size_t>(nsteps)) pts.resize(static_cast<size_t>(nsteps));
  size_t need = 0;
  for (int s = 0; s < nsteps; s++) need += static_cast<size_t>(steps[s].r) * kRows;
  if (ptbuf.size() < need) ptbuf.resize(need);
  for (int64_t i0 = 0; i0 < rows; i0 += kRows) {
    const int nr = static_cast<int>(std::min<int64_t>(kRows, rows - i0));
    float* at = ptbuf.data();
    for (int s = 0; s < nsteps; s++) {  // rows past nr repeat the last row (padding)
      const int64_t r = steps[s].r;
      for (int i = 0; i < kRows; i++) {
        const float* src = steps[s].p + (i0 + std::min(i, nr - 1)) * r;
        for (int64_t q = 0; q < r; q++) at[q * kRows + i] = src[q];
      }
      pts[s] = at;
      at += r * kRows;
    }
    int64_t j = 0;
    if (nr == kRows && n >= kCols) {  // the full blocks, pipelined
      const int64_t nb = n / kCols;
      run_full<T>(wp + i0 * ldw, ldw, i0, nb, steps, nsteps, pts.data());
      j = nb * kCols;
    }
    for (; j < n; j += kCols) {
      const int nj = static_cast<int>(std::min<int64_t>(kCols, n - j));
      const uint32_t live = nj == 32 ? 0xffffffffu : (1u << nj) - 1;
      if (nr == kRows && nj == kCols) {
        block<T>(wp + i0 * ldw + j, ldw, i0, nr, j, live, steps, nsteps, pts.data());
        continue;
      }
      alignas(64) U pad[kRows * kCols] = {};  // a partial block, zero-padded
      for (int i = 0; i < nr; i++) std::memcpy(pad + i * kCols, wp + (i0 + i) * ldw + j, nj * sizeof(U));
      block<T>(pad, kCols, i0, nr, j, live, steps, nsteps, pts.data());
      for (int i = 0; i < nr; i++) std::memcpy(wp + (i0 + i) * ldw + j, pad + i * kCols, nj * sizeof(U));
    }
    // A merge step's flags: its nonzero corrections (c is 0 where R = x; lanes past n were not written).
    for (int s = 0; s < nsteps; s++) {
      if (steps[s].undo) continue;
      for (int i = 0; i < kRows; i++)
        for (int q = 0; q < 4; q++) {
          const int64_t lo = 64 * q;
          const uint64_t valid = n >= lo + 64 ? ~uint64_t(0) : n <= lo ? 0 : (uint64_t(1) << (n - lo)) - 1;
          const __m512i cv = _mm512_loadu_si512(steps[s].c + (i0 + i) * exact::kSeg + lo);
          steps[s].nz[(i0 + i) * 4 + q] = _mm512_test_epi8_mask(cv, cv) & valid;
        }
    }
  }
}

}  // namespace

LK_EXACT void LK_EXACT_ENTRY(DType t, void* w, int64_t ldw, int64_t rows, int64_t n, const ExactRowStep* steps, int nsteps) {
  switch (t) {
    case DType::F32: return rows_t<DType::F32>(w, ldw, rows, n, steps, nsteps);
    case DType::BF16: return rows_t<DType::BF16>(w, ldw, rows, n, steps, nsteps);
    default: return rows_t<DType::F16>(w, ldw, rows, n, steps, nsteps);
  }
}

}  // namespace lorakit
