// Bindings for the op tables (native/cpu/ops.h, native/cuda/ops.h): argument unpacking, shape
// and device checks only, no math. A call runs on the device of its first tensor.
#include <napi.h>
#include <cmath>
#include <functional>
#include "../core/thread_pool.h"
#include "../cpu/microkernel.h"
#include "../cpu/ops.h"
#ifdef LORAKIT_WITH_CUDA
#include "../cuda/ops.h"
#include "../cuda/runtime.h"
#endif
#include "args.h"
#include "kernel_call.h"
#include "kernels_binding.h"

namespace lorakit {
namespace napi {
namespace {

// A float tensor on the call's device (every tensor of one call shares a device).
NativeTensor* float_tensor(const Napi::Value& v, const std::string& name, Device dev) {
  NativeTensor* t = get_tensor(v, name);
  require_float_on(t, dev, name);
  return t;
}

Device device_of(const Napi::Value& v, const std::string& name) { return get_tensor(v, name)->device(); }

void check_adapter(const TensorRef& A, const TensorRef& B, LinearDims d, const std::string& where) {
  if (A.shape.size() != 2 || A.shape[1] != d.in || A.shape[0] < 1)
    throw_range(where + ".A: expected shape [r, " + std::to_string(d.in) + "] with r >= 1, got " + shape_str(A.shape));
  if (B.shape.size() != 2 || B.shape[0] != d.out || B.shape[1] != A.shape[0])
    throw_range(where + ".B: expected shape [" + std::to_string(d.out) + ", " + std::to_string(A.shape[0]) + "], got " +
                shape_str(B.shape));
}

// Seeds and stream counters: integers in [0, 2^53].
uint64_t to_counter(double v, const std::string& name) {
  if (!(v >= 0) || v != std::floor(v) || v > 9007199254740992.0)
    throw_range(name + ": expected an integer in [0, 2^53], got " + std::to_string(v));
  return static_cast<uint64_t>(v);
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

void KernelCall::order_streams() {
#ifdef LORAKIT_WITH_CUDA
  for (const Use& u : uses)
    if (u.tensor->device() == Device::CUDA) {
      stream = cuda::current_stream();
      break;
    }
  for (const Use& u : uses)
    if (u.tensor->device() == Device::CUDA) cuda::order_use(u.tensor->ref().data, u.write);
#endif
}

// shrink(x, A, out): out [n..., r] = x·Aᵀ
KernelCall BuildShrink(const Napi::CallbackInfo& info) {
  KernelCall c;
  Device dev = device_of(info[0], "x");
  TensorRef x = c.read(float_tensor(info[0], "x", dev), "x");
  TensorRef A = c.read(float_tensor(info[1], "A", dev), "A");
  TensorRef out = c.write(float_tensor(info[2], "out", dev), "out");
  if (A.shape.size() != 2 || A.shape[0] < 1 || A.shape[1] < 1)
    throw_range("A: expected shape [r, in] with r, in >= 1, got " + shape_str(A.shape));
  require_last_dim(x, A.shape[1], "x", "A's in_features");
  require_same_shape(out, with_last(x.shape, A.shape[0]), "out");
  c.run = on_device(dev, [=] { cpu::lora_shrink(x, A, out); }, [=] { LK_IF_CUDA(cuda::lora_shrink(x, A, out);) });
  return c;
}

// The leading (x, W, bias|null, fanInFanOut) arguments shared by the linear forward calls.
struct LinearInputs {
  Device dev;
  TensorRef x, W, bias;
  bool has_bias, fifo;
  LinearDims d;
};

LinearInputs read_linear_inputs(const Napi::CallbackInfo& info, KernelCall& c) {
  LinearInputs li;
  li.dev = device_of(info[0], "x");
  li.x = c.read(float_tensor(info[0], "x", li.dev), "x");
  li.W = c.read(float_tensor(info[1], "weight", li.dev), "weight");
  NativeTensor* bt = get_tensor_or_null(info[2], "bias");
  li.fifo = get_bool(info, 3, "fanInFanOut");
  li.d = linear_dims(li.W, li.fifo);
  require_last_dim(li.x, li.d.in, "x", "in_features");
  li.has_bias = bt != nullptr;
  if (bt) {
    require_float_on(bt, li.dev, "bias");
    li.bias = c.read(bt, "bias");
    require_same_shape(li.bias, {li.d.out}, "bias");
  }
  return li;
}

// linearForward(x, W, bias|null, fifo, terms: [u, B, scale][], y)
KernelCall BuildLinearForward(const Napi::CallbackInfo& info) {
  KernelCall c;
  LinearInputs li = read_linear_inputs(info, c);
  const Device dev = li.dev;
  const TensorRef x = li.x, W = li.W, bias = li.bias;
  const bool fifo = li.fifo, has_bias = li.has_bias;
  const LinearDims d = li.d;
  if (info.Length() < 5 || !info[4].IsArray()) throw_type("terms: expected an array");
  Napi::Array arr = info[4].As<Napi::Array>();
  std::vector<cpu::ForwardTerm> terms;
  int64_t n = x.rows();
  TensorRef y = c.write(float_tensor(info[5], "y", dev), "y");
  require_same_shape(y, with_last(x.shape, d.out), "y");
  for (uint32_t i = 0; i < arr.Length(); i++) {
    std::string w = "terms[" + std::to_string(i) + "]";
    Napi::Value tv = arr.Get(i);
    if (!tv.IsArray() || tv.As<Napi::Array>().Length() != 3) throw_type(w + ": expected [u, B, scale]");
    Napi::Array t = tv.As<Napi::Array>();
    const TensorRef& u = c.read(float_tensor(t.Get(0u), w + ".u", dev), w + ".u");
    const TensorRef& B = c.read(float_tensor(t.Get(1u), w + ".B", dev), w + ".B");
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
  c.run = on_device(
      dev, [=] { cpu::linear_forward(x, W, has_bias ? &bias : nullptr, fifo, terms, y); },
      [=] { LK_IF_CUDA(cuda::linear_forward(x, W, has_bias ? &bias : nullptr, fifo, terms, y);) });
  return c;
}

// loraForward(x, W, bias|null, fifo, adapters: [A, B, scale, u|null][], y): every adapter's shrink
// and the fused forward in one call; u (when given) receives x·Aᵀ for backward.
KernelCall BuildLoraForward(const Napi::CallbackInfo& info) {
  struct Item {
    TensorRef A, B, u;
    float scale;
    bool has_u;
  };
  KernelCall c;
  LinearInputs li = read_linear_inputs(info, c);
  const Device dev = li.dev;
  const TensorRef x = li.x, W = li.W, bias = li.bias;
  const bool fifo = li.fifo, has_bias = li.has_bias;
  const LinearDims d = li.d;
  if (info.Length() < 5 || !info[4].IsArray()) throw_type("adapters: expected an array");
  Napi::Array arr = info[4].As<Napi::Array>();
  TensorRef y = c.write(float_tensor(info[5], "y", dev), "y");
  require_same_shape(y, with_last(x.shape, d.out), "y");
  std::vector<Item> items;
  for (uint32_t i = 0; i < arr.Length(); i++) {
    std::string w = "adapters[" + std::to_string(i) + "]";
    Napi::Value tv = arr.Get(i);
    if (!tv.IsArray() || tv.As<Napi::Array>().Length() != 4) throw_type(w + ": expected [A, B, scale, u|null]");
    Napi::Array t = tv.As<Napi::Array>();
    Item it;
    it.A = c.read(float_tensor(t.Get(0u), w + ".A", dev), w + ".A");
    it.B = c.read(float_tensor(t.Get(1u), w + ".B", dev), w + ".B");
    check_adapter(it.A, it.B, d, w);
    Napi::Value sv = t.Get(2u);
    if (!sv.IsNumber()) throw_type(w + ".scale: expected a number");
    it.scale = to_scale(sv.As<Napi::Number>().DoubleValue(), w + ".scale");
    NativeTensor* u = get_tensor_or_null(t.Get(3u), w + ".u");
    it.has_u = u != nullptr;
    if (u) {
      it.u = c.write(float_tensor(t.Get(3u), w + ".u", dev), w + ".u");
      require_same_shape(it.u, with_last(x.shape, it.A.shape[0]), w + ".u");
    }
    items.push_back(it);
  }
  auto cpu_fn = [=] {
    int64_t n = x.rows();
    std::vector<std::vector<float>> scratch(items.size());
    std::vector<cpu::ForwardTerm> terms;
    for (size_t i = 0; i < items.size(); i++) {
      TensorRef u = items[i].u;
      if (!items[i].has_u) {
        int64_t r = items[i].A.shape[0];
        scratch[i].resize(static_cast<size_t>(n * r));
        u.data = scratch[i].data();
        u.dtype = DType::F32;
        u.shape = {n, r};
      }
      cpu::lora_shrink(x, items[i].A, u);
      terms.push_back({u, items[i].B, items[i].scale});
    }
    cpu::linear_forward(x, W, has_bias ? &bias : nullptr, fifo, terms, y);
  };
  auto cuda_fn = [=] {
    LK_IF_CUDA(std::vector<cuda::FusedAdapter> fa;
               for (const auto& it : items) fa.push_back({it.A, it.B, it.scale, it.has_u ? &it.u : nullptr});
               cuda::lora_forward(x, W, has_bias ? &bias : nullptr, fifo, fa, y);)
  };
  c.run = on_device(dev, cpu_fn, cuda_fn);
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
  Device dev = device_of(info[0], "dy");
  a->dy = c.read(float_tensor(info[0], "dy", dev), "dy");
  a->W = c.read(float_tensor(info[1], "weight", dev), "weight");
  a->fifo = get_bool(info, 2, "fanInFanOut");
  LinearDims d = linear_dims(a->W, a->fifo);
  require_last_dim(a->dy, d.out, "dy", "out_features");
  int64_t n = a->dy.rows();
  if (info.Length() < 4 || !info[3].IsArray()) throw_type("terms: expected an array");
  Napi::Array arr = info[3].As<Napi::Array>();
  NativeTensor* dxt = info.Length() > 4 ? get_tensor_or_null(info[4], "dx") : nullptr;
  std::vector<int64_t> xshape = with_last(a->dy.shape, d.in);
  if (dxt) {
    require_float_on(dxt, dev, "dx");
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
    bt.xa = c.read(float_tensor(o.Get("xa"), w + ".xa", dev), w + ".xa");
    bt.u = c.read(float_tensor(o.Get("u"), w + ".u", dev), w + ".u");
    bt.A = c.read(float_tensor(o.Get("A"), w + ".A", dev), w + ".A");
    bt.B = c.read(float_tensor(o.Get("B"), w + ".B", dev), w + ".B");
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
      require_float_on(dA, dev, w + ".dA");
      a->grads.push_back(c.write(dA, w + ".dA"));
      require_same_shape(a->grads.back(), bt.A.shape, w + ".dA");
      bt.dA = &a->grads.back();
    }
    if (dB) {
      require_float_on(dB, dev, w + ".dB");
      a->grads.push_back(c.write(dB, w + ".dB"));
      require_same_shape(a->grads.back(), bt.B.shape, w + ".dB");
      bt.dB = &a->grads.back();
    }
    a->terms.push_back(bt);
  }
  c.run = on_device(
      dev, [a] { cpu::linear_backward(a->dy, a->W, a->fifo, a->terms, a->has_dx ? &a->dx : nullptr); },
      [a] { LK_IF_CUDA(cuda::linear_backward(a->dy, a->W, a->fifo, a->terms, a->has_dx ? &a->dx : nullptr);) });
  return c;
}

// mergeDelta(W, A, B, scale, fifo, out): out = W + scale·ΔW (out may be W)
KernelCall BuildMergeDelta(const Napi::CallbackInfo& info) {
  KernelCall c;
  Device dev = device_of(info[0], "weight");
  TensorRef W = c.read(float_tensor(info[0], "weight", dev), "weight", /*inplace_ok=*/true);
  TensorRef A = c.read(float_tensor(info[1], "A", dev), "A");
  TensorRef B = c.read(float_tensor(info[2], "B", dev), "B");
  float scale = to_scale(get_number(info, 3, "scale"), "scale");
  bool fifo = get_bool(info, 4, "fanInFanOut");
  TensorRef out = c.write(float_tensor(info[5], "out", dev), "out");
  LinearDims d = linear_dims(W, fifo);
  check_adapter(A, B, d, "adapter");
  require_same_shape(out, W.shape, "out");
  c.run = on_device(dev, [=] { cpu::merge_delta(W, A, B, scale, fifo, out); },
                    [=] { LK_IF_CUDA(cuda::merge_delta(W, A, B, scale, fifo, out);) });
  return c;
}

// dropout(x, p, seed, stream, out); out may be x
KernelCall BuildDropout(const Napi::CallbackInfo& info) {
  KernelCall c;
  Device dev = device_of(info[0], "x");
  TensorRef x = c.read(float_tensor(info[0], "x", dev), "x", /*inplace_ok=*/true);
  double p = get_number(info, 1, "p");
  if (!(p >= 0 && p < 1) || static_cast<float>(p) >= 1.f) throw_range("p: expected 0 <= p < 1, got " + std::to_string(p));
  uint64_t seed = to_counter(get_number(info, 2, "seed"), "seed");
  uint64_t stream = to_counter(get_number(info, 3, "stream"), "stream");
  TensorRef out = c.write(float_tensor(info[4], "out", dev), "out");
  require_same_shape(out, x.shape, "out");
  c.run = on_device(dev, [=] { cpu::dropout(x, static_cast<float>(p), seed, stream, out); },
                    [=] { LK_IF_CUDA(cuda::dropout(x, static_cast<float>(p), seed, stream, out);) });
  return c;
}

// Copies src into dst converting dtypes, within a device or across cpu and cuda (through a host
// staging buffer when the dtypes differ).
void convert_between(const TensorRef& s, Device sdev, const TensorRef& d, Device ddev) {
  int64_t n = s.numel();
  if (sdev == Device::CPU && ddev == Device::CPU) {
    cpu::convert(s.data, s.dtype, d.data, d.dtype, n);
    return;
  }
#ifdef LORAKIT_WITH_CUDA
  size_t sbytes = static_cast<size_t>(n) * dtype_size(s.dtype), dbytes = static_cast<size_t>(n) * dtype_size(d.dtype);
  if (sdev == Device::CUDA && ddev == Device::CUDA) {
    cuda::convert(s.data, s.dtype, d.data, d.dtype, n);
  } else if (sdev == Device::CPU) {  // host → device
    if (s.dtype == d.dtype) {
      cuda::copy_to_device(d.data, s.data, dbytes);
    } else {
      std::vector<uint8_t> tmp(dbytes);
      cpu::convert(s.data, s.dtype, tmp.data(), d.dtype, n);
      cuda::copy_to_device(d.data, tmp.data(), dbytes);
    }
  } else if (s.dtype == d.dtype) {  // device → host
    cuda::copy_to_host(d.data, s.data, sbytes);
  } else {
    std::vector<uint8_t> tmp(sbytes);
    cuda::copy_to_host(tmp.data(), s.data, sbytes);
    cpu::convert(tmp.data(), s.dtype, d.data, d.dtype, n);
  }
#else
  (void)sdev;
  (void)ddev;
  throw_type("device: 'cuda' is not available in this build");
#endif
}

// convert(src, dst): copies src into dst, converting float dtypes; integer tensors must match.
KernelCall BuildConvert(const Napi::CallbackInfo& info) {
  KernelCall c;
  NativeTensor* st = get_tensor(info[0], "src");
  NativeTensor* dt = get_tensor(info[1], "dst");
  Device sdev = st->device(), ddev = dt->device();
  TensorRef s = c.read(st, "src", /*inplace_ok=*/true);
  TensorRef d = c.write(dt, "dst");
  if (s.numel() != d.numel())
    throw_range("src: has " + std::to_string(s.numel()) + " elements (shape " + shape_str(s.shape) +
                ") but dst has " + std::to_string(d.numel()) + " (shape " + shape_str(d.shape) + ")");
  if (dtype_is_float(s.dtype) != dtype_is_float(d.dtype) || (!dtype_is_float(s.dtype) && s.dtype != d.dtype))
    throw_type(std::string("dst: cannot convert ") + dtype_name(s.dtype) + " to " + dtype_name(d.dtype));
  c.run = [=] { convert_between(s, sdev, d, ddev); };
  return c;
}

KernelCall BuildAllFinite(const Napi::CallbackInfo& info) {
  KernelCall c;
  Device dev = device_of(info[0], "tensor");
  TensorRef t = c.read(float_tensor(info[0], "tensor", dev), "tensor");
  auto finite = std::make_shared<bool>(false);
  c.run = on_device(dev, [t, finite] { *finite = cpu::all_finite(t); },
                    [t, finite] { LK_IF_CUDA(*finite = cuda::all_finite(t);) });
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
  Napi::Array usable = Napi::Array::New(env);
  usable.Set(0u, "cpu");
#ifdef LORAKIT_WITH_CUDA
  compiled.Set(1u, "cuda");
  if (cuda::device_count() > 0) {  // cudaGetDeviceCount at run time
    usable.Set(1u, "cuda");
    o.Set("cudaDevice", cuda::device_description());
  }
#endif
  o.Set("compiled", compiled);
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
  exports.Set("loraForward", Napi::Function::New<RunSync<BuildLoraForward>>(env, "loraForward"));
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
