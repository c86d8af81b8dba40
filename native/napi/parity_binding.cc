// Bindings for the peft-parity ops: argument unpacking and checks only, no math.
#include <napi.h>
#include <cmath>
#include "../cpu/parity_ops.h"
#include "args.h"
#include "parity_binding.h"

namespace lorakit {
namespace napi {
namespace {

const TensorRef& float_arg(const Napi::CallbackInfo& info, size_t i, const std::string& name) {
  if (info.Length() <= i) throw_type(name + ": missing argument");
  NativeTensor* t = get_tensor(info[i], name);
  require_float_cpu(t, name);
  return t->ref();
}

const TensorRef* float_arg_or_null(const Napi::CallbackInfo& info, size_t i, const std::string& name) {
  if (info.Length() <= i) return nullptr;
  NativeTensor* t = get_tensor_or_null(info[i], name);
  if (!t) return nullptr;
  require_float_cpu(t, name);
  return &t->ref();
}

void require_shape_eq(const TensorRef& t, const std::vector<int64_t>& s, const std::string& name) {
  if (t.shape != s) throw_range(name + ": expected shape " + shape_str(s) + ", got " + shape_str(t.shape));
}

void require_distinct(const TensorRef& out, const TensorRef& in, const std::string& oname, const std::string& iname) {
  if (out.data == in.data && out.numel() > 0) throw_range(oname + ": must not be the same tensor as " + iname);
}

struct LinearDims {
  int64_t in, out;
};

LinearDims linear_dims(const TensorRef& W, bool fifo) {
  if (W.shape.size() != 2) throw_range("weight: expected 2 dimensions, got shape " + shape_str(W.shape));
  return fifo ? LinearDims{W.shape[0], W.shape[1]} : LinearDims{W.shape[1], W.shape[0]};
}

std::vector<int64_t> with_last(std::vector<int64_t> s, int64_t d) {
  s.back() = d;
  return s;
}

float finite_scale(const Napi::Value& v, const std::string& name) {
  if (!v.IsNumber()) throw_type(name + ": expected a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) throw_range(name + ": expected a finite number");
  return static_cast<float>(d);
}

// [A, B, scale][] with A [r, in], B [out, r]
std::vector<cpu::AdapterFactors> factor_list(const Napi::Value& v, int64_t in, int64_t out, const std::string& name) {
  if (!v.IsArray()) throw_type(name + ": expected an array of [A, B, scale]");
  Napi::Array arr = v.As<Napi::Array>();
  std::vector<cpu::AdapterFactors> list;
  for (uint32_t i = 0; i < arr.Length(); i++) {
    std::string w = name + "[" + std::to_string(i) + "]";
    Napi::Value tv = arr.Get(i);
    if (!tv.IsArray() || tv.As<Napi::Array>().Length() != 3) throw_type(w + ": expected [A, B, scale]");
    Napi::Array t = tv.As<Napi::Array>();
    NativeTensor* A = get_tensor(t.Get(0u), w + ".A");
    NativeTensor* B = get_tensor(t.Get(1u), w + ".B");
    require_float_cpu(A, w + ".A");
    require_float_cpu(B, w + ".B");
    const auto& as = A->ref().shape;
    if (as.size() != 2 || as[1] != in)
      throw_range(w + ".A: expected shape [r, " + std::to_string(in) + "], got " + shape_str(as));
    require_shape_eq(B->ref(), {out, as[0]}, w + ".B");
    list.push_back({A->ref(), B->ref(), finite_scale(t.Get(2u), w + ".scale")});
  }
  return list;
}

// mixedLinearForward(x, W, bias|null, fifo, adapters: [A, B, scale][], rowAdapter: Int32Array, y)
Napi::Value MixedLinearForward(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const TensorRef& x = float_arg(info, 0, "x");
    const TensorRef& W = float_arg(info, 1, "weight");
    const TensorRef* bias = float_arg_or_null(info, 2, "bias");
    bool fifo = get_bool(info, 3, "fanInFanOut");
    LinearDims d = linear_dims(W, fifo);
    if (x.shape.empty() || x.shape.back() != d.in)
      throw_range("x: expected shape [..., " + std::to_string(d.in) + "] (in_features), got " + shape_str(x.shape));
    if (bias) require_shape_eq(*bias, {d.out}, "bias");
    auto adapters = factor_list(info[4], d.in, d.out, "adapters");
    if (info.Length() <= 5 || !info[5].IsTypedArray() ||
        info[5].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
      throw_type("rowAdapter: expected an Int32Array");
    Napi::Int32Array rows = info[5].As<Napi::Int32Array>();
    int64_t n = x.rows();
    if (static_cast<int64_t>(rows.ElementLength()) != n)
      throw_range("rowAdapter: expected " + std::to_string(n) + " entries (one per row of x), got " +
                  std::to_string(rows.ElementLength()));
    const int32_t* rp = rows.Data();
    for (int64_t i = 0; i < n; i++)
      if (rp[i] < -1 || rp[i] >= static_cast<int32_t>(adapters.size()))
        throw_range("rowAdapter[" + std::to_string(i) + "]: " + std::to_string(rp[i]) + " is not -1 (base) or an adapter index below " +
                    std::to_string(adapters.size()));
    const TensorRef& y = float_arg(info, 6, "y");
    require_shape_eq(y, with_last(x.shape, d.out), "y");
    require_distinct(y, x, "y", "x");
    cpu::mixed_linear_forward(x, W, bias, fifo, adapters, rp, y);
    return info.Env().Undefined();
  });
}

}  // namespace

void InitParity(Napi::Env env, Napi::Object exports) {
  exports.Set("mixedLinearForward", Napi::Function::New<MixedLinearForward>(env, "mixedLinearForward"));
}

}  // namespace napi
}  // namespace lorakit
