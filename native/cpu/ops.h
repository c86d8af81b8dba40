// The CPU backend's kernels (registered as its op table by backend.cc). Inputs are contiguous
// row-major tensors already validated by the binding layer; x is viewed as [n, in] rows. All math
// is f32 (norms accumulate in f64); 16-bit outputs are rounded once. Operand structs: core/op_args.h.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>
#include "../core/dropout_mask.h"
#include "../core/ggml_blocks.h"
#include "../core/op_args.h"
#include "../core/tensor.h"

namespace lorakit {
namespace cpu {

// out = x·Aᵀ for A [r, in]: the LoRA "shrink". out is [n, r], f32 unless asked otherwise.
void lora_shrink(const TensorRef& x, const TensorRef& A, const TensorRef& out);

// y = x·Wᵀ (W [out, in]; with fan_in_fan_out W is [in, out]) + bias + sum scale·u·Bᵀ, in one pass.
void linear_forward(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fan_in_fan_out,
                    const std::vector<ForwardTerm>& terms, const TensorRef& y);

// Each adapter's shrink (into u_out, or an f32 scratch), then linear_forward.
void lora_forward(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fan_in_fan_out,
                  const std::vector<FusedAdapter>& adapters, const TensorRef& y);

// dx = dy·W + sum over terms of mask ⊙ (scale·dy·B)·A; dA = gᵀ·xa; dB = scale·dyᵀ·u.
void linear_backward(const TensorRef& dy, const TensorRef& W, bool fan_in_fan_out,
                     const std::vector<BackwardTerm>& terms, const TensorRef* dx);

// out = W + sign·scale·ΔW, ΔW = B·A in W's layout ([out, in], or [in, out] with fan_in_fan_out).
// out may be W itself (in-place merge); one read and one write of W, f32 accumulation.
void merge_delta(const TensorRef& W, const TensorRef& A, const TensorRef& B, float scale, bool fan_in_fan_out,
                 const TensorRef& out);

// Exact merge (core/backend.h exact_merge; algorithm in exact_merge.cc, format in core/exact_format.h).
void exact_merge(const TensorRef& W, bool fan_in_fan_out, const std::vector<ExactStep>& undo,
                 const std::vector<ExactStep>& merge, std::vector<std::shared_ptr<Storage>>* records);

// out = dropout(x): inverted scaling 1/(1-p); the mask is a pure function of (seed, stream, index).
void dropout(const TensorRef& x, float p, uint64_t seed, uint64_t stream, const TensorRef& out);

// Converts between float dtypes (or copies same-dtype data), n elements.
void convert(const void* src, DType st, void* dst, DType dt, int64_t n);

// True when every element is finite.
bool all_finite(const TensorRef& t);

// n values of ggml type t ↔ f32 (ggml_blocks.cc; host memory, n a whole number of blocks).
void ggml_dequantize(GgmlType t, const uint8_t* src, float* dst, int64_t n);
void ggml_quantize(GgmlType t, const float* src, uint8_t* dst, int64_t n);

using lorakit::dropout_keep;  // native/core/dropout_mask.h, shared with the CUDA kernels

// y = x·Wᵀ + b + scale_a·(x·A_aᵀ)·B_aᵀ where a = row_adapter[i] for row i (-1: base only). Rows are
// grouped per adapter (stable counting sort), each group runs one GEMM with the base and its
// adapter as two K segments, and every row of y is written once.
void mixed_linear_forward(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fan_in_fan_out,
                          const std::vector<AdapterFactors>& adapters, const int32_t* row_adapter,
                          const TensorRef& y);

// ---- DoRA (peft's DoraLinearLayer) on a linear layer; W [out, in] or [in, out] with fan_in_fan_out.

// norm[o] = ‖row o of W + scale·B·A‖ (in [out, in] layout) from the low-rank identity
//   ‖W + sBA‖² = ‖W‖² + 2s·rowsum((W·Aᵀ)⊙B) + s²·rowsum((B·(A·Aᵀ))⊙B),
// so no dense out×in delta is formed: one GEMM W·Aᵀ (out×in×r) plus O(out·r²). norm is f32 [out].
// wsq (f32 [out] or null) holds ‖W_o‖² across calls while W is unchanged: read when wsq_ready,
// else written (null: computed here and dropped).
void dora_weight_norm(const TensorRef& W, const TensorRef& A, const TensorRef& B, float scale, bool fan_in_fan_out,
                      float* norm, float* wsq, bool wsq_ready);

// peft's DoraLinearLayer forward. The norm is read when norm_ready (the caller caches it per W, A,
// B, scale), else computed into it as dora_weight_norm does (wsq likewise), without dropout from the
// forward's own GEMM (A's rows stacked under x). u = xa·Aᵀ (into u when given, for backward); pre =
// xa·Wᵀ + scale·u·Bᵀ (f32 [n, out], into pre when given, for backward); k = magnitude / norm; y =
// bias + k⊙pre when xa is x (no dropout), else y = bias + k⊙pre + (x − xa)·Wᵀ (peft with dropout).
void dora_linear_forward(const TensorRef& x, const TensorRef& xa, const TensorRef& W, const TensorRef* bias,
                         bool fan_in_fan_out, const TensorRef* u, const TensorRef& A, const TensorRef& B, float scale,
                         const TensorRef& magnitude, float* norm, bool norm_ready, float* wsq, bool wsq_ready,
                         const TensorRef& y, const TensorRef* pre);

// The norm is a constant (detached, as peft): with k = magnitude / norm and dyk = k⊙dy,
//   dmagnitude = Σ_rows dy⊙pre / norm;  g = scale·dyk·B;  dA = gᵀ·xa;  dB = scale·dykᵀ·u;
//   dx = dyk·W + g·A (no dropout), or dy·W + mask⊙(((k−1)⊙dy)·W + g·A)/(1−p) with dropout.
void dora_linear_backward(const TensorRef& dy, const TensorRef& W, bool fan_in_fan_out, const DoraBackwardArgs& a,
                          const TensorRef* dx, const TensorRef* dA, const TensorRef* dB, const TensorRef* dmagnitude);

// Merge: out = k ⊙ (W + scale·B·A) per output feature, k = magnitude / norm; unmerge (inverse):
// out = W / k − scale·B·A. One read and one write of W; out may be W.
void dora_merge(const TensorRef& W, const TensorRef& A, const TensorRef& B, float scale, bool fan_in_fan_out,
                const TensorRef& magnitude, const float* norm, bool inverse, const TensorRef& out);

// ---- Embedding (peft's lora.Embedding): W [num, dim], A [r, num], B [dim, r], indices i32/i64.

// y[p] = W[idx[p]] + Σ_a scale_a·B_a·A_a[:, idx[p]]; with row_adapter, position p adds only adapter
// row_adapter[p] (-1: none). Indices must already be validated (0 <= idx < num).
void embedding_forward(const TensorRef& idx, const TensorRef& W, const std::vector<AdapterFactors>& adapters,
                       const int32_t* row_adapter, const TensorRef& y);

// dB = scale·dyᵀ·Aᵀ[idx] [dim, r]; dAᵀ[i] = Σ_{p: idx[p] = i} scale·dy[p]·B, summed in position order
// per index (a stable counting sort, no atomics: deterministic). padding_idx (-1: none) gets no dA.
void embedding_backward(const TensorRef& idx, const TensorRef& dy, const TensorRef& A, const TensorRef& B, float scale,
                        int64_t padding_idx, const TensorRef* dA, const TensorRef* dB);

// ---- Conv2d (peft's lora.Conv2d): base W [out, in/groups, kh, kw] with stride/padding/dilation/groups;
// A [r, in, kh, kw] is a conv with the base's kernel, stride and padding and dilation 1 (peft does not
// copy dilation); B [out, r/groups, 1, 1] is a grouped 1×1 conv. x is [N, in, H, W].

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
