// Fused optimizer steps for adapter parameters: one pass reads param, grad and state and writes
// param and state. Semantics follow PyTorch's AdamW (decoupled weight decay, bias correction,
// eps added after the bias-corrected sqrt) and SGD (weight decay into the gradient, momentum
// buffer starting as the first gradient, dampening, Nesterov). State is f32; math is f32.
#include <cmath>
#include "common.cuh"
#include "ops.h"
#include "runtime.h"

namespace lorakit {
namespace cuda {
namespace {

template <class P, class G>
__global__ void adamw_kernel(P* __restrict__ param, const G* __restrict__ grad, float* __restrict__ m,
                             float* __restrict__ v, float* __restrict__ master, int64_t n, float beta1, float one_minus_beta1, float beta2,
                             float one_minus_beta2, float eps, float decay_factor, float step_size,
                             float inv_sqrt_bc2) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float g = to_f32<G>(grad[i]);
    float p = (master ? master[i] : to_f32<P>(param[i])) * decay_factor;
    float mi = beta1 * m[i] + one_minus_beta1 * g;
    float vi = beta2 * v[i] + one_minus_beta2 * g * g;
    m[i] = mi;
    v[i] = vi;
    float denom = sqrtf(vi) * inv_sqrt_bc2 + eps;
    p -= step_size * mi / denom;
    if (master) master[i] = p;
    param[i] = from_f32<P>(p);
  }
}

template <class P, class G>
__global__ void sgd_kernel(P* __restrict__ param, const G* __restrict__ grad, float* __restrict__ buf,
                           float* __restrict__ master, int64_t n,
                           float lr, float momentum, float dampening, float wd, bool nesterov, bool first) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float p = master ? master[i] : to_f32<P>(param[i]);
    float d = to_f32<G>(grad[i]) + wd * p;
    if (buf) {
      float b = first ? d : momentum * buf[i] + (1.f - dampening) * d;
      buf[i] = b;
      d = nesterov ? d + momentum * b : b;
    }
    p -= lr * d;
    if (master) master[i] = p;
    param[i] = from_f32<P>(p);
  }
}

void require_state(const TensorRef& s, int64_t n, const char* name) {
  if (s.dtype != DType::F32) throw_type(std::string(name) + ": optimizer state must be f32");
  if (s.numel() != n) throw_range(std::string(name) + ": expected " + std::to_string(n) + " elements, got shape " + shape_str(s.shape));
}

template <class G>
__global__ void accumulate_kernel(float* __restrict__ dst, const G* __restrict__ src, int64_t n, float alpha) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = fmaf(alpha, to_f32<G>(src[i]), dst[i]);
}

template <class T>
__global__ void column_sum_kernel(const T* __restrict__ x, int64_t rows, int64_t cols, float alpha, float* __restrict__ out) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < cols; j += int64_t(gridDim.x) * blockDim.x) {
    double s = 0;
    for (int64_t i = 0; i < rows; i++) s += to_f32<T>(x[i * cols + j]);
    out[j] = static_cast<float>(alpha * s);
  }
}

// One f64 partial per block (fixed grid, fixed order): the host adds them in order, so the sum is
// the same on every run.
constexpr int kSumBlocks = 264, kSumThreads = 256;
template <class T>
__global__ void __launch_bounds__(kSumThreads) sum_squares_kernel(const T* __restrict__ x, int64_t n, double* partial) {
  __shared__ double part[kSumThreads / 32];
  double s = 0;
  for (int64_t i = blockIdx.x * int64_t(kSumThreads) + threadIdx.x; i < n; i += int64_t(kSumBlocks) * kSumThreads) {
    double v = to_f32<T>(x[i]);
    s += v * v;
  }
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
    for (int w = 0; w < kSumThreads / 32; w++) t += part[w];
    partial[blockIdx.x] = t;
  }
}

template <class T>
__global__ void scale_kernel(T* __restrict__ x, int64_t n, float alpha) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] = from_f32<T>(to_f32<T>(x[i]) * alpha);
}

}  // namespace

void accumulate(const TensorRef& dst, const TensorRef& src, float alpha) {
  int64_t n = dst.numel();
  if (dst.dtype != DType::F32) throw_type("dst: gradient accumulators are f32");
  if (src.numel() != n) throw_range("src: expected " + std::to_string(n) + " elements, got shape " + shape_str(src.shape));
  if (n == 0) return;
  dispatch_float(src.dtype, "src", [&](auto z) {
    using G = decltype(z);
    accumulate_kernel<G><<<blocks_for(n, 256), 256, 0, stream()>>>(dst.as<float>(), src.as<G>(), n, alpha);
  });
  LK_LAUNCHED("accumulate");
}

void column_sum(const TensorRef& x, float alpha, const TensorRef& out) {
  const int64_t cols = out.numel();
  if (out.dtype != DType::F32) throw_type("out: expected an f32 tensor");
  if (cols == 0) return;
  if (x.numel() % cols != 0) throw_range("x: " + shape_str(x.shape) + " is not a whole number of rows of " + std::to_string(cols));
  const int64_t rows = x.numel() / cols;
  dispatch_float(x.dtype, "x", [&](auto z) {
    using T = decltype(z);
    column_sum_kernel<T><<<blocks_for(cols, 256), 256, 0, stream()>>>(x.as<T>(), rows, cols, alpha, out.as<float>());
  });
  LK_LAUNCHED("columnSum");
}

double sum_squares(const TensorRef& t) {
  int64_t n = t.numel();
  if (n == 0) return 0;
  double* partial = static_cast<double*>(alloc(kSumBlocks * sizeof(double), false));
  double host[kSumBlocks];
  try {
    dispatch_float(t.dtype, "tensor", [&](auto z) {
      using T = decltype(z);
      sum_squares_kernel<T><<<kSumBlocks, kSumThreads, 0, stream()>>>(t.as<T>(), n, partial);
    });
    LK_LAUNCHED("sumSquares");
    copy_to_host(host, partial, sizeof(host));
  } catch (...) {
    cuda::free(partial, kSumBlocks * sizeof(double));
    throw;
  }
  cuda::free(partial, kSumBlocks * sizeof(double));
  double s = 0;
  for (int b = 0; b < kSumBlocks; b++) s += host[b];
  return s;
}

void scale_inplace(const TensorRef& t, float alpha) {
  int64_t n = t.numel();
  if (n == 0) return;
  dispatch_float(t.dtype, "tensor", [&](auto z) {
    using T = decltype(z);
    scale_kernel<T><<<blocks_for(n, 256), 256, 0, stream()>>>(t.as<T>(), n, alpha);
  });
  LK_LAUNCHED("scale");
}

void adamw_step(const TensorRef& param, const TensorRef& grad, const TensorRef& exp_avg, const TensorRef& exp_avg_sq,
                const TensorRef* master, const AdamWArgs& h) {
  int64_t n = param.numel();
  if (master) require_state(*master, n, "master");
  require_state(exp_avg, n, "expAvg");
  require_state(exp_avg_sq, n, "expAvgSq");
  if (h.step < 1) throw_range("step: expected an integer >= 1");
  // The kernel's math is f32; the host-side constants are computed in double from the arguments.
  const float lr = static_cast<float>(h.lr), weight_decay = static_cast<float>(h.weight_decay);
  const float beta1 = static_cast<float>(h.beta1), beta2 = static_cast<float>(h.beta2), eps = static_cast<float>(h.eps);
  double bc1 = 1.0 - std::pow(h.beta1, double(h.step));
  double bc2 = 1.0 - std::pow(h.beta2, double(h.step));
  float step_size = static_cast<float>(h.lr / bc1);
  float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  float decay = static_cast<float>(1.0 - double(lr) * double(weight_decay));
  // 1 − β in double, then rounded: 1.f − 0.999f is off by 1.3e-5 relative.
  float omb1 = static_cast<float>(1.0 - h.beta1), omb2 = static_cast<float>(1.0 - h.beta2);
  if (n == 0) return;
  dispatch_float(param.dtype, "param", [&](auto pz) {
    dispatch_float(grad.dtype, "grad", [&](auto gz) {
      using P = decltype(pz);
      using G = decltype(gz);
      adamw_kernel<P, G><<<blocks_for(n, 256), 256, 0, stream()>>>(param.as<P>(), grad.as<G>(), exp_avg.as<float>(),
                                                                   exp_avg_sq.as<float>(), master ? master->as<float>() : nullptr, n, beta1, omb1, beta2, omb2,
                                                                   eps, decay, step_size, inv_sqrt_bc2);
    });
  });
  LK_LAUNCHED("adamw step");
}

void sgd_step(const TensorRef& param, const TensorRef& grad, const TensorRef* momentum_buf, const TensorRef* master,
              const SgdArgs& h) {
  int64_t n = param.numel();
  const float lr = static_cast<float>(h.lr), momentum = static_cast<float>(h.momentum);
  const float dampening = static_cast<float>(h.dampening), weight_decay = static_cast<float>(h.weight_decay);
  if (master) require_state(*master, n, "master");
  if (momentum_buf) require_state(*momentum_buf, n, "momentumBuffer");
  if (momentum != 0.f && !momentum_buf) throw_range("momentumBuffer: required when momentum != 0");
  if (n == 0) return;
  dispatch_float(param.dtype, "param", [&](auto pz) {
    dispatch_float(grad.dtype, "grad", [&](auto gz) {
      using P = decltype(pz);
      using G = decltype(gz);
      sgd_kernel<P, G><<<blocks_for(n, 256), 256, 0, stream()>>>(
          param.as<P>(), grad.as<G>(), momentum != 0.f ? momentum_buf->as<float>() : nullptr,
          master ? master->as<float>() : nullptr, n, lr, momentum, dampening, weight_decay, h.nesterov, h.first_step);
    });
  });
  LK_LAUNCHED("sgd step");
}

}  // namespace cuda
}  // namespace lorakit
