// The AVX512-BF16 path (AMD Zen 4 and later, Intel Cooper Lake; also Sapphire Rapids when the OS
// refuses AMX tile state): bf16×bf16 GEMM segments run as vdpbf16ps blocks; everything else uses the
// AVX-512 kernels. Hand-written because no BLAS offers bf16×bf16→f32 on our packed layouts (the
// AMX path's, so both paths share gemm.cc's packing and the fused LoRA K segments).
// Numerics, as the AMX path: bf16 operands taken bit for bit (x is not rounded: only segments whose
// operands are both bf16 come here), products exact in f32, f32 accumulation (each vdpbf16ps adds
// two products per lane; like tdpbf16ps it treats bf16 denormal inputs as zero), one rounding on
// store in gemm.cc. Results are independent of the thread count (each block is one task's).
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <cpuid.h>
#include <algorithm>
#include <cstring>
#include "exact_rows.h"
#include "gemv_rows.h"
#include "microkernel.h"

#define LK_BF16 __attribute__((target("avx512f,avx512vl,avx512bf16,avx2,fma,f16c")))
// The merge kernel with bf16 rows rounded by vcvtne2ps2bf16 (denormals found by vfpclassps: DQ).
#define LK_MERGE __attribute__((target("avx512f,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")))
#define LK_MERGE_BF16_CVT 1
#define LK_MERGE_ENTRY merge_rows_avx512bf16
#include "merge_rows_avx512_body.h"

namespace lorakit {
namespace {

constexpr int ROWS = 8;        // rows per register block: 8 x 32 columns = 16 zmm accumulators
constexpr int64_t KCHUNK = 256;  // k steps per pass: the B chunk (16 KiB) stays in L1 for all 32 rows

LK_BF16 inline __m512bh pair_of(const uint16_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return (__m512bh)_mm512_set1_epi32(v);
}

// ROWS rows (of a 32-row block) × 32 columns over the k chunks [s0, s1) of 32 steps each.
LK_BF16 void rows_block(int64_t s0, int64_t s1, const uint16_t* a, const uint16_t* b, float* acc, int64_t ldacc) {
  __m512 c[ROWS][2];
#pragma GCC unroll 8
  for (int i = 0; i < ROWS; i++) {
    c[i][0] = _mm512_loadu_ps(acc + i * ldacc);
    c[i][1] = _mm512_loadu_ps(acc + i * ldacc + 16);
  }
  for (int64_t s = s0; s < s1; s++) {
    const uint16_t* as = a + s * 1024;  // this chunk's 32 rows × 32 k; our rows start at a
    const uint16_t* bs = b + s * 1024;  // 16 VNNI pairs × 32 columns
    for (int p = 0; p < 16; p++) {
      const __m512bh b0 = (__m512bh)_mm512_loadu_si512(bs + p * 64);
      const __m512bh b1 = (__m512bh)_mm512_loadu_si512(bs + p * 64 + 32);
#pragma GCC unroll 8
      for (int i = 0; i < ROWS; i++) {
        const __m512bh av = pair_of(as + i * 32 + 2 * p);
        c[i][0] = _mm512_dpbf16_ps(c[i][0], av, b0);
        c[i][1] = _mm512_dpbf16_ps(c[i][1], av, b1);
      }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < ROWS; i++) {
    _mm512_storeu_ps(acc + i * ldacc, c[i][0]);
    _mm512_storeu_ps(acc + i * ldacc + 16, c[i][1]);
  }
}

// Bf16BlockFn: per chunk of K, the four 8-row groups sweep the same B chunk (from L1).
LK_BF16 void dp_block(int64_t kc, const uint16_t* a, const uint16_t* b, float* acc, int64_t ldacc) {
  const int64_t steps = kc / 32;
  for (int64_t s0 = 0; s0 < steps; s0 += KCHUNK / 32) {
    const int64_t s1 = std::min<int64_t>(steps, s0 + KCHUNK / 32);
    for (int g = 0; g < BF16_BLOCK / ROWS; g++)
      rows_block(s0, s1, a + g * ROWS * 32, b, acc + g * ROWS * ldacc, ldacc);
  }
}

// Register-resident vdpbf16ps, 24 independent accumulators: each is 16 lanes × 2 multiply-adds.
LK_BF16 double dp_peak(int64_t iters) {
  __m512 c[24];
  for (int i = 0; i < 24; i++) c[i] = _mm512_set1_ps(static_cast<float>(i));  // distinct: no chains to merge
  const __m512bh x = (__m512bh)_mm512_set1_epi16(0x3c00), y = (__m512bh)_mm512_set1_epi16(0x3c01);
  for (int64_t it = 0; it < iters; it++) {
#pragma GCC unroll 24
    for (int i = 0; i < 24; i++) c[i] = _mm512_dpbf16_ps(c[i], x, y);
  }
  __m512 s = c[0];
  for (int i = 1; i < 24; i++) s = _mm512_add_ps(s, c[i]);
  alignas(64) float out[16];
  _mm512_store_ps(out, s);
  volatile float sink = out[0];
  (void)sink;
  return 24.0 * 16 * 2 * 2 * static_cast<double>(iters);
}

bool cpu_has_avx512_bf16() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
  return a & (1u << 5);  // CPUID.(7,1):EAX[5] AVX512_BF16
}

const KernelTable* make() {
  const KernelTable* base = avx512_table();
  __builtin_cpu_init();
  if (!base || !__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512vl") || !cpu_has_avx512_bf16())
    return nullptr;
  static KernelTable t = *base;
  t.name = "avx512bf16";
  t.bf16_block = dp_block;
  t.bf16_dot_peak = dp_peak;
  if (__builtin_cpu_supports("avx512dq")) t.merge_rows = merge_rows_avx512bf16;
  if (__builtin_cpu_supports("avx512bw")) t.exact_rows = exact_rows_avx512bf16;
  if (__builtin_cpu_supports("avx512bw")) t.gemv_rows_bf16 = gemv_rows_bf16_avx512bf16;
  return &t;
}

}  // namespace

const KernelTable* avx512bf16_table() {
  static const KernelTable* t = make();
  return t;
}

}  // namespace lorakit

#else
#include "microkernel.h"
namespace lorakit {
const KernelTable* avx512bf16_table() { return nullptr; }
}  // namespace lorakit
#endif
