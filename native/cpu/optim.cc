#include "optim.h"
#include <cmath>
#include <vector>
#include "../core/thread_pool.h"
#include "ops.h"

namespace lorakit {
namespace cpu {
namespace {

constexpr int64_t kChunk = 1 << 13;

// Loads the current value of element i: the f32 master copy when there is one.
inline float load_param(const TensorRef& p, const float* master, int64_t i) {
  return master ? master[i] : load_f32(p.data, p.dtype, i);
}

inline void store_param(const TensorRef& p, float* master, int64_t i, float v) {
  if (master) master[i] = v;
  store_f32(p.data, p.dtype, i, v);
}

// The fast path: the working copy is an f32 array (the param itself or its master) and the
// gradient is f32, so the loop has no per-element dtype switch and vectorises. A master's chunk is
// then rounded into the 16-bit param in one pass.
inline float* f32_working_copy(const TensorRef& param, const TensorRef& grad, float* master) {
  if (grad.dtype != DType::F32) return nullptr;
  if (master) return master;
  return param.dtype == DType::F32 ? param.as<float>() : nullptr;
}

inline void write_back(const TensorRef& param, const float* master, int64_t b, int64_t e) {
  if (!master) return;
  convert(master + b, DType::F32, static_cast<char*>(param.data) + b * dtype_size(param.dtype), param.dtype, e - b);
}

}  // namespace

void adamw_step(const TensorRef& param, const TensorRef& grad, float* exp_avg, float* exp_avg_sq, float* master,
                const AdamWArgs& h) {
  const int64_t n = param.numel();
  const float decay = static_cast<float>(1.0 - h.lr * h.weight_decay);
  const float b1 = static_cast<float>(h.beta1), b2 = static_cast<float>(h.beta2);
  const float one_minus_b1 = static_cast<float>(1.0 - h.beta1), one_minus_b2 = static_cast<float>(1.0 - h.beta2);
  const double bc1 = 1.0 - std::pow(h.beta1, static_cast<double>(h.step));
  const double bc2 = 1.0 - std::pow(h.beta2, static_cast<double>(h.step));
  const float step_size = static_cast<float>(h.lr / bc1);
  const float inv_bc2_sqrt = static_cast<float>(1.0 / std::sqrt(bc2));
  const float eps = static_cast<float>(h.eps);
  if (float* w = f32_working_copy(param, grad, master)) {
    const float* gp = grad.as<float>();
    parallel_for(
        n,
        [&](int64_t b, int64_t e) {
          float* __restrict p = w;
          const float* __restrict g = gp;
          float* __restrict m = exp_avg;
          float* __restrict v = exp_avg_sq;
          for (int64_t i = b; i < e; i++) {
            float mi = b1 * m[i] + one_minus_b1 * g[i];
            float vi = b2 * v[i] + one_minus_b2 * g[i] * g[i];
            m[i] = mi;
            v[i] = vi;
            p[i] = p[i] * decay - step_size * mi / (std::sqrt(vi) * inv_bc2_sqrt + eps);
          }
          write_back(param, master, b, e);
        },
        kChunk);
    return;
  }
  parallel_for(
      n,
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; i++) {
          float g = load_f32(grad.data, grad.dtype, i);
          float p = load_param(param, master, i) * decay;
          float m = b1 * exp_avg[i] + one_minus_b1 * g;
          float v = b2 * exp_avg_sq[i] + one_minus_b2 * g * g;
          exp_avg[i] = m;
          exp_avg_sq[i] = v;
          p -= step_size * m / (std::sqrt(v) * inv_bc2_sqrt + eps);
          store_param(param, master, i, p);
        }
      },
      kChunk);
}

void sgd_step(const TensorRef& param, const TensorRef& grad, float* momentum_buf, float* master, const SgdArgs& h) {
  const int64_t n = param.numel();
  const float lr = static_cast<float>(h.lr), mu = static_cast<float>(h.momentum);
  const float wd = static_cast<float>(h.weight_decay), damp = static_cast<float>(1.0 - h.dampening);
  const bool use_momentum = h.momentum != 0.0 && momentum_buf;
  if (float* w = f32_working_copy(param, grad, master)) {
    const float* gp = grad.as<float>();
    parallel_for(
        n,
        [&](int64_t b, int64_t e) {
          float* __restrict p = w;
          const float* __restrict gr = gp;
          float* __restrict buf = momentum_buf;
          for (int64_t i = b; i < e; i++) {
            float g = gr[i] + wd * p[i];
            if (use_momentum) {
              float bi = h.first_step ? g : mu * buf[i] + damp * g;
              buf[i] = bi;
              g = h.nesterov ? g + mu * bi : bi;
            }
            p[i] -= lr * g;
          }
          write_back(param, master, b, e);
        },
        kChunk);
    return;
  }
  parallel_for(
      n,
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; i++) {
          float p = load_param(param, master, i);
          float g = load_f32(grad.data, grad.dtype, i);
          if (wd != 0.f) g += wd * p;
          if (use_momentum) {
            float buf = h.first_step ? g : mu * momentum_buf[i] + damp * g;
            momentum_buf[i] = buf;
            g = h.nesterov ? g + mu * buf : buf;
          }
          store_param(param, master, i, p - lr * g);
        }
      },
      kChunk);
}

void accumulate(const TensorRef& dst, const TensorRef& src, float alpha) {
  float* d = dst.as<float>();
  parallel_for(
      dst.numel(),
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; i++) d[i] += alpha * load_f32(src.data, src.dtype, i);
      },
      kChunk);
}

void column_sum(const TensorRef& x, float alpha, const TensorRef& out) {
  const int64_t cols = out.numel();
  const int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  float* o = out.as<float>();
  // Columns split over the pool, rows in order: the result does not depend on the thread count.
  parallel_for(
      cols,
      [&](int64_t b, int64_t e) {
        for (int64_t j = b; j < e; j++) {
          double s = 0;
          for (int64_t i = 0; i < rows; i++) s += load_f32(x.data, x.dtype, i * cols + j);
          o[j] = static_cast<float>(alpha * s);
        }
      },
      64);
}

double sum_squares(const TensorRef& t) {
  const int64_t n = t.numel();
  // Fixed chunks summed in order, so the result does not depend on the thread count.
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(chunks), 0.0);
  parallel_for(chunks, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; c++) {
      double s = 0;
      for (int64_t i = c * kChunk, end = std::min(n, (c + 1) * kChunk); i < end; i++) {
        double v = load_f32(t.data, t.dtype, i);
        s += v * v;
      }
      partial[static_cast<size_t>(c)] = s;
    }
  });
  double s = 0;
  for (double v : partial) s += v;
  return s;
}

void scale_inplace(const TensorRef& t, float alpha) {
  parallel_for(
      t.numel(),
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; i++) store_f32(t.data, t.dtype, i, alpha * load_f32(t.data, t.dtype, i));
      },
      kChunk);
}

}  // namespace cpu
}  // namespace lorakit
