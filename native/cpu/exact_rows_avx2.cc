// exact_rows (microkernel.h ExactRowsFn) on AVX2: the AVX-512 kernel's scheme (exact_rows_avx512.cc)
// at 4 rows × 8 columns, so that the accumulators and the weights stay in the 16 ymm registers; as
// there, every lane's correction is computed and stored, with no branch on the flags.
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include <algorithm>
#include <cstring>
#include <type_traits>
#include "../core/exact_format.h"
#include "exact_rows.h"

#define LK_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace lorakit {
namespace {

constexpr int kRows = 4, kLanes = 8;

template <DType T>
using Bits = typename std::conditional<T == DType::F32, uint32_t, uint16_t>::type;

template <DType T>
LK_AVX2 inline __m256 widen(__m256i b) {
  if constexpr (T == DType::F32) return _mm256_castsi256_ps(b);
  else if constexpr (T == DType::BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(b, 16));
  else return _mm256_cvtph_ps(_mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1)));
}

// Round-to-nearest-even into T, as bit patterns in 32-bit lanes (bf16: NaN made quiet).
template <DType T>
LK_AVX2 inline __m256i narrow(__m256 v, bool nan_safe) {
  if constexpr (T == DType::F32) {
    (void)nan_safe;
    return _mm256_castps_si256(v);
  } else if constexpr (T == DType::BF16) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    if (!nan_safe) return r;  // as the AVX-512 kernel: the fix-up only where factors are not finite
    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
    const __m256i q = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    return _mm256_blendv_epi8(r, q, nan);
  } else {
    (void)nan_safe;
    return _mm256_cvtepu16_epi32(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
}

template <DType T>
LK_AVX2 inline __m256i load_bits(const Bits<T>* p, int nj) {
  if constexpr (T == DType::F32) {
    if (nj == kLanes) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    alignas(32) uint32_t t[kLanes] = {};
    std::memcpy(t, p, nj * 4);
    return _mm256_load_si256(reinterpret_cast<const __m256i*>(t));
  } else {
    alignas(16) uint16_t t[kLanes] = {};
    if (nj == kLanes) return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    std::memcpy(t, p, nj * 2);
    return _mm256_cvtepu16_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(t)));
  }
}

template <DType T>
LK_AVX2 inline void store_bits(Bits<T>* p, __m256i b, int nj) {
  alignas(32) uint32_t t[kLanes];
  _mm256_store_si256(reinterpret_cast<__m256i*>(t), b);
  if constexpr (T == DType::F32) {
    std::memcpy(p, t, nj * 4);
  } else {
    if (nj == kLanes) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1)));
      return;
    }
    for (int l = 0; l < nj; l++) p[l] = static_cast<uint16_t>(t[l]);
  }
}

// The order key of core/exact_format.h without its constant flip of the sign bit (b ^ (negative ?
// all ones but the sign : 0), an involution; key differences are the same modulo the width), on
// bit patterns in 32-bit lanes.
template <DType T>
LK_AVX2 inline __m256i key_of(__m256i b) {
  if constexpr (T == DType::F32) return _mm256_xor_si256(b, _mm256_and_si256(_mm256_srai_epi32(b, 31), _mm256_set1_epi32(0x7fffffff)));
  return _mm256_xor_si256(b, _mm256_and_si256(_mm256_srai_epi32(_mm256_slli_epi32(b, 16), 31), _mm256_set1_epi32(0x7fff)));
}

// Undo, every lane (no branch: about half the vectors hold a flag): R moved by c in key space
// (c is 0 where nothing is flagged), the raw bits where c is kRaw.
template <DType T>
LK_AVX2 inline __m256i undo_fix(__m256i R, const int8_t* c, const Bits<T>* raw) {
  const __m256i cv = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c)));
  __m256i y = _mm256_add_epi32(key_of<T>(R), cv);
  if constexpr (T != DType::F32) y = _mm256_and_si256(y, _mm256_set1_epi32(0xffff));
  y = key_of<T>(y);
  return _mm256_blendv_epi8(y, load_bits<T>(raw, kLanes), _mm256_cmpeq_epi32(cv, _mm256_set1_epi32(exact::kRaw)));
}

// Merge, every lane: the corrections (core/exact_format.h correction(), 0 outside the flagged lanes
// ne) as 8 bytes into c, and x's bits into orig.
template <DType T>
LK_AVX2 inline void merge_flag(__m256i x, __m256i R, __m256i ne, int8_t* c, Bits<T>* orig) {
  __m256i d = _mm256_sub_epi32(key_of<T>(x), key_of<T>(R));
  if constexpr (T != DType::F32) d = _mm256_srai_epi32(_mm256_slli_epi32(d, 16), 16);  // modulo 2^16, signed
  const int nan_at = T == DType::F32 ? 0x7f800000 : T == DType::BF16 ? 0x7f80 : 0x7c00;
  const int abs_mask = T == DType::F32 ? 0x7fffffff : 0x7fff;
  const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(R, _mm256_set1_epi32(abs_mask)), _mm256_set1_epi32(nan_at));
  const __m256i small = _mm256_andnot_si256(nan, _mm256_and_si256(_mm256_cmpgt_epi32(d, _mm256_set1_epi32(-exact::kSmallMax - 1)),
                                                                   _mm256_cmpgt_epi32(_mm256_set1_epi32(exact::kSmallMax + 1), d)));
  const __m256i cw = _mm256_and_si256(_mm256_blendv_epi8(_mm256_set1_epi32(exact::kRaw), d, small), ne);
  const __m128i c16 = _mm_packs_epi32(_mm256_castsi256_si128(cw), _mm256_extracti128_si256(cw, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(c), _mm_packs_epi16(c16, c16));
  store_bits<T>(orig, x, kLanes);
}

// 4 rows × 8 columns (rows i0.. of the steps' operands); rows past nr and lanes outside live are padding.
template <DType T>
LK_AVX2 void block(Bits<T>* w, int64_t ldw, int64_t i0, int nr, int64_t j, uint32_t live, const ExactRowStep* steps,
                   int nsteps) {
  using U = Bits<T>;
  __m256i x[kRows];
#pragma GCC unroll 4
  for (int i = 0; i < kRows; i++) x[i] = load_bits<T>(w + i * ldw, kLanes);
  for (int s = 0; s < nsteps; s++) {
    const ExactRowStep& st = steps[s];
    const float* qp = st.Q + (j / RANK_PANEL) * RANK_PANEL * st.r + j % RANK_PANEL;
    const float* pp[kRows];
#pragma GCC unroll 4
    for (int i = 0; i < kRows; i++) pp[i] = st.p + (i0 + std::min(i, nr - 1)) * st.r;
    __m256 d[kRows];
#pragma GCC unroll 4
    for (int i = 0; i < kRows; i++) d[i] = _mm256_setzero_ps();
    for (int64_t q = 0; q < st.r; q++) {
      const __m256 qv = _mm256_loadu_ps(qp + q * RANK_PANEL);
#pragma GCC unroll 4
      for (int i = 0; i < kRows; i++) d[i] = _mm256_fmadd_ps(_mm256_set1_ps(pp[i][q]), qv, d[i]);
    }
    const bool dora = st.k != nullptr;
    __m256 kcol = _mm256_set1_ps(1.f);
    if (dora && st.k_per_col) {
      alignas(32) float kt[kLanes] = {1.f, 1.f, 1.f, 1.f, 1.f, 1.f, 1.f, 1.f};
      std::memcpy(kt, st.k + j, static_cast<size_t>(__builtin_popcount(live)) * 4);
      kcol = _mm256_load_ps(kt);
    }
    const int sh = static_cast<int>(j % 64);
    const __m256i live_v = _mm256_cmpgt_epi32(_mm256_set1_epi32(__builtin_popcount(live)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
#pragma GCC unroll 4
    for (int i = 0; i < kRows; i++) {
      const __m256 k = !dora || st.k_per_col ? kcol : _mm256_set1_ps(st.k[i0 + std::min(i, nr - 1)]);
      const int64_t e = (i0 + i) * exact::kSeg + j;
      uint64_t& nzw = st.nz[(i0 + i) * 4 + j / 64];
      const __m256 v = widen<T>(x[i]);
      if (st.undo) {
        const __m256i R = narrow<T>(dora ? _mm256_sub_ps(_mm256_div_ps(v, k), d[i]) : _mm256_sub_ps(v, d[i]), st.nan_safe);
        x[i] = undo_fix<T>(R, st.c + e, static_cast<const U*>(st.aux) + e);
      } else {
        const __m256i a = narrow<T>(dora ? _mm256_mul_ps(k, _mm256_add_ps(v, d[i])) : _mm256_add_ps(v, d[i]), st.nan_safe);
        const __m256 va = widen<T>(a);
        const __m256i R = narrow<T>(dora ? _mm256_sub_ps(_mm256_div_ps(va, k), d[i]) : _mm256_sub_ps(va, d[i]), st.nan_safe);
        const __m256i ne = _mm256_andnot_si256(_mm256_cmpeq_epi32(R, x[i]), live_v);
        merge_flag<T>(x[i], R, ne, st.c + e, static_cast<U*>(st.aux) + e);
        nzw |= static_cast<uint64_t>(static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(ne)))) << sh;
        x[i] = a;
      }
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < kRows; i++) store_bits<T>(w + i * ldw, x[i], kLanes);
}

template <DType T>
LK_AVX2 void rows_t(void* w, int64_t ldw, int64_t rows, int64_t n, const ExactRowStep* steps, int nsteps) {
  using U = Bits<T>;
  U* wp = static_cast<U*>(w);
  for (int64_t i0 = 0; i0 < rows; i0 += kRows) {
    const int nr = static_cast<int>(std::min<int64_t>(kRows, rows - i0));
    for (int64_t j = 0; j < n; j += kLanes) {
      const int nj = static_cast<int>(std::min<int64_t>(kLanes, n - j));
      const uint32_t live = (1u << nj) - 1;
      if (nr == kRows && nj == kLanes) {
        block<T>(wp + i0 * ldw + j, ldw, i0, nr, j, live, steps, nsteps);
        continue;
      }
      alignas(32) U pad[kRows * kLanes] = {};  // a partial block, zero-padded
      for (int i = 0; i < nr; i++) std::memcpy(pad + i * kLanes, wp + (i0 + i) * ldw + j, nj * sizeof(U));
      block<T>(pad, kLanes, i0, nr, j, live, steps, nsteps);
      for (int i = 0; i < nr; i++) std::memcpy(wp + (i0 + i) * ldw + j, pad + i * kLanes, nj * sizeof(U));
    }
  }
}

}  // namespace

LK_AVX2 void exact_rows_avx2(DType t, void* w, int64_t ldw, int64_t rows, int64_t n, const ExactRowStep* steps,
                             int nsteps) {
  switch (t) {
    case DType::F32: return rows_t<DType::F32>(w, ldw, rows, n, steps, nsteps);
    case DType::BF16: return rows_t<DType::BF16>(w, ldw, rows, n, steps, nsteps);
    default: return rows_t<DType::F16>(w, ldw, rows, n, steps, nsteps);
  }
}

}  // namespace lorakit

#else
#include "exact_rows.h"
namespace lorakit {
void exact_rows_avx2(DType t, void* w, int64_t ldw, int64_t rows, int64_t n, const ExactRowStep* steps, int nsteps) {
  exact_rows_generic(t, w, ldw, rows, n, steps, nsteps);
}
}  // namespace lorakit
#endif
