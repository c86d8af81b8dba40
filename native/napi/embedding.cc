// Embedding ops (peft's lora.Embedding): argument checks only. Indices are always a host (cpu)
// tensor, checked here against num_embeddings; a device backend uploads them itself.
#include <napi.h>
#include "../core/backend.h"
#include "args.h"
#include "operands.h"
#include "ops.h"

namespace lorakit {
namespace napi {
namespace {

// An i32/i64 cpu tensor whose every entry is a valid row of a [num, dim] table.
TensorRef index_operand(KernelCall& c, const Napi::Value& v, const std::string& name, int64_t num) {
  NativeTensor* t = get_tensor(v, name);
  const TensorRef& r = t->ref();
  if (r.dtype != DType::I32 && r.dtype != DType::I64)
    throw_type(name + ": expected an i32 or i64 index tensor, got " + dtype_name(r.dtype));
  if (t->device() != Device::CPU) throw_type(name + ": expected a cpu tensor");
  int64_t n = r.numel();
  for (int64_t p = 0; p < n; p++) {
    int64_t i = index_at(r, p);
    if (i < 0 || i >= num)
      throw_range(name + ": index " + std::to_string(i) + " at position " + std::to_string(p) +
                  " is out of range for num_embeddings " + std::to_string(num));
  }
  return c.read(t, name);
}

}  // namespace

// embeddingForward(idx, W, adapters: [A, B, scale][], rowAdapter|null, y)
// The weight's device runs it.
KernelCall BuildEmbeddingForward(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = device_of(info[1], "weight");
  TensorRef W = float_operand(c, info[1], "weight", dev);
  if (W.shape.size() != 2) throw_range("weight: expected [num_embeddings, dim], got " + shape_str(W.shape));
  int64_t num = W.shape[0], dim = W.shape[1];
  TensorRef idx = index_operand(c, info[0], "indices", num);
  auto adapters = factor_list(c, info[2], num, dim, "adapters", dev);
  std::vector<int32_t> rows = row_adapter_arg(info[3], idx.numel(), adapters.size(), "rowAdapter", /*nullable=*/true);
  TensorRef y = float_operand(c, info[4], "y", dev, Access::Write);
  std::vector<int64_t> ys = idx.shape;
  ys.push_back(dim);
  require_same_shape(y, ys, "y");
  require_distinct(y, W, "y", "weight");
  require_backend_dtype(dev, {&y}, W.dtype, "y", "the weight's dtype");
  auto forward = LORAKIT_OP(dev, embedding_forward);
  c.run = [=] { forward(idx, W, adapters, rows.empty() ? nullptr : rows.data(), y); };
  return c;
}

// embeddingBackward(idx, dy, A, B, scale, paddingIdx, dA|null, dB|null)
KernelCall BuildEmbeddingBackward(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = device_of(info[2], "A");
  TensorRef A = float_operand(c, info[2], "A", dev);
  TensorRef B = float_operand(c, info[3], "B", dev);
  if (A.shape.size() != 2) throw_range("A: expected [r, num_embeddings], got " + shape_str(A.shape));
  int64_t r = A.shape[0], num = A.shape[1];
  if (B.shape.size() != 2 || B.shape[1] != r)
    throw_range("B: expected shape [dim, " + std::to_string(r) + "], got " + shape_str(B.shape));
  int64_t dim = B.shape[0];
  TensorRef idx = index_operand(c, info[0], "indices", num);
  TensorRef dy = float_operand(c, info[1], "dy", dev);
  std::vector<int64_t> ys = idx.shape;
  ys.push_back(dim);
  require_same_shape(dy, ys, "dy");
  float scale = to_scale(get_number(info, 4, "scale"), "scale");
  // -1: no padding index; otherwise a row of the table.
  double pad = get_number(info, 5, "paddingIdx");
  int64_t padding = pad == -1 ? -1 : to_index(pad, num, "paddingIdx");
  OptRef dA = float_operand_or_null(c, info[6], "dA", dev, Access::Write);
  OptRef dB = float_operand_or_null(c, info[7], "dB", dev, Access::Write);
  if (dA.set) require_same_shape(dA.ref, A.shape, "dA");
  if (dB.set) require_same_shape(dB.ref, B.shape, "dB");
  auto backward = LORAKIT_OP(dev, embedding_backward);
  c.run = [=] { backward(idx, dy, A, B, scale, padding, dA.ptr(), dB.ptr()); };
  return c;
}

}  // namespace napi
}  // namespace lorakit
