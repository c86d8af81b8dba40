#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include "../core/thread_pool.h"
#include "merge_factors.h"
#include "microkernel.h"
#include "ops.h"

namespace lorakit {
namespace cpu {

namespace {
bool all_finite_f32(const float* x, int64_t n) {
  uint32_t bad = 0;  // exponent all ones: inf or NaN (integer form, so that the loop vectorises)
  for (int64_t i = 0; i < n; i++) {
    uint32_t u;
    std::memcpy(&u, x + i, 4);
    bad |= (u & 0x7f800000u) == 0x7f800000u;
  }
  return bad == 0;
}

}  // namespace

bool prepare_factors(const KernelTable& kt, const TensorRef& A, const TensorRef& B, float scale, bool fan_in_fan_out,
                     int64_t rows, int64_t cols, int64_t r, bool even_odd, float* P, float* Q) {
  std::atomic<bool> finite{true};
  const size_t aes = dtype_size(A.dtype), bes = dtype_size(B.dtype);
  const char* a = static_cast<const char*>(A.data);
  const char* b = static_cast<const char*>(B.data);
  parallel_for(
      rows,
      [&](int64_t i0, int64_t i1) {
        float* dst = P + i0 * r;
        if (fan_in_fan_out)  // P[i, k] = A[k, i]: a transposing pack of columns i0..i1 of A
          kt.pack_t(a + i0 * aes, A.dtype, rows, r, i1 - i0, dst, r);
        else
          kt.load_row(b + i0 * r * bes, B.dtype, 1.f, (i1 - i0) * r, dst);
        kt.load_row(dst, DType::F32, scale, (i1 - i0) * r, dst);  // scale·value, as the scalar code did
        if (!all_finite_f32(dst, (i1 - i0) * r)) finite = false;
      },
      std::max<int64_t>(1, 4096 / r));
  const int64_t panels = (cols + RANK_PANEL - 1) / RANK_PANEL;
  parallel_for(
      panels,
      [&](int64_t p0, int64_t p1) {
        for (int64_t pj = p0; pj < p1; pj++) {
          const int64_t j0 = pj * RANK_PANEL, nj = std::min(RANK_PANEL, cols - j0);
          float* panel = Q + j0 * r;
          if (fan_in_fan_out)  // Q(k, j) = B[j, k]
            kt.pack_t(b + j0 * r * bes, B.dtype, r, nj, r, panel, RANK_PANEL);
          else
            for (int64_t k = 0; k < r; k++) kt.load_row(a + (k * cols + j0) * aes, A.dtype, 1.f, nj, panel + k * RANK_PANEL);
          if (nj < RANK_PANEL)
            for (int64_t k = 0; k < r; k++) std::fill(panel + k * RANK_PANEL + nj, panel + (k + 1) * RANK_PANEL, 0.f);
          if (even_odd)
            for (int64_t k = 0; k < r; k++) {
              float* row = panel + k * RANK_PANEL;
              float t[RANK_PANEL];
              std::copy(row, row + RANK_PANEL, t);
              for (int64_t c = 0; c < RANK_PANEL / 2; c++) row[c] = t[2 * c], row[RANK_PANEL / 2 + c] = t[2 * c + 1];
            }
        }
        if (!all_finite_f32(Q + p0 * RANK_PANEL * r, (p1 - p0) * RANK_PANEL * r)) finite = false;
      },
      std::max<int64_t>(1, 256 / r));
  return finite;
}

// Row i of W gets sign·scale·sum_k P[i,k]·Q[k,:]. For [out, in] layout P = B, Q = A; for
// fan_in_fan_out ([in, out]) P = Aᵀ and Q = Bᵀ. W is read and written once, by the fused merge_rows
// kernel in blocks of MERGE_ROWS rows × MERGE_COLS columns split over the thread pool; each element
// is accumulated in f32 and rounded once.
void merge_delta(const TensorRef& W, const TensorRef& A, const TensorRef& B, float scale, bool fan_in_fan_out,
                 const TensorRef& out) {
  const KernelTable& kt = kernel_table();
  int64_t rows = W.dim(0), cols = W.dim(1), r = A.dim(0);
  // Rows per block, a multiple of the 6- and 8-row kernels. Each 8-row group of a block reads the
  // block's Q columns from L2 again: 48 rows use them 6 times instead of 3 (bf16 d = 16384 r = 16
  // on 2 Zen 5 cores: 26-27 -> 24-25 ms), where that still leaves 4 blocks per thread.
  const int64_t MERGE_ROWS = rows >= 48 * 4 * num_threads() ? 48 : 24;
  // Whole rows where Q fits in half of a 512 KiB L2 (r <= 16 at d = 4096): W streams row by row,
  // which the prefetchers like (d = 4096 f32 r = 8: 3.2 -> 2.4 ms against 256-column chunks).
  // Mixed dtypes, and bf16 with non-finite factors (MergeRowsFn), stage 256-column pieces of the
  // block through an f32 tile. The factors are checked as they are packed, so the Q order for the
  // fused bf16 pass is chosen before knowing: a non-finite bf16 case repacks.
  const int64_t panels = (cols + RANK_PANEL - 1) / RANK_PANEL;
  std::unique_ptr<float[]> P(new float[rows * r]), Q(new float[panels * RANK_PANEL * r]);
  bool fused = W.dtype == out.dtype;
  const bool bf16 = fused && W.dtype == DType::BF16;
  const bool factors_finite =
      prepare_factors(kt, A, B, scale, fan_in_fan_out, rows, cols, r, bf16 && kt.merge_bf16_even_odd, P.get(), Q.get());
  if (bf16 && !factors_finite) {
    fused = false;
    if (kt.merge_bf16_even_odd) prepare_factors(kt, A, B, scale, fan_in_fan_out, rows, cols, r, false, P.get(), Q.get());
  }
  const int64_t MERGE_COLS = fused ? std::max<int64_t>(256, (65536 / r) / RANK_PANEL * RANK_PANEL) : 256;
  const float* Pp = P.get();
  const float* Qp = Q.get();
  const size_t wes = dtype_size(W.dtype), oes = dtype_size(out.dtype);
  const char* w = static_cast<const char*>(W.data);
  char* o = static_cast<char*>(out.data);
  int64_t row_blocks = (rows + MERGE_ROWS - 1) / MERGE_ROWS;
  parallel_for(row_blocks, [&](int64_t b, int64_t e) {
    std::unique_ptr<float[]> tile(fused ? nullptr : new float[MERGE_ROWS * MERGE_COLS]);
    for (int64_t rb = b; rb < e; rb++) {
      const int64_t i0 = rb * MERGE_ROWS, nrows = std::min(rows - i0, MERGE_ROWS);
      for (int64_t j0 = 0; j0 < cols; j0 += MERGE_COLS) {
        const int64_t nc = std::min(MERGE_COLS, cols - j0);
        const char* wb = w + (i0 * cols + j0) * wes;
        char* ob = o + (i0 * cols + j0) * oes;
        if (fused) {
          kt.merge_rows(r, Pp + i0 * r, nrows, Qp + j0 * r, nc, wb, W.dtype, cols, ob, out.dtype, cols);
          continue;
        }
        float* t = tile.get();
        for (int64_t i = 0; i < nrows; i++) kt.load_row(wb + i * cols * wes, W.dtype, 1.f, nc, t + i * MERGE_COLS);
        kt.merge_rows(r, Pp + i0 * r, nrows, Qp + j0 * r, nc, t, DType::F32, MERGE_COLS, t, DType::F32, MERGE_COLS);
        for (int64_t i = 0; i < nrows; i++) kt.store_row(t + i * MERGE_COLS, ob + i * cols * oes, out.dtype, nc);
      }
    }
  });
}

void convert(const void* src, DType st, void* dst, DType dt, int64_t n) {
  if (st == dt) {
    if (src != dst) std::memcpy(dst, src, n * dtype_size(st));
    return;
  }
  parallel_for(
      n,
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; i++) store_f32(dst, dt, i, load_f32(src, st, i));
      },
      1 << 15);
}

bool all_finite(const TensorRef& t) {
  int64_t n = t.numel();
  for (int64_t i = 0; i < n; i++)
    if (!std::isfinite(load_f32(t.data, t.dtype, i))) return false;
  return true;
}

}  // namespace cpu
}  // namespace lorakit
