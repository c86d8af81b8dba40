// Bindings for the fused optimizer steps: argument checks only, the math is in cpu/optim.cc.
#include <napi.h>
#include <cmath>
#include "../cpu/optim.h"
#include "args.h"
#include "optim_binding.h"

namespace lorakit {
namespace napi {
namespace {

const TensorRef& float_tensor(const Napi::CallbackInfo& info, size_t i, const std::string& name) {
  if (info.Length() <= i) throw_type(name + ": required");
  NativeTensor* t = get_tensor(info[i], name);
  require_float_cpu(t, name);
  return t->ref();
}

// An f32 state buffer with the parameter's number of elements, distinct from the parameter.
float* state_buffer(const Napi::CallbackInfo& info, size_t i, const std::string& name, const TensorRef& param,
                    bool nullable) {
  if (info.Length() <= i || info[i].IsNull() || info[i].IsUndefined()) {
    if (nullable) return nullptr;
    throw_type(name + ": required");
  }
  const TensorRef& s = float_tensor(info, i, name);
  if (s.dtype != DType::F32) throw_type(name + ": optimizer state must be f32, got " + dtype_name(s.dtype));
  if (s.numel() != param.numel())
    throw_range(name + ": expected " + std::to_string(param.numel()) + " elements (param shape " + shape_str(param.shape) +
                "), got shape " + shape_str(s.shape));
  if (s.data == param.data) throw_range(name + ": must not be the parameter itself");
  return s.as<float>();
}

void check_grad(const TensorRef& param, const TensorRef& grad) {
  if (grad.shape != param.shape)
    throw_range("grad: expected shape " + shape_str(param.shape) + " (the parameter's), got " + shape_str(grad.shape));
  if (grad.data == param.data) throw_range("grad: must not be the parameter itself");
}

double nonneg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  double v = get_number(info, i, name);
  if (v < 0) throw_range(std::string(name) + ": expected >= 0, got " + std::to_string(v));
  return v;
}

double unit_interval(const Napi::CallbackInfo& info, size_t i, const char* name) {
  double v = get_number(info, i, name);
  if (!(v >= 0 && v < 1)) throw_range(std::string(name) + ": expected 0 <= value < 1, got " + std::to_string(v));
  return v;
}

// adamwStep(param, grad, expAvg, expAvgSq, master|null, lr, beta1, beta2, eps, weightDecay, step)
Napi::Value AdamWStep(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const TensorRef& param = float_tensor(info, 0, "param");
    const TensorRef& grad = float_tensor(info, 1, "grad");
    check_grad(param, grad);
    float* m = state_buffer(info, 2, "expAvg", param, false);
    float* v = state_buffer(info, 3, "expAvgSq", param, false);
    float* master = state_buffer(info, 4, "master", param, true);
    if (m == v || (master && (master == m || master == v))) throw_range("expAvg, expAvgSq, master: must be distinct tensors");
    cpu::AdamWHyper h;
    h.lr = nonneg(info, 5, "lr");
    h.beta1 = unit_interval(info, 6, "beta1");
    h.beta2 = unit_interval(info, 7, "beta2");
    h.eps = nonneg(info, 8, "eps");
    h.weight_decay = nonneg(info, 9, "weightDecay");
    double step = get_number(info, 10, "step");
    if (step < 1 || step != std::floor(step) || step > 9007199254740991.0)
      throw_range("step: expected an integer >= 1, got " + std::to_string(step));
    h.step = static_cast<int64_t>(step);
    cpu::adamw_step(param, grad, m, v, master, h);
    return info.Env().Undefined();
  });
}

// sgdStep(param, grad, momentumBuf|null, master|null, lr, momentum, dampening, nesterov, weightDecay, firstStep)
Napi::Value SgdStep(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const TensorRef& param = float_tensor(info, 0, "param");
    const TensorRef& grad = float_tensor(info, 1, "grad");
    check_grad(param, grad);
    float* buf = state_buffer(info, 2, "momentumBuffer", param, true);
    float* master = state_buffer(info, 3, "master", param, true);
    if (buf && buf == master) throw_range("momentumBuffer, master: must be distinct tensors");
    cpu::SgdHyper h;
    h.lr = nonneg(info, 4, "lr");
    h.momentum = nonneg(info, 5, "momentum");
    h.dampening = get_number(info, 6, "dampening");
    h.nesterov = get_bool(info, 7, "nesterov");
    h.weight_decay = nonneg(info, 8, "weightDecay");
    h.first_step = get_bool(info, 9, "firstStep");
    if (h.momentum != 0 && !buf) throw_type("momentumBuffer: required when momentum != 0");
    if (h.nesterov && (h.momentum <= 0 || h.dampening != 0))
      throw_range("nesterov: needs momentum > 0 and dampening = 0");
    cpu::sgd_step(param, grad, buf, master, h);
    return info.Env().Undefined();
  });
}

// accumulate(dst f32, src, alpha): dst += alpha·src
Napi::Value Accumulate(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const TensorRef& dst = float_tensor(info, 0, "dst");
    const TensorRef& src = float_tensor(info, 1, "src");
    if (dst.dtype != DType::F32) throw_type(std::string("dst: expected an f32 tensor, got ") + dtype_name(dst.dtype));
    if (dst.shape != src.shape) throw_range("src: expected shape " + shape_str(dst.shape) + ", got " + shape_str(src.shape));
    float alpha = static_cast<float>(get_number(info, 2, "alpha"));
    cpu::accumulate(dst, src, alpha);
    return info.Env().Undefined();
  });
}

Napi::Value SumSquares(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    return Napi::Number::New(info.Env(), cpu::sum_squares(float_tensor(info, 0, "tensor")));
  });
}

Napi::Value ScaleInplace(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const TensorRef& t = float_tensor(info, 0, "tensor");
    cpu::scale_inplace(t, static_cast<float>(get_number(info, 1, "alpha")));
    return info.Env().Undefined();
  });
}

}  // namespace

void InitOptim(Napi::Env env, Napi::Object exports) {
  exports.Set("adamwStep", Napi::Function::New<AdamWStep>(env, "adamwStep"));
  exports.Set("sgdStep", Napi::Function::New<SgdStep>(env, "sgdStep"));
  exports.Set("accumulate", Napi::Function::New<Accumulate>(env, "accumulate"));
  exports.Set("sumSquares", Napi::Function::New<SumSquares>(env, "sumSquares"));
  exports.Set("scaleInplace", Napi::Function::New<ScaleInplace>(env, "scaleInplace"));
}

}  // namespace napi
}  // namespace lorakit
