// The CPU side of the quantized bases (core/quant_formats.h: formats, code books and layouts;
// core/backend.h: the four ops). quant_codec.cc encodes and decodes, quant_linear.cc runs the
// forward and the backward's dx over a quantized W without a full-size dequantised copy.
#pragma once
#include <cstdint>
#include <vector>
#include "../core/op_args.h"
#include "../core/quant_formats.h"
#include "../core/tensor.h"

namespace lorakit {
namespace cpu {

// out (quant_layout(spec).nbytes bytes) = the quantized bytes of w (float [rows, cols], any float dtype).
void quantize(const TensorRef& w, const QuantSpec& spec, uint8_t* out);
// out (float [rows, cols]) = deq(W).
void dequantize(const QuantWeight& W, const TensorRef& out);
// Rows [r0, r0 + nrows) of deq(W) as f32 into out (nrows·cols values, row-major). Single-threaded:
// callers run it inside their own pool tasks.
void dequantize_rows(const QuantWeight& W, int64_t r0, int64_t nrows, float* out);
// Values [c0, c0 + len) of row `row` of deq(W) into out (nf4/fp4: c0 and len even).
void dequantize_segment(const QuantWeight& W, int64_t row, int64_t c0, int64_t len, float* out);
// The per-block absmax of an nf4/fp4 weight with double quant, reconstructed as
// map[q]·absmax2 + offset (blocks [b0, b0 + nb)).
void dq_absmax(const QuantWeight& W, int64_t b0, int64_t nb, float* out);

// y = x·deq(W)ᵀ + bias + Σ scale·(x·Aᵀ)·Bᵀ (peft's Linear4bit / Linear8bitLt forward).
void quant_lora_forward(const TensorRef& x, const QuantWeight& W, const TensorRef* bias,
                        const std::vector<FusedAdapter>& adapters, const TensorRef& y);
// dx = dy·deq(W) + Σ mask ⊙ (scale·dy·B)·A; dA, dB as linear_backward.
void quant_linear_backward(const TensorRef& dy, const QuantWeight& W, const std::vector<BackwardTerm>& terms,
                           const TensorRef* dx);

}  // namespace cpu
}  // namespace lorakit
