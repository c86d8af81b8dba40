#include <algorithm>
#include <memory>
#include "../core/thread_pool.h"
#include "gemm.h"
#include "ops.h"

namespace lorakit {
namespace cpu {

void embedding_forward(const TensorRef& idx, const TensorRef& W, const std::vector<AdapterFactors>& adapters,
                       const int32_t* row_adapter, const TensorRef& y) {
  int64_t num = W.dim(0), dim = W.dim(1), n = idx.numel();
  // f32 copies: A as [num, r] (a row per embedding), B as [r, dim] (a row per rank), both pre-scaled once.
  struct Packed {
    std::unique_ptr<float[]> at, bt;
    int64_t r;
  };
  std::vector<Packed> packed;
  for (const auto& a : adapters) {
    int64_t r = a.A.dim(0);
    Packed p{std::unique_ptr<float[]>(new float[std::max<int64_t>(1, num * r)]),
             std::unique_ptr<float[]>(new float[std::max<int64_t>(1, r * dim)]), r};
    for (int64_t k = 0; k < r; k++)
      for (int64_t i = 0; i < num; i++) p.at[i * r + k] = load_f32(a.A.data, a.A.dtype, k * num + i);
    for (int64_t d = 0; d < dim; d++)
      for (int64_t k = 0; k < r; k++) p.bt[k * dim + d] = a.scale * load_f32(a.B.data, a.B.dtype, d * r + k);
    packed.push_back(std::move(p));
  }
  parallel_for(
      n,
      [&](int64_t b, int64_t e) {
        std::unique_ptr<float[]> acc(new float[dim]);
        float* ac = acc.get();
        for (int64_t p = b; p < e; p++) {
          int64_t row = index_at(idx, p);
          convert(static_cast<const char*>(W.data) + row * dim * dtype_size(W.dtype), W.dtype, ac, DType::F32, dim);
          for (size_t a = 0; a < packed.size(); a++) {
            if (row_adapter && row_adapter[p] != static_cast<int32_t>(a)) continue;
            const Packed& pk = packed[a];
            for (int64_t k = 0; k < pk.r; k++) {
              float c = pk.at[row * pk.r + k];
              if (c == 0.f) continue;
              const float* bt = pk.bt.get() + k * dim;
              for (int64_t d = 0; d < dim; d++) ac[d] += c * bt[d];
            }
          }
          convert(ac, DType::F32, static_cast<char*>(y.data) + p * dim * dtype_size(y.dtype), y.dtype, dim);
        }
      },
      std::max<int64_t>(1, 4096 / std::max<int64_t>(1, dim)));
}

void embedding_backward(const TensorRef& idx, const TensorRef& dy, const TensorRef& A, const TensorRef& B, float scale,
                        int64_t padding_idx, const TensorRef* dA, const TensorRef* dB) {
  int64_t r = A.dim(0), num = A.dim(1), dim = B.dim(0), n = idx.numel();
  MatView dyv = row_major(dy.data, dy.dtype, dim);
  if (dB) {
    // U = Aᵀ[idx] [n, r] (f32), then dB = scale·dyᵀ·U.
    std::unique_ptr<float[]> u(new float[std::max<int64_t>(1, n * r)]);
    for (int64_t p = 0; p < n; p++) {
      int64_t row = index_at(idx, p);
      for (int64_t k = 0; k < r; k++) u[p * r + k] = load_f32(A.data, A.dtype, k * num + row);
    }
    GemmOutput o;
    o.data = dB->data;
    o.dtype = dB->dtype;
    o.ldc = r;
    gemm(dim, r, {{transposed(dy.data, dy.dtype, dim), row_major(u.get(), DType::F32, r), n, scale}}, o);
  }
  if (!dA) return;
  // G = scale·dy·B [n, r]
  std::unique_ptr<float[]> g(new float[std::max<int64_t>(1, n * r)]);
  GemmOutput go;
  go.data = g.get();
  go.ldc = r;
  gemm(n, r, {{dyv, row_major(B.data, B.dtype, r), dim, scale}}, go);
  // Positions grouped by index (stable counting sort), then each index sums its rows in order.
  std::vector<int64_t> start(num + 1, 0), order(n);
  for (int64_t p = 0; p < n; p++) start[index_at(idx, p) + 1]++;
  for (int64_t i = 0; i < num; i++) start[i + 1] += start[i];
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t p = 0; p < n; p++) order[fill[index_at(idx, p)]++] = p;
  }
  const float* gp = g.get();
  parallel_for(
      num,
      [&](int64_t b, int64_t e) {
        std::unique_ptr<double[]> acc(new double[std::max<int64_t>(1, r)]);
        for (int64_t i = b; i < e; i++) {
          std::fill(acc.get(), acc.get() + r, 0.0);
          if (i != padding_idx)
            for (int64_t q = start[i]; q < start[i + 1]; q++)
              for (int64_t k = 0; k < r; k++) acc[k] += gp[order[q] * r + k];
          for (int64_t k = 0; k < r; k++) store_f32(dA->data, dA->dtype, k * num + i, static_cast<float>(acc[k]));
        }
      },
      64);
}

}  // namespace cpu
}  // namespace lorakit
