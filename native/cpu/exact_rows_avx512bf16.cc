// exact_rows on AVX-512 with AVX512-BF16: the kernel of exact_rows_avx512_body.h, bf16 rounded by
// vcvtneps2bf16 (one instruction instead of five).
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define LK_EXACT __attribute__((target("avx512f,avx512vl,avx512bw,avx512bf16,avx2,fma,f16c")))
#define LK_EXACT_BF16_CVT 1
#define LK_EXACT_ENTRY exact_rows_avx512bf16
#include "exact_rows_avx512_body.h"
#else
#include "exact_rows.h"
namespace lorakit {
void exact_rows_avx512bf16(DType t, void* w, int64_t ldw, int64_t rows, int64_t n, const ExactRowStep* steps, int nsteps) {
  exact_rows_generic(t, w, ldw, rows, n, steps, nsteps);
}
}  // namespace lorakit
#endif
