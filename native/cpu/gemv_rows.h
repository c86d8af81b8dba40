// The GEMV paths of gemm(): one row (dot_rows / axpy_rows) and the multi-row kernels
// (gemv_rows_avx512.cc, gemv_rows_avx2.cc) that the kernel tables point at: y[i, j] += Σ_k x[i, k]·W[j, k] for a few rows of x, W's rows read in place (gemm.cc routes
// 2 ≤ m ≤ GEMV_ROWS_MAX with every B stored as rows along K here instead of packing W; see
// gemv_rows_ok).
#pragma once
#include <cstdint>
#include <vector>
#include "gemm.h"
#include "microkernel.h"

namespace lorakit {

// The most rows of x any path's gemv_rows takes (KernelTable::gemv_rows_max: 32 for AVX-512, 8 for
// AVX2). Measured on the 2-vCPU Zen 5 EPYC, d 4096 (bench/results/gemv-rows-2026-12-06-amd-epyc.txt):
// AVX-512 took 0.87-0.96x the packed GEMM's time at 32 rows (f32), about 1.0x at 48; the AVX2 kernel
// (there, LORAKIT_CPU_PATH=avx2) 0.45-0.58x at 2 rows, 0.85-0.91x at 8, 1.13-1.22x at 16 (likely
// because each W row block re-reads all of x from L2: 2-row blocks in 16 ymm registers, not 4).
constexpr int64_t GEMV_ROWS_MAX = 32;
// For bf16·bf16 segments that the GEMM would run as full 32-row bf16 blocks (vdpbf16ps, AMX): 24
// rows took 0.75-0.84x the GEMM's time, 32 rows 0.96-1.12x.
constexpr int64_t GEMV_ROWS_MAX_BF16_BLOCKS = 24;

// Whether gemm(m, ·, segs) runs here: 2 ≤ m ≤ GEMV_ROWS_MAX (m = 1 too when a segment is bf16·bf16
// and the path has gemv_rows_bf16), the path has a kernel, every B is a
// float W stored as rows along K (not decoded); segments the GEMM runs as bf16 blocks only up to
// GEMV_ROWS_MAX_BF16_BLOCKS rows, and never on AMX (whose tiles read such a W in place already).
bool gemv_rows_ok(const KernelTable& kt, int64_t m, const std::vector<KSegment>& segs);
// gemm() over those rows (gemv_rows.cc).
void gemv_rows_gemm(int64_t m, int64_t n, const std::vector<KSegment>& segs, const GemmOutput& out);

// m = 1 otherwise: every B streamed once, as rows (B(k, j) contiguous in k: the path's dot_rows) or as
// columns (axpy_rows); not for decoded B.
bool gemv_one_row_ok(int64_t m, const std::vector<KSegment>& segs);
void gemv_one_row(int64_t n, const std::vector<KSegment>& segs, const GemmOutput& out);

// gemm.cc's output step: bias (row vector) and beta·C, then one rounding into the output dtype
// (tmp and bias: scratch of nc floats each).
void store_gemm_rows(const KernelTable& kt, const float* acc, int64_t ldacc, int64_t i0, int64_t rows, int64_t j0, int64_t nc,
                     const GemmOutput& out, float* tmp, float* bias);

// GemvRowsFn (microkernel.h) per ISA; the AVX-512 ones want AVX512-BW as well (masked 16-bit loads).
void gemv_rows_avx512(int64_t m, int64_t k, const float* x, int64_t ldx, const void* w, DType wt, int64_t ldw,
                      int64_t rows, float* out, int64_t ldo);
void gemv_rows_avx2(int64_t m, int64_t k, const float* x, int64_t ldx, const void* w, DType wt, int64_t ldw,
                    int64_t rows, float* out, int64_t ldo);
// GemvRowsBf16Fn with vdpbf16ps (AVX512-BF16).
void gemv_rows_bf16_avx512bf16(int64_t m, int64_t k, const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t ldw,
                               int64_t rows, float* out, int64_t ldo);

// Scalar stand-in for dtypes the vector kernels do not widen (gemm.cc sends only f32, bf16, f16).
inline void gemv_rows_generic(int64_t m, int64_t k, const float* x, int64_t ldx, const void* w, DType wt, int64_t ldw,
                              int64_t rows, float* out, int64_t ldo) {
  for (int64_t i = 0; i < m; i++)
    for (int64_t j = 0; j < rows; j++) {
      float s = 0.f;
      for (int64_t p = 0; p < k; p++) s += x[i * ldx + p] * load_f32(w, wt, j * ldw + p);
      out[i * ldo + j] += s;
    }
}

}  // namespace lorakit
