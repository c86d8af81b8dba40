// The exact merge's fused pass over a block of rows (microkernel.h ExactRowsFn), per path:
// exact_rows.cc (scalar, any CPU), exact_rows_avx2.cc, exact_rows_avx512.cc (AVX-512 F/VL/BW) and
// exact_rows_avx512bf16.cc (plus AVX512-BF16), both from exact_rows_avx512_body.h.
#pragma once
#include <cstdint>
#include "microkernel.h"

namespace lorakit {

void exact_rows_generic(DType t, void* w, int64_t ldw, int64_t rows, int64_t n, const ExactRowStep* steps, int nsteps);
void exact_rows_avx2(DType t, void* w, int64_t ldw, int64_t rows, int64_t n, const ExactRowStep* steps, int nsteps);
void exact_rows_avx512(DType t, void* w, int64_t ldw, int64_t rows, int64_t n, const ExactRowStep* steps, int nsteps);
void exact_rows_avx512bf16(DType t, void* w, int64_t ldw, int64_t rows, int64_t n, const ExactRowStep* steps, int nsteps);

}  // namespace lorakit
