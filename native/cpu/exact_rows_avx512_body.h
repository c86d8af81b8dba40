// The AVX-512 exact_rows kernel (microkernel.h ExactRowsFn), included by exact_rows_avx512.cc and
// exact_rows_avx512bf16.cc with LK_EXACT (the target attribute), LK_EXACT_BF16_CVT and
// LK_EXACT_ENTRY (the exported name) defined. 8 rows × 32 columns per step: the delta as 16 zmm
// accumulators of fused multiply-adds (as the merge's kernel), then the rounding to the weight's
// dtype, the reconstruction R and the comparison with x in registers; only the rare lanes whose R
// differs from x (a mask) go through scalar code, out of line. Bit patterns live in 32-bit lanes.
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

// 16-bit dtypes kept as 16 packed bit patterns (a ymm): one conversion each way, no repacking;
// only the rare flagged vectors widen to 32-bit lanes (merge_flag, undo_fix).
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

// The flagged lanes (m), in vector form: at realistic deltas a few percent of the weights carry a
// correction, so most 16-lane vectors hold one. key(b) = b ^ (negative ? all ones : sign bit), in
// the dtype's width (core/exact_format.h); differences are taken modulo that width.
template <DType T>
LK_EXACT inline __m512i key_of(__m512i b) {
  if constexpr (T == DType::F32) return _mm512_xor_si512(b, _mm512_or_si512(_mm512_srai_epi32(b, 31), _mm512_set1_epi32(INT32_MIN)));
  const __m512i neg = _mm512_srai_epi32(_mm512_slli_epi32(b, 16), 31);  // bit 15 set: all ones
  return _mm512_xor_si512(b, _mm512_or_si512(_mm512_and_si512(neg, _mm512_set1_epi32(0x7fff)), _mm512_set1_epi32(0x8000)));
}

template <DType T>
LK_EXACT inline __m512i unkey_of(__m512i k) {
  if constexpr (T == DType::F32) {
    const __m512i top = _mm512_srai_epi32(k, 31);
    return _mm512_xor_si512(k, _mm512_or_si512(_mm512_andnot_si512(top, _mm512_set1_epi32(-1)), _mm512_set1_epi32(INT32_MIN)));
  }
  const __m512i top = _mm512_srai_epi32(_mm512_slli_epi32(k, 16), 31);
  const __m512i flip = _mm512_or_si512(_mm512_andnot_si512(top, _mm512_set1_epi32(0x7fff)), _mm512_set1_epi32(0x8000));
  return _mm512_and_si512(_mm512_xor_si512(k, flip), _mm512_set1_epi32(0xffff));
}

// Undo: R corrected by c on the lanes of m (the raw bits where c is kRaw).
template <DType T>
LK_EXACT inline __m512i undo_fix(__m512i R, __mmask16 m, const int8_t* c, const Bits<T>* raw) {
  const __m512i cv = _mm512_maskz_cvtepi8_epi32(m, _mm_loadu_si128(reinterpret_cast<const __m128i*>(c)));
  __m512i x = unkey_of<T>(_mm512_add_epi32(key_of<T>(R), cv));
  const __mmask16 is_raw = _mm512_mask_cmpeq_epi32_mask(m, cv, _mm512_set1_epi32(exact::kRaw));
  __m512i rv;
  if constexpr (T == DType::F32) rv = _mm512_maskz_loadu_epi32(is_raw, raw);
  else rv = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(is_raw, raw));
  x = _mm512_mask_mov_epi32(x, is_raw, rv);
  return _mm512_mask_mov_epi32(R, m, x);
}

// Merge: the corrections of the lanes of m into c, and their original bits into orig.
template <DType T>
LK_EXACT inline void merge_flag(__m512i x, __m512i R, __mmask16 m, int8_t* c, Bits<T>* orig) {
  __m512i d = _mm512_sub_epi32(key_of<T>(x), key_of<T>(R));
  if constexpr (T != DType::F32) d = _mm512_srai_epi32(_mm512_slli_epi32(d, 16), 16);  // modulo 2^16, signed
  const uint32_t nan_at = T == DType::F32 ? 0x7f800000u : T == DType::BF16 ? 0x7f80u : 0x7c00u;
  const uint32_t abs_mask = T == DType::F32 ? 0x7fffffffu : 0x7fffu;
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(R, _mm512_set1_epi32(static_cast<int>(abs_mask))),
                                                _mm512_set1_epi32(static_cast<int>(nan_at)));
  const __mmask16 small = _mm512_cmple_epi32_mask(d, _mm512_set1_epi32(exact::kSmallMax)) &
                          _mm512_cmpge_epi32_mask(d, _mm512_set1_epi32(-exact::kSmallMax)) & static_cast<__mmask16>(~nan);
  d = _mm512_mask_mov_epi32(_mm512_set1_epi32(exact::kRaw), small, d);
  _mm_mask_storeu_epi8(c, m, _mm512_cvtepi32_epi8(d));
  if constexpr (T == DType::F32) _mm512_mask_storeu_epi32(orig, m, x);
  else _mm256_mask_storeu_epi16(orig, m, _mm512_cvtepi32_epi16(x));
}

// The same two in 16-bit lanes (a ymm of 16 bit patterns). The f32 kernel runs them on every
// vector (measured faster than a branch on "any lane flagged", taken about half the time at
// realistic deltas); the 16-bit kernel measured faster with the branch.
template <DType T>
LK_EXACT inline __m256i key16v(__m256i b) {
  return _mm256_xor_si256(b, _mm256_or_si256(_mm256_and_si256(_mm256_srai_epi16(b, 15), _mm256_set1_epi16(0x7fff)),
                                             _mm256_set1_epi16(static_cast<short>(0x8000))));
}
template <DType T>
LK_EXACT inline __m256i unkey16v(__m256i k) {
  return _mm256_xor_si256(k, _mm256_or_si256(_mm256_andnot_si256(_mm256_srai_epi16(k, 15), _mm256_set1_epi16(0x7fff)),
                                             _mm256_set1_epi16(static_cast<short>(0x8000))));
}

template <DType T>
LK_EXACT inline __m256i undo_fix16(__m256i R, __mmask16 m, const int8_t* c, const uint16_t* raw) {
  const __m128i c8 = _mm_maskz_loadu_epi8(m, c);
  const __m256i x = unkey16v<T>(_mm256_add_epi16(key16v<T>(R), _mm256_cvtepi8_epi16(c8)));
  const __mmask16 is_raw = _mm_mask_cmpeq_epi8_mask(m, c8, _mm_set1_epi8(exact::kRaw));
  return _mm256_mask_loadu_epi16(_mm256_mask_mov_epi16(R, m, x), is_raw, raw);
}

template <DType T>
LK_EXACT inline void merge_flag16(__m256i x, __m256i R, __mmask16 m, int8_t* c, uint16_t* orig) {
  const __m256i d = _mm256_sub_epi16(key16v<T>(x), key16v<T>(R));  // modulo 2^16, signed
  const uint16_t nan_at = T == DType::BF16 ? 0x7f80u : 0x7c00u;
  const __mmask16 nan = _mm256_cmpgt_epu16_mask(_mm256_and_si256(R, _mm256_set1_epi16(0x7fff)), _mm256_set1_epi16(static_cast<short>(nan_at)));
  const __mmask16 small = _mm256_cmple_epi16_mask(d, _mm256_set1_epi16(exact::kSmallMax)) &
                          _mm256_cmpge_epi16_mask(d, _mm256_set1_epi16(-exact::kSmallMax)) & static_cast<__mmask16>(~nan);
  _mm_mask_storeu_epi8(c, m, _mm256_cvtepi16_epi8(_mm256_mask_mov_epi16(_mm256_set1_epi16(exact::kRaw), small, d)));
  _mm256_mask_storeu_epi16(orig, m, x);
}

// One step over 8 rows × 32 columns of w (row stride ldw; L1-resident after the first step), rows
// i0.. of the step's operands, as 16 accumulators (two 16-column panels share each broadcast of
// p, as in the merge's kernel); rows past nr and lanes outside live are padding (the caller copies
// a partial block into a zeroed tile). Dora: 0 none, 1 one scale per row, 2 one per column.
template <DType T, bool Undo, int Dora>
LK_EXACT void step_block(Bits<T>* w, int64_t ldw, int64_t i0, int nr, int64_t j, uint32_t live, const ExactRowStep& st,
                         const float* pt) {
  using U = Bits<T>;
  const float* qp = st.Q + j * st.r;  // panel j/16; the next starts 16·r further
  __m512 d[kRows][2];
#pragma GCC unroll 8
  for (int i = 0; i < kRows; i++) d[i][0] = d[i][1] = _mm512_setzero_ps();
  for (int64_t q = 0; q < st.r; q++) {
    const __m512 q0 = _mm512_loadu_ps(qp + q * kLanes), q1 = _mm512_loadu_ps(qp + (st.r + q) * kLanes);
#pragma GCC unroll 8
    for (int i = 0; i < kRows; i++) {
      const __m512 pv = _mm512_set1_ps(pt[q * kRows + i]);
      d[i][0] = _mm512_fmadd_ps(pv, q0, d[i][0]);
      d[i][1] = _mm512_fmadd_ps(pv, q1, d[i][1]);
    }
  }
  const int sh = static_cast<int>(j % 64);
  const bool safe = st.nan_safe;
#pragma GCC unroll 2
  for (int h = 0; h < 2; h++) {
    const __mmask16 lv = static_cast<__mmask16>(live >> (16 * h));
    const __m512 kcol = Dora == 2 ? _mm512_maskz_loadu_ps(lv, st.k + j + 16 * h) : _mm512_set1_ps(1.f);
#pragma GCC unroll 8
    for (int i = 0; i < kRows; i++) {
      const __m512 k = Dora == 1 ? _mm512_set1_ps(st.k[i0 + std::min(i, nr - 1)]) : kcol;
      const int64_t e = (i0 + i) * exact::kSeg + j + 16 * h;
      uint64_t& nzw = st.nz[(i0 + i) * 4 + j / 64];
      U* px = w + i * ldw + 16 * h;
      const __m512 dv = d[i][h];
      if constexpr (T != DType::F32) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(px));
        const __m512 v = widen16<T>(x);
        if (Undo) {
          const __m256i R = narrow16<T>(Dora ? _mm512_sub_ps(_mm512_div_ps(v, k), dv) : _mm512_sub_ps(v, dv), safe);
          const __mmask16 m = static_cast<__mmask16>((nzw >> (sh + 16 * h)) & lv);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(px), m ? undo_fix16<T>(R, m, st.c + e, static_cast<const U*>(st.aux) + e) : R);
        } else {
          const __m256i a = narrow16<T>(Dora ? _mm512_mul_ps(k, _mm512_add_ps(v, dv)) : _mm512_add_ps(v, dv), safe);
          const __m512 va = widen16<T>(a);
          const __m256i R = narrow16<T>(Dora ? _mm512_sub_ps(_mm512_div_ps(va, k), dv) : _mm512_sub_ps(va, dv), safe);
          const __mmask16 m = _mm256_mask_cmpneq_epi16_mask(lv, R, x);
          if (m) {
            merge_flag16<T>(x, R, m, st.c + e, static_cast<U*>(st.aux) + e);
            nzw |= static_cast<uint64_t>(m) << (sh + 16 * h);
          }
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(px), a);
        }
        continue;
      }
      const __m512i x = _mm512_loadu_si512(px);
      const __m512 v = widen<T>(x);
      if (Undo) {
        const __m512i R = narrow<T>(Dora ? _mm512_sub_ps(_mm512_div_ps(v, k), dv) : _mm512_sub_ps(v, dv), safe);
        const __mmask16 m = static_cast<__mmask16>((nzw >> (sh + 16 * h)) & lv);
        _mm512_storeu_si512(px, undo_fix<T>(R, m, st.c + e, static_cast<const U*>(st.aux) + e));
      } else {
        const __m512i a = narrow<T>(Dora ? _mm512_mul_ps(k, _mm512_add_ps(v, dv)) : _mm512_add_ps(v, dv), safe);
        const __m512 va = widen<T>(a);
        const __m512i R = narrow<T>(Dora ? _mm512_sub_ps(_mm512_div_ps(va, k), dv) : _mm512_sub_ps(va, dv), safe);
        const __mmask16 m = _mm512_mask_cmpneq_epi32_mask(lv, R, x);
        merge_flag<T>(x, R, m, st.c + e, static_cast<U*>(st.aux) + e);  // every vector, as merge_flag16
        nzw |= static_cast<uint64_t>(m) << (sh + 16 * h);
        _mm512_storeu_si512(px, a);
      }
    }
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

template <DType T>
LK_EXACT void rows_t(void* w, int64_t ldw, int64_t rows, int64_t n, const ExactRowStep* steps, int nsteps) {
  using U = Bits<T>;
  constexpr int kCols = 2 * kLanes;
  U* wp = static_cast<U*>(w);
  static thread_local std::vector<float> ptbuf;
  std::vector<const float*> pts(static_cast<size_t>(nsteps));
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
    for (int64_t j = 0; j < n; j += kCols) {
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
