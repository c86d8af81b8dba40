#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include "../core/thread_pool.h"
#include "ops.h"

namespace lorakit {
namespace cpu {

// Row i of W gets sign·scale·sum_k P[i,k]·Q[k,:]. For [out, in] layout P = B, Q = A; for
// fan_in_fan_out ([in, out]) P = Aᵀ and Q = Bᵀ. Rows are independent, so W is read and written once.
void merge_delta(const TensorRef& W, const TensorRef& A, const TensorRef& B, float scale, bool fan_in_fan_out,
                 const TensorRef& out) {
  int64_t rows = W.dim(0), cols = W.dim(1), r = A.dim(0);
  // Dense f32 copies of the small factors in the orientation the row loop wants.
  std::unique_ptr<float[]> P(new float[rows * r]), Q(new float[r * cols]);
  for (int64_t i = 0; i < rows; i++)
    for (int64_t k = 0; k < r; k++)
      P[i * r + k] = scale * (fan_in_fan_out ? load_f32(A.data, A.dtype, k * rows + i) : load_f32(B.data, B.dtype, i * r + k));
  for (int64_t k = 0; k < r; k++)
    for (int64_t j = 0; j < cols; j++)
      Q[k * cols + j] = fan_in_fan_out ? load_f32(B.data, B.dtype, j * r + k) : load_f32(A.data, A.dtype, k * cols + j);
  const float* Pp = P.get();
  const float* Qp = Q.get();
  parallel_for(
      rows,
      [&](int64_t b, int64_t e) {
        std::unique_ptr<float[]> acc(new float[cols]);
        for (int64_t i = b; i < e; i++) {
          float* a = acc.get();
          for (int64_t j = 0; j < cols; j++) a[j] = load_f32(W.data, W.dtype, i * cols + j);
          for (int64_t k = 0; k < r; k++) {
            float p = Pp[i * r + k];
            const float* q = Qp + k * cols;
            for (int64_t j = 0; j < cols; j++) a[j] += p * q[j];
          }
          for (int64_t j = 0; j < cols; j++) store_f32(out.data, out.dtype, i * cols + j, a[j]);
        }
      },
      std::max<int64_t>(1, 16384 / std::max<int64_t>(1, cols)));
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
