// Bindings for the CPU op table: argument unpacking and shape checks only, no math.
#include <napi.h>
#include <cmath>
#include "../core/thread_pool.h"
#include "../cpu/microkernel.h"
#include "../cpu/ops.h"
#include "args.h"
#include "kernel_call.h"
#include "kernels_binding.h"

namespace lorakit {
namespace napi {
namespace {

NativeTensor* float_tensor(const Napi::Value& v, const std::string& name) {
  NativeTensor* t = get_tensor(v, name);
  require_float_cpu(t, name);
  return t;
}

struct LinearDims {
  int64_t in, out;
};

LinearDims linear_dims(const TensorRef& W, bool fifo) {
  if (W.shape.size() != 2) throw_range("weight: expected 2 dimensions, got shape " + shape_str(W.shape));
  if (W.shape[0] < 1 || W.shape[1] < 1) throw_range("weight: in_features and out_features must be at least 1, got shape " + shape_str(W.shape));
  return fifo ? LinearDims{W.shape[0], W.shape[1]} : LinearDims{W.shape[1], W.shape[0]};
}

void require_last_dim(const TensorRef& t, int64_t d, const std::string& name, const std::string& why) {
  if (t.shape.empty() || t.shape.back() != d)
    throw_range(name + ": expected last dimension " + std::to_string(d) + " (" + why + "), got shape " +
                shape_str(t.shape));
}

void require_same_shape(const TensorRef& t, const std::vector<int64_t>& s, const std::string& name) {
  if (t.shape != s) throw_range(name + ": expected shape " + shape_str(s) + ", got " + shape_str(t.shape));
}

void check_adapter(const TensorRef& A, const TensorRef& B, LinearDims d, const std::string& where) {
  if (A.shape.size() != 2 || A.shape[1] != d.in || A.shape[0] < 1)
    throw_range(where + ".A: expected shape [r, " + std::to_string(d.in) + "] with r >= 1, got " + shape_str(A.shape));
  if (B.shape.size() != 2 || B.shape[0] != d.out || B.shape[1] != A.shape[0])
    throw_range(where + ".B: expected shape [" + std::to_string(d.out) + ", " + std::to_string(A.shape[0]) + "], got " +
                shape_str(B.shape));
}

// A scale the f32 kernels can use: finite in f64 and still finite after narrowing to f32.
float to_scale(double v, const std::string& name) {
  if (!(std::fabs(v) <= 3.4028234663852886e38))
    throw_range(name + ": expected a finite number within the f32 range, got " + std::to_string(v));
  return static_cast<float>(v);
}

// Seeds and stream counters: integers in [0, 2^53].
uint64_t to_counter(double v, const std::string& name) {
  if (!(v >= 0) || v != std::floor(v) || v > 9007199254740992.0)
    throw_range(name + ": expected an integer in [0, 2^53], got " + std::to_string(v));
  return static_cast<uint64_t>(v);
}

std::vector<int64_t> with_last(std::vector<int64_t> s, int64_t d) {
  s.back() = d;
  return s;
}

template <KernelBuilder build>
Napi::Value RunSync(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    KernelCall c = build(info);
    c.check_access();
    c.run();
    return c.result_value(info.Env());
  });
}

}  // namespace

void KernelCall::check_access() const {
  for (size_t i = 0; i < uses.size(); i++) {
    const Use& u = uses[i];
    Storage* s = u.tensor->storage();
    if (!s) throw_state(u.name + ": the tensor was disposed");
    if (u.write && s->busy.load() > 0) throw_state(u.name + ": the tensor is in use by async work and cannot be written");
    if (!u.write && s->writers.load() > 0) throw_state(u.name + ": the tensor is being written by async work");
    if (!u.write) continue;
    for (size_t j = 0; j < uses.size(); j++) {
      const Use& o = uses[j];
      if (j == i || o.tensor != u.tensor || (!o.write && o.inplace_ok)) continue;
      throw_range(u.name + ": must not be the same tensor as " + o.name);
    }
  }
}

// shrink(x, A, out): out [n..., r] = x·Aᵀ
KernelCall BuildShrink(const Napi::CallbackInfo& info) {
  KernelCall c;
  TensorRef x = c.read(float_tensor(info[0], "x"), "x");
  TensorRef A = c.read(float_tensor(info[1], "A"), "A");
  TensorRef out = c.write(float_tensor(info[2], "out"), "out");
  if (A.shape.size() != 2 || A.shape[0] < 1 || A.shape[1] < 1)
    throw_range("A: expected shape [r, in] with r, in >= 1, got " + shape_str(A.shape));
  require_last_dim(x, A.shape[1], "x", "A's in_features");
  require_same_shape(out, with_last(x.shape, A.shape[0]), "out");
  c.run = [=] { cpu::lora_shrink(x, A, out); };
  return c;
}

// linearForward(x, W, bias|null, fifo, terms: [u, B, scale][], y)
KernelCall BuildLinearForward(const Napi::CallbackInfo& info) {
  KernelCall c;
  TensorRef x = c.read(float_tensor(info[0], "x"), "x");
  TensorRef W = c.read(float_tensor(info[1], "weight"), "weight");
  NativeTensor* bt = get_tensor_or_null(info[2], "bias");
  bool fifo = get_bool(info, 3, "fanInFanOut");
  LinearDims d = linear_dims(W, fifo);
  require_last_dim(x, d.in, "x", "in_features");
  bool has_bias = bt != nullptr;
  TensorRef bias;
  if (bt) {
    require_float_cpu(bt, "bias");
    bias = c.read(bt, "bias");
    require_same_shape(bias, {d.out}, "bias");
  }
  if (info.Length() < 5 || !info[4].IsArray()) throw_type("terms: expected an array");
  Napi::Array arr = info[4].As<Napi::Array>();
  std::vector<cpu::ForwardTerm> terms;
  int64_t n = x.rows();
  TensorRef y = c.write(float_tensor(info[5], "y"), "y");
  require_same_shape(y, with_last(x.shape, d.out), "y");
  for (uint32_t i = 0; i < arr.Length(); i++) {
    std::string w = "terms[" + std::to_string(i) + "]";
    Napi::Value tv = arr.Get(i);
    if (!tv.IsArray() || tv.As<Napi::Array>().Length() != 3) throw_type(w + ": expected [u, B, scale]");
    Napi::Array t = tv.As<Napi::Array>();
    const TensorRef& u = c.read(float_tensor(t.Get(0u), w + ".u"), w + ".u");
    const TensorRef& B = c.read(float_tensor(t.Get(1u), w + ".B"), w + ".B");
    if (B.shape.size() != 2 || B.shape[0] != d.out || B.shape[1] < 1)
      throw_range(w + ".B: expected shape [" + std::to_string(d.out) + ", r] with r >= 1, got " + shape_str(B.shape));
    int64_t r = B.shape[1];
    if (u.numel() != n * r || u.shape.empty() || u.shape.back() != r)
      throw_range(w + ".u: expected " + std::to_string(n) + " rows of " + std::to_string(r) + ", got shape " +
                  shape_str(u.shape));
    Napi::Value sv = t.Get(2u);
    if (!sv.IsNumber()) throw_type(w + ".scale: expected a number");
    terms.push_back({u, B, to_scale(sv.As<Napi::Number>().DoubleValue(), w + ".scale")});
  }
  c.run = [=] { cpu::linear_forward(x, W, has_bias ? &bias : nullptr, fifo, terms, y); };
  return c;
}

// linearBackward(dy, W, fifo, terms: {xa, u, A, B, scale, p, seed, stream, dA|null, dB|null}[], dx|null)
KernelCall BuildLinearBackward(const Napi::CallbackInfo& info) {
  // The terms point at their dA/dB refs, so everything lives in one heap block the closure shares.
  struct Args {
    TensorRef dy, W, dx;
    bool fifo = false, has_dx = false;
    std::vector<cpu::BackwardTerm> terms;
    std::vector<TensorRef> grads;  // dA/dB refs; reserved up front so pointers stay valid
  };
  auto a = std::make_shared<Args>();
  KernelCall c;
  a->dy = c.read(float_tensor(info[0], "dy"), "dy");
  a->W = c.read(float_tensor(info[1], "weight"), "weight");
  a->fifo = get_bool(info, 2, "fanInFanOut");
  LinearDims d = linear_dims(a->W, a->fifo);
  require_last_dim(a->dy, d.out, "dy", "out_features");
  int64_t n = a->dy.rows();
  if (info.Length() < 4 || !info[3].IsArray()) throw_type("terms: expected an array");
  Napi::Array arr = info[3].As<Napi::Array>();
  NativeTensor* dxt = info.Length() > 4 ? get_tensor_or_null(info[4], "dx") : nullptr;
  std::vector<int64_t> xshape = with_last(a->dy.shape, d.in);
  if (dxt) {
    require_float_cpu(dxt, "dx");
    a->dx = c.write(dxt, "dx");
    a->has_dx = true;
    require_same_shape(a->dx, xshape, "dx");
  }
  a->grads.reserve(2 * arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++) {
    std::string w = "terms[" + std::to_string(i) + "]";
    Napi::Value tv = arr.Get(i);
    if (!tv.IsObject()) throw_type(w + ": expected an object");
    Napi::Object o = tv.As<Napi::Object>();
    cpu::BackwardTerm bt;
    bt.xa = c.read(float_tensor(o.Get("xa"), w + ".xa"), w + ".xa");
    bt.u = c.read(float_tensor(o.Get("u"), w + ".u"), w + ".u");
    bt.A = c.read(float_tensor(o.Get("A"), w + ".A"), w + ".A");
    bt.B = c.read(float_tensor(o.Get("B"), w + ".B"), w + ".B");
    check_adapter(bt.A, bt.B, d, w);
    int64_t r = bt.A.shape[0];
    require_same_shape(bt.xa, xshape, w + ".xa");
    if (bt.u.numel() != n * r || bt.u.shape.empty() || bt.u.shape.back() != r)
      throw_range(w + ".u: expected " + std::to_string(n) + " rows of " + std::to_string(r) + ", got shape " + shape_str(bt.u.shape));
    bt.scale = to_scale(number_prop(o, "scale", w), w + ".scale");
    double p = number_prop(o, "p", w);
    if (!(p >= 0 && p < 1)) throw_range(w + ".p: expected 0 <= p < 1, got " + std::to_string(p));
    bt.dropout_p = static_cast<float>(p);
    if (bt.dropout_p >= 1.f) throw_range(w + ".p: rounds to 1 in f32");
    bt.seed = to_counter(number_prop(o, "seed", w), w + ".seed");
    bt.stream = to_counter(number_prop(o, "stream", w), w + ".stream");
    NativeTensor* dA = get_tensor_or_null(o.Get("dA"), w + ".dA");
    NativeTensor* dB = get_tensor_or_null(o.Get("dB"), w + ".dB");
    bt.dA = nullptr;
    bt.dB = nullptr;
    if (dA) {
      require_float_cpu(dA, w + ".dA");
      a->grads.push_back(c.write(dA, w + ".dA"));
      require_same_shape(a->grads.back(), bt.A.shape, w + ".dA");
      bt.dA = &a->grads.back();
    }
    if (dB) {
      require_float_cpu(dB, w + ".dB");
      a->grads.push_back(c.write(dB, w + ".dB"));
      require_same_shape(a->grads.back(), bt.B.shape, w + ".dB");
      bt.dB = &a->grads.back();
    }
    a->terms.push_back(bt);
  }
  c.run = [a] { cpu::linear_backward(a->dy, a->W, a->fifo, a->terms, a->has_dx ? &a->dx : nullptr); };
  return c;
}

// mergeDelta(W, A, B, scale, fifo, out): out = W + scale·ΔW (out may be W)
KernelCall BuildMergeDelta(const Napi::CallbackInfo& info) {
  KernelCall c;
  TensorRef W = c.read(float_tensor(info[0], "weight"), "weight", /*inplace_ok=*/true);
  TensorRef A = c.read(float_tensor(info[1], "A"), "A");
  TensorRef B = c.read(float_tensor(info[2], "B"), "B");
  float scale = to_scale(get_number(info, 3, "scale"), "scale");
  bool fifo = get_bool(info, 4, "fanInFanOut");
  TensorRef out = c.write(float_tensor(info[5], "out"), "out");
  LinearDims d = linear_dims(W, fifo);
  check_adapter(A, B, d, "adapter");
  require_same_shape(out, W.shape, "out");
  c.run = [=] { cpu::merge_delta(W, A, B, scale, fifo, out); };
  return c;
}

// dropout(x, p, seed, stream, out); out may be x
KernelCall BuildDropout(const Napi::CallbackInfo& info) {
  KernelCall c;
  TensorRef x = c.read(float_tensor(info[0], "x"), "x", /*inplace_ok=*/true);
  double p = get_number(info, 1, "p");
  if (!(p >= 0 && p < 1) || static_cast<float>(p) >= 1.f) throw_range("p: expected 0 <= p < 1, got " + std::to_string(p));
  uint64_t seed = to_counter(get_number(info, 2, "seed"), "seed");
  uint64_t stream = to_counter(get_number(info, 3, "stream"), "stream");
  TensorRef out = c.write(float_tensor(info[4], "out"), "out");
  require_same_shape(out, x.shape, "out");
  c.run = [=] { cpu::dropout(x, static_cast<float>(p), seed, stream, out); };
  return c;
}

// convert(src, dst): copies src into dst, converting float dtypes; integer tensors must match.
KernelCall BuildConvert(const Napi::CallbackInfo& info) {
  KernelCall c;
  NativeTensor* st = get_tensor(info[0], "src");
  NativeTensor* dt = get_tensor(info[1], "dst");
  if (st->device() != Device::CPU || dt->device() != Device::CPU) throw_type("src: expected cpu tensors");
  TensorRef s = c.read(st, "src", /*inplace_ok=*/true);
  TensorRef d = c.write(dt, "dst");
  if (s.numel() != d.numel())
    throw_range("src: has " + std::to_string(s.numel()) + " elements (shape " + shape_str(s.shape) +
                ") but dst has " + std::to_string(d.numel()) + " (shape " + shape_str(d.shape) + ")");
  if (dtype_is_float(s.dtype) != dtype_is_float(d.dtype) || (!dtype_is_float(s.dtype) && s.dtype != d.dtype))
    throw_type(std::string("dst: cannot convert ") + dtype_name(s.dtype) + " to " + dtype_name(d.dtype));
  c.run = [=] { cpu::convert(s.data, s.dtype, d.data, d.dtype, s.numel()); };
  return c;
}

KernelCall BuildAllFinite(const Napi::CallbackInfo& info) {
  KernelCall c;
  TensorRef t = c.read(float_tensor(info[0], "tensor"), "tensor");
  auto finite = std::make_shared<bool>(false);
  c.run = [t, finite] { *finite = cpu::all_finite(t); };
  c.result = [finite](Napi::Env env) -> Napi::Value { return Napi::Boolean::New(env, *finite); };
  return c;
}

namespace {

Napi::Value BackendInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("cpuPath", kernel_table().name);
  {
    std::string all = available_paths();
    Napi::Array paths = Napi::Array::New(env);
    size_t b = 0;
    for (uint32_t i = 0; b <= all.size(); i++) {
      size_t e = all.find(',', b);
      if (e == std::string::npos) e = all.size();
      paths.Set(i, all.substr(b, e - b));
      b = e + 1;
    }
    o.Set("cpuPaths", paths);
  }
  o.Set("threads", num_threads());
  Napi::Array compiled = Napi::Array::New(env);
  compiled.Set(0u, "cpu");
  o.Set("compiled", compiled);
  Napi::Array usable = Napi::Array::New(env);
  usable.Set(0u, "cpu");
  o.Set("usable", usable);
  return o;
}

Napi::Value SetNumThreads(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    double n = get_number(info, 0, "n");
    if (n != std::floor(n) || n < 0 || n > 256) throw_range("n: expected an integer in [0, 256]");
    set_num_threads(static_cast<int>(n));
    return Napi::Number::New(info.Env(), num_threads());
  });
}

}  // namespace

void InitKernels(Napi::Env env, Napi::Object exports) {
  exports.Set("shrink", Napi::Function::New<RunSync<BuildShrink>>(env, "shrink"));
  exports.Set("linearForward", Napi::Function::New<RunSync<BuildLinearForward>>(env, "linearForward"));
  exports.Set("linearBackward", Napi::Function::New<RunSync<BuildLinearBackward>>(env, "linearBackward"));
  exports.Set("mergeDelta", Napi::Function::New<RunSync<BuildMergeDelta>>(env, "mergeDelta"));
  exports.Set("dropout", Napi::Function::New<RunSync<BuildDropout>>(env, "dropout"));
  exports.Set("convert", Napi::Function::New<RunSync<BuildConvert>>(env, "convert"));
  exports.Set("allFinite", Napi::Function::New<RunSync<BuildAllFinite>>(env, "allFinite"));
  exports.Set("backendInfo", Napi::Function::New<BackendInfo>(env, "backendInfo"));
  exports.Set("setNumThreads", Napi::Function::New<SetNumThreads>(env, "setNumThreads"));
}

}  // namespace napi
}  // namespace lorakit
