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
#include "gemv_rows.h"
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

// The C tile is loaded into the accumulators (masked: rows past mr read as zero, columns past nr
// are never touched) and stored back once: each element is acc + its products in order of k, the
// same for full and edge tiles (so the thread split, which moves tile edges, never changes a bit),
// without staging the sums through memory to add them (a twentieth of the time at kc = 192).
LK_AVX512 void micro(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict acc,
                     int64_t ldacc, int64_t mr, int64_t nr) {
  const __mmask16 m0 = nr >= 16 ? 0xffff : static_cast<__mmask16>((1u << nr) - 1);
  const __mmask16 m1 = nr >= 32 ? 0xffff : nr <= 16 ? 0 : static_cast<__mmask16>((1u << (nr - 16)) - 1);
  // Named accumulators (not an array) so that they stay in registers.
#define LK_LOAD_ROW(i)                                                                              \
  __m512 c##i##0 = i < mr ? _mm512_maskz_loadu_ps(m0, acc + i * ldacc) : _mm512_setzero_ps();        \
  __m512 c##i##1 = i < mr ? _mm512_maskz_loadu_ps(m1, acc + i * ldacc + 16) : _mm512_setzero_ps();
  LK_LOAD_ROW(0) LK_LOAD_ROW(1) LK_LOAD_ROW(2) LK_LOAD_ROW(3) LK_LOAD_ROW(4) LK_LOAD_ROW(5)
  LK_LOAD_ROW(6) LK_LOAD_ROW(7) LK_LOAD_ROW(8) LK_LOAD_ROW(9) LK_LOAD_ROW(10) LK_LOAD_ROW(11)
#undef LK_LOAD_ROW
  for (int64_t k = 0; k < kc; k++) {
    const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
#define LK_FMA_ROW(i)                               \
  {                                                 \
    const __m512 av = _mm512_set1_ps(a[i]);         \
    c##i##0 = _mm512_fmadd_ps(av, b0, c##i##0);     \
    c##i##1 = _mm512_fmadd_ps(av, b1, c##i##1);     \
  }
    LK_FMA_ROW(0) LK_FMA_ROW(1) LK_FMA_ROW(2) LK_FMA_ROW(3) LK_FMA_ROW(4) LK_FMA_ROW(5)
    LK_FMA_ROW(6) LK_FMA_ROW(7) LK_FMA_ROW(8) LK_FMA_ROW(9) LK_FMA_ROW(10) LK_FMA_ROW(11)
#undef LK_FMA_ROW
    a += XMR;
    b += XNR;
  }
#define LK_STORE_ROW(i)                                        \
  if (i < mr) {                                                \
    _mm512_mask_storeu_ps(acc + i * ldacc, m0, c##i##0);       \
    _mm512_mask_storeu_ps(acc + i * ldacc + 16, m1, c##i##1);  \
  }
  LK_STORE_ROW(0) LK_STORE_ROW(1) LK_STORE_ROW(2) LK_STORE_ROW(3) LK_STORE_ROW(4) LK_STORE_ROW(5)
  LK_STORE_ROW(6) LK_STORE_ROW(7) LK_STORE_ROW(8) LK_STORE_ROW(9) LK_STORE_ROW(10) LK_STORE_ROW(11)
#undef LK_STORE_ROW
}

// micro with the broadcast operand's WR rows read in place from a row-major matrix (row i at
// w + i * ldw, kc contiguous values; rows past mr repeat row mr - 1 and are never stored) against a
// packed panel of WG·16 columns: W's rows for x·Wᵀ, so that W is never packed (gemm_w_in_place.cc).
// Same FMA chains as micro (from C, k ascending), so the same bits. WR is 6, not micro's 12: W's
// rows are often a power of two apart, so the lines of one k step share an L1 set (8 ways); 12 rows
// evicted each other at every step and every broadcast came from L2.
constexpr int WR = 6, WG = 4;
// G of the panel's WG 16-column groups (a last, partial panel of tokens skips the groups it lacks).
template <int G>
LK_AVX512 void micro_w_groups(int64_t kc, const float* __restrict w, int64_t ldw, const float* __restrict b,
                              float* __restrict acc, int64_t ldacc, int64_t mr, int64_t nr) {
  __mmask16 m[G];
  for (int g = 0; g < G; g++) {
    const int64_t left = nr - 16 * g;
    m[g] = left >= 16 ? 0xffff : left <= 0 ? 0 : static_cast<__mmask16>((1u << left) - 1);
  }
  const float* p[WR];
  __m512 c[WR][G];
#pragma GCC unroll 6
  for (int i = 0; i < WR; i++) {
    p[i] = w + (i < mr ? i : mr - 1) * ldw;
#pragma GCC unroll 4
    for (int g = 0; g < G; g++) c[i][g] = i < mr ? _mm512_maskz_loadu_ps(m[g], acc + i * ldacc + 16 * g) : _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < kc; k++) {
    __m512 bv[G];
#pragma GCC unroll 4
    for (int g = 0; g < G; g++) bv[g] = _mm512_loadu_ps(b + 16 * g);
#pragma GCC unroll 6
    for (int i = 0; i < WR; i++) {
      const __m512 av = _mm512_set1_ps(p[i][k]);
#pragma GCC unroll 4
      for (int g = 0; g < G; g++) c[i][g] = _mm512_fmadd_ps(av, bv[g], c[i][g]);
    }
    b += 16 * WG;
  }
#pragma GCC unroll 6
  for (int i = 0; i < WR; i++)
    if (i < mr)
#pragma GCC unroll 4
      for (int g = 0; g < G; g++) _mm512_mask_storeu_ps(acc + i * ldacc + 16 * g, m[g], c[i][g]);
}

LK_AVX512 void micro_w(int64_t kc, const float* w, int64_t ldw, const float* b, float* acc, int64_t ldacc, int64_t mr, int64_t nr) {
  switch ((nr + 15) / 16) {
    case 1: return micro_w_groups<1>(kc, w, ldw, b, acc, ldacc, mr, nr);
    case 2: return micro_w_groups<2>(kc, w, ldw, b, acc, ldacc, mr, nr);
    case 3: return micro_w_groups<3>(kc, w, ldw, b, acc, ldacc, mr, nr);
    default: return micro_w_groups<WG>(kc, w, ldw, b, acc, ldacc, mr, nr);
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
  t.microkernel_w = micro_w;
  t.mr_w = WR;
  t.nr_w = 16 * WG;
  t.w_in_place_timed = false;  // in place was faster at every shape measured (40-4096 tokens)
  t.micro_sums_ignore_blocks = true;
  t.pack_t = pack_t;
  t.fma_peak = fma_peak;
  t.merge_rows = merge_rows_avx512;
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
