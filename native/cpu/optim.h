// Fused, elementwise optimizer steps for adapter parameters. Parameters may be f32, f16 or bf16;
// the optimizer state (moments, momentum, optional f32 master copy) is always f32, so small
// updates are not lost to 16-bit rounding. One pass over memory per step, split over the pool.
#pragma once
#include <cstdint>
#include "../core/tensor.h"

namespace lorakit {
namespace cpu {

struct AdamWHyper {
  double lr, beta1, beta2, eps, weight_decay;
  int64_t step;  // 1-based step count after this update (bias correction)
};

// PyTorch AdamW (decoupled decay, bias correction, amsgrad=False):
//   p ← p·(1 − lr·wd); m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²
//   p ← p − lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + eps)
// master (f32, may be null) is the authoritative value when the param is 16-bit.
void adamw_step(const TensorRef& param, const TensorRef& grad, float* exp_avg, float* exp_avg_sq, float* master,
                const AdamWHyper& h);

struct SgdHyper {
  double lr, momentum, dampening, weight_decay;
  bool nesterov;
  bool first_step;  // the momentum buffer is initialised to the gradient on the first step
};

// PyTorch SGD: g ← g + wd·p; b ← g (first) or μ·b + (1−dampening)·g; g ← g + μ·b (nesterov) or b;
// p ← p − lr·g. momentum_buf may be null when momentum is 0.
void sgd_step(const TensorRef& param, const TensorRef& grad, float* momentum_buf, float* master, const SgdHyper& h);

// dst (f32) += alpha·src (any float dtype); gradient accumulation.
void accumulate(const TensorRef& dst, const TensorRef& src, float alpha);

// Σ x² in f64 (for gradient-norm clipping).
double sum_squares(const TensorRef& t);

// t ·= alpha in place.
void scale_inplace(const TensorRef& t, float alpha);

}  // namespace cpu
}  // namespace lorakit
