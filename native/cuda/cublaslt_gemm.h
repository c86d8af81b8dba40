// cuBLASLt's GEMMs for the cuda backend (gemm_lt_blas.cu): a row-major C = alpha·opA·opB +
// beta·C (+ bias) through cublasLtMatmul, each shape's algorithm timed once among the heuristic's
// candidates and cached per process (so repeated calls are bitwise reproducible). Used by
// linear_blas.cu (LoRA shrink, forward, backward, the base GEMM).
#pragma once
#include <cstdint>
#include "../core/dtype.h"

namespace lorakit {
namespace cuda {
namespace lt {

// A row-major GEMM: C[m, n] = alpha·opA·opB + beta·C (+ bias[n]), where A is stored row-major as
// [m, k] (ta = false) or [k, m] (ta = true), and B as [k, n] (tb = false) or [n, k] (tb = true).
struct Gemm {
  int64_t m, n, k;
  const void* A;
  int64_t lda;
  bool ta;
  const void* B;
  int64_t ldb;
  bool tb;
  void* C;
  int64_t ldc;
  DType ab, c;
  float alpha = 1.f, beta = 0.f;
  const void* bias = nullptr;  // [n], dtype c
};

void run(const Gemm& g);

}  // namespace lt
}  // namespace cuda
}  // namespace lorakit
