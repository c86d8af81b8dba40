// A backend's op table, in the manner of ggml's backend interface (one struct of function pointers
// per backend): native/cpu/backend.cc and native/cuda/backend.cu each fill one and register it, and
// the bindings call `backend_for(device)` instead of naming a backend. Operands are the structs of
// core/op_args.h, already validated; every tensor of a call is on the backend's device. Device ops
// run on the calling thread's current stream and may return before the work completes.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>
#include "errors.h"
#include "ggml_blocks.h"
#include "op_args.h"
#include "tensor.h"

namespace lorakit {

struct Backend {
  const char* name;  // "cpu", "cuda": the device name used in messages
  // The dtype of the shrink output u = x·Aᵀ for activations of dtype x (cpu: f32; cuda: x's dtype,
  // the operand type of its tensor-core expand).
  DType (*scratch_dtype)(DType x);
  // False when activations, weights and outputs of one call must share a float dtype (cuda).
  bool mixed_dtypes;

  // ---- Linear LoRA
  // out [n, r] = x·Aᵀ (the shrink).
  void (*lora_shrink)(const TensorRef& x, const TensorRef& A, const TensorRef& out);
  // y = x·Wᵀ + bias + Σ scale·u·Bᵀ in one pass.
  void (*linear_forward)(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fan_in_fan_out,
                         const std::vector<ForwardTerm>& terms, const TensorRef& y);
  // Every adapter's shrink, then linear_forward (no dropout).
  void (*lora_forward)(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fan_in_fan_out,
                       const std::vector<FusedAdapter>& adapters, const TensorRef& y);
  // dx = dy·W + Σ mask ⊙ (scale·dy·B)·A; dA = gᵀ·xa; dB = scale·dyᵀ·u.
  void (*linear_backward)(const TensorRef& dy, const TensorRef& W, bool fan_in_fan_out,
                          const std::vector<BackwardTerm>& terms, const TensorRef* dx);
  // out = W + scale·B·A in W's layout; out may be W.
  void (*merge_delta)(const TensorRef& W, const TensorRef& A, const TensorRef& B, float scale, bool fan_in_fan_out,
                      const TensorRef& out);
  // Exact merge in one pass over W (in place; layout as merge_delta's, fan_in_fan_out included):
  // each element runs the undo steps in order (each restores the bits its record holds), then the
  // merge steps in order, each recording the side information (core/exact_format.h) that undoes
  // it; records[k] receives merge step k's record (a new allocation on this device).
  void (*exact_merge)(const TensorRef& W, bool fan_in_fan_out, const std::vector<ExactStep>& undo,
                      const std::vector<ExactStep>& merge, std::vector<std::shared_ptr<Storage>>* records);
  // y = x·Wᵀ + b + scale_a·(x·A_aᵀ)·B_aᵀ with a = row_adapter[i] per row (-1: base only).
  void (*mixed_linear_forward)(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fan_in_fan_out,
                               const std::vector<AdapterFactors>& adapters, const int32_t* row_adapter, const TensorRef& y);

  // ---- DoRA (formulas in native/cpu/ops.h); norm and wsq are f32 buffers on the device, pre in the
  // backend's scratch dtype.
  void (*dora_weight_norm)(const TensorRef& W, const TensorRef& A, const TensorRef& B, float scale, bool fan_in_fan_out,
                           float* norm, float* wsq, bool wsq_ready);
  void (*dora_linear_forward)(const TensorRef& x, const TensorRef& xa, const TensorRef& W, const TensorRef* bias,
                              bool fan_in_fan_out, const TensorRef* u, const TensorRef& A, const TensorRef& B, float scale,
                              const TensorRef& magnitude, float* norm, bool norm_ready, float* wsq, bool wsq_ready,
                              const TensorRef& y, const TensorRef* pre);
  void (*dora_linear_backward)(const TensorRef& dy, const TensorRef& W, bool fan_in_fan_out, const DoraBackwardArgs& a,
                               const TensorRef* dx, const TensorRef* dA, const TensorRef* dB, const TensorRef* dmagnitude);
  void (*dora_merge)(const TensorRef& W, const TensorRef& A, const TensorRef& B, float scale, bool fan_in_fan_out,
                     const TensorRef& magnitude, const float* norm, bool inverse, const TensorRef& out);

  // ---- Embedding (indices are host tensors, validated by the caller).
  void (*embedding_forward)(const TensorRef& idx, const TensorRef& W, const std::vector<AdapterFactors>& adapters,
                            const int32_t* row_adapter, const TensorRef& y);
  void (*embedding_backward)(const TensorRef& idx, const TensorRef& dy, const TensorRef& A, const TensorRef& B, float scale,
                             int64_t padding_idx, const TensorRef* dA, const TensorRef* dB);

  // ---- Conv2d (a conv2d merge is merge_delta over the flattened kernel).
  void (*conv2d_forward)(const TensorRef& x, const TensorRef& W, const TensorRef* bias, const ConvGeom& g,
                         const std::vector<ConvTerm>& terms, const int32_t* image_adapter, const TensorRef& y);
  void (*conv2d_backward)(const TensorRef& dy, const TensorRef& W, const ConvGeom& g, const std::vector<ConvTerm>& terms,
                          const TensorRef* dx);

  // ---- Elementwise
  // n elements from src (dtype st) to dst (dtype dt), both on this device; float dtypes convert.
  void (*convert)(const void* src, DType st, void* dst, DType dt, int64_t n);
  bool (*all_finite)(const TensorRef& t);
  // out = dropout(x) with the mask of core/dropout_mask.h and inverted scaling 1/(1-p).
  void (*dropout)(const TensorRef& x, float p, uint64_t seed, uint64_t stream, const TensorRef& out);

  // ---- ggml block formats (core/ggml_blocks.h), host memory: n values of type t to f32 and back
  // (quantize: F32, F16, BF16, Q8_0, Q4_0 as ggml's quantize_row_*_ref). n is whole blocks.
  void (*ggml_dequantize)(GgmlType t, const uint8_t* src, float* dst, int64_t n);
  void (*ggml_quantize)(GgmlType t, const float* src, uint8_t* dst, int64_t n);

  // ---- Quantized bases (core/quant_formats.h; peft over bitsandbytes Linear8bitLt / Linear4bit)
  // out (quant_layout(spec).nbytes, device memory) = the quantized bytes of w (float [rows, cols]).
  // Deterministic: the cpu and cuda backends write the same bytes for the same w.
  void (*quantize)(const TensorRef& w, const QuantSpec& spec, uint8_t* out);
  // out (float [rows, cols]) = deq(W).
  void (*dequantize)(const QuantWeight& W, const TensorRef& out);
  // y = x·deq(W)ᵀ + bias + Σ scale·(x·Aᵀ)·Bᵀ as lora_forward (u_out as there), dequantising inside
  // the GEMM: never a full-size dequantised copy of W.
  void (*quant_lora_forward)(const TensorRef& x, const QuantWeight& W, const TensorRef* bias,
                             const std::vector<FusedAdapter>& adapters, const TensorRef& y);
  // dx = dy·deq(W) + Σ adapter terms; dA, dB as linear_backward's (dx may be null).
  void (*quant_linear_backward)(const TensorRef& dy, const QuantWeight& W, const std::vector<BackwardTerm>& terms,
                                const TensorRef* dx);

  // ---- Optimizer steps (state in f32; master, when given, is the f32 value of a 16-bit param).
  void (*adamw_step)(const TensorRef& param, const TensorRef& grad, const TensorRef& exp_avg, const TensorRef& exp_avg_sq,
                     const TensorRef* master, const AdamWArgs& h);
  void (*sgd_step)(const TensorRef& param, const TensorRef& grad, const TensorRef* momentum_buf, const TensorRef* master,
                   const SgdArgs& h);
  // dst (f32) += alpha·src; Σ x² in f64 (deterministic); t ·= alpha.
  void (*accumulate)(const TensorRef& dst, const TensorRef& src, float alpha);
  // out (f32 [cols]) = alpha·Σ over rows of x viewed as [rows, cols], rows summed in order (a bias gradient).
  void (*column_sum)(const TensorRef& x, float alpha, const TensorRef& out);
  double (*sum_squares)(const TensorRef& t);
  void (*scale_inplace)(const TensorRef& t, float alpha);

  // ---- Memory and streams
  bool (*usable)();  // a device is present at run time
  // Copies between host memory and this device; they return when the host buffer may be reused.
  void (*copy_from_host)(void* dst, const void* src, size_t nbytes);
  void (*copy_to_host)(void* dst, const void* src, size_t nbytes);
  // Null on a device without streams. The calling thread's current stream; set_thread_stream sets
  // it unchecked (queued work runs on the stream it was queued on); order_use makes the current
  // stream wait for other streams' conflicting use of the memory at p, then records this use.
  uint64_t (*current_stream)();
  void (*set_thread_stream)(uint64_t id);
  void (*order_use)(const void* p, bool write);
};

// Backends register their table once at module load; registering again is harmless.
void register_backend(Device device, const Backend* backend);
// The backend of a device; TypeError "device: 'cuda' is not available in this build" when the
// device is not compiled in.
const Backend& backend_for(Device device);
// Null when the device is not compiled in.
const Backend* find_backend(Device device);

// The op of a backend, or a TypeError naming the op and the backend when that backend lacks it.
template <class Fn>
Fn backend_op(const Backend& b, Fn Backend::*op, const char* op_name) {
  Fn f = b.*op;
  if (!f) throw_type(std::string(op_name) + ": not implemented on the " + b.name + " backend");
  return f;
}

}  // namespace lorakit

// LORAKIT_OP(dev, merge_delta): the function pointer of that op for the device, checked.
#define LORAKIT_OP(dev, op) ::lorakit::backend_op(::lorakit::backend_for(dev), &::lorakit::Backend::op, #op)
