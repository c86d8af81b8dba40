// Elementwise dtype conversion and the finiteness check on the device.
#include "common.cuh"
#include "ops.h"
#include "runtime.h"

namespace lorakit {
namespace cuda {
namespace {

template <class S, class D>
__global__ void convert_kernel(const S* __restrict__ src, D* __restrict__ dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = from_f32<D>(to_f32<S>(src[i]));
}

template <class T>
__global__ void all_finite_kernel(const T* __restrict__ p, int64_t n, int* __restrict__ bad) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    if (!isfinite(to_f32<T>(p[i]))) {
      *bad = 1;
      return;
    }
}

}  // namespace

void convert(const void* src, DType st, void* dst, DType dt, int64_t n) {
  if (n == 0) return;
  if (st == dt) {
    if (src != dst) LK_CUDA(cudaMemcpyAsync(dst, src, n * dtype_size(st), cudaMemcpyDeviceToDevice, stream()), "copy");
    return;
  }
  dispatch_float(st, "src", [&](auto s) {
    dispatch_float(dt, "dst", [&](auto d) {
      using S = decltype(s);
      using D = decltype(d);
      convert_kernel<S, D><<<blocks_for(n, 256), 256, 0, stream()>>>(static_cast<const S*>(src), static_cast<D*>(dst), n);
    });
  });
  LK_LAUNCHED("convert");
}

bool all_finite(const TensorRef& t) {
  int64_t n = t.numel();
  if (n == 0) return true;
  int* flag = static_cast<int*>(alloc(sizeof(int), true));
  int host = 0;
  try {
    dispatch_float(t.dtype, "tensor", [&](auto z) {
      using T = decltype(z);
      all_finite_kernel<T><<<blocks_for(n, 256, 4096), 256, 0, stream()>>>(static_cast<const T*>(t.data), n, flag);
    });
    LK_LAUNCHED("allFinite");
    copy_to_host(&host, flag, sizeof(int));
  } catch (...) {
    cuda::free(flag, sizeof(int));
    throw;
  }
  cuda::free(flag, sizeof(int));
  return host == 0;
}

}  // namespace cuda
}  // namespace lorakit
