// The AVX-512 path: a 12x32 register tile (24 zmm accumulators, B read once per k step, A
// broadcast from memory), and the merge's fused pass on 8 rows × 32 columns. The other
// bandwidth-bound kernels (GEMV, conversions) are shared with the AVX2 path: at ~1 byte/FLOP they
// are limited by memory, not by vector width.
#if defined(__x86_64__) && defined(__GNUC__)
// GCC 12's own _mm512_reduce_add_ps, _mm512_cvtph_ps and _mm512_cvtps_ph read _mm*_undefined_*() and
// warn -W(maybe-)uninitialized at every use (a false positive in the header, not in this file); keep
// the install log clean.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include "exact_rows.h"
#include "gemv_rows.h"
#include "kernels_generic.h"
#include "microkernel.h"

#define LK_AVX512 __attribute__((target("avx512f,avx512vl,avx2,fma,f16c")))

namespace lorakit {
namespace {

constexpr int XMR = 12, XNR = 32;

LK_AVX512 void micro(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict acc,
                     int64_t ldacc, int64_t mr, int64_t nr) {
  // Named accumulators (not an array) so that they stay in registers.
  __m512 c00 = _mm512_setzero_ps(), c01 = _mm512_setzero_ps(), c10 = _mm512_setzero_ps(), c11 = _mm512_setzero_ps(), c20 = _mm512_setzero_ps(), c21 = _mm512_setzero_ps(), c30 = _mm512_setzero_ps(), c31 = _mm512_setzero_ps(), c40 = _mm512_setzero_ps(), c41 = _mm512_setzero_ps(), c50 = _mm512_setzero_ps(), c51 = _mm512_setzero_ps(), c60 = _mm512_setzero_ps(), c61 = _mm512_setzero_ps(), c70 = _mm512_setzero_ps(), c71 = _mm512_setzero_ps(), c80 = _mm512_setzero_ps(), c81 = _mm512_setzero_ps(), c90 = _mm512_setzero_ps(), c91 = _mm512_setzero_ps(), c100 = _mm512_setzero_ps(), c101 = _mm512_setzero_ps(), c110 = _mm512_setzero_ps(), c111 = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; k++) {
    __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
    {
      __m512 av = _mm512_set1_ps(a[0]);
      c00 = _mm512_fmadd_ps(av, b0, c00);
      c01 = _mm512_fmadd_ps(av, b1, c01);
    }
    {
      __m512 av = _mm512_set1_ps(a[1]);
      c10 = _mm512_fmadd_ps(av, b0, c10);
      c11 = _mm512_fmadd_ps(av, b1, c11);
    }
    {
      __m512 av = _mm512_set1_ps(a[2]);
      c20 = _mm512_fmadd_ps(av, b0, c20);
      c21 = _mm512_fmadd_ps(av, b1, c21);
    }
    {
      __m512 av = _mm512_set1_ps(a[3]);
      c30 = _mm512_fmadd_ps(av, b0, c30);
      c31 = _mm512_fmadd_ps(av, b1, c31);
    }
    {
      __m512 av = _mm512_set1_ps(a[4]);
      c40 = _mm512_fmadd_ps(av, b0, c40);
      c41 = _mm512_fmadd_ps(av, b1, c41);
    }
    {
      __m512 av = _mm512_set1_ps(a[5]);
      c50 = _mm512_fmadd_ps(av, b0, c50);
      c51 = _mm512_fmadd_ps(av, b1, c51);
    }
    {
      __m512 av = _mm512_set1_ps(a[6]);
      c60 = _mm512_fmadd_ps(av, b0, c60);
      c61 = _mm512_fmadd_ps(av, b1, c61);
    }
    {
      __m512 av = _mm512_set1_ps(a[7]);
      c70 = _mm512_fmadd_ps(av, b0, c70);
      c71 = _mm512_fmadd_ps(av, b1, c71);
    }
    {
      __m512 av = _mm512_set1_ps(a[8]);
      c80 = _mm512_fmadd_ps(av, b0, c80);
      c81 = _mm512_fmadd_ps(av, b1, c81);
    }
    {
      __m512 av = _mm512_set1_ps(a[9]);
      c90 = _mm512_fmadd_ps(av, b0, c90);
      c91 = _mm512_fmadd_ps(av, b1, c91);
    }
    {
      __m512 av = _mm512_set1_ps(a[10]);
      c100 = _mm512_fmadd_ps(av, b0, c100);
      c101 = _mm512_fmadd_ps(av, b1, c101);
    }
    {
      __m512 av = _mm512_set1_ps(a[11]);
      c110 = _mm512_fmadd_ps(av, b0, c110);
      c111 = _mm512_fmadd_ps(av, b1, c111);
    }
    a += XMR;
    b += XNR;
  }
  alignas(64) float t[XMR][XNR];
  _mm512_store_ps(t[0], c00);
  _mm512_store_ps(t[0] + 16, c01);
  _mm512_store_ps(t[1], c10);
  _mm512_store_ps(t[1] + 16, c11);
  _mm512_store_ps(t[2], c20);
  _mm512_store_ps(t[2] + 16, c21);
  _mm512_store_ps(t[3], c30);
  _mm512_store_ps(t[3] + 16, c31);
  _mm512_store_ps(t[4], c40);
  _mm512_store_ps(t[4] + 16, c41);
  _mm512_store_ps(t[5], c50);
  _mm512_store_ps(t[5] + 16, c51);
  _mm512_store_ps(t[6], c60);
  _mm512_store_ps(t[6] + 16, c61);
  _mm512_store_ps(t[7], c70);
  _mm512_store_ps(t[7] + 16, c71);
  _mm512_store_ps(t[8], c80);
  _mm512_store_ps(t[8] + 16, c81);
  _mm512_store_ps(t[9], c90);
  _mm512_store_ps(t[9] + 16, c91);
  _mm512_store_ps(t[10], c100);
  _mm512_store_ps(t[10] + 16, c101);
  _mm512_store_ps(t[11], c110);
  _mm512_store_ps(t[11] + 16, c111);
  __mmask16 m0 = nr >= 16 ? 0xffff : static_cast<__mmask16>((1u << nr) - 1);
  __mmask16 m1 = nr >= 32 ? 0xffff : nr <= 16 ? 0 : static_cast<__mmask16>((1u << (nr - 16)) - 1);
  for (int64_t i = 0; i < mr; i++) {
    float* row = acc + i * ldacc;
    _mm512_mask_storeu_ps(row, m0, _mm512_add_ps(_mm512_maskz_loadu_ps(m0, row), _mm512_load_ps(t[i])));
    _mm512_mask_storeu_ps(row + 16, m1, _mm512_add_ps(_mm512_maskz_loadu_ps(m1, row + 16), _mm512_load_ps(t[i] + 16)));
  }
}

LK_AVX512 double fma_peak(int64_t iters) {
  __m512 m = _mm512_set1_ps(0.999f), a = _mm512_set1_ps(1e-3f);
  __m512 c[16];  // distinct start values, so that the compiler cannot fold identical chains into one
  for (int i = 0; i < 16; i++) c[i] = _mm512_set1_ps(1e-4f * static_cast<float>(i));
  for (int64_t it = 0; it < iters; it++) {
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) c[i] = _mm512_fmadd_ps(c[i], m, a);
  }
  __m512 s = c[0];
  for (int i = 1; i < 16; i++) s = _mm512_add_ps(s, c[i]);
  volatile float sink = _mm512_reduce_add_ps(s);
  (void)sink;
  return 2.0 * 16 * 16 * static_cast<double>(iters);
}

// Transposing pack of f32 (pack_t's contract) in 16 x 16 blocks: 16 loads, 64 shuffles and 16 full-line
// stores per 256 elements, against the AVX2 path's 8 x 8 blocks (twice the shuffles per element and
// half-line accesses), which cost the packing of Wᵀ a sixth of the f32 GEMM's time at n = 128. Only
// moves: the bits of every element are kept (the bf16 packing transposes bf16 pairs through it).
LK_AVX512 void pack_t_f32(const float* src, int64_t ld, int64_t cols, int64_t kc, float* dst, int64_t ldd) {
  int64_t c = 0;
  for (; c + 16 <= cols; c += 16) {
    int64_t k = 0;
    for (; k + 16 <= kc; k += 16) {
      __m512 r[16], t[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + (c + i) * ld + k);
#pragma GCC unroll 8
      for (int i = 0; i < 16; i += 2) {  // 32-bit interleave of row pairs (within 128-bit lanes)
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
      }
#pragma GCC unroll 4
      for (int g = 0; g < 16; g += 4) {  // 64-bit interleave: 4 rows' elements k, k+4, k+8, k+12 per lane
        const __m512d a = _mm512_castps_pd(t[g]), b = _mm512_castps_pd(t[g + 1]);
        const __m512d e = _mm512_castps_pd(t[g + 2]), f = _mm512_castps_pd(t[g + 3]);
        r[g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, e));
        r[g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, e));
        r[g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, f));
        r[g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, f));
      }
      // r[g + q] (g = 0, 4, 8, 12: row group g/4) holds rows g..g+3 at k+q, k+q+4, k+q+8, k+q+12 in its
      // four lanes; two rounds of 128-bit lane shuffles gather each k's four row groups.
      float* d = dst + k * ldd + c;
#pragma GCC unroll 4
      for (int q = 0; q < 4; q++) {
        const __m512 lo0 = _mm512_shuffle_f32x4(r[q], r[4 + q], 0x88), hi0 = _mm512_shuffle_f32x4(r[q], r[4 + q], 0xDD);
        const __m512 lo1 = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0x88), hi1 = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0xDD);
        _mm512_storeu_ps(d + (q + 0) * ldd, _mm512_shuffle_f32x4(lo0, lo1, 0x88));
        _mm512_storeu_ps(d + (q + 8) * ldd, _mm512_shuffle_f32x4(lo0, lo1, 0xDD));
        _mm512_storeu_ps(d + (q + 4) * ldd, _mm512_shuffle_f32x4(hi0, hi1, 0x88));
        _mm512_storeu_ps(d + (q + 12) * ldd, _mm512_shuffle_f32x4(hi0, hi1, 0xDD));
      }
    }
    for (; k < kc; k++)
      for (int64_t q = 0; q < 16; q++) dst[k * ldd + c + q] = src[(c + q) * ld + k];
  }
  if (c < cols) avx2_table()->pack_t(src + c * ld, DType::F32, ld, cols - c, kc, dst + c, ldd);
}

LK_AVX512 void pack_t(const void* src, DType st, int64_t ld, int64_t cols, int64_t kc, float* dst, int64_t ldd) {
  if (st == DType::F32) return pack_t_f32(static_cast<const float*>(src), ld, cols, kc, dst, ldd);
  avx2_table()->pack_t(src, st, ld, cols, kc, dst, ldd);
}

// Sixteen elements of a row of dtype T widened to f32 (bf16: a shift; f16: F16C).
template <DType T>
LK_AVX512 inline __m512 load16(const void* p, int64_t i) {
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
LK_AVX512 inline void store16(void* p, int64_t i, __m512 v) {
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

template <DType T>
inline const void* elem_at(const void* p, int64_t i) {
  return static_cast<const char*>(p) + i * static_cast<int64_t>(T == DType::F32 ? 4 : 2);
}
template <DType T>
inline void* elem_at(void* p, int64_t i) {
  return static_cast<char*>(p) + i * static_cast<int64_t>(T == DType::F32 ? 4 : 2);
}

// MR rows × NP 16-column panels per step (NP·MR zmm accumulators starting at W), the same per-lane
// arithmetic as the AVX2 kernel: W, then r fused multiply-adds in order of q, one rounding.
template <DType T, int MR, int NP>
LK_AVX512 void merge_panels(int64_t r, const float* p, const float* Q, int64_t steps, const void* w, int64_t ldw,
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
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 2
      for (int h = 0; h < NP; h++) store16<T>(o, i * ldo + j + 16 * h, c[i][h]);
  }
}

// MR rows of a block: pairs of panels, a last single panel, then the last nt < 16 columns through
// an f32 tile (Q's padding is zero).
template <DType T, int MR>
LK_AVX512 void merge_block(int64_t r, const float* p, const float* Q, int64_t n, const void* w, int64_t ldw, void* o,
                           int64_t ldo) {
  const int64_t panels = n / 16, pairs = panels / 2, full = panels * 16, nt = n - full;
  merge_panels<T, MR, 2>(r, p, Q, pairs, w, ldw, o, ldo);
  if (panels % 2) {
    const int64_t j = pairs * 32;
    merge_panels<T, MR, 1>(r, p, Q + j * r, 1, elem_at<T>(w, j), ldw, elem_at<T>(o, j), ldo);
  }
  if (nt == 0) return;
  alignas(64) float t[MR][16];
  for (int i = 0; i < MR; i++)
    for (int64_t j = 0; j < 16; j++) t[i][j] = j < nt ? load_f32(w, T, i * ldw + full + j) : 0.f;
  merge_panels<DType::F32, MR, 1>(r, p, Q + full * r, 1, t, 16, t, 16);
  for (int i = 0; i < MR; i++)
    for (int64_t j = 0; j < nt; j++) store_f32(o, T, i * ldo + full + j, t[i][j]);
}

template <DType T>
LK_AVX512 void merge_rows_t(int64_t r, const float* p, int64_t rows, const float* Q, int64_t n, const void* w,
                            int64_t ldw, void* o, int64_t ldo) {
  int64_t i = 0;
  for (; i + 8 <= rows; i += 8) merge_block<T, 8>(r, p + i * r, Q, n, elem_at<T>(w, i * ldw), ldw, elem_at<T>(o, i * ldo), ldo);
  for (; i + 4 <= rows; i += 4) merge_block<T, 4>(r, p + i * r, Q, n, elem_at<T>(w, i * ldw), ldw, elem_at<T>(o, i * ldo), ldo);
  for (; i + 2 <= rows; i += 2) merge_block<T, 2>(r, p + i * r, Q, n, elem_at<T>(w, i * ldw), ldw, elem_at<T>(o, i * ldo), ldo);
  for (; i < rows; i++) merge_block<T, 1>(r, p + i * r, Q, n, elem_at<T>(w, i * ldw), ldw, elem_at<T>(o, i * ldo), ldo);
}

LK_AVX512 void merge_rows(int64_t r, const float* p, int64_t rows, const float* Q, int64_t n, const void* w, DType wt,
                          int64_t ldw, void* o, DType ot, int64_t ldo) {
  if (wt == ot) switch (wt) {
      case DType::F32: return merge_rows_t<DType::F32>(r, p, rows, Q, n, w, ldw, o, ldo);
      case DType::BF16: return merge_rows_t<DType::BF16>(r, p, rows, Q, n, w, ldw, o, ldo);
      case DType::F16: return merge_rows_t<DType::F16>(r, p, rows, Q, n, w, ldw, o, ldo);
      default: break;
    }
  generic::merge_rows(r, p, rows, Q, n, w, wt, ldw, o, ot, ldo);
}

KernelTable make() {
  KernelTable t = *avx2_table();
  t.name = "avx512";
  t.mr = XMR;
  t.nr = XNR;
  t.microkernel = micro;
  t.pack_t = pack_t;
  t.fma_peak = fma_peak;
  t.merge_rows = merge_rows;
  // The exact kernel wants AVX512-BW too (every AVX-512 CPU with VL has had it); else the AVX2 one.
  t.exact_rows = __builtin_cpu_supports("avx512bw") ? exact_rows_avx512 : t.exact_rows;
  t.merge_bf16_even_odd = false;  // natural order: 16 bf16 widen to one zmm
  if (__builtin_cpu_supports("avx512bw")) t.gemv_rows = gemv_rows_avx512, t.gemv_rows_max = 32;  // masked 16-bit loads
  return t;
}

}  // namespace

const KernelTable* avx512_table() {
  static const KernelTable t = make();
  return &t;
}

}  // namespace lorakit

#else
#include "microkernel.h"
namespace lorakit {
const KernelTable* avx512_table() { return nullptr; }
}  // namespace lorakit
#endif
