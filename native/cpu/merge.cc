#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include "../core/thread_pool.h"
#include "microkernel.h"
#include "ops.h"

namespace lorakit {
namespace cpu {

// Row i of W gets sign·scale·sum_k P[i,k]·Q[k,:]. For [out, in] layout P = B, Q = A; for
// fan_in_fan_out ([in, out]) P = Aᵀ and Q = Bᵀ. W is read and written once, in tiles of a few rows
// × MERGE_COLS; each element is accumulated in f32 and rounded once.
void merge_delta(const TensorRef& W, const TensorRef& A, const TensorRef& B, float scale, bool fan_in_fan_out,
                 const TensorRef& out) {
  constexpr int64_t MERGE_ROWS = 8, MERGE_COLS = 256;
  const KernelTable& kt = kernel_table();
  int64_t rows = W.dim(0), cols = W.dim(1), r = A.dim(0);
  // Dense f32 copies of the small factors in the orientation the row loop wants.
  const int64_t panels = (cols + RANK_PANEL - 1) / RANK_PANEL;
  std::unique_ptr<float[]> P(new float[rows * r]), Q(new float[panels * RANK_PANEL * r]());
  for (int64_t i = 0; i < rows; i++)
    for (int64_t k = 0; k < r; k++)
      P[i * r + k] = scale * (fan_in_fan_out ? load_f32(A.data, A.dtype, k * rows + i) : load_f32(B.data, B.dtype, i * r + k));
  for (int64_t k = 0; k < r; k++)
    for (int64_t j = 0; j < cols; j++)
      Q[(j / RANK_PANEL) * RANK_PANEL * r + k * RANK_PANEL + j % RANK_PANEL] =
          fan_in_fan_out ? load_f32(B.data, B.dtype, j * r + k) : load_f32(A.data, A.dtype, k * cols + j);
  const float* Pp = P.get();
  const float* Qp = Q.get();
  const size_t wes = dtype_size(W.dtype), oes = dtype_size(out.dtype);
  int64_t row_blocks = (rows + MERGE_ROWS - 1) / MERGE_ROWS;
  const bool in_place_f32 = W.dtype == DType::F32 && out.dtype == DType::F32 && out.data == W.data;
  parallel_for(row_blocks, [&](int64_t b, int64_t e) {
    std::unique_ptr<float[]> acc(new float[MERGE_ROWS * MERGE_COLS]);
    for (int64_t rb = b; rb < e; rb++) {
      int64_t i0 = rb * MERGE_ROWS, nrows = std::min(rows - i0, MERGE_ROWS);
      if (in_place_f32) {  // f32 in place: the rank update runs on W's rows directly, no staging copy
        float* rows_p = static_cast<float*>(out.data) + i0 * cols;
        for (int64_t j0 = 0; j0 < cols; j0 += MERGE_COLS)
          kt.rank_update(r, Pp + i0 * r, nrows, Qp + j0 * r, std::min(MERGE_COLS, cols - j0), rows_p + j0, cols);
        continue;
      }
      for (int64_t j0 = 0; j0 < cols; j0 += MERGE_COLS) {
        int64_t nc = std::min(MERGE_COLS, cols - j0);
        for (int64_t i = 0; i < nrows; i++)
          kt.load_row(static_cast<const char*>(W.data) + ((i0 + i) * cols + j0) * wes, W.dtype, 1.f, nc,
                      acc.get() + i * MERGE_COLS);
        kt.rank_update(r, Pp + i0 * r, nrows, Qp + j0 * r, nc, acc.get(), MERGE_COLS);
        for (int64_t i = 0; i < nrows; i++)
          kt.store_row(acc.get() + i * MERGE_COLS, static_cast<char*>(out.data) + ((i0 + i) * cols + j0) * oes,
                       out.dtype, nc);
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
