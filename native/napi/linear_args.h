// The adapter lists of the linear LoRA calls (linear.cc), shared with the quantized-base calls
// (quant.cc): parsed and checked against the layer's dims, held in one heap block that the call's
// closure shares (the adapters and terms point at the u / dA / dB refs it also holds).
#pragma once
#include <napi.h>
#include <memory>
#include <string>
#include <vector>
#include "../core/op_args.h"
#include "operands.h"

namespace lorakit {
namespace napi {

struct FusedAdapterList {
  std::vector<FusedAdapter> adapters;
  std::vector<TensorRef> us;  // reserved up front so pointers stay valid
};
// adapters: [A, B, scale, u|null][]; u (when given) has x's shape with r as its last dim.
std::shared_ptr<FusedAdapterList> fused_adapter_list(KernelCall& c, const Napi::Value& v, LinearDims d,
                                                     const std::vector<int64_t>& xshape, Device dev);

struct BackwardTermList {
  std::vector<BackwardTerm> terms;
  std::vector<TensorRef> grads;  // dA/dB refs; reserved up front so pointers stay valid
};
// terms: {xa, u, A, B, scale, p, seed, stream, dA|null, dB|null}[] for dy of dyshape.
std::shared_ptr<BackwardTermList> backward_term_list(KernelCall& c, const Napi::Value& v, LinearDims d,
                                                     const std::vector<int64_t>& dyshape, Device dev);

}  // namespace napi
}  // namespace lorakit
