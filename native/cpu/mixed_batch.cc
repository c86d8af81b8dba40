#include <algorithm>
#include <memory>
#include "../core/thread_pool.h"
#include "gemm.h"
#include "ops.h"

namespace lorakit {
namespace cpu {

void mixed_linear_forward(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fan_in_fan_out,
                          const std::vector<AdapterFactors>& adapters, const int32_t* row_adapter,
                          const TensorRef& y) {
  int64_t in = fan_in_fan_out ? W.dim(0) : W.dim(1);
  int64_t outf = fan_in_fan_out ? W.dim(1) : W.dim(0);
  int64_t n = x.numel() / in;
  int64_t groups = static_cast<int64_t>(adapters.size()) + 1;  // group 0 is the base
  // Stable counting sort of rows by group.
  std::vector<int64_t> start(groups + 1, 0), order(n);
  for (int64_t i = 0; i < n; i++) start[row_adapter[i] + 2]++;
  for (int64_t g = 0; g < groups; g++) start[g + 1] += start[g];
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < n; i++) order[fill[row_adapter[i] + 1]++] = i;
  }
  MatView wt = fan_in_fan_out ? row_major(W.data, W.dtype, outf) : transposed(W.data, W.dtype, in);
  int64_t max_rows = 0;
  for (int64_t g = 0; g < groups; g++) max_rows = std::max(max_rows, start[g + 1] - start[g]);
  int64_t max_r = 0;
  for (const auto& a : adapters) max_r = std::max(max_r, a.A.dim(0));
  std::unique_ptr<float[]> xg(new float[max_rows * in]), yg(new float[max_rows * outf]),
      u(new float[std::max<int64_t>(1, max_rows * max_r)]);
  for (int64_t g = 0; g < groups; g++) {
    int64_t ng = start[g + 1] - start[g];
    if (ng == 0) continue;
    const int64_t* rows = order.data() + start[g];
    float* xp = xg.get();
    parallel_for(ng, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; i++) convert(static_cast<const char*>(x.data) + rows[i] * in * dtype_size(x.dtype),
                                              x.dtype, xp + i * in, DType::F32, in);
    });
    std::vector<KSegment> segs{{row_major(xp, DType::F32, in), wt, in, 1.f}};
    if (g > 0) {
      const AdapterFactors& a = adapters[g - 1];
      int64_t r = a.A.dim(0);
      GemmOutput uo;
      uo.data = u.get();
      uo.ldc = r;
      gemm(ng, r, {{row_major(xp, DType::F32, in), transposed(a.A.data, a.A.dtype, in), in, 1.f}}, uo);
      segs.push_back({row_major(u.get(), DType::F32, r), transposed(a.B.data, a.B.dtype, r), r, a.scale});
    }
    GemmOutput o;
    o.data = yg.get();
    o.ldc = outf;
    if (bias) {
      o.bias = bias->data;
      o.bias_dtype = bias->dtype;
    }
    gemm(ng, outf, segs, o);
    const float* yp = yg.get();
    parallel_for(ng, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; i++)
        convert(yp + i * outf, DType::F32, static_cast<char*>(y.data) + rows[i] * outf * dtype_size(y.dtype), y.dtype,
                outf);
    });
  }
}

}  // namespace cpu
}  // namespace lorakit
