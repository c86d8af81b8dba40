// The CUDA backend's kernels, internal to native/cuda: backend.cu registers them as its op table
// (core/backend.h), with the operand structs of core/op_args.h and device pointers. Plain C++ (no
// CUDA headers). Every function runs on the calling thread's stream and returns without waiting;
// errors of a launch are thrown here, asynchronous ones at the next synchronize/read.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>
#include "../core/op_args.h"
#include "../core/tensor.h"

namespace lorakit {
namespace cuda {

// convert.cu
void convert(const void* src, DType st, void* dst, DType dt, int64_t n);
bool all_finite(const TensorRef& t);

// dropout.cu: out = dropout(x) with the CPU's mask; dst += mask ⊙ src / (1 - p) (backward).
void dropout(const TensorRef& x, float p, uint64_t seed, uint64_t stream, const TensorRef& out);
void masked_accumulate(const TensorRef& src, float p, uint64_t seed, uint64_t stream, const TensorRef& dst);

// merge.cu: out = W + scale·ΔW in one pass over W (out may be W).
void merge_delta(const TensorRef& W, const TensorRef& A, const TensorRef& B, float scale, bool fan_in_fan_out,
                 const TensorRef& out);

// exact_merge.cu: core/backend.h exact_merge (records: core/exact_format.h).
void exact_merge(const TensorRef& W, bool fan_in_fan_out, const std::vector<ExactStep>& undo, const std::vector<ExactStep>& merge,
                 std::vector<std::shared_ptr<Storage>>* records);

// decode.cu: y = x·Wᵀ + bias + Σ scale·u·Bᵀ for n ≤ kDecodeMaxRows rows, streaming W once.
constexpr int64_t kDecodeMaxRows = 16;
constexpr size_t kDecodeMaxTerms = 4;
bool decode_applicable(const TensorRef& x, const TensorRef& W, bool fan_in_fan_out, const std::vector<ForwardTerm>& terms);
// after_shrink: the kernel launched just before on this stream is decode_shrink's, writing the
// terms' u; on sm_90 the decode kernel then starts while it runs (programmatic dependent launch)
// and waits for it only before its epilogue reads u. dora: y = k ⊙ pre + bias in the same epilogue,
// pre = x·Wᵀ + Σ s·u·Bᵀ also stored when dora.pre is set (DoRA's training forward).
// The fresh norm: the tensor-core decode also computes M = W·Aᵀ from its pass over W (A's rows as
// a second mma row tile) and, in its epilogue, each feature's norm from M, wsq, G and B
// (dora_norm.cuh), written to `norm` before k = mag / norm is used.
struct DecodeNorm {
  const void* A = nullptr;  // [r, in] in W's dtype; null: norm is given
  int r = 0;
  const float* wsq = nullptr;   // [outf] ‖W_o‖²
  const float* gram = nullptr;  // [r, r] A·Aᵀ (decode_shrink's)
  const void* B = nullptr;      // [outf, r] in b_dt
  DType b_dt = DType::F32;
  float scale = 0.f;
};
struct DecodeDora {
  const float* k = nullptr;     // [outf] f32, or null: k = mag / norm where norm is set
  const void* mag = nullptr;    // [outf] in mag_dt
  DType mag_dt = DType::F32;
  float* norm = nullptr;        // [outf] f32 (written when fresh.A is set)
  void* pre = nullptr;          // [n, outf] in y's dtype
  DecodeNorm fresh;
};
// Whether the tensor-core decode takes x and W (16-bit W in x's dtype, in % 8 == 0, aligned rows).
bool decode_tc_applicable(const TensorRef& x, const TensorRef& W);
void decode_forward(const TensorRef& x, const TensorRef& W, const TensorRef* bias, const std::vector<ForwardTerm>& terms,
                    const TensorRef& y, bool after_shrink = false, const DecodeDora& dora = {});
// u = x·Aᵀ for n ≤ kDecodeMaxRows rows (u in any float dtype).
// gram: also G = A·Aᵀ [r, r] f32 in the same launch (A in x's dtype, r ≤ 16), for DoRA's norm.
void decode_shrink(const TensorRef& x, const TensorRef& A, const TensorRef& u, float* gram = nullptr);
// G = A·Aᵀ [r, r] f32 for r ≤ kDecodeMaxRows, A [r, in] in any float dtype (the shrink kernel, A's rows as x's).
void decode_gram(const TensorRef& A, float* G);

// linear_blas.cu (cuBLASLt)
void lora_shrink(const TensorRef& x, const TensorRef& A, const TensorRef& out);
// z [n, out] = scale·u·Bᵀ (u [n, r], B [out, r]), z in u's dtype.
void lora_expand(const TensorRef& u, const TensorRef& B, float scale, const TensorRef& z);
void linear_forward(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fan_in_fan_out,
                    const std::vector<ForwardTerm>& terms, const TensorRef& y);
void linear_backward(const TensorRef& dy, const TensorRef& W, bool fan_in_fan_out,
                     const std::vector<BackwardTerm>& terms, const TensorRef* dx);
// lora_grad.cu: g = s·dy·B, dB = s·dyᵀ·u from one read of dy (B, u, g in dy's dtype); false: not applicable.
bool lora_grad_fused(const TensorRef& dy, const void* B, const void* u, int64_t r, float scale, void* g, const TensorRef& dB);
// The whole LoRA forward in one call: each adapter's shrink (into u_out when given, for backward,
// in x's dtype; else into scratch), then linear_forward. No dropout (callers with dropout use the pieces).
void lora_forward(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fan_in_fan_out,
                  const std::vector<FusedAdapter>& adapters, const TensorRef& y);
// DoRA's forward: y = col_scale ⊙ (x·Wᵀ + Σ s·u·Bᵀ) + bias, col_scale f32 [out] on the device (the
// sm_90 kernel applies it in its epilogue, the other paths in one pass over y with the bias).
void linear_forward_scaled(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fan_in_fan_out,
                           const std::vector<ForwardTerm>& terms, const TensorRef& y, const float* col_scale);
void lora_forward_scaled(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fan_in_fan_out,
                         const std::vector<FusedAdapter>& adapters, const TensorRef& y, const float* col_scale);
// Whether lora_forward takes the decode kernel for these operands (n ≤ kDecodeMaxRows rows).
bool lora_decode_applicable(const TensorRef& x, const TensorRef& W, bool fan_in_fan_out, const std::vector<FusedAdapter>& adapters);
// DoRA's forward on the decode kernel, for operands lora_decode_applicable takes: the shrink (with
// G = A·Aᵀ into gram when set, for d.fresh), then one decode launch that applies d (k = magnitude /
// norm, the fresh norm, pre) and writes y once.
void lora_forward_dora_decode(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fan_in_fan_out,
                              const std::vector<FusedAdapter>& adapters, const TensorRef& y, const DecodeDora& d, float* gram);

// gemm_sm90.cu (Hopper, sm_90a): C [M, N] = A0·op(B0) + Σ scale_i·A_i·op(B_i) (+ bias) in one
// pass, 16-bit operands and C, f32 accumulation. A_i [M, k_i] row-major; B_i [N, k_i] (b_kmajor)
// or [k_i, N]. Operand 0 is the base (scale ignored), the rest adapters (at most 4, one B layout).
struct Sm90Operand {
  const void* A;
  const void* B;
  int64_t k;
  float scale;
  bool b_kmajor;
};
constexpr int kSm90MaxOperands = 5;
bool sm90_gemm_usable();  // a cc 9.0 device and a kernel image for it
// Shapes, alignment (16 B rows and pointers, N % 8 == 0, k_i % 8 == 0) and a usable device.
bool sm90_gemm_supports(DType dt, int64_t M, int64_t N, const std::vector<Sm90Operand>& ops, const void* bias,
                        const void* C);
// col_scale (f32 [N] or null) multiplies each column before the bias: C = col_scale ⊙ (…) + bias.
void sm90_lora_gemm(DType dt, int64_t M, int64_t N, const std::vector<Sm90Operand>& ops, const void* bias, void* C,
                    const float* col_scale = nullptr);
uint64_t sm90_gemm_launches();  // launches so far in this process (benchmarks, tests)

// mixed_batch.cu: y = x·Wᵀ + b + scale_a·(x·A_aᵀ)·B_aᵀ with a = row_adapter[i] per row (-1: base).
void mixed_linear_forward(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fan_in_fan_out,
                          const std::vector<AdapterFactors>& adapters, const int32_t* row_adapter,
                          const TensorRef& y);

// embedding.cu: peft's lora.Embedding (indices on the host, checked by the caller).
void embedding_forward(const TensorRef& idx, const TensorRef& W, const std::vector<AdapterFactors>& adapters,
                       const int32_t* row_adapter, const TensorRef& y);
void embedding_backward(const TensorRef& idx, const TensorRef& dy, const TensorRef& A, const TensorRef& B, float scale,
                        int64_t padding_idx, const TensorRef* dA, const TensorRef* dB);

// dora.cu: DoRA on a linear layer (formulas in dora.cu; norm, wsq and k are device f32 buffers).
void dora_weight_norm(const TensorRef& W, const TensorRef& A, const TensorRef& B, float scale, bool fan_in_fan_out,
                      float* norm, float* wsq, bool wsq_ready);
// The same, also writing k = magnitude / norm into k (when magnitude and k are given).
void dora_weight_norm_k(const TensorRef& W, const TensorRef& A, const TensorRef& B, float scale, bool fan_in_fan_out,
                        float* norm, float* wsq, bool wsq_ready, const TensorRef* magnitude, float* k);
void dora_linear_forward(const TensorRef& x, const TensorRef& xa, const TensorRef& W, const TensorRef* bias,
                         bool fan_in_fan_out, const TensorRef* u, const TensorRef& A, const TensorRef& B, float scale,
                         const TensorRef& magnitude, float* norm, bool norm_ready, float* wsq, bool wsq_ready,
                         const TensorRef& y, const TensorRef* pre);
// y = k ⊙ src + bias per column (src [n, out] in dt, may be y; k f32 [out]; bias [out] of bias_dt or null).
void scale_columns(const void* src, void* y, DType dt, int64_t n, int64_t outf, const float* k, const void* bias, DType bias_dt);
void dora_linear_backward(const TensorRef& dy, const TensorRef& W, bool fan_in_fan_out, const DoraBackwardArgs& a,
                          const TensorRef* dx, const TensorRef* dA, const TensorRef* dB, const TensorRef* dmagnitude);
void dora_merge(const TensorRef& W, const TensorRef& A, const TensorRef& B, float scale, bool fan_in_fan_out,
                const TensorRef& magnitude, const float* norm, bool inverse, const TensorRef& out);

// conv2d.cu: peft's lora.Conv2d with the cpu's algorithm (im2col, fp32 GEMMs), deterministic backward.
void conv2d_forward(const TensorRef& x, const TensorRef& W, const TensorRef* bias, const ConvGeom& g,
                    const std::vector<ConvTerm>& terms, const int32_t* image_adapter, const TensorRef& y);
void conv2d_backward(const TensorRef& dy, const TensorRef& W, const ConvGeom& g, const std::vector<ConvTerm>& terms,
                     const TensorRef* dx);

// linear_blas.cu: a row-major GEMM C [m, n] = alpha·op(A)·op(B) + beta·C (A [m, k] or, with ta,
// [k, m]; B [k, n] or, with tb, [n, k]); A and B in dtype ab, C in ab or f32.
void gemm_rm(int64_t m, int64_t n, int64_t k, const void* A, int64_t lda, bool ta, const void* B, int64_t ldb, bool tb,
             void* C, int64_t ldc, DType ab, DType c, float alpha, float beta = 0.f);

// The bare base GEMMs (no bias, no adapters), the benchmarks' reference: y = x·Wᵀ, or with
// input_grad the backward's dx = dy·W (x is then dy [n, out] and y is dx [n, in]).
void base_gemm(const TensorRef& x, const TensorRef& W, const TensorRef& y, bool input_grad);

// quant.cu, quant_linear.cu: quantized bases (core/backend.h's quantize, dequantize,
// quant_lora_forward, quant_linear_backward; core/quant_formats.h).
void quantize(const TensorRef& w, const QuantSpec& spec, uint8_t* out);
void dequantize(const QuantWeight& W, const TensorRef& out);
void quant_lora_forward(const TensorRef& x, const QuantWeight& W, const TensorRef* bias,
                        const std::vector<FusedAdapter>& adapters, const TensorRef& y);
void quant_linear_backward(const TensorRef& dy, const QuantWeight& W, const std::vector<BackwardTerm>& terms,
                           const TensorRef* dx);

// optim.cu: fused optimizer steps over one parameter tensor (state in f32; f32 math).
// master (f32, or null) is the authoritative value of a 16-bit parameter, as on the cpu.
void adamw_step(const TensorRef& param, const TensorRef& grad, const TensorRef& exp_avg, const TensorRef& exp_avg_sq,
                const TensorRef* master, const AdamWArgs& h);
void sgd_step(const TensorRef& param, const TensorRef& grad, const TensorRef* momentum_buf, const TensorRef* master,
              const SgdArgs& h);
// Training helpers for cuda parameters: dst (f32) += alpha·src; Σ x² (f64, deterministic); x ·= alpha.
void accumulate(const TensorRef& dst, const TensorRef& src, float alpha);
// out (f32 [cols]) = alpha·Σ_rows x (x as [rows, cols]); one thread per column, rows in order (deterministic).
void column_sum(const TensorRef& x, float alpha, const TensorRef& out);
double sum_squares(const TensorRef& t);
void scale_inplace(const TensorRef& t, float alpha);

}  // namespace cuda
}  // namespace lorakit
