// The AVX-512 path: a 12x32 register tile (24 zmm accumulators, B read once per k step, A
// broadcast from memory). The bandwidth-bound kernels (GEMV, conversions, merge) are shared with
// the AVX2 path: at ~1 byte/FLOP they are limited by memory, not by vector width.
#if defined(__x86_64__) && defined(__GNUC__)
// GCC 12's own _mm512_reduce_add_ps reads _mm256_undefined_pd() and warns -Wuninitialized at every
// use (a false positive in the header, not in this file); keep the install log clean.
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
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
  __m512 c[16];
  for (int i = 0; i < 16; i++) c[i] = _mm512_setzero_ps();
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

KernelTable make() {
  KernelTable t = *avx2_table();
  t.name = "avx512";
  t.mr = XMR;
  t.nr = XNR;
  t.microkernel = micro;
  t.fma_peak = fma_peak;
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
