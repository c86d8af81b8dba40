// The operands of the backend ops (core/backend.h), one struct per kind, shared by every backend:
// the bindings fill them, cpu/ and cuda/ read them. Tensors are contiguous row-major views already
// validated by the binding layer; pointers are device pointers of the call's backend.
#pragma once
#include <cstdint>
#include <vector>
#include "quant_formats.h"
#include "tensor.h"

namespace lorakit {

// ---- Linear LoRA (peft's lora.Linear): W [out, in] ([in, out] with fan_in_fan_out), A [r, in], B [out, r].

// One adapter's term of the fused forward: + scale·u·Bᵀ, u = x·Aᵀ (the shrink) [n, r].
struct ForwardTerm {
  TensorRef u;  // in the backend's scratch dtype (Backend::scratch_dtype)
  TensorRef B;  // [out, r]
  float scale;
};

// One adapter of lora_forward, which runs the shrink itself: u_out (when given) receives x·Aᵀ for
// backward, in the backend's scratch dtype; otherwise the backend uses scratch memory.
struct FusedAdapter {
  TensorRef A, B;
  float scale;
  const TensorRef* u_out;  // [n, r] or null
};

// One adapter's gradients: dx += mask ⊙ (scale·dy·B)·A, dA = gᵀ·xa, dB = scale·dyᵀ·u.
struct BackwardTerm {
  TensorRef xa;  // the input the adapter saw (x, or its dropout) [n, in]
  TensorRef u;   // [n, r] from the forward
  TensorRef A, B;
  float scale;
  float dropout_p;  // > 0: xa = dropout(x) with the mask from (seed, stream)
  uint64_t seed, stream;
  const TensorRef* dA;  // [r, in] or null (frozen)
  const TensorRef* dB;  // [out, r] or null
};

// An adapter's factors for the ops that shrink internally (mixed batches, embeddings).
struct AdapterFactors {
  TensorRef A;  // [r, in]
  TensorRef B;  // [out, r]
  float scale;
};

// ---- DoRA (peft's DoraLinearLayer): the backward's operands besides dy, W and the gradients.
struct DoraBackwardArgs {
  TensorRef xa, u, A, B, magnitude;
  float scale;
  float dropout_p;
  uint64_t seed, stream;
  const float* norm;  // [out], detached
  TensorRef pre;      // [n, out] from the forward, unscaled (x·Wᵀ + s·u·Bᵀ), in the scratch dtype
};

// ---- Conv2d (peft's lora.Conv2d): base W [out, in/groups, kh, kw]; A [r, in, kh, kw] is a conv with
// the base's kernel, stride and padding and dilation 1 (peft does not copy dilation); B
// [out, r/groups, 1, 1] is a grouped 1×1 conv. x is [N, in, H, W].
struct ConvGeom {
  int64_t sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1, groups = 1;
};

inline int64_t conv_out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  return (in + 2 * p - d * (k - 1) - 1) / s + 1;
}

struct ConvTerm {
  TensorRef xa;  // the input A sees: x, or its dropout [N, in, H, W]
  TensorRef u;   // f32 [N, r, P]: A's output, written by the forward, read by the backward
  TensorRef A, B;
  float scale;
  float dropout_p;
  uint64_t seed, stream;
  const TensorRef* dA;  // backward only; may be null (frozen)
  const TensorRef* dB;
};

// ---- Exact merge (core/exact_format.h): one adapter's step of exact_merge over W [rows, cols]
// (a conv2d kernel flattened to [out, in·kh·kw]); the delta is scale·B·A as merge_delta's.
struct ExactStep {
  TensorRef A, B;
  float scale;
  const TensorRef* magnitude;  // DoRA: merged = k ⊙ (W + delta), k = magnitude / norm per output feature
  const float* norm;           // DoRA: the weight norm [out] on the device (f32)
  const void* record;          // undo steps: the record this step's merge wrote (device memory)
  size_t record_bytes;
};

// ---- Quantized bases (core/quant_formats.h): W [rows = out, cols = in] as spec's bytes, device memory
// of the call's backend (quant_layout(spec).nbytes of them, 16-byte aligned).
struct QuantWeight {
  QuantSpec spec;
  const uint8_t* data = nullptr;
};

// ---- Optimizer steps over one parameter tensor; the state tensors are f32 with the param's size.

// PyTorch AdamW (decoupled decay, bias correction, amsgrad=False):
//   p ← p·(1 − lr·wd); m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²
//   p ← p − lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + eps)
struct AdamWArgs {
  double lr, beta1, beta2, eps, weight_decay;
  int64_t step;  // 1-based step count after this update (bias correction)
};

// PyTorch SGD: g ← g + wd·p; b ← g (first) or μ·b + (1−dampening)·g; g ← g + μ·b (nesterov) or b;
// p ← p − lr·g.
struct SgdArgs {
  double lr, momentum, dampening, weight_decay;
  bool nesterov;
  bool first_step;  // the momentum buffer is initialised to the gradient on the first step
};

// The index at position p of an i32 or i64 index tensor (host memory), as int64.
inline int64_t index_at(const TensorRef& idx, int64_t p) {
  return idx.dtype == DType::I64 ? static_cast<const int64_t*>(idx.data)[p] : static_cast<const int32_t*>(idx.data)[p];
}

}  // namespace lorakit
