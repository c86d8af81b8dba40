// CPU op table for the LoRA layers. Inputs are contiguous row-major tensors already validated by
// the binding layer; x is viewed as [n, in] rows. All math is f32; 16-bit outputs are rounded once.
#pragma once
#include <cstdint>
#include <vector>
#include "../core/dropout_mask.h"
#include "../core/tensor.h"

namespace lorakit {
namespace cpu {

// out = x·Aᵀ for A [r, in]: the LoRA "shrink". out is f32 [n, r].
void lora_shrink(const TensorRef& x, const TensorRef& A, const TensorRef& out);

struct ForwardTerm {
  TensorRef u;  // f32 [n, r], the shrink of this adapter's (dropped-out) input
  TensorRef B;  // [out, r]
  float scale;
};

// y = x·Wᵀ (W [out, in]; with fan_in_fan_out W is [in, out]) + bias + sum scale·u·Bᵀ, in one pass.
void linear_forward(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fan_in_fan_out,
                    const std::vector<ForwardTerm>& terms, const TensorRef& y);

struct BackwardTerm {
  TensorRef xa;  // the input the adapter saw (x, or its dropout) [n, in]
  TensorRef u;   // f32 [n, r] from the forward
  TensorRef A, B;
  float scale;
  float dropout_p;  // > 0: xa = dropout(x) with the mask from (seed, stream)
  uint64_t seed, stream;
  const TensorRef* dA;  // [r, in] or null (frozen)
  const TensorRef* dB;  // [out, r] or null
};

// dx = dy·W + sum over terms of mask ⊙ (scale·dy·B)·A; dA = gᵀ·xa; dB = scale·dyᵀ·u.
void linear_backward(const TensorRef& dy, const TensorRef& W, bool fan_in_fan_out,
                     const std::vector<BackwardTerm>& terms, const TensorRef* dx);

// out = W + sign·scale·ΔW, ΔW = B·A in W's layout ([out, in], or [in, out] with fan_in_fan_out).
// out may be W itself (in-place merge); one read and one write of W, f32 accumulation.
void merge_delta(const TensorRef& W, const TensorRef& A, const TensorRef& B, float scale, bool fan_in_fan_out,
                 const TensorRef& out);

// out = dropout(x): inverted scaling 1/(1-p); the mask is a pure function of (seed, stream, index).
void dropout(const TensorRef& x, float p, uint64_t seed, uint64_t stream, const TensorRef& out);

// Converts between float dtypes (or copies same-dtype data), n elements.
void convert(const void* src, DType st, void* dst, DType dt, int64_t n);

// True when every element is finite.
bool all_finite(const TensorRef& t);

using lorakit::dropout_keep;  // native/core/dropout_mask.h, shared with the CUDA kernels

}  // namespace cpu
}  // namespace lorakit
