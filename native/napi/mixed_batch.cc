// The mixed-adapter batch (peft's adapter_names forward): each row of x uses its own adapter.
// Argument checks only.
#include <napi.h>
#include "../core/backend.h"
#include "args.h"
#include "operands.h"
#include "ops.h"

namespace lorakit {
namespace napi {

// mixedLinearForward(x, W, bias|null, fifo, adapters: [A, B, scale][], rowAdapter: Int32Array, y)
KernelCall BuildMixedLinearForward(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = device_of(info[0], "x");
  TensorRef x = float_operand(c, info[0], "x", dev);
  TensorRef W = float_operand(c, info[1], "weight", dev);
  OptRef bias = float_operand_or_null(c, info[2], "bias", dev);
  bool fifo = get_bool(info, 3, "fanInFanOut");
  LinearDims d = linear_dims(W, fifo);
  if (x.shape.empty() || x.shape.back() != d.in)
    throw_range("x: expected shape [..., " + std::to_string(d.in) + "] (in_features), got " + shape_str(x.shape));
  if (bias.set) require_same_shape(bias.ref, {d.out}, "bias");
  auto adapters = factor_list(c, info[4], d.in, d.out, "adapters", dev);
  std::vector<int32_t> rows = row_adapter_arg(info[5], x.rows(), adapters.size(), "rowAdapter", /*nullable=*/false);
  TensorRef y = float_operand(c, info[6], "y", dev, Access::Write);
  require_same_shape(y, with_last(x.shape, d.out), "y");
  require_distinct(y, x, "y", "x");
  require_backend_dtype(dev, {&x, &y}, W.dtype, "x, y", "the weight's dtype");
  auto forward = LORAKIT_OP(dev, mixed_linear_forward);
  c.run = [=] { forward(x, W, bias.ptr(), fifo, adapters, rows.data(), y); };
  return c;
}

}  // namespace napi
}  // namespace lorakit
