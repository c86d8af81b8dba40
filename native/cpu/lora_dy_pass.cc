// The backward's one pass over dy: for every adapter, g = s·dy·B [n, r] (kept in f32 for dA and dx)
// and dB = s·dyᵀ·u [out, r]. Two GEMMs would each read (and pack) all of dy; here each task owns
// a block of dy's columns, reads it once, and produces its complete slice of every dB plus a partial
// g that a fixed-order reduction sums (so results do not depend on the thread count).
#include <algorithm>
#include <memory>
#include <vector>
#include "../core/thread_pool.h"
#include "lora_dy_pass.h"
#include "microkernel.h"

namespace lorakit {
namespace cpu {

void dy_pass(const TensorRef& dy, int64_t n, int64_t outf, const std::vector<BackwardTerm>& terms,
             std::vector<std::unique_ptr<float[]>>& gs) {
  constexpr int64_t JW = 128;
  const KernelTable& kt = kernel_table();
  const int64_t tasks = (outf + JW - 1) / JW;
  std::vector<int64_t> off;
  int64_t R = 0;
  for (const auto& t : terms) {
    off.push_back(R);
    R += t.B.dim(1);
  }
  std::unique_ptr<float[]> partial(new float[tasks * n * R]);
  const size_t des = dtype_size(dy.dtype);
  parallel_for(tasks, [&](int64_t b, int64_t e) {
    std::vector<float> dyt(JW * n), row(JW), acc(R);
    for (int64_t task = b; task < e; task++) {
      const int64_t j0 = task * JW, jw = std::min(JW, outf - j0);
      float* gp = partial.get() + task * n * R;
      std::fill(gp, gp + n * R, 0.f);
      for (int64_t i = 0; i < n; i++) {
        kt.load_row(static_cast<const char*>(dy.data) + (i * outf + j0) * des, dy.dtype, 1.f, jw, row.data());
        for (int64_t j = 0; j < jw; j++) dyt[j * n + i] = row[j];
        for (size_t a = 0; a < terms.size(); a++) {
          const TensorRef& B = terms[a].B;
          int64_t r = B.dim(1);
          kt.axpy_rows(jw, row.data(), static_cast<const char*>(B.data) + j0 * r * dtype_size(B.dtype), B.dtype, r, r,
                       gp + i * R + off[a]);
        }
      }
      for (const auto& t : terms) {
        if (!t.dB) continue;
        int64_t r = t.B.dim(1);
        for (int64_t j = 0; j < jw; j++) {
          std::fill(acc.begin(), acc.begin() + r, 0.f);
          kt.axpy_rows(n, dyt.data() + j * n, t.u.data, t.u.dtype, r, r, acc.data());
          for (int64_t q = 0; q < r; q++) acc[q] *= t.scale;
          kt.store_row(acc.data(), static_cast<char*>(t.dB->data) + (j0 + j) * r * dtype_size(t.dB->dtype), t.dB->dtype,
                       r);
        }
      }
    }
  });
  gs.clear();
  for (const auto& t : terms) gs.emplace_back(new float[n * t.B.dim(1)]);
  parallel_for(
      n,
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; i++)
          for (size_t a = 0; a < terms.size(); a++) {
            int64_t r = terms[a].B.dim(1);
            float* g = gs[a].get() + i * r;
            for (int64_t q = 0; q < r; q++) {
              float s = 0.f;
              for (int64_t task = 0; task < tasks; task++) s += partial[(task * n + i) * R + off[a] + q];
              g[q] = terms[a].scale * s;
            }
          }
      },
      16);
}

}  // namespace cpu
}  // namespace lorakit
