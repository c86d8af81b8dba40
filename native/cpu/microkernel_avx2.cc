// The AVX2+FMA path (x86-64 CPUs since Haswell / Zen): a 6x16 register tile (12 ymm accumulators),
// GEMV kernels that stream W once with 16-bit weights widened in registers, and vector
// conversions. Compiled with target attributes only, so the file is safe in a generic binary.
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include "exact_rows.h"
#include "gemv_rows.h"
#include "hsum_avx2.h"
#include "kernels_generic.h"
#include "merge_rows_blocks.h"
#include "microkernel.h"

#define LK_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace lorakit {
namespace {

constexpr int AMR = 6, ANR = 16;

// acc += the tile's kc-long sums c<row><half> (rows < mr, columns < nr).
LK_AVX2 inline void add_tile(float* acc, int64_t ldacc, int64_t mr, int64_t nr, __m256 c00, __m256 c01, __m256 c10, __m256 c11,
                             __m256 c20, __m256 c21, __m256 c30, __m256 c31, __m256 c40, __m256 c41, __m256 c50, __m256 c51) {
  alignas(32) float t[AMR][ANR];
  const __m256 c[AMR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  for (int i = 0; i < AMR; i++) {
    _mm256_store_ps(t[i], c[i][0]);
    _mm256_store_ps(t[i] + 8, c[i][1]);
  }
  if (mr == AMR && nr == ANR) {
    for (int i = 0; i < AMR; i++) {
      float* row = acc + i * ldacc;
      _mm256_storeu_ps(row, _mm256_add_ps(_mm256_loadu_ps(row), _mm256_load_ps(t[i])));
      _mm256_storeu_ps(row + 8, _mm256_add_ps(_mm256_loadu_ps(row + 8), _mm256_load_ps(t[i] + 8)));
    }
    return;
  }
  for (int64_t i = 0; i < mr; i++)
    for (int64_t j = 0; j < nr; j++) acc[i * ldacc + j] += t[i][j];
}

LK_AVX2 void micro(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict acc,
                   int64_t ldacc, int64_t mr, int64_t nr) {
  // Named accumulators (not an array) so that they stay in registers.
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps(), c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(), c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps(), c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps(), c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; k++) {
    __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
    {
      __m256 av = _mm256_broadcast_ss(a + 0);
      c00 = _mm256_fmadd_ps(av, b0, c00);
      c01 = _mm256_fmadd_ps(av, b1, c01);
    }
    {
      __m256 av = _mm256_broadcast_ss(a + 1);
      c10 = _mm256_fmadd_ps(av, b0, c10);
      c11 = _mm256_fmadd_ps(av, b1, c11);
    }
    {
      __m256 av = _mm256_broadcast_ss(a + 2);
      c20 = _mm256_fmadd_ps(av, b0, c20);
      c21 = _mm256_fmadd_ps(av, b1, c21);
    }
    {
      __m256 av = _mm256_broadcast_ss(a + 3);
      c30 = _mm256_fmadd_ps(av, b0, c30);
      c31 = _mm256_fmadd_ps(av, b1, c31);
    }
    {
      __m256 av = _mm256_broadcast_ss(a + 4);
      c40 = _mm256_fmadd_ps(av, b0, c40);
      c41 = _mm256_fmadd_ps(av, b1, c41);
    }
    {
      __m256 av = _mm256_broadcast_ss(a + 5);
      c50 = _mm256_fmadd_ps(av, b0, c50);
      c51 = _mm256_fmadd_ps(av, b1, c51);
    }
    a += AMR;
    b += ANR;
  }
  add_tile(acc, ldacc, mr, nr, c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51);
}

// micro with the 6 rows of the broadcast operand read in place from a row-major matrix (row i at
// w + i * ldw; rows past mr repeat row mr - 1 and are never stored): W's rows for x·Wᵀ, so that W is
// not packed (gemm_w_in_place.cc). The same fresh kc-long sums added to C as micro, so the same bits.
LK_AVX2 void micro_w(int64_t kc, const float* __restrict w, int64_t ldw, const float* __restrict b, float* __restrict acc,
                     int64_t ldacc, int64_t mr, int64_t nr) {
  const float* p0 = w;
  const float* p1 = w + (mr > 1 ? 1 : 0) * ldw;
  const float* p2 = w + (mr > 2 ? 2 : mr - 1) * ldw;
  const float* p3 = w + (mr > 3 ? 3 : mr - 1) * ldw;
  const float* p4 = w + (mr > 4 ? 4 : mr - 1) * ldw;
  const float* p5 = w + (mr > 5 ? 5 : mr - 1) * ldw;
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps(), c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(), c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps(), c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps(), c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; k++) {
    const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
#define LK_FMA_ROW(i)                                \
  {                                                  \
    const __m256 av = _mm256_broadcast_ss(p##i + k); \
    c##i##0 = _mm256_fmadd_ps(av, b0, c##i##0);      \
    c##i##1 = _mm256_fmadd_ps(av, b1, c##i##1);      \
  }
    LK_FMA_ROW(0) LK_FMA_ROW(1) LK_FMA_ROW(2) LK_FMA_ROW(3) LK_FMA_ROW(4) LK_FMA_ROW(5)
#undef LK_FMA_ROW
    b += ANR;
  }
  add_tile(acc, ldacc, mr, nr, c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51);
}

// Eight elements of a row of dtype T widened to f32.
template <DType T>
LK_AVX2 inline __m256 load8(const void* p, int64_t i) {
  if constexpr (T == DType::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(p) + i);
  } else if constexpr (T == DType::BF16) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i));
    return _mm256_cvtph_ps(h);
  }
}

// Four rows at a time share each load of x; two accumulators per row hide the FMA latency.
template <DType T>
LK_AVX2 void dot_rows_t(int64_t k, const float* x, const void* w, int64_t ldw, int64_t rows, float* out) {
  int64_t j = 0;
  for (; j + 4 <= rows; j += 4) {
    __m256 s[4][2];
    for (int r = 0; r < 4; r++) s[r][0] = s[r][1] = _mm256_setzero_ps();
    int64_t p = 0;
    for (; p + 16 <= k; p += 16) {
      __m256 x0 = _mm256_loadu_ps(x + p), x1 = _mm256_loadu_ps(x + p + 8);
#pragma GCC unroll 4
      for (int r = 0; r < 4; r++) {
        int64_t o = (j + r) * ldw + p;
        s[r][0] = _mm256_fmadd_ps(x0, load8<T>(w, o), s[r][0]);
        s[r][1] = _mm256_fmadd_ps(x1, load8<T>(w, o + 8), s[r][1]);
      }
    }
    for (int r = 0; r < 4; r++) {
      float t = hsum_avx2(_mm256_add_ps(s[r][0], s[r][1]));
      for (int64_t q = p; q < k; q++) t += x[q] * load_f32(w, T, (j + r) * ldw + q);
      out[j + r] += t;
    }
  }
  for (; j < rows; j++) {  // same summation order as above, so results do not depend on grouping
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t p = 0;
    for (; p + 16 <= k; p += 16) {
      s0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + p), load8<T>(w, j * ldw + p), s0);
      s1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + p + 8), load8<T>(w, j * ldw + p + 8), s1);
    }
    float t = hsum_avx2(_mm256_add_ps(s0, s1));
    for (; p < k; p++) t += x[p] * load_f32(w, T, j * ldw + p);
    out[j] += t;
  }
}

LK_AVX2 void dot_rows(int64_t k, const float* x, const void* w, DType wt, int64_t ldw, int64_t rows, float* out) {
  switch (wt) {
    case DType::F32: return dot_rows_t<DType::F32>(k, x, w, ldw, rows, out);
    case DType::BF16: return dot_rows_t<DType::BF16>(k, x, w, ldw, rows, out);
    case DType::F16: return dot_rows_t<DType::F16>(k, x, w, ldw, rows, out);
    default: return generic::dot_rows(k, x, w, wt, ldw, rows, out);
  }
}

// Four rows of W per sweep over out: out is loaded and stored once per four rows.
template <DType T>
LK_AVX2 void axpy_rows_t(int64_t k, const float* x, const void* w, int64_t ldw, int64_t cols, float* out) {
  int64_t p = 0;
  for (; p + 4 <= k; p += 4) {
    __m256 x0 = _mm256_set1_ps(x[p]), x1 = _mm256_set1_ps(x[p + 1]), x2 = _mm256_set1_ps(x[p + 2]),
           x3 = _mm256_set1_ps(x[p + 3]);
    int64_t j = 0;
    for (; j + 8 <= cols; j += 8) {
      __m256 o = _mm256_loadu_ps(out + j);
      o = _mm256_fmadd_ps(x0, load8<T>(w, p * ldw + j), o);
      o = _mm256_fmadd_ps(x1, load8<T>(w, (p + 1) * ldw + j), o);
      o = _mm256_fmadd_ps(x2, load8<T>(w, (p + 2) * ldw + j), o);
      o = _mm256_fmadd_ps(x3, load8<T>(w, (p + 3) * ldw + j), o);
      _mm256_storeu_ps(out + j, o);
    }
    for (; j < cols; j++)
      for (int q = 0; q < 4; q++) out[j] += x[p + q] * load_f32(w, T, (p + q) * ldw + j);
  }
  for (; p < k; p++) {
    __m256 xv = _mm256_set1_ps(x[p]);
    int64_t j = 0;
    for (; j + 8 <= cols; j += 8)
      _mm256_storeu_ps(out + j, _mm256_fmadd_ps(xv, load8<T>(w, p * ldw + j), _mm256_loadu_ps(out + j)));
    for (; j < cols; j++) out[j] += x[p] * load_f32(w, T, p * ldw + j);
  }
}

LK_AVX2 void axpy_rows(int64_t k, const float* x, const void* w, DType wt, int64_t ldw, int64_t cols, float* out) {
  switch (wt) {
    case DType::F32: return axpy_rows_t<DType::F32>(k, x, w, ldw, cols, out);
    case DType::BF16: return axpy_rows_t<DType::BF16>(k, x, w, ldw, cols, out);
    case DType::F16: return axpy_rows_t<DType::F16>(k, x, w, ldw, cols, out);
    default: return generic::axpy_rows(k, x, w, wt, ldw, cols, out);
  }
}

template <DType T>
LK_AVX2 void load_row_t(const void* src, float alpha, int64_t n, float* dst) {
  __m256 av = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_mul_ps(av, load8<T>(src, i)));
  for (; i < n; i++) dst[i] = alpha * load_f32(src, T, i);
}

LK_AVX2 void load_row(const void* src, DType st, float alpha, int64_t n, float* dst) {
  switch (st) {
    case DType::F32: return load_row_t<DType::F32>(src, alpha, n, dst);
    case DType::BF16: return load_row_t<DType::BF16>(src, alpha, n, dst);
    case DType::F16: return load_row_t<DType::F16>(src, alpha, n, dst);
    default: return generic::load_row(src, st, alpha, n, dst);
  }
}

// 8x8 blocks: eight source rows of eight k values, transposed in registers.
template <DType T>
LK_AVX2 void pack_t_t(const void* src, int64_t ld, int64_t cols, int64_t kc, float* dst, int64_t ldd) {
  int64_t c = 0;
  for (; c + 8 <= cols; c += 8) {
    int64_t k = 0;
    for (; k + 8 <= kc; k += 8) {
      __m256 r0 = load8<T>(src, (c + 0) * ld + k), r1 = load8<T>(src, (c + 1) * ld + k);
      __m256 r2 = load8<T>(src, (c + 2) * ld + k), r3 = load8<T>(src, (c + 3) * ld + k);
      __m256 r4 = load8<T>(src, (c + 4) * ld + k), r5 = load8<T>(src, (c + 5) * ld + k);
      __m256 r6 = load8<T>(src, (c + 6) * ld + k), r7 = load8<T>(src, (c + 7) * ld + k);
      __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
      __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
      __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
      __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
      __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
      __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
      __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
      __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
      float* d = dst + k * ldd + c;
      _mm256_storeu_ps(d + 0 * ldd, _mm256_permute2f128_ps(u0, u4, 0x20));
      _mm256_storeu_ps(d + 1 * ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
      _mm256_storeu_ps(d + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
      _mm256_storeu_ps(d + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
      _mm256_storeu_ps(d + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
      _mm256_storeu_ps(d + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
      _mm256_storeu_ps(d + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
      _mm256_storeu_ps(d + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
    }
    for (; k < kc; k++)
      for (int64_t q = 0; q < 8; q++) dst[k * ldd + c + q] = load_f32(src, T, (c + q) * ld + k);
  }
  // Four more columns (the 12-row A panels of the AVX-512 GEMM, the 6-row ones here): four rows of
  // eight k values, transposed as above into eight 4-value steps.
  for (; c + 4 <= cols; c += 4) {
    int64_t k = 0;
    for (; k + 8 <= kc; k += 8) {
      const __m256 r0 = load8<T>(src, (c + 0) * ld + k), r1 = load8<T>(src, (c + 1) * ld + k);
      const __m256 r2 = load8<T>(src, (c + 2) * ld + k), r3 = load8<T>(src, (c + 3) * ld + k);
      const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
      const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
      const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
      const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
      float* d = dst + k * ldd + c;  // u_q holds steps k + q (low half) and k + q + 4 (high half)
      _mm_storeu_ps(d + 0 * ldd, _mm256_castps256_ps128(u0));
      _mm_storeu_ps(d + 1 * ldd, _mm256_castps256_ps128(u1));
      _mm_storeu_ps(d + 2 * ldd, _mm256_castps256_ps128(u2));
      _mm_storeu_ps(d + 3 * ldd, _mm256_castps256_ps128(u3));
      _mm_storeu_ps(d + 4 * ldd, _mm256_extractf128_ps(u0, 1));
      _mm_storeu_ps(d + 5 * ldd, _mm256_extractf128_ps(u1, 1));
      _mm_storeu_ps(d + 6 * ldd, _mm256_extractf128_ps(u2, 1));
      _mm_storeu_ps(d + 7 * ldd, _mm256_extractf128_ps(u3, 1));
    }
    for (; k < kc; k++)
      for (int64_t q = 0; q < 4; q++) dst[k * ldd + c + q] = load_f32(src, T, (c + q) * ld + k);
  }
  for (; c < cols; c++)
    for (int64_t k = 0; k < kc; k++) dst[k * ldd + c] = load_f32(src, T, c * ld + k);
}

LK_AVX2 void pack_t(const void* src, DType st, int64_t ld, int64_t cols, int64_t kc, float* dst, int64_t ldd) {
  switch (st) {
    case DType::F32: return pack_t_t<DType::F32>(src, ld, cols, kc, dst, ldd);
    case DType::BF16: return pack_t_t<DType::BF16>(src, ld, cols, kc, dst, ldd);
    case DType::F16: return pack_t_t<DType::F16>(src, ld, cols, kc, dst, ldd);
    default: return generic::pack_t(src, st, ld, cols, kc, dst, ldd);
  }
}

// Round-to-nearest-even f32 -> bf16 for 8 lanes, NaNs kept quiet (matches f32_to_bf16).
LK_AVX2 inline __m128i to_bf16(__m256 v) {
  __m256i u = _mm256_castps_si256(v);
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  __m256i q = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, q, nan);
  __m256i packed = _mm256_packus_epi32(r, r);  // per 128-bit lane: [r0..r3, r0..r3]
  packed = _mm256_permute4x64_epi64(packed, 0x08);
  return _mm256_castsi256_si128(packed);
}

LK_AVX2 void store_row(const float* src, void* dst, DType dt, int64_t n) {
  int64_t i = 0;
  if (dt == DType::F32) {
    float* d = static_cast<float*>(dst);
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, _mm256_loadu_ps(src + i));
  } else if (dt == DType::BF16) {
    uint16_t* d = static_cast<uint16_t*>(dst);
    for (; i + 8 <= n; i += 8) _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i), to_bf16(_mm256_loadu_ps(src + i)));
  } else if (dt == DType::F16) {
    uint16_t* d = static_cast<uint16_t*>(dst);
    for (; i + 8 <= n; i += 8)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i),
                       _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; i < n; i++) store_f32(dst, dt, i, src[i]);
}

// Sixteen f32 lanes (lo = elements 0-7, hi = 8-15) rounded once into T (f32 or f16; bf16 panels
// use the even/odd form below) and stored at element i.
template <DType T>
LK_AVX2 inline void store16(void* p, int64_t i, __m256 lo, __m256 hi) {
  static_assert(T != DType::BF16, "bf16 panels are stored by store16_bf16_eo");
  if constexpr (T == DType::F32) {
    _mm256_storeu_ps(static_cast<float*>(p) + i, lo);
    _mm256_storeu_ps(static_cast<float*>(p) + i + 8, hi);
  } else {
    constexpr int rne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(p) + i),
                        _mm256_set_m128i(_mm256_cvtps_ph(hi, rne), _mm256_cvtps_ph(lo, rne)));
  }
}

// bf16 panels in even/odd form: one 32-byte load holds 16 bf16, two per 32-bit lane; a shift gives
// the even columns as f32 and a mask the odd ones (no lane-crossing widening). On store, the even
// lanes' rounded bits shift down and the odd lanes' are masked in place, joined by an OR: about a
// third fewer vector ops per element than widening and packing, which is what limits bf16 at r <= 16
// on AVX2 (the FMAs alone would take half the time there).
LK_AVX2 inline void load16_bf16_eo(const void* p, int64_t i, __m256& even, __m256& odd) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i));
  even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  odd = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
}

// Round-to-nearest-even as f32_to_bf16 (u + 0x7fff + bit 16 of u; the bf16 is the upper half of each
// lane, the lower half is garbage), without its quiet-NaN fix-up: the fused merge only sees finite
// factors (MergeRowsFn), so a NaN here is one of W's, whose low 16 bits are zero and survive the add
// unchanged (FMAs return it quietened). Measured 8-12% of the bf16 merge time at r <= 16 on Zen 3.
LK_AVX2 inline __m256i bf16_round_add(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  return _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
}

LK_AVX2 inline void store16_bf16_eo(void* p, int64_t i, __m256 even, __m256 odd) {
  const __m256i e = _mm256_srli_epi32(bf16_round_add(even), 16);
  const __m256i o = _mm256_and_si256(bf16_round_add(odd), _mm256_set1_epi32(static_cast<int>(0xffff0000u)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(p) + i), _mm256_or_si256(e, o));
}

// MR rows × one 16-column panel per step: 2·MR accumulators start at W (widened in registers), take
// the r rank-1 updates and are rounded once on store. MR = 6 uses 12 of the 16 ymm registers: enough
// independent FMA chains for both FMA ports, and each Q load serves six rows. (Measured on Zen 3:
// 6×16 and 4×16 run at ~97% of the FMA peak in cache at r = 64; wider tiles spill; P broadcast from
// memory beats pre-broadcast P vectors.)
template <DType T, int MR>
LK_AVX2 void merge_panels(int64_t r, const float* p, const float* Q, int64_t panels, const void* w, int64_t ldw,
                          void* o, int64_t ldo) {
  for (int64_t pj = 0; pj < panels; pj++) {
    const int64_t j = pj * 16;
    const float* qp = Q + j * r;
    __m256 c[MR][2];
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
      if constexpr (T == DType::BF16) {
        load16_bf16_eo(w, i * ldw + j, c[i][0], c[i][1]);
      } else {
        c[i][0] = load8<T>(w, i * ldw + j);
        c[i][1] = load8<T>(w, i * ldw + j + 8);
      }
    }
    int64_t q = 0;
    do {  // r >= 1: no zero-trip path for the compiler to keep the accumulators around for
      const __m256 q0 = _mm256_loadu_ps(qp + q * 16), q1 = _mm256_loadu_ps(qp + q * 16 + 8);
#pragma GCC unroll 8
      for (int i = 0; i < MR; i++) {
        const __m256 v = _mm256_broadcast_ss(p + i * r + q);
        c[i][0] = _mm256_fmadd_ps(v, q0, c[i][0]);
        c[i][1] = _mm256_fmadd_ps(v, q1, c[i][1]);
      }
    } while (++q < r);
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
      if constexpr (T == DType::BF16) store16_bf16_eo(o, i * ldo + j, c[i][0], c[i][1]);
      else store16<T>(o, i * ldo + j, c[i][0], c[i][1]);
    }
  }
}

// MR rows of a block: full panels in place, then the last n % 16 columns through the f32 tile
// (merge_rows_blocks.h), its slots in the order Q's panel was packed in.
template <DType T, int MR>
LK_AVX2 void merge_block(int64_t r, const float* p, const float* Q, int64_t n, const void* w, int64_t ldw, void* o,
                         int64_t ldo) {
  const int64_t full = n / 16 * 16;
  merge_panels<T, MR>(r, p, Q, full / 16, w, ldw, o, ldo);
  if (full == n) return;
  merge_tail_tile<T, MR>(
      n - full, elem_at<T>(w, full), ldw, elem_at<T>(o, full), ldo,
      [&](float* t) LK_AVX2 { merge_panels<DType::F32, MR>(r, p, Q + full * r, 1, t, 16, t, 16); },
      [](int64_t k) { return T == DType::BF16 ? (k < 8 ? 2 * k : 2 * (k - 8) + 1) : k; });
}

// W and out of one dtype take the fused pass; mixed dtypes (rare) the scalar one.
LK_AVX2 void merge_rows(int64_t r, const float* p, int64_t rows, const float* Q, int64_t n, const void* w, DType wt,
                        int64_t ldw, void* o, DType ot, int64_t ldo) {
  const bool fused = for_each_merge_block<6>(wt, ot, rows, [&](auto t, auto mr, int64_t i) LK_AVX2 {
    constexpr DType T = decltype(t)::value;
    merge_block<T, decltype(mr)::value>(r, p + i * r, Q, n, elem_at<T>(w, i * ldw), ldw, elem_at<T>(o, i * ldo), ldo);
  });
  if (!fused) generic::merge_rows(r, p, rows, Q, n, w, wt, ldw, o, ot, ldo);
}

// 12 independent FMA chains cover the 2 ports × 4-5 cycles of latency. Each chain starts from its
// own value: identical chains are one chain to the compiler (GCC 12 folded them into a single
// latency-bound FMA and the "peak" counted 12).
LK_AVX2 double fma_peak(int64_t iters) {
  __m256 m = _mm256_set1_ps(0.999f), a = _mm256_set1_ps(1e-3f);
  __m256 c0 = _mm256_set1_ps(0.f), c1 = _mm256_set1_ps(1e-4f), c2 = _mm256_set1_ps(2e-4f), c3 = _mm256_set1_ps(3e-4f),
         c4 = _mm256_set1_ps(4e-4f), c5 = _mm256_set1_ps(5e-4f), c6 = _mm256_set1_ps(6e-4f), c7 = _mm256_set1_ps(7e-4f),
         c8 = _mm256_set1_ps(8e-4f), c9 = _mm256_set1_ps(9e-4f), c10 = _mm256_set1_ps(1e-3f), c11 = _mm256_set1_ps(1.1e-3f);
  for (int64_t i = 0; i < iters; i++) {
    c0 = _mm256_fmadd_ps(c0, m, a); c1 = _mm256_fmadd_ps(c1, m, a); c2 = _mm256_fmadd_ps(c2, m, a);
    c3 = _mm256_fmadd_ps(c3, m, a); c4 = _mm256_fmadd_ps(c4, m, a); c5 = _mm256_fmadd_ps(c5, m, a);
    c6 = _mm256_fmadd_ps(c6, m, a); c7 = _mm256_fmadd_ps(c7, m, a); c8 = _mm256_fmadd_ps(c8, m, a);
    c9 = _mm256_fmadd_ps(c9, m, a); c10 = _mm256_fmadd_ps(c10, m, a); c11 = _mm256_fmadd_ps(c11, m, a);
  }
  __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3)),
                           _mm256_add_ps(_mm256_add_ps(c4, c5), _mm256_add_ps(c6, c7)));
  s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(c8, c9), _mm256_add_ps(c10, c11)));
  volatile float sink = hsum_avx2(s);
  (void)sink;
  return 2.0 * 8 * 12 * static_cast<double>(iters);
}

const KernelTable kTable = {"avx2", AMR, ANR, micro, dot_rows, axpy_rows, load_row, pack_t, store_row, merge_rows, true, nullptr, fma_peak, nullptr, nullptr, nullptr, exact_rows_avx2, gemv_rows_avx2, nullptr, 8, false, micro_w, AMR, ANR, true};

}  // namespace

const KernelTable* avx2_table() { return &kTable; }

}  // namespace lorakit

#else
#include "microkernel.h"
namespace lorakit {
const KernelTable* avx2_table() { return nullptr; }
}  // namespace lorakit
#endif
