// Linear LoRA ops (peft's lora.Linear): argument unpacking and checks only, no math. A call runs
// on the device of its first tensor, through that device's backend.
#include <napi.h>
#include <memory>
#include "../core/backend.h"
#include "args.h"
#include "linear_args.h"
#include "operands.h"
#include "ops.h"

namespace lorakit {
namespace napi {
namespace {

// The leading (x, W, bias|null, fanInFanOut) arguments shared by the linear forward calls.
struct LinearInputs {
  Device dev;
  TensorRef x, W;
  OptRef bias;
  bool fifo;
  LinearDims d;
};

LinearInputs read_linear_inputs(const Napi::CallbackInfo& info, KernelCall& c) {
  LinearInputs li;
  li.dev = device_of(info[0], "x");
  li.x = float_operand(c, info[0], "x", li.dev);
  li.W = float_operand(c, info[1], "weight", li.dev);
  li.bias = float_operand_or_null(c, info[2], "bias", li.dev);
  li.fifo = get_bool(info, 3, "fanInFanOut");
  li.d = linear_dims(li.W, li.fifo);
  require_last_dim(li.x, li.d.in, "x", "in_features");
  if (li.bias.set) require_same_shape(li.bias.ref, {li.d.out}, "bias");
  return li;
}

}  // namespace

// shrink(x, A, out): out [n..., r] = x·Aᵀ
KernelCall BuildShrink(const Napi::CallbackInfo& info) {
  KernelCall c;
  Device dev = device_of(info[0], "x");
  TensorRef x = float_operand(c, info[0], "x", dev);
  TensorRef A = float_operand(c, info[1], "A", dev);
  TensorRef out = float_operand(c, info[2], "out", dev, Access::Write);
  if (A.shape.size() != 2 || A.shape[0] < 1 || A.shape[1] < 1)
    throw_range("A: expected shape [r, in] with r, in >= 1, got " + shape_str(A.shape));
  require_last_dim(x, A.shape[1], "x", "A's in_features");
  require_same_shape(out, with_last(x.shape, A.shape[0]), "out");
  auto shrink = LORAKIT_OP(dev, lora_shrink);
  c.run = [=] { shrink(x, A, out); };
  return c;
}

// linearForward(x, W, bias|null, fifo, terms: [u, B, scale][], y)
KernelCall BuildLinearForward(const Napi::CallbackInfo& info) {
  KernelCall c;
  const LinearInputs li = read_linear_inputs(info, c);
  if (!info[4].IsArray()) throw_type("terms: expected an array");
  Napi::Array arr = info[4].As<Napi::Array>();
  std::vector<ForwardTerm> terms;
  const int64_t n = li.x.rows();
  const TensorRef y = float_operand(c, info[5], "y", li.dev, Access::Write);
  require_same_shape(y, with_last(li.x.shape, li.d.out), "y");
  for (uint32_t i = 0; i < arr.Length(); i++) {
    std::string w = "terms[" + std::to_string(i) + "]";
    Napi::Value tv = arr.Get(i);
    if (!tv.IsArray() || tv.As<Napi::Array>().Length() != 3) throw_type(w + ": expected [u, B, scale]");
    Napi::Array t = tv.As<Napi::Array>();
    TensorRef u = float_operand(c, t.Get(0u), w + ".u", li.dev);
    TensorRef B = float_operand(c, t.Get(1u), w + ".B", li.dev);
    if (B.shape.size() != 2 || B.shape[0] != li.d.out || B.shape[1] < 1)
      throw_range(w + ".B: expected shape [" + std::to_string(li.d.out) + ", r] with r >= 1, got " + shape_str(B.shape));
    int64_t r = B.shape[1];
    if (u.numel() != n * r || u.shape.empty() || u.shape.back() != r)
      throw_range(w + ".u: expected " + std::to_string(n) + " rows of " + std::to_string(r) + ", got shape " +
                  shape_str(u.shape));
    terms.push_back({u, B, scale_arg(t.Get(2u), w + ".scale")});
  }
  auto forward = LORAKIT_OP(li.dev, linear_forward);
  c.run = [=] { forward(li.x, li.W, li.bias.ptr(), li.fifo, terms, y); };
  return c;
}

std::shared_ptr<FusedAdapterList> fused_adapter_list(KernelCall& c, const Napi::Value& v, LinearDims d,
                                                     const std::vector<int64_t>& xshape, Device dev) {
  if (!v.IsArray()) throw_type("adapters: expected an array");
  Napi::Array arr = v.As<Napi::Array>();
  auto a = std::make_shared<FusedAdapterList>();
  a->us.reserve(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++) {
    std::string w = "adapters[" + std::to_string(i) + "]";
    Napi::Value tv = arr.Get(i);
    if (!tv.IsArray() || tv.As<Napi::Array>().Length() != 4) throw_type(w + ": expected [A, B, scale, u|null]");
    Napi::Array t = tv.As<Napi::Array>();
    FusedAdapter fa;
    fa.A = float_operand(c, t.Get(0u), w + ".A", dev);
    fa.B = float_operand(c, t.Get(1u), w + ".B", dev);
    check_adapter(fa.A, fa.B, d, w + ".");
    fa.scale = scale_arg(t.Get(2u), w + ".scale");
    fa.u_out = nullptr;
    OptRef u = float_operand_or_null(c, t.Get(3u), w + ".u", dev, Access::Write);
    if (u.set) {
      require_same_shape(u.ref, with_last(xshape, fa.A.shape[0]), w + ".u");
      a->us.push_back(u.ref);
      fa.u_out = &a->us.back();
    }
    a->adapters.push_back(fa);
  }
  return a;
}

std::shared_ptr<BackwardTermList> backward_term_list(KernelCall& c, const Napi::Value& v, LinearDims d,
                                                     const std::vector<int64_t>& dyshape, Device dev) {
  if (!v.IsArray()) throw_type("terms: expected an array");
  Napi::Array arr = v.As<Napi::Array>();
  const std::vector<int64_t> xshape = with_last(dyshape, d.in);
  int64_t n = 1;
  for (size_t i = 0; i + 1 < dyshape.size(); i++) n *= dyshape[i];
  auto a = std::make_shared<BackwardTermList>();
  a->grads.reserve(2 * arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++) {
    std::string w = "terms[" + std::to_string(i) + "]";
    Napi::Value tv = arr.Get(i);
    if (!tv.IsObject()) throw_type(w + ": expected an object");
    Napi::Object o = tv.As<Napi::Object>();
    BackwardTerm bt;
    bt.xa = float_operand(c, o.Get("xa"), w + ".xa", dev);
    bt.u = float_operand(c, o.Get("u"), w + ".u", dev);
    bt.A = float_operand(c, o.Get("A"), w + ".A", dev);
    bt.B = float_operand(c, o.Get("B"), w + ".B", dev);
    check_adapter(bt.A, bt.B, d, w + ".");
    int64_t r = bt.A.shape[0];
    require_same_shape(bt.xa, xshape, w + ".xa");
    if (bt.u.numel() != n * r || bt.u.shape.empty() || bt.u.shape.back() != r)
      throw_range(w + ".u: expected " + std::to_string(n) + " rows of " + std::to_string(r) + ", got shape " + shape_str(bt.u.shape));
    bt.scale = to_scale(number_prop(o, "scale", w), w + ".scale");
    bt.dropout_p = dropout_prob(number_prop(o, "p", w), w + ".p");
    bt.seed = to_seed(number_prop(o, "seed", w), w + ".seed");
    bt.stream = to_counter(number_prop(o, "stream", w), w + ".stream");
    bt.dA = nullptr;
    bt.dB = nullptr;
    OptRef dA = float_operand_or_null(c, o.Get("dA"), w + ".dA", dev, Access::Write);
    OptRef dB = float_operand_or_null(c, o.Get("dB"), w + ".dB", dev, Access::Write);
    if (dA.set) {
      require_same_shape(dA.ref, bt.A.shape, w + ".dA");
      a->grads.push_back(dA.ref);
      bt.dA = &a->grads.back();
    }
    if (dB.set) {
      require_same_shape(dB.ref, bt.B.shape, w + ".dB");
      a->grads.push_back(dB.ref);
      bt.dB = &a->grads.back();
    }
    a->terms.push_back(bt);
  }
  return a;
}

// loraForward(x, W, bias|null, fifo, adapters: [A, B, scale, u|null][], y): every adapter's shrink
// and the fused forward in one call; u (when given) receives x·Aᵀ for backward.
KernelCall BuildLoraForward(const Napi::CallbackInfo& info) {
  KernelCall c;
  const LinearInputs li = read_linear_inputs(info, c);
  const TensorRef y = float_operand(c, info[5], "y", li.dev, Access::Write);
  require_same_shape(y, with_last(li.x.shape, li.d.out), "y");
  auto a = fused_adapter_list(c, info[4], li.d, li.x.shape, li.dev);
  auto forward = LORAKIT_OP(li.dev, lora_forward);
  c.run = [=] { forward(li.x, li.W, li.bias.ptr(), li.fifo, a->adapters, y); };
  return c;
}

// linearBackward(dy, W, fifo, terms: {xa, u, A, B, scale, p, seed, stream, dA|null, dB|null}[], dx|null)
KernelCall BuildLinearBackward(const Napi::CallbackInfo& info) {
  KernelCall c;
  Device dev = device_of(info[0], "dy");
  const TensorRef dy = float_operand(c, info[0], "dy", dev);
  const TensorRef W = float_operand(c, info[1], "weight", dev);
  const bool fifo = get_bool(info, 2, "fanInFanOut");
  LinearDims d = linear_dims(W, fifo);
  require_last_dim(dy, d.out, "dy", "out_features");
  const OptRef dx = float_operand_or_null(c, info[4], "dx", dev, Access::Write);
  if (dx.set) require_same_shape(dx.ref, with_last(dy.shape, d.in), "dx");
  auto a = backward_term_list(c, info[3], d, dy.shape, dev);
  auto backward = LORAKIT_OP(dev, linear_backward);
  c.run = [=] { backward(dy, W, fifo, a->terms, dx.ptr()); };
  return c;
}

}  // namespace napi
}  // namespace lorakit
