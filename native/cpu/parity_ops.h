// CPU ops for the peft-parity layer kinds: mixed-adapter batches, Embedding, Conv2d and DoRA.
// Inputs are contiguous row-major tensors validated by native/napi/parity_binding.cc. All math is
// f32 (norms accumulate in f64); 16-bit outputs are rounded once.
#pragma once
#include <cstdint>
#include <vector>
#include "../core/tensor.h"

namespace lorakit {
namespace cpu {

struct AdapterFactors {
  TensorRef A;  // [r, in]
  TensorRef B;  // [out, r]
  float scale;
};

// y = x·Wᵀ + b + scale_a·(x·A_aᵀ)·B_aᵀ where a = row_adapter[i] for row i (-1: base only). Rows are
// grouped per adapter (stable counting sort), each group runs one GEMM with the base and its
// adapter as two K segments, and every row of y is written once.
void mixed_linear_forward(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fan_in_fan_out,
                          const std::vector<AdapterFactors>& adapters, const int32_t* row_adapter,
                          const TensorRef& y);

}  // namespace cpu
}  // namespace lorakit

namespace lorakit {
namespace cpu {

// ---- DoRA (peft's DoraLinearLayer) on a linear layer; W [out, in] or [in, out] with fan_in_fan_out.

// norm[o] = ‖row o of W + scale·B·A‖ (in [out, in] layout) from the low-rank identity
//   ‖W + sBA‖² = ‖W‖² + 2s·rowsum((W·Aᵀ)⊙B) + s²·rowsum((B·(A·Aᵀ))⊙B),
// so no dense out×in delta is formed: one GEMM W·Aᵀ (out×in×r) plus O(out·r²). norm is f32 [out].
void dora_weight_norm(const TensorRef& W, const TensorRef& A, const TensorRef& B, float scale, bool fan_in_fan_out,
                      float* norm);

// norm = ‖W + s·B·A‖ per output (written, f32 [out]); pre = xa·Wᵀ + scale·u·Bᵀ (f32 [n, out], kept for
// backward); k = magnitude / norm; y = bias + k⊙pre when xa is x (no dropout), else
// y = bias + (x − xa)·Wᵀ + k⊙pre (peft's training path with dropout recomputes the base on drop(x)).
// Without dropout one GEMM serves both pre and the norm's projection W·Aᵀ (A's rows stacked under x).
void dora_linear_forward(const TensorRef& x, const TensorRef& xa, const TensorRef& W, const TensorRef* bias,
                         bool fan_in_fan_out, const TensorRef& u, const TensorRef& A, const TensorRef& B, float scale,
                         const TensorRef& magnitude, const TensorRef& y, float* pre, float* norm);

struct DoraBackwardArgs {
  TensorRef xa, u, A, B, magnitude;
  float scale;
  float dropout_p;
  uint64_t seed, stream;
  const float* norm;  // [out], detached
  const float* pre;   // [n, out] from the forward
};

// The norm is a constant (detached, as peft): with k = magnitude / norm and dyk = k⊙dy,
//   dmagnitude = Σ_rows dy⊙pre / norm;  g = scale·dyk·B;  dA = gᵀ·xa;  dB = scale·dykᵀ·u;
//   dx = dyk·W + g·A (no dropout), or dy·W + mask⊙(((k−1)⊙dy)·W + g·A)/(1−p) with dropout.
void dora_linear_backward(const TensorRef& dy, const TensorRef& W, bool fan_in_fan_out, const DoraBackwardArgs& a,
                          const TensorRef* dx, const TensorRef* dA, const TensorRef* dB, const TensorRef* dmagnitude);

// Merge: out = k ⊙ (W + scale·B·A) per output feature, k = magnitude / norm; unmerge (inverse):
// out = W / k − scale·B·A. One read and one write of W; out may be W.
void dora_merge(const TensorRef& W, const TensorRef& A, const TensorRef& B, float scale, bool fan_in_fan_out,
                const TensorRef& magnitude, const float* norm, bool inverse, const TensorRef& out);

}  // namespace cpu
}  // namespace lorakit

namespace lorakit {
namespace cpu {

// ---- Embedding (peft's lora.Embedding): W [num, dim], A [r, num], B [dim, r], indices i32/i64.

// y[p] = W[idx[p]] + Σ_a scale_a·B_a·A_a[:, idx[p]]; with row_adapter, position p adds only adapter
// row_adapter[p] (-1: none). Indices must already be validated (0 <= idx < num).
void embedding_forward(const TensorRef& idx, const TensorRef& W, const std::vector<AdapterFactors>& adapters,
                       const int32_t* row_adapter, const TensorRef& y);

// dB = scale·dyᵀ·Aᵀ[idx] [dim, r]; dAᵀ[i] = Σ_{p: idx[p] = i} scale·dy[p]·B, summed in position order
// per index (a stable counting sort, no atomics: deterministic). padding_idx (-1: none) gets no dA.
void embedding_backward(const TensorRef& idx, const TensorRef& dy, const TensorRef& A, const TensorRef& B, float scale,
                        int64_t padding_idx, const TensorRef* dA, const TensorRef* dB);

// The index at position p as int64.
inline int64_t index_at(const TensorRef& idx, int64_t p) {
  return idx.dtype == DType::I64 ? static_cast<const int64_t*>(idx.data)[p] : static_cast<const int32_t*>(idx.data)[p];
}

}  // namespace cpu
}  // namespace lorakit

namespace lorakit {
namespace cpu {

// ---- Conv2d (peft's lora.Conv2d): base W [out, in/groups, kh, kw] with stride/padding/dilation/groups;
// A [r, in, kh, kw] is a conv with the base's kernel, stride and padding and dilation 1 (peft does not
// copy dilation); B [out, r/groups, 1, 1] is a grouped 1×1 conv. x is [N, in, H, W].

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

// y = conv(x, W) + bias + Σ scale·B(A(xa)), per image through im2col and the packed GEMM; the base and
// every adapter's 1×1 expand run as K segments of one GEMM per group, so y is written once.
// With image_adapter (mixed batch), image n uses only term image_adapter[n] (-1: none).
void conv2d_forward(const TensorRef& x, const TensorRef& W, const TensorRef* bias, const ConvGeom& g,
                    const std::vector<ConvTerm>& terms, const int32_t* image_adapter, const TensorRef& y);

// dx = conv_transpose(dy, W) + Σ mask⊙conv_transpose(scale·Bᵀdy, A); dA = Σ_n (scale·Bᵀ·dy_n)·im2col(xa_n)ᵀ;
// dB = scale·Σ_n dy_n·u_nᵀ. Deterministic (images accumulate in order, col2im per channel).
void conv2d_backward(const TensorRef& dy, const TensorRef& W, const ConvGeom& g, const std::vector<ConvTerm>& terms,
                     const TensorRef* dx);

}  // namespace cpu
}  // namespace lorakit
