// The CPU backend's op table (core/backend.h): the kernels of ops.h and optim.h, host memory.
#include "backend.h"
#include <cstring>
#include "../core/backend.h"
#include "ops.h"
#include "optim.h"
#include "quant.h"

namespace lorakit {
namespace cpu {
namespace {

// The shrink output is f32 whatever x's dtype: the expand then reads it at full precision.
DType scratch_dtype(DType) { return DType::F32; }

float* f32_data(const TensorRef* t) { return t ? t->as<float>() : nullptr; }

void adamw(const TensorRef& param, const TensorRef& grad, const TensorRef& m, const TensorRef& v, const TensorRef* master,
           const AdamWArgs& h) {
  adamw_step(param, grad, m.as<float>(), v.as<float>(), f32_data(master), h);
}

void sgd(const TensorRef& param, const TensorRef& grad, const TensorRef* buf, const TensorRef* master, const SgdArgs& h) {
  sgd_step(param, grad, f32_data(buf), f32_data(master), h);
}

bool always() { return true; }

void host_copy(void* dst, const void* src, size_t nbytes) {
  if (nbytes) std::memcpy(dst, src, nbytes);
}

// Filled by name: a field left out stays null, which backend_op() reports by name.
Backend make_table() {
  Backend b{};
  b.name = "cpu";
  b.scratch_dtype = scratch_dtype;
  b.mixed_dtypes = true;
  b.lora_shrink = lora_shrink;
  b.linear_forward = linear_forward;
  b.lora_forward = lora_forward;
  b.linear_backward = linear_backward;
  b.merge_delta = merge_delta;
  b.exact_merge = exact_merge;
  b.mixed_linear_forward = mixed_linear_forward;
  b.dora_weight_norm = dora_weight_norm;
  b.dora_linear_forward = dora_linear_forward;
  b.dora_linear_backward = dora_linear_backward;
  b.dora_merge = dora_merge;
  b.embedding_forward = embedding_forward;
  b.embedding_backward = embedding_backward;
  b.conv2d_forward = conv2d_forward;
  b.conv2d_backward = conv2d_backward;
  b.convert = convert;
  b.all_finite = all_finite;
  b.dropout = dropout;
  b.ggml_dequantize = ggml_dequantize;
  b.ggml_quantize = ggml_quantize;
  b.quantize = quantize;
  b.dequantize = dequantize;
  b.quant_lora_forward = quant_lora_forward;
  b.quant_linear_backward = quant_linear_backward;
  b.adamw_step = adamw;
  b.sgd_step = sgd;
  b.accumulate = accumulate;
  b.column_sum = column_sum;
  b.sum_squares = sum_squares;
  b.scale_inplace = scale_inplace;
  b.usable = always;
  b.copy_from_host = host_copy;
  b.copy_to_host = host_copy;
  // No streams: current_stream, set_thread_stream and order_use stay null.
  return b;
}

const Backend kCpu = make_table();

}  // namespace

void register_backend() { lorakit::register_backend(Device::CPU, &kCpu); }

}  // namespace cpu
}  // namespace lorakit
