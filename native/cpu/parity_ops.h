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
