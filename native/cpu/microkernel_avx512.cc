// The AVX-512 path: a 12x32 register tile (24 zmm accumulators, B read once per k step, A
// broadcast from memory), and the merge's fused pass on 8 rows × 32 columns (merge_rows_avx512_body.h). The other
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
#include "kernels_generic.h"
#include "microkernel.h"

#define LK_AVX512 __attribute__((target("avx512f,avx512vl,avx2,fma,f16c")))
#define LK_MERGE LK_AVX512
#define LK_MERGE_BF16_CVT 0
#define LK_MERGE_ENTRY merge_rows_avx512
#include "merge_rows_avx512_body.h"

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

KernelTable make() {
  KernelTable t = *avx2_table();
  t.name = "avx512";
  t.mr = XMR;
  t.nr = XNR;
  t.microkernel = micro;
  t.pack_t = pack_t;
  t.fma_peak = fma_peak;
  t.merge_rows = merge_rows_avx512;
  // The exact kernel wants AVX512-BW too (every AVX-512 CPU with VL has had it); else the AVX2 one.
  t.exact_rows = __builtin_cpu_supports("avx512bw") ? exact_rows_avx512 : t.exact_rows;
  t.merge_bf16_even_odd = false;  // natural order: 16 bf16 widen to one zmm
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
