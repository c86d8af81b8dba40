// The GEMV paths of gemm(). One row: dot_rows over W's rows (or axpy_rows over columns). A few rows
// of A (2 ≤ m ≤ GEMV_ROWS_MAX; one row of bf16·bf16 where vdpbf16ps exists)
// when every B is a W stored as rows along K
// (B(k, j) = W[j, k], the Linear layout, and each adapter's Bᵀ): the path's multi-row GEMV reads W
// in place instead of packing it on every call (the packed GEMM ran its register tile at 11-25% of
// the FMA peak here). Same contract as gemm: C = beta·C + Σ_s alpha_s·A_s·B_s (+ bias), f32 sums,
// one rounding into C's dtype; each row of W is one task's, so results do not depend on threads.
#include <algorithm>
#include <vector>
#include "../core/thread_pool.h"
#include "gemv_rows.h"

namespace lorakit {

namespace {

constexpr int64_t kRowUnit = 16;  // W rows per parallel unit (a multiple of the kernels' row blocks)
constexpr int64_t kCols = 256;    // W rows per accumulator block: m × 256 f32 (16 KiB at m = 16)

bool float_dtype(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; }

// bf16 x and bf16 W through the bf16 dot unit: x taken bit for bit, so only alpha = 1.
bool bf16_dot(const KernelTable& kt, const KSegment& s) {
  return kt.gemv_rows_bf16 && s.a.dtype == DType::BF16 && s.b.dtype == DType::BF16 && s.alpha == 1.f &&
         s.a.cs == 1;
}

}  // namespace

bool gemv_rows_ok(const KernelTable& kt, int64_t m, const std::vector<KSegment>& segs) {
  if (m < 1 || m > std::min(kt.gemv_rows_max, GEMV_ROWS_MAX) || !kt.gemv_rows) return false;
  // One row: gemm's dot_rows GEMV, unless a segment has the bf16 dot unit (x and W bf16): 0.74x
  // dot_rows' time at d 4096, best of five (bench/results/gemv-rows-2026-12-06-amd-epyc.txt); with
  // f32 W this kernel took 1.07-1.10x dot_rows' time (a trial run), so dot_rows keeps those.
  if (m == 1 && std::none_of(segs.begin(), segs.end(), [&](const KSegment& s) { return bf16_dot(kt, s); }))
    return false;
  for (const KSegment& s : segs) {
    if (s.b.decode || s.b.rs != 1 || !float_dtype(s.b.dtype) || !float_dtype(s.a.dtype)) return false;
    // AMX multiplies bf16 x by a bf16 W in place through its tiles already.
    const bool bf16_blocks = kt.bf16_block && s.a.dtype == DType::BF16 && s.b.dtype == DType::BF16 && s.alpha == 1.f;
    if (bf16_blocks && (kt.bf16_block_w || m > GEMV_ROWS_MAX_BF16_BLOCKS)) return false;
  }
  return true;
}

void gemv_rows_gemm(int64_t m, int64_t n, const std::vector<KSegment>& segs, const GemmOutput& out) {
  const KernelTable& kt = kernel_table();
  // Each segment's x once per call: f32 rows with alpha folded in (as the packed path's A panels),
  // or bf16 rows as they are for the bf16 dot unit.
  std::vector<std::vector<float>> xf(segs.size());
  for (size_t si = 0; si < segs.size(); si++) {
    const KSegment& s = segs[si];
    if (bf16_dot(kt, s) || s.k == 0) continue;
    xf[si].resize(static_cast<size_t>(m * s.k));
    for (int64_t i = 0; i < m; i++) {
      float* row = xf[si].data() + i * s.k;
      if (s.a.cs == 1)
        kt.load_row(static_cast<const char*>(s.a.data) + i * s.a.rs * dtype_size(s.a.dtype), s.a.dtype, s.alpha, s.k, row);
      else
        for (int64_t k = 0; k < s.k; k++) row[k] = s.alpha * s.a.at(i, k);
    }
  }
  parallel_for((n + kRowUnit - 1) / kRowUnit, [&](int64_t b, int64_t e) {
    std::vector<float> acc(static_cast<size_t>(m * kCols)), tmp(kCols), bias(kCols);
    for (int64_t j0 = b * kRowUnit; j0 < std::min(n, e * kRowUnit); j0 += kCols) {
      const int64_t nc = std::min({kCols, n - j0, e * kRowUnit - j0});
      for (int64_t i = 0; i < m; i++) std::fill(acc.data() + i * kCols, acc.data() + i * kCols + nc, 0.f);
      for (size_t si = 0; si < segs.size(); si++) {
        const KSegment& s = segs[si];
        if (s.k == 0) continue;
        const char* w = static_cast<const char*>(s.b.data) + j0 * s.b.cs * dtype_size(s.b.dtype);
        if (bf16_dot(kt, s))
          kt.gemv_rows_bf16(m, s.k, static_cast<const uint16_t*>(s.a.data), s.a.rs, reinterpret_cast<const uint16_t*>(w),
                            s.b.cs, nc, acc.data(), kCols);
        else
          kt.gemv_rows(m, s.k, xf[si].data(), s.k, w, s.b.dtype, s.b.cs, nc, acc.data(), kCols);
      }
      store_gemm_rows(kt, acc.data(), kCols, 0, m, j0, nc, out, tmp.data(), bias.data());
    }
  });
}

bool gemv_one_row_ok(int64_t m, const std::vector<KSegment>& segs) {
  if (m != 1) return false;
  for (const KSegment& s : segs)
    if ((s.b.rs != 1 && s.b.cs != 1) || s.b.decode) return false;
  return true;
}

void gemv_one_row(int64_t n, const std::vector<KSegment>& segs, const GemmOutput& out) {
  const int64_t nc_max = gemm_blocks().nc;
  const KernelTable& kt = kernel_table();
  std::vector<std::vector<float>> xs(segs.size());
  for (size_t i = 0; i < segs.size(); i++) {
    const KSegment& s = segs[i];
    xs[i].resize(s.k);
    if (s.a.cs == 1) kt.load_row(s.a.data, s.a.dtype, s.alpha, s.k, xs[i].data());
    else
      for (int64_t k = 0; k < s.k; k++) xs[i][k] = s.alpha * s.a.at(0, k);
  }
  parallel_for(
      n,
      [&](int64_t b, int64_t e) {
        std::vector<float> acc(nc_max), tmp(nc_max), bias(nc_max);
        for (int64_t j0 = b; j0 < e; j0 += nc_max) {
          const int64_t nc = std::min(nc_max, e - j0);
          std::fill(acc.begin(), acc.begin() + nc, 0.f);
          for (size_t i = 0; i < segs.size(); i++) {
            const KSegment& s = segs[i];
            const char* bj = static_cast<const char*>(s.b.data) + j0 * s.b.cs * static_cast<int64_t>(dtype_size(s.b.dtype));
            if (s.b.rs == 1 && !(s.b.cs == 1 && s.k == 1))
              kt.dot_rows(s.k, xs[i].data(), bj, s.b.dtype, s.b.cs, nc, acc.data());
            else
              kt.axpy_rows(s.k, xs[i].data(), bj, s.b.dtype, s.b.rs, nc, acc.data());
          }
          store_gemm_rows(kt, acc.data(), nc_max, 0, 1, j0, nc, out, tmp.data(), bias.data());
        }
      },
      64);
}

}  // namespace lorakit
