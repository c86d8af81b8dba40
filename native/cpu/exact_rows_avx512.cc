// exact_rows on AVX-512 (F, VL, BW): the kernel of exact_rows_avx512_body.h, bf16 rounded by
// integer arithmetic.
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define LK_EXACT __attribute__((target("avx512f,avx512vl,avx512bw,avx2,fma,f16c")))
#define LK_EXACT_BF16_CVT 0
#define LK_EXACT_ENTRY exact_rows_avx512
#include "exact_rows_avx512_body.h"
#else
#include "exact_rows.h"
namespace lorakit {
void exact_rows_avx512(DType t, void* w, int64_t ldw, int64_t rows, int64_t n, const ExactRowStep* steps, int nsteps) {
  exact_rows_generic(t, w, ldw, rows, n, steps, nsteps);
}
}  // namespace lorakit
#endif
