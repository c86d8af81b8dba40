// Merge ops: out = W + scale·ΔW (ΔW = B·A) for linear and conv2d weights, through the backend's
// merge_delta. Argument checks only.
#include <napi.h>
#include "../core/backend.h"
#include "args.h"
#include "operands.h"
#include "ops.h"

namespace lorakit {
namespace napi {

// mergeDelta(W, A, B, scale, fifo, out): out = W + scale·ΔW (out may be W)
KernelCall BuildMergeDelta(const Napi::CallbackInfo& info) {
  KernelCall c;
  Device dev = device_of(info[0], "weight");
  TensorRef W = float_operand(c, info[0], "weight", dev, Access::ReadInPlace);
  TensorRef A = float_operand(c, info[1], "A", dev);
  TensorRef B = float_operand(c, info[2], "B", dev);
  float scale = to_scale(get_number(info, 3, "scale"), "scale");
  bool fifo = get_bool(info, 4, "fanInFanOut");
  TensorRef out = float_operand(c, info[5], "out", dev, Access::Write);
  LinearDims d = linear_dims(W, fifo);
  check_adapter(A, B, d, "adapter.");
  require_same_shape(out, W.shape, "out");
  auto merge = LORAKIT_OP(dev, merge_delta);
  c.run = [=] { merge(W, A, B, scale, fifo, out); };
  return c;
}

// conv2dMergeDelta(W, A, B, scale, out): out = W + scale·B·A over the flattened kernel (groups 1); out may be W
KernelCall BuildConv2dMergeDelta(const Napi::CallbackInfo& info) {
  KernelCall c;
  Device dev = device_of(info[0], "weight");
  TensorRef W = float_operand(c, info[0], "weight", dev, Access::ReadInPlace);
  TensorRef A = float_operand(c, info[1], "A", dev);
  TensorRef B = float_operand(c, info[2], "B", dev);
  float scale = to_scale(get_number(info, 3, "scale"), "scale");
  TensorRef out = float_operand(c, info[4], "out", dev, Access::Write);
  if (W.shape.size() != 4) throw_range("weight: expected [out, in, kh, kw], got " + shape_str(W.shape));
  int64_t O = W.shape[0], K = W.shape[1] * W.shape[2] * W.shape[3];
  if (A.shape.size() != 4 || A.shape[1] != W.shape[1] || A.shape[2] != W.shape[2] || A.shape[3] != W.shape[3])
    throw_range("A: expected shape [r, " + std::to_string(W.shape[1]) + ", " + std::to_string(W.shape[2]) + ", " +
                std::to_string(W.shape[3]) + "] (groups 1), got " + shape_str(A.shape));
  int64_t r = A.shape[0];
  require_same_shape(B, {O, r, 1, 1}, "B");
  require_same_shape(out, W.shape, "out");
  require_backend_dtype(dev, {&out}, W.dtype, "out", "the weight's dtype");
  require_backend_dtype(dev, {&B}, A.dtype, "B", "A's dtype");
  TensorRef w2 = W, a2 = A, b2 = B, o2 = out;
  w2.shape = {O, K};
  a2.shape = {r, K};
  b2.shape = {O, r};
  o2.shape = {O, K};
  auto merge = LORAKIT_OP(dev, merge_delta);
  c.run = [=] { merge(w2, a2, b2, scale, false, o2); };
  return c;
}

}  // namespace napi
}  // namespace lorakit
