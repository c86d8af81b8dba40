// Optimizer ops for adapter parameters (PyTorch's AdamW and SGD, gradient accumulation, norms and
// scaling): argument checks only, the math is the backend's. The parameter's device runs the call;
// every tensor must be there. State tensors are f32 with the parameter's number of elements.
#include <napi.h>
#include <memory>
#include "../core/backend.h"
#include "args.h"
#include "operands.h"
#include "ops.h"

namespace lorakit {
namespace napi {
namespace {

// param and grad: same shape, distinct tensors.
void check_grad(const TensorRef& param, const TensorRef& grad) {
  if (grad.shape != param.shape)
    throw_range("grad: expected shape " + shape_str(param.shape) + " (the parameter's), got " + shape_str(grad.shape));
  if (grad.data == param.data) throw_range("grad: must not be the parameter itself");
}

// An f32 state tensor with the parameter's number of elements, distinct from the parameter;
// written by the step. Absent or null: unset when nullable, else TypeError.
OptRef state_tensor(KernelCall& c, const Napi::CallbackInfo& info, size_t i, const std::string& name, const TensorRef& param,
                    Device dev, bool nullable) {
  OptRef s;
  if (info.Length() <= i || info[i].IsNull() || info[i].IsUndefined()) {
    if (nullable) return s;
    throw_type(name + ": required");
  }
  NativeTensor* t = get_tensor(info[i], name);
  require_float_on(t, dev, name);
  const TensorRef& r = t->ref();
  if (r.dtype != DType::F32) throw_type(name + ": optimizer state must be f32, got " + dtype_name(r.dtype));
  if (r.numel() != param.numel())
    throw_range(name + ": expected " + std::to_string(param.numel()) + " elements (param shape " + shape_str(param.shape) +
                "), got shape " + shape_str(r.shape));
  if (r.data == param.data) throw_range(name + ": must not be the parameter itself");
  s.ref = c.write(t, name);
  s.set = true;
  return s;
}

bool same(const OptRef& a, const OptRef& b) { return a.set && b.set && a.ref.data == b.ref.data; }

}  // namespace

// adamwStep(param, grad, expAvg, expAvgSq, master|null, lr, beta1, beta2, eps, weightDecay, step)
KernelCall BuildAdamwStep(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = device_of(info[0], "param");
  TensorRef param = float_operand(c, info[0], "param", dev, Access::Write);
  TensorRef grad = float_operand(c, info[1], "grad", dev);
  check_grad(param, grad);
  OptRef m = state_tensor(c, info, 2, "expAvg", param, dev, false);
  OptRef v = state_tensor(c, info, 3, "expAvgSq", param, dev, false);
  OptRef master = state_tensor(c, info, 4, "master", param, dev, true);
  if (same(m, v) || same(master, m) || same(master, v)) throw_range("expAvg, expAvgSq, master: must be distinct tensors");
  AdamWArgs h;
  h.lr = nonneg(get_number(info, 5, "lr"), "lr");
  h.beta1 = unit_interval(get_number(info, 6, "beta1"), "beta1");
  h.beta2 = unit_interval(get_number(info, 7, "beta2"), "beta2");
  h.eps = nonneg(get_number(info, 8, "eps"), "eps");
  h.weight_decay = nonneg(get_number(info, 9, "weightDecay"), "weightDecay");
  double step = get_number(info, 10, "step");
  if (!(step >= 1)) throw_range("step: expected an integer >= 1, got " + std::to_string(step));
  h.step = to_size(step, 1, (int64_t(1) << 53) - 1, "step");
  auto adamw = LORAKIT_OP(dev, adamw_step);
  c.run = [=] { adamw(param, grad, m.ref, v.ref, master.ptr(), h); };
  return c;
}

// sgdStep(param, grad, momentumBuffer|null, master|null, lr, momentum, dampening, nesterov, weightDecay, firstStep)
KernelCall BuildSgdStep(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = device_of(info[0], "param");
  TensorRef param = float_operand(c, info[0], "param", dev, Access::Write);
  TensorRef grad = float_operand(c, info[1], "grad", dev);
  check_grad(param, grad);
  OptRef buf = state_tensor(c, info, 2, "momentumBuffer", param, dev, true);
  OptRef master = state_tensor(c, info, 3, "master", param, dev, true);
  if (same(buf, master)) throw_range("momentumBuffer, master: must be distinct tensors");
  SgdArgs h;
  h.lr = nonneg(get_number(info, 4, "lr"), "lr");
  h.momentum = nonneg(get_number(info, 5, "momentum"), "momentum");
  h.dampening = get_number(info, 6, "dampening");
  h.nesterov = get_bool(info, 7, "nesterov");
  h.weight_decay = nonneg(get_number(info, 8, "weightDecay"), "weightDecay");
  h.first_step = get_bool(info, 9, "firstStep");
  if (h.momentum != 0 && !buf.set) throw_type("momentumBuffer: required when momentum != 0");
  if (h.nesterov && (h.momentum <= 0 || h.dampening != 0)) throw_range("nesterov: needs momentum > 0 and dampening = 0");
  auto sgd = LORAKIT_OP(dev, sgd_step);
  c.run = [=] { sgd(param, grad, buf.ptr(), master.ptr(), h); };
  return c;
}

// accumulate(dst f32, src, alpha): dst += alpha·src
KernelCall BuildAccumulate(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = device_of(info[0], "dst");
  TensorRef dst = float_operand(c, info[0], "dst", dev, Access::Write);
  TensorRef src = float_operand(c, info[1], "src", dev);
  if (dst.dtype != DType::F32) throw_type(std::string("dst: expected an f32 tensor, got ") + dtype_name(dst.dtype));
  if (dst.shape != src.shape) throw_range("src: expected shape " + shape_str(dst.shape) + ", got " + shape_str(src.shape));
  float alpha = to_scale(get_number(info, 2, "alpha"), "alpha");
  auto accumulate = LORAKIT_OP(dev, accumulate);
  c.run = [=] { accumulate(dst, src, alpha); };
  return c;
}

// columnSum(x, alpha, out f32 [cols]): out = alpha·Σ over the rows of x ([..., cols])
KernelCall BuildColumnSum(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = device_of(info[0], "x");
  TensorRef x = float_operand(c, info[0], "x", dev);
  float alpha = to_scale(get_number(info, 1, "alpha"), "alpha");
  TensorRef out = float_operand(c, info[2], "out", dev, Access::Write);
  if (out.dtype != DType::F32) throw_type(std::string("out: expected an f32 tensor, got ") + dtype_name(out.dtype));
  if (out.shape.size() != 1 || x.shape.empty() || x.shape.back() != out.shape[0])
    throw_range("out: expected shape [" + (x.shape.empty() ? std::string("?") : std::to_string(x.shape.back())) + "] (x's last dimension), got " +
                shape_str(out.shape));
  auto column_sum = LORAKIT_OP(dev, column_sum);
  c.run = [=] { column_sum(x, alpha, out); };
  return c;
}

// sumSquares(t) → Σ t² (f64)
KernelCall BuildSumSquares(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = device_of(info[0], "tensor");
  TensorRef t = float_operand(c, info[0], "tensor", dev);
  auto sum_squares = LORAKIT_OP(dev, sum_squares);
  auto sum = std::make_shared<double>(0);
  c.run = [t, sum, sum_squares] { *sum = sum_squares(t); };
  c.result = [sum](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, *sum); };
  return c;
}

// scaleInplace(t, alpha): t ·= alpha
KernelCall BuildScaleInplace(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = device_of(info[0], "tensor");
  TensorRef t = float_operand(c, info[0], "tensor", dev, Access::Write);
  float alpha = to_scale(get_number(info, 1, "alpha"), "alpha");
  auto scale = LORAKIT_OP(dev, scale_inplace);
  c.run = [=] { scale(t, alpha); };
  return c;
}

}  // namespace napi
}  // namespace lorakit
