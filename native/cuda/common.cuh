// Shared by the .cu files: error checks that turn CUDA failures into lorakit::Error, the
// backend's stream, and 16-bit float load/store helpers.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <string>
#include "../core/dtype.h"
#include "../core/errors.h"

namespace lorakit {
namespace cuda {

// Throws: out-of-memory as a Range error, anything else as a State error naming the call.
[[noreturn]] void fail(cudaError_t e, const char* what);

#define LK_CUDA(expr, what)                                  \
  do {                                                       \
    cudaError_t lk_err_ = (expr);                            \
    if (lk_err_ != cudaSuccess) ::lorakit::cuda::fail(lk_err_, what); \
  } while (0)

// After a kernel launch: reports launch failures (bad configuration, no kernel image).
#define LK_LAUNCHED(what) LK_CUDA(cudaGetLastError(), what)

// The backend's one non-blocking stream (created on first use; throws when there is no device).
cudaStream_t stream();

// Streaming multiprocessors of device 0 (read once), for grids sized to what is resident at once.
int sm_count();

template <class T> __device__ __forceinline__ float to_f32(T v);
template <> __device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Element i of a float tensor of any dtype, widened to f32.
__device__ __forceinline__ float load_as_f32(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::F16: return __half2float(static_cast<const __half*>(p)[i]);
    default: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  }
}

// Calls f with a value of the element type matching a float DType.
template <class F>
void dispatch_float(DType t, const char* what, F&& f) {
  switch (t) {
    case DType::F32: f(float{}); break;
    case DType::F16: f(__half{}); break;
    case DType::BF16: f(__nv_bfloat16{}); break;
    default: throw_type(std::string(what) + ": expected a float tensor, got " + dtype_name(t));
  }
}

inline unsigned blocks_for(int64_t n, int threads, int64_t cap = 65535LL * 8) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  return static_cast<unsigned>(b > cap ? cap : b);
}

}  // namespace cuda
}  // namespace lorakit
