// DoRA ops (peft's DoraLinearLayer): argument checks only. The weight norm is detached (a
// constant in backward) and kept f32; the saved pre-activations are in the scratch dtype.
#include <napi.h>
#include "../core/backend.h"
#include "args.h"
#include "operands.h"
#include "ops.h"

namespace lorakit {
namespace napi {

namespace {

// The saved pre-activations [n, out] in the backend's scratch dtype for x's dtype (f32 on the cpu,
// x's dtype on cuda): the forward's unscaled x·Wᵀ + s·u·Bᵀ.
void require_pre_dtype(Device dev, const TensorRef& pre, DType x_dtype, const std::string& name) {
  const DType want = backend_for(dev).scratch_dtype(x_dtype);
  if (pre.dtype != want)
    throw_type(name + ": expected " + dtype_name(want) + " (the scratch dtype for " + dtype_name(x_dtype) + " inputs), got " +
               dtype_name(pre.dtype));
}

}  // namespace

// doraWeightNorm(W, A, B, scale, fifo, norm f32 [out], wsq f32 [out] | null, wsqReady): wsq holds
// ‖W_o‖² across calls while W is unchanged: read when wsqReady, else written.
KernelCall BuildDoraWeightNorm(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = device_of(info[0], "weight");
  TensorRef W = float_operand(c, info[0], "weight", dev);
  TensorRef A = float_operand(c, info[1], "A", dev);
  TensorRef B = float_operand(c, info[2], "B", dev);
  float scale = to_scale(get_number(info, 3, "scale"), "scale");
  bool fifo = get_bool(info, 4, "fanInFanOut");
  LinearDims d = linear_dims(W, fifo);
  check_adapter(A, B, d, "");
  TensorRef norm = f32_operand(c, info[5], "norm", dev, {d.out}, Access::Write);
  const bool has_wsq = info.Length() > 6 && !info[6].IsNull() && !info[6].IsUndefined();
  const bool wsq_ready = has_wsq && get_bool(info, 7, "wsqReady");
  float* wsq = has_wsq ? f32_operand(c, info[6], "wsq", dev, {d.out}, wsq_ready ? Access::Read : Access::Write).as<float>() : nullptr;
  auto weight_norm = LORAKIT_OP(dev, dora_weight_norm);
  c.run = [=] { weight_norm(W, A, B, scale, fifo, norm.as<float>(), wsq, wsq_ready); };
  return c;
}

// doraLinearForward(x, xa, W, bias|null, fifo, u|null (written: xa·Aᵀ), A, B, scale, norm, magnitude,
// y, pre|null (written: x·Wᵀ + s·u·Bᵀ without k, for backward), normReady, wsq|null, wsqReady): norm
// is read when normReady, else computed into it (wsq as doraWeightNorm's).
KernelCall BuildDoraLinearForward(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = device_of(info[0], "x");
  TensorRef x = float_operand(c, info[0], "x", dev);
  TensorRef xa = float_operand(c, info[1], "xa", dev);
  TensorRef W = float_operand(c, info[2], "weight", dev);
  OptRef bias = float_operand_or_null(c, info[3], "bias", dev);
  bool fifo = get_bool(info, 4, "fanInFanOut");
  LinearDims d = linear_dims(W, fifo);
  if (x.shape.empty() || x.shape.back() != d.in)
    throw_range("x: expected shape [..., " + std::to_string(d.in) + "] (in_features), got " + shape_str(x.shape));
  require_same_shape(xa, x.shape, "xa");
  if (bias.set) require_same_shape(bias.ref, {d.out}, "bias");
  OptRef u = float_operand_or_null(c, info[5], "u", dev, Access::Write);
  TensorRef A = float_operand(c, info[6], "A", dev);
  TensorRef B = float_operand(c, info[7], "B", dev);
  check_adapter(A, B, d, "");
  int64_t r = A.shape[0], n = x.rows();
  if (u.set) require_same_shape(u.ref, with_last(x.shape, r), "u");
  float scale = to_scale(get_number(info, 8, "scale"), "scale");
  const bool norm_ready = info.Length() <= 13 || info[13].IsUndefined() || get_bool(info, 13, "normReady");
  TensorRef norm = f32_operand(c, info[9], "norm", dev, {d.out}, norm_ready ? Access::Read : Access::Write);
  const bool has_wsq = !norm_ready && info.Length() > 14 && !info[14].IsNull() && !info[14].IsUndefined();
  const bool wsq_ready = has_wsq && get_bool(info, 15, "wsqReady");
  float* wsq = has_wsq ? f32_operand(c, info[14], "wsq", dev, {d.out}, wsq_ready ? Access::Read : Access::Write).as<float>() : nullptr;
  TensorRef mag = float_operand(c, info[10], "magnitude", dev);
  require_same_shape(mag, {d.out}, "magnitude");
  TensorRef y = float_operand(c, info[11], "y", dev, Access::Write);
  require_same_shape(y, with_last(x.shape, d.out), "y");
  require_distinct(y, x, "y", "x");
  OptRef pre = float_operand_or_null(c, info[12], "pre", dev, Access::Write);
  if (pre.set) {
    require_same_shape(pre.ref, {n, d.out}, "pre");
    require_pre_dtype(dev, pre.ref, x.dtype, "pre");
  }
  auto forward = LORAKIT_OP(dev, dora_linear_forward);
  c.run = [=] { forward(x, xa, W, bias.ptr(), fifo, u.ptr(), A, B, scale, mag, norm.as<float>(), norm_ready, wsq, wsq_ready, y, pre.ptr()); };
  return c;
}

// doraLinearBackward(dy, W, fifo, {xa, u, A, B, magnitude, scale, p, seed, stream, norm, pre}, dx|null, dA|null, dB|null, dmag|null)
KernelCall BuildDoraLinearBackward(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = device_of(info[0], "dy");
  TensorRef dy = float_operand(c, info[0], "dy", dev);
  TensorRef W = float_operand(c, info[1], "weight", dev);
  bool fifo = get_bool(info, 2, "fanInFanOut");
  LinearDims d = linear_dims(W, fifo);
  if (dy.shape.empty() || dy.shape.back() != d.out)
    throw_range("dy: expected shape [..., " + std::to_string(d.out) + "] (out_features), got " + shape_str(dy.shape));
  int64_t n = dy.rows();
  if (!info[3].IsObject()) throw_type("term: expected an object");
  Napi::Object o = info[3].As<Napi::Object>();
  DoraBackwardArgs a;
  a.xa = float_operand(c, o.Get("xa"), "term.xa", dev);
  a.u = float_operand(c, o.Get("u"), "term.u", dev);
  a.A = float_operand(c, o.Get("A"), "term.A", dev);
  a.B = float_operand(c, o.Get("B"), "term.B", dev);
  a.magnitude = float_operand(c, o.Get("magnitude"), "term.magnitude", dev);
  check_adapter(a.A, a.B, d, "term.");
  std::vector<int64_t> xshape = with_last(dy.shape, d.in);
  require_same_shape(a.xa, xshape, "term.xa");
  require_same_shape(a.u, with_last(dy.shape, a.A.shape[0]), "term.u");
  require_same_shape(a.magnitude, {d.out}, "term.magnitude");
  a.scale = to_scale(number_prop(o, "scale", "term"), "term.scale");
  a.dropout_p = dropout_prob(number_prop(o, "p", "term"), "term.p");
  a.seed = to_seed(number_prop(o, "seed", "term"), "term.seed");
  a.stream = to_counter(number_prop(o, "stream", "term"), "term.stream");
  a.norm = f32_operand(c, o.Get("norm"), "term.norm", dev, {d.out}, Access::Read).as<float>();
  a.pre = float_operand(c, o.Get("pre"), "term.pre", dev);
  require_same_shape(a.pre, {n, d.out}, "term.pre");
  require_pre_dtype(dev, a.pre, dy.dtype, "term.pre");
  OptRef dx = float_operand_or_null(c, info[4], "dx", dev, Access::Write);
  OptRef dA = float_operand_or_null(c, info[5], "dA", dev, Access::Write);
  OptRef dB = float_operand_or_null(c, info[6], "dB", dev, Access::Write);
  OptRef dm = float_operand_or_null(c, info[7], "dmagnitude", dev, Access::Write);
  if (dx.set) {
    require_same_shape(dx.ref, xshape, "dx");
    require_distinct(dx.ref, dy, "dx", "dy");
  }
  if (dA.set) require_same_shape(dA.ref, a.A.shape, "dA");
  if (dB.set) require_same_shape(dB.ref, a.B.shape, "dB");
  if (dm.set) require_same_shape(dm.ref, {d.out}, "dmagnitude");
  auto backward = LORAKIT_OP(dev, dora_linear_backward);
  c.run = [=] { backward(dy, W, fifo, a, dx.ptr(), dA.ptr(), dB.ptr(), dm.ptr()); };
  return c;
}

// doraMerge(W, A, B, scale, fifo, magnitude, norm, inverse, out); out may be W
KernelCall BuildDoraMerge(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = device_of(info[0], "weight");
  TensorRef W = float_operand(c, info[0], "weight", dev, Access::ReadInPlace);
  TensorRef A = float_operand(c, info[1], "A", dev);
  TensorRef B = float_operand(c, info[2], "B", dev);
  float scale = to_scale(get_number(info, 3, "scale"), "scale");
  bool fifo = get_bool(info, 4, "fanInFanOut");
  LinearDims d = linear_dims(W, fifo);
  check_adapter(A, B, d, "");
  TensorRef mag = float_operand(c, info[5], "magnitude", dev);
  require_same_shape(mag, {d.out}, "magnitude");
  TensorRef norm = f32_operand(c, info[6], "norm", dev, {d.out}, Access::Read);
  bool inverse = get_bool(info, 7, "inverse");
  TensorRef out = float_operand(c, info[8], "out", dev, Access::Write);
  require_same_shape(out, W.shape, "out");
  require_backend_dtype(dev, {&out}, W.dtype, "out", "the weight's dtype");
  auto merge = LORAKIT_OP(dev, dora_merge);
  c.run = [=] { merge(W, A, B, scale, fifo, mag, norm.as<float>(), inverse, out); };
  return c;
}

}  // namespace napi
}  // namespace lorakit
