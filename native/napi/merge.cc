// Merge ops: out = W + scale·ΔW (ΔW = B·A) for linear and conv2d weights, through the backend's
// merge_delta; exactMerge through exact_merge (records: core/exact_format.h). Argument checks only.
#include <napi.h>
#include <memory>
#include "../core/backend.h"
#include "../core/exact_format.h"
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

namespace {

// An exact step's operands, held by value in the call's closure.
struct HeldStep {
  TensorRef A, B, magnitude;
  bool dora = false;
  float scale = 0.f;
  const float* norm = nullptr;
  const void* record = nullptr;
  size_t record_bytes = 0;
};

// W's 2-D view: [rows, cols] as given, or a conv2d kernel [out, in, kh, kw] as [out, in·kh·kw].
struct ExactView {
  TensorRef W2;
  bool conv;
};

// [A, B, scale, magnitude | null, norm | null, record | null]: A and B as mergeDelta's (conv2d:
// conv2dMergeDelta's), DoRA's magnitude and f32 weight norm [out] (linear only), and for an undo
// step the i32 record tensor its merge returned.
HeldStep exact_step(KernelCall& c, const Napi::Value& v, const std::string& w, const ExactView& view, bool fifo,
                    Device dev, bool undo) {
  if (!v.IsArray() || v.As<Napi::Array>().Length() != 6)
    throw_type(w + ": expected [A, B, scale, magnitude | null, norm | null, record | null]");
  Napi::Array t = v.As<Napi::Array>();
  HeldStep h;
  h.A = float_operand(c, t.Get(0u), w + ".A", dev);
  h.B = float_operand(c, t.Get(1u), w + ".B", dev);
  h.scale = scale_arg(t.Get(2u), w + ".scale");
  const int64_t rows = view.W2.shape[0], cols = view.W2.shape[1];
  if (view.conv) {
    const int64_t r = h.A.shape.empty() ? 0 : h.A.shape[0];
    if (h.A.shape.size() != 4 || r < 1 || h.A.numel() != r * cols)
      throw_range(w + ".A: expected [r, in, kh, kw] matching the kernel (groups 1), got " + shape_str(h.A.shape));
    require_same_shape(h.B, {rows, r, 1, 1}, w + ".B");
    h.A.shape = {r, cols};
    h.B.shape = {rows, r};
  } else {
    check_adapter(h.A, h.B, fifo ? LinearDims{rows, cols} : LinearDims{cols, rows}, w + ".");
  }
  OptRef m = float_operand_or_null(c, t.Get(3u), w + ".magnitude", dev);
  const bool has_norm = !t.Get(4u).IsNull() && !t.Get(4u).IsUndefined();
  if (m.set != has_norm) throw_type(w + ": a DoRA step needs both magnitude and norm, a LoRA step neither");
  if (m.set) {
    if (view.conv) throw_type(w + ".magnitude: DoRA is supported on linear weights only");
    const int64_t outf = fifo ? cols : rows;
    require_same_shape(m.ref, {outf}, w + ".magnitude");
    h.magnitude = m.ref;
    h.dora = true;
    h.norm = f32_operand(c, t.Get(4u), w + ".norm", dev, {outf}, Access::Read).as<float>();
  }
  NativeTensor* rec = get_tensor_or_null(t.Get(5u), w + ".record");
  if (undo != (rec != nullptr)) throw_type(w + (undo ? ".record: an undo step needs its record" : ".record: a merge step takes none"));
  if (rec) {
    if (rec->device() != dev) throw_type(w + ".record: expected a tensor on " + device_name(dev));
    const TensorRef& r = c.read(rec, w + ".record");
    if (r.dtype != DType::I32) throw_type(w + ".record: expected the i32 record of an exact merge");
    h.record = r.data;
    h.record_bytes = static_cast<size_t>(r.numel()) * 4;
    if (h.record_bytes < sizeof(exact::ExactHeader) + exact::offsets_bytes(rows, cols))
      throw_range(w + ".record: too small for this weight's record");
  }
  return h;
}

std::vector<HeldStep> exact_steps(KernelCall& c, const Napi::Value& v, const std::string& name, const ExactView& view,
                                  bool fifo, Device dev, bool undo) {
  if (!v.IsArray()) throw_type(name + ": expected an array of steps");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<HeldStep> out;
  for (uint32_t i = 0; i < a.Length(); i++)
    out.push_back(exact_step(c, a.Get(i), name + "[" + std::to_string(i) + "]", view, fifo, dev, undo));
  return out;
}

std::vector<ExactStep> as_steps(const std::vector<HeldStep>& held) {
  std::vector<ExactStep> out;
  for (const HeldStep& h : held) out.push_back({h.A, h.B, h.scale, h.dora ? &h.magnitude : nullptr, h.norm, h.record, h.record_bytes});
  return out;
}

}  // namespace

// exactMerge(W, fifo, undo, merge): in place, W runs each undo step (reverse merge order, with its
// record), then each merge step; returns one i32 record tensor per merge step.
KernelCall BuildExactMerge(const Napi::CallbackInfo& info) {
  KernelCall c;
  Device dev = device_of(info[0], "weight");
  TensorRef W = float_operand(c, info[0], "weight", dev, Access::Write);
  bool fifo = get_bool(info, 1, "fanInFanOut");
  ExactView view{W, W.shape.size() == 4};
  if (view.conv) {
    if (fifo) throw_type("fanInFanOut: a conv2d kernel has no fan_in_fan_out layout");
    view.W2.shape = {W.shape[0], W.shape[1] * W.shape[2] * W.shape[3]};
  } else if (W.shape.size() != 2) {
    throw_range("weight: expected [rows, cols] or a conv2d kernel [out, in, kh, kw], got " + shape_str(W.shape));
  }
  if (view.W2.shape[0] < 1 || view.W2.shape[1] < 1) throw_range("weight: expected a non-empty weight, got " + shape_str(W.shape));
  std::vector<HeldStep> undo = exact_steps(c, info[2], "undo", view, fifo, dev, true);
  std::vector<HeldStep> merge = exact_steps(c, info[3], "merge", view, fifo, dev, false);
  auto op = LORAKIT_OP(dev, exact_merge);
  auto records = std::make_shared<std::vector<std::shared_ptr<Storage>>>();
  TensorRef W2 = view.W2;
  c.run = [=] { op(W2, fifo, as_steps(undo), as_steps(merge), records.get()); };
  c.result = [records](Napi::Env env) -> Napi::Value {
    Napi::Array out = Napi::Array::New(env, records->size());
    for (size_t i = 0; i < records->size(); i++) {
      const auto& s = (*records)[i];
      out.Set(static_cast<uint32_t>(i), NativeTensor::Adopt(env, s, DType::I32, {static_cast<int64_t>(s->nbytes / 4)}));
    }
    return out;
  };
  return c;
}

}  // namespace napi
}  // namespace lorakit
