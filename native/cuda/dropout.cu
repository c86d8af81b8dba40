// Dropout with the counter-based mask of native/core/dropout_mask.h: the same (seed, stream,
// index) gives the same mask on the CPU and here, and backward regenerates it.
#include "../core/dropout_mask.h"
#include "common.cuh"
#include "ops.h"

namespace lorakit {
namespace cuda {
namespace {

template <class T>
__global__ void dropout_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t n, float p, float keep_scale,
                               uint64_t seed, uint64_t stream_id) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = from_f32<T>(dropout_keep(seed, stream_id, uint64_t(i), p) ? to_f32<T>(x[i]) * keep_scale : 0.f);
}

template <class S, class D>
__global__ void masked_accumulate_kernel(const S* __restrict__ src, D* __restrict__ dst, int64_t n, float p,
                                         float keep_scale, uint64_t seed, uint64_t stream_id) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    if (dropout_keep(seed, stream_id, uint64_t(i), p)) dst[i] = from_f32<D>(to_f32<D>(dst[i]) + to_f32<S>(src[i]) * keep_scale);
}

}  // namespace

void dropout(const TensorRef& x, float p, uint64_t seed, uint64_t stream_id, const TensorRef& out) {
  int64_t n = x.numel();
  if (n == 0) return;
  if (x.dtype != out.dtype) throw_type("out: expected the dtype of x on cuda");
  dispatch_float(x.dtype, "x", [&](auto z) {
    using T = decltype(z);
    dropout_kernel<T><<<blocks_for(n, 256), 256, 0, stream()>>>(x.as<T>(), out.as<T>(), n, p, 1.f / (1.f - p), seed, stream_id);
  });
  LK_LAUNCHED("dropout");
}

void masked_accumulate(const TensorRef& src, float p, uint64_t seed, uint64_t stream_id, const TensorRef& dst) {
  int64_t n = dst.numel();
  if (n == 0) return;
  dispatch_float(src.dtype, "src", [&](auto s) {
    dispatch_float(dst.dtype, "dst", [&](auto d) {
      using S = decltype(s);
      using D = decltype(d);
      masked_accumulate_kernel<S, D><<<blocks_for(n, 256), 256, 0, stream()>>>(src.as<S>(), dst.as<D>(), n, p,
                                                                               1.f / (1.f - p), seed, stream_id);
    });
  });
  LK_LAUNCHED("dropout backward");
}

}  // namespace cuda
}  // namespace lorakit
