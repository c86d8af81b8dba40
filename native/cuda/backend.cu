// The CUDA backend's op table (core/backend.h): the kernels of ops.h, device memory and streams.
#include "backend.h"
#include "../core/backend.h"
#include "ops.h"
#include "runtime.h"

namespace lorakit {
namespace cuda {
namespace {

// The shrink output keeps x's dtype: it is the operand of the tensor-core expand.
DType scratch_dtype(DType x) { return x; }

bool usable() { return device_count() > 0; }

// Filled by name: a field left out stays null, which backend_op() reports by name.
Backend make_table() {
  Backend b{};
  b.name = "cuda";
  b.scratch_dtype = scratch_dtype;
  b.mixed_dtypes = false;
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
  // ggml_dequantize / ggml_quantize: host-memory ops, cpu only (backend_op names the gap if asked)
  b.quantize = quantize;
  b.dequantize = dequantize;
  b.quant_lora_forward = quant_lora_forward;
  b.quant_linear_backward = quant_linear_backward;
  b.adamw_step = adamw_step;
  b.sgd_step = sgd_step;
  b.accumulate = accumulate;
  b.column_sum = column_sum;
  b.sum_squares = sum_squares;
  b.scale_inplace = scale_inplace;
  b.usable = usable;
  b.copy_from_host = copy_to_device;
  b.copy_to_host = copy_to_host;
  b.current_stream = current_stream;
  b.set_thread_stream = set_thread_stream;
  b.order_use = order_use;
  return b;
}

const Backend kCuda = make_table();

}  // namespace

void register_backend() {
  register_memory();
  lorakit::register_backend(Device::CUDA, &kCuda);
}

}  // namespace cuda
}  // namespace lorakit
