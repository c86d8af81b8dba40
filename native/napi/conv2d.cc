// Conv2d ops (peft's lora.Conv2d): argument checks only. Geometry is [sh, sw, ph, pw, dh, dw, groups].
#include <napi.h>
#include <memory>
#include "../core/backend.h"
#include "args.h"
#include "operands.h"
#include "ops.h"

namespace lorakit {
namespace napi {
namespace {

// geom: [sh, sw, ph, pw, dh, dw, groups]; padding may be 0, the rest >= 1.
ConvGeom geom_arg(const Napi::Value& v) {
  if (!v.IsArray() || v.As<Napi::Array>().Length() != 7) throw_type("geom: expected [sh, sw, ph, pw, dh, dw, groups]");
  Napi::Array a = v.As<Napi::Array>();
  int64_t g[7];
  for (uint32_t i = 0; i < 7; i++) {
    std::string name = "geom[" + std::to_string(i) + "]";
    bool pad = i == 2 || i == 3;
    g[i] = to_size(number_value(a.Get(i), name), pad ? 0 : 1, int64_t(1) << 20, name);
  }
  ConvGeom c;
  c.sh = g[0]; c.sw = g[1]; c.ph = g[2]; c.pw = g[3]; c.dh = g[4]; c.dw = g[5]; c.groups = g[6];
  return c;
}

struct ConvShape {
  int64_t N, C, H, W, O, kh, kw, Ho, Wo;
};

ConvShape conv_shape(const TensorRef& x, const TensorRef& W, const ConvGeom& g) {
  if (W.shape.size() != 4) throw_range("weight: expected [out, in/groups, kh, kw], got " + shape_str(W.shape));
  if (x.shape.size() != 4) throw_range("x: expected [N, C, H, W], got " + shape_str(x.shape));
  ConvShape s{x.shape[0], x.shape[1], x.shape[2], x.shape[3], W.shape[0], W.shape[2], W.shape[3], 0, 0};
  if (s.O % g.groups != 0 || s.C % g.groups != 0 || W.shape[1] * g.groups != s.C)
    throw_range("x: " + std::to_string(s.C) + " channels do not match weight " + shape_str(W.shape) + " with groups " +
                std::to_string(g.groups));
  s.Ho = conv_out_size(s.H, s.kh, g.sh, g.ph, g.dh);
  s.Wo = conv_out_size(s.W, s.kw, g.sw, g.pw, g.dw);
  if (s.Ho <= 0 || s.Wo <= 0 || s.H + 2 * g.ph < g.dh * (s.kh - 1) + 1 || s.W + 2 * g.pw < g.dw * (s.kw - 1) + 1)
    throw_range("x: spatial size " + std::to_string(s.H) + "×" + std::to_string(s.W) + " is too small for the kernel");
  return s;
}

// The conv terms and the dA/dB refs they point at, in one heap block the closure shares.
struct ConvTerms {
  std::vector<ConvTerm> terms;
  std::vector<TensorRef> grads;  // reserved up front so the terms' pointers stay valid
};

// terms: [{xa, u, A, B, scale, p?, seed?, stream?, dA?, dB?}]; the forward writes u, the backward
// reads it and writes dA/dB.
std::shared_ptr<ConvTerms> conv_terms(KernelCall& c, const Napi::Value& v, const TensorRef& x_like, const ConvShape& s,
                                      const ConvGeom& g, bool backward, Device dev) {
  if (!v.IsArray()) throw_type("terms: expected an array");
  Napi::Array arr = v.As<Napi::Array>();
  auto out = std::make_shared<ConvTerms>();
  out->grads.reserve(2 * arr.Length());
  if (arr.Length() > 0 && (conv_out_size(s.H, s.kh, g.sh, g.ph, 1) != s.Ho || conv_out_size(s.W, s.kw, g.sw, g.pw, 1) != s.Wo))
    throw_range("x: the adapter's conv (dilation 1, as peft's lora_A) gives another output size than the base conv");
  for (uint32_t i = 0; i < arr.Length(); i++) {
    std::string w = "terms[" + std::to_string(i) + "]";
    Napi::Value tv = arr.Get(i);
    if (!tv.IsObject()) throw_type(w + ": expected an object");
    Napi::Object o = tv.As<Napi::Object>();
    ConvTerm t;
    t.xa = float_operand(c, o.Get("xa"), w + ".xa", dev);
    t.A = float_operand(c, o.Get("A"), w + ".A", dev);
    t.B = float_operand(c, o.Get("B"), w + ".B", dev);
    require_same_shape(t.xa, x_like.shape, w + ".xa");
    const auto& as = t.A.shape;
    if (as.size() != 4 || as[1] != s.C || as[2] != s.kh || as[3] != s.kw)
      throw_range(w + ".A: expected shape [r, " + std::to_string(s.C) + ", " + std::to_string(s.kh) + ", " + std::to_string(s.kw) +
                  "], got " + shape_str(as));
    int64_t r = as[0];
    if (r % g.groups != 0) throw_range(w + ".A: rank " + std::to_string(r) + " is not a multiple of groups " + std::to_string(g.groups));
    require_same_shape(t.B, {s.O, r / g.groups, 1, 1}, w + ".B");
    t.u = f32_operand(c, o.Get("u"), w + ".u", dev, {s.N, r, s.Ho * s.Wo}, backward ? Access::Read : Access::Write);
    t.scale = to_scale(number_prop(o, "scale", w), w + ".scale");
    t.dropout_p = 0.f;
    t.seed = t.stream = 0;
    t.dA = t.dB = nullptr;
    if (backward) {
      t.dropout_p = dropout_prob(number_prop(o, "p", w), w + ".p");
      t.seed = to_seed(number_prop(o, "seed", w), w + ".seed");
      t.stream = to_counter(number_prop(o, "stream", w), w + ".stream");
      OptRef dA = float_operand_or_null(c, o.Get("dA"), w + ".dA", dev, Access::Write);
      OptRef dB = float_operand_or_null(c, o.Get("dB"), w + ".dB", dev, Access::Write);
      if (dA.set) {
        require_same_shape(dA.ref, as, w + ".dA");
        out->grads.push_back(dA.ref);
        t.dA = &out->grads.back();
      }
      if (dB.set) {
        require_same_shape(dB.ref, t.B.shape, w + ".dB");
        out->grads.push_back(dB.ref);
        t.dB = &out->grads.back();
      }
    }
    out->terms.push_back(t);
  }
  return out;
}

}  // namespace

// conv2dForward(x, W, bias|null, geom, terms [{xa, u, A, B, scale}], y, imageAdapter: Int32Array|null)
KernelCall BuildConv2dForward(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = device_of(info[0], "x");
  TensorRef x = float_operand(c, info[0], "x", dev);
  TensorRef W = float_operand(c, info[1], "weight", dev);
  OptRef bias = float_operand_or_null(c, info[2], "bias", dev);
  ConvGeom g = geom_arg(info[3]);
  ConvShape s = conv_shape(x, W, g);
  if (bias.set) require_same_shape(bias.ref, {s.O}, "bias");
  auto terms = conv_terms(c, info[4], x, s, g, false, dev);
  TensorRef y = float_operand(c, info[5], "y", dev, Access::Write);
  require_same_shape(y, {s.N, s.O, s.Ho, s.Wo}, "y");
  require_distinct(y, x, "y", "x");
  for (const auto& t : terms->terms) require_distinct(y, t.xa, "y", "terms[].xa");
  std::vector<int32_t> images = row_adapter_arg(info[6], s.N, terms->terms.size(), "imageAdapter", /*nullable=*/true);
  auto forward = LORAKIT_OP(dev, conv2d_forward);
  c.run = [=] { forward(x, W, bias.ptr(), g, terms->terms, images.empty() ? nullptr : images.data(), y); };
  return c;
}

// conv2dBackward(dy, x, W, geom, terms [{xa, u, A, B, scale, p, seed, stream, dA, dB}], dx|null)
KernelCall BuildConv2dBackward(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = device_of(info[0], "dy");
  TensorRef dy = float_operand(c, info[0], "dy", dev);
  TensorRef x = float_operand(c, info[1], "x", dev);
  TensorRef W = float_operand(c, info[2], "weight", dev);
  ConvGeom g = geom_arg(info[3]);
  ConvShape s = conv_shape(x, W, g);
  require_same_shape(dy, {s.N, s.O, s.Ho, s.Wo}, "dy");
  auto terms = conv_terms(c, info[4], x, s, g, true, dev);
  OptRef dx = float_operand_or_null(c, info[5], "dx", dev, Access::Write);
  if (dx.set) {
    require_same_shape(dx.ref, x.shape, "dx");
    require_distinct(dx.ref, dy, "dx", "dy");
  }
  auto backward = LORAKIT_OP(dev, conv2d_backward);
  c.run = [=] { backward(dy, W, g, terms->terms, dx.ptr()); };
  return c;
}

}  // namespace napi
}  // namespace lorakit
