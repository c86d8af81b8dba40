// Fused, elementwise optimizer steps for adapter parameters. Parameters may be f32, f16 or bf16;
// the optimizer state (moments, momentum, optional f32 master copy) is always f32, so small
// updates are not lost to 16-bit rounding. One pass over memory per step, split over the pool.
// The formulas (PyTorch's AdamW and SGD) are given with AdamWArgs and SgdArgs in core/op_args.h.
#pragma once
#include <cstdint>
#include "../core/op_args.h"
#include "../core/tensor.h"

namespace lorakit {
namespace cpu {

// master (f32, may be null) is the authoritative value when the param is 16-bit.
void adamw_step(const TensorRef& param, const TensorRef& grad, float* exp_avg, float* exp_avg_sq, float* master,
                const AdamWArgs& h);

// momentum_buf may be null when momentum is 0.
void sgd_step(const TensorRef& param, const TensorRef& grad, float* momentum_buf, float* master, const SgdArgs& h);

// dst (f32) += alpha·src (any float dtype); gradient accumulation.
void accumulate(const TensorRef& dst, const TensorRef& src, float alpha);

// out (f32 [cols]) = alpha·Σ_rows x, x viewed as [rows, cols]; each column summed in row order in f64.
void column_sum(const TensorRef& x, float alpha, const TensorRef& out);

// Σ x² in f64 (for gradient-norm clipping).
double sum_squares(const TensorRef& t);

// t ·= alpha in place.
void scale_inplace(const TensorRef& t, float alpha);

}  // namespace cpu
}  // namespace lorakit
