// Bindings for the CPU op table: argument unpacking and shape checks only, no math.
#include <napi.h>
#include <cmath>
#include "../core/thread_pool.h"
#include "../cpu/microkernel.h"
#include "../cpu/ops.h"
#ifdef LORAKIT_WITH_CUDA
#include "../cuda/ops.h"
#include "../cuda/runtime.h"
#endif
#include "args.h"
#include "kernels_binding.h"

namespace lorakit {
namespace napi {
namespace {

#ifdef LORAKIT_WITH_CUDA
#define LK_IF_CUDA(...) __VA_ARGS__
#else
#define LK_IF_CUDA(...)
#endif

// The device of a call is that of its first tensor; every other tensor must be on it.
const TensorRef& float_arg(const Napi::CallbackInfo& info, size_t i, const std::string& name, Device dev) {
  NativeTensor* t = get_tensor(info[i], name);
  require_float_on(t, dev, name);
  return t->ref();
}

Device device_of(const Napi::CallbackInfo& info, size_t i, const std::string& name) {
  return get_tensor(info[i], name)->device();
}

// Runs the cpu or the cuda version of an op.
template <class Cpu, class Cuda>
void dispatch(Device dev, Cpu&& cpu_fn, Cuda&& cuda_fn) {
  if (dev == Device::CPU) {
    cpu_fn();
    return;
  }
#ifdef LORAKIT_WITH_CUDA
  cuda_fn();
#else
  (void)cuda_fn;
  throw_type("device: 'cuda' is not available in this build");
#endif
}

struct LinearDims {
  int64_t in, out;
};

LinearDims linear_dims(const TensorRef& W, bool fifo) {
  if (W.shape.size() != 2) throw_range("weight: expected 2 dimensions, got shape " + shape_str(W.shape));
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

void require_distinct(const TensorRef& out, const TensorRef& in, const std::string& oname, const std::string& iname) {
  if (out.data == in.data) throw_range(oname + ": must not be the same tensor as " + iname);
}

void check_adapter(const TensorRef& A, const TensorRef& B, LinearDims d, const std::string& where) {
  if (A.shape.size() != 2 || A.shape[1] != d.in)
    throw_range(where + ".A: expected shape [r, " + std::to_string(d.in) + "], got " + shape_str(A.shape));
  if (B.shape.size() != 2 || B.shape[0] != d.out || B.shape[1] != A.shape[0])
    throw_range(where + ".B: expected shape [" + std::to_string(d.out) + ", " + std::to_string(A.shape[0]) + "], got " +
                shape_str(B.shape));
}

std::vector<int64_t> with_last(std::vector<int64_t> s, int64_t d) {
  s.back() = d;
  return s;
}

// shrink(x, A, out): out [n..., r] = x·Aᵀ
Napi::Value Shrink(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    Device dev = device_of(info, 0, "x");
    const TensorRef& x = float_arg(info, 0, "x", dev);
    const TensorRef& A = float_arg(info, 1, "A", dev);
    const TensorRef& out = float_arg(info, 2, "out", dev);
    if (A.shape.size() != 2) throw_range("A: expected 2 dimensions, got shape " + shape_str(A.shape));
    require_last_dim(x, A.shape[1], "x", "A's in_features");
    require_same_shape(out, with_last(x.shape, A.shape[0]), "out");
    require_distinct(out, x, "out", "x");
    dispatch(dev, [&] { cpu::lora_shrink(x, A, out); }, [&] { LK_IF_CUDA(cuda::lora_shrink(x, A, out);) });
    return info.Env().Undefined();
  });
}

// linearForward(x, W, bias|null, fifo, terms: [u, B, scale][], y)
Napi::Value LinearForward(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    Device dev = device_of(info, 0, "x");
    const TensorRef& x = float_arg(info, 0, "x", dev);
    const TensorRef& W = float_arg(info, 1, "weight", dev);
    NativeTensor* bt = get_tensor_or_null(info[2], "bias");
    bool fifo = get_bool(info, 3, "fanInFanOut");
    LinearDims d = linear_dims(W, fifo);
    require_last_dim(x, d.in, "x", "in_features");
    if (bt) {
      require_float_on(bt, dev, "bias");
      require_same_shape(bt->ref(), {d.out}, "bias");
    }
    if (info.Length() < 5 || !info[4].IsArray()) throw_type("terms: expected an array");
    Napi::Array arr = info[4].As<Napi::Array>();
    std::vector<cpu::ForwardTerm> terms;
    int64_t n = x.rows();
    const TensorRef& y = float_arg(info, 5, "y", dev);
    require_same_shape(y, with_last(x.shape, d.out), "y");
    require_distinct(y, x, "y", "x");
    for (uint32_t i = 0; i < arr.Length(); i++) {
      std::string w = "terms[" + std::to_string(i) + "]";
      Napi::Value tv = arr.Get(i);
      if (!tv.IsArray() || tv.As<Napi::Array>().Length() != 3) throw_type(w + ": expected [u, B, scale]");
      Napi::Array t = tv.As<Napi::Array>();
      NativeTensor* u = get_tensor(t.Get(0u), w + ".u");
      NativeTensor* B = get_tensor(t.Get(1u), w + ".B");
      require_float_on(u, dev, w + ".u");
      require_float_on(B, dev, w + ".B");
      if (B->ref().shape.size() != 2 || B->ref().shape[0] != d.out)
        throw_range(w + ".B: expected shape [" + std::to_string(d.out) + ", r], got " + shape_str(B->ref().shape));
      int64_t r = B->ref().shape[1];
      if (u->ref().numel() != n * r || u->ref().shape.empty() || u->ref().shape.back() != r)
        throw_range(w + ".u: expected " + std::to_string(n) + " rows of " + std::to_string(r) + ", got shape " +
                    shape_str(u->ref().shape));
      require_distinct(y, u->ref(), "y", w + ".u");
      Napi::Value sv = t.Get(2u);
      if (!sv.IsNumber() || !std::isfinite(sv.As<Napi::Number>().DoubleValue()))
        throw_range(w + ".scale: expected a finite number");
      terms.push_back({u->ref(), B->ref(), static_cast<float>(sv.As<Napi::Number>().DoubleValue())});
    }
    const TensorRef* bias = bt ? &bt->ref() : nullptr;
    dispatch(dev, [&] { cpu::linear_forward(x, W, bias, fifo, terms, y); },
             [&] { LK_IF_CUDA(cuda::linear_forward(x, W, bias, fifo, terms, y);) });
    return info.Env().Undefined();
  });
}

// loraForward(x, W, bias|null, fifo, adapters: [A, B, scale, u|null][], y): every adapter's shrink
// and the fused forward in one call; u (when given) receives x·Aᵀ for backward.
Napi::Value LoraForward(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    Device dev = device_of(info, 0, "x");
    const TensorRef& x = float_arg(info, 0, "x", dev);
    const TensorRef& W = float_arg(info, 1, "weight", dev);
    NativeTensor* bt = get_tensor_or_null(info[2], "bias");
    bool fifo = get_bool(info, 3, "fanInFanOut");
    LinearDims d = linear_dims(W, fifo);
    require_last_dim(x, d.in, "x", "in_features");
    if (bt) {
      require_float_on(bt, dev, "bias");
      require_same_shape(bt->ref(), {d.out}, "bias");
    }
    if (info.Length() < 5 || !info[4].IsArray()) throw_type("adapters: expected an array");
    Napi::Array arr = info[4].As<Napi::Array>();
    const TensorRef& y = float_arg(info, 5, "y", dev);
    require_same_shape(y, with_last(x.shape, d.out), "y");
    require_distinct(y, x, "y", "x");
    struct Item {
      TensorRef A, B;
      float scale;
      const TensorRef* u;
    };
    std::vector<Item> items;
    for (uint32_t i = 0; i < arr.Length(); i++) {
      std::string w = "adapters[" + std::to_string(i) + "]";
      Napi::Value tv = arr.Get(i);
      if (!tv.IsArray() || tv.As<Napi::Array>().Length() != 4) throw_type(w + ": expected [A, B, scale, u|null]");
      Napi::Array t = tv.As<Napi::Array>();
      NativeTensor* A = get_tensor(t.Get(0u), w + ".A");
      NativeTensor* B = get_tensor(t.Get(1u), w + ".B");
      require_float_on(A, dev, w + ".A");
      require_float_on(B, dev, w + ".B");
      check_adapter(A->ref(), B->ref(), d, w);
      Napi::Value sv = t.Get(2u);
      if (!sv.IsNumber() || !std::isfinite(sv.As<Napi::Number>().DoubleValue())) throw_range(w + ".scale: expected a finite number");
      NativeTensor* u = get_tensor_or_null(t.Get(3u), w + ".u");
      if (u) {
        require_float_on(u, dev, w + ".u");
        require_same_shape(u->ref(), with_last(x.shape, A->ref().shape[0]), w + ".u");
        require_distinct(y, u->ref(), "y", w + ".u");
      }
      items.push_back({A->ref(), B->ref(), static_cast<float>(sv.As<Napi::Number>().DoubleValue()), u ? &u->ref() : nullptr});
    }
    const TensorRef* bias = bt ? &bt->ref() : nullptr;
    dispatch(
        dev,
        [&] {
          int64_t n = x.rows();
          std::vector<std::vector<float>> scratch(items.size());
          std::vector<cpu::ForwardTerm> terms;
          for (size_t i = 0; i < items.size(); i++) {
            TensorRef u;
            if (items[i].u) {
              u = *items[i].u;
            } else {
              int64_t r = items[i].A.shape[0];
              scratch[i].resize(static_cast<size_t>(n * r));
              u.data = scratch[i].data();
              u.dtype = DType::F32;
              u.shape = {n, r};
            }
            cpu::lora_shrink(x, items[i].A, u);
            terms.push_back({u, items[i].B, items[i].scale});
          }
          cpu::linear_forward(x, W, bias, fifo, terms, y);
        },
        [&] {
          LK_IF_CUDA(std::vector<cuda::FusedAdapter> fa;
                     for (const auto& it : items) fa.push_back({it.A, it.B, it.scale, it.u});
                     cuda::lora_forward(x, W, bias, fifo, fa, y);)
        });
    return info.Env().Undefined();
  });
}

// linearBackward(dy, W, fifo, terms: {xa, u, A, B, scale, p, seed, stream, dA|null, dB|null}[], dx|null)
Napi::Value LinearBackward(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    Device dev = device_of(info, 0, "dy");
    const TensorRef& dy = float_arg(info, 0, "dy", dev);
    const TensorRef& W = float_arg(info, 1, "weight", dev);
    bool fifo = get_bool(info, 2, "fanInFanOut");
    LinearDims d = linear_dims(W, fifo);
    require_last_dim(dy, d.out, "dy", "out_features");
    int64_t n = dy.rows();
    if (info.Length() < 4 || !info[3].IsArray()) throw_type("terms: expected an array");
    Napi::Array arr = info[3].As<Napi::Array>();
    NativeTensor* dxt = info.Length() > 4 ? get_tensor_or_null(info[4], "dx") : nullptr;
    std::vector<int64_t> xshape = with_last(dy.shape, d.in);
    if (dxt) {
      require_float_on(dxt, dev, "dx");
      require_same_shape(dxt->ref(), xshape, "dx");
      require_distinct(dxt->ref(), dy, "dx", "dy");
    }
    std::vector<cpu::BackwardTerm> terms;
    for (uint32_t i = 0; i < arr.Length(); i++) {
      std::string w = "terms[" + std::to_string(i) + "]";
      Napi::Value tv = arr.Get(i);
      if (!tv.IsObject()) throw_type(w + ": expected an object");
      Napi::Object o = tv.As<Napi::Object>();
      NativeTensor* xa = get_tensor(o.Get("xa"), w + ".xa");
      NativeTensor* u = get_tensor(o.Get("u"), w + ".u");
      NativeTensor* A = get_tensor(o.Get("A"), w + ".A");
      NativeTensor* B = get_tensor(o.Get("B"), w + ".B");
      for (auto* t : {xa, u, A, B}) require_float_on(t, dev, w);
      check_adapter(A->ref(), B->ref(), d, w);
      int64_t r = A->ref().shape[0];
      require_same_shape(xa->ref(), xshape, w + ".xa");
      if (u->ref().numel() != n * r) throw_range(w + ".u: expected " + std::to_string(n * r) + " elements, got shape " + shape_str(u->ref().shape));
      cpu::BackwardTerm bt;
      bt.xa = xa->ref();
      bt.u = u->ref();
      bt.A = A->ref();
      bt.B = B->ref();
      bt.scale = static_cast<float>(number_prop(o, "scale", w));
      bt.dropout_p = static_cast<float>(number_prop(o, "p", w));
      if (!(bt.dropout_p >= 0.f && bt.dropout_p < 1.f)) throw_range(w + ".p: expected 0 <= p < 1");
      bt.seed = static_cast<uint64_t>(number_prop(o, "seed", w));
      bt.stream = static_cast<uint64_t>(number_prop(o, "stream", w));
      NativeTensor* dA = get_tensor_or_null(o.Get("dA"), w + ".dA");
      NativeTensor* dB = get_tensor_or_null(o.Get("dB"), w + ".dB");
      bt.dA = nullptr;
      bt.dB = nullptr;
      if (dA) {
        require_float_on(dA, dev, w + ".dA");
        require_same_shape(dA->ref(), A->ref().shape, w + ".dA");
        bt.dA = &dA->ref();
      }
      if (dB) {
        require_float_on(dB, dev, w + ".dB");
        require_same_shape(dB->ref(), B->ref().shape, w + ".dB");
        bt.dB = &dB->ref();
      }
      terms.push_back(bt);
    }
    const TensorRef* dx = dxt ? &dxt->ref() : nullptr;
    dispatch(dev, [&] { cpu::linear_backward(dy, W, fifo, terms, dx); },
             [&] { LK_IF_CUDA(cuda::linear_backward(dy, W, fifo, terms, dx);) });
    return info.Env().Undefined();
  });
}

// mergeDelta(W, A, B, scale, fifo, out): out = W + scale·ΔW (out may be W)
Napi::Value MergeDelta(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    Device dev = device_of(info, 0, "weight");
    const TensorRef& W = float_arg(info, 0, "weight", dev);
    const TensorRef& A = float_arg(info, 1, "A", dev);
    const TensorRef& B = float_arg(info, 2, "B", dev);
    float scale = static_cast<float>(get_number(info, 3, "scale"));
    bool fifo = get_bool(info, 4, "fanInFanOut");
    const TensorRef& out = float_arg(info, 5, "out", dev);
    LinearDims d = linear_dims(W, fifo);
    check_adapter(A, B, d, "adapter");
    require_same_shape(out, W.shape, "out");
    dispatch(dev, [&] { cpu::merge_delta(W, A, B, scale, fifo, out); },
             [&] { LK_IF_CUDA(cuda::merge_delta(W, A, B, scale, fifo, out);) });
    return info.Env().Undefined();
  });
}

// dropout(x, p, seed, stream, out)
Napi::Value Dropout(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    Device dev = device_of(info, 0, "x");
    const TensorRef& x = float_arg(info, 0, "x", dev);
    double p = get_number(info, 1, "p");
    if (!(p >= 0 && p < 1)) throw_range("p: expected 0 <= p < 1, got " + std::to_string(p));
    uint64_t seed = static_cast<uint64_t>(get_number(info, 2, "seed"));
    uint64_t stream = static_cast<uint64_t>(get_number(info, 3, "stream"));
    const TensorRef& out = float_arg(info, 4, "out", dev);
    require_same_shape(out, x.shape, "out");
    dispatch(dev, [&] { cpu::dropout(x, static_cast<float>(p), seed, stream, out); },
             [&] { LK_IF_CUDA(cuda::dropout(x, static_cast<float>(p), seed, stream, out);) });
    return info.Env().Undefined();
  });
}

// Copies src into dst converting dtypes, within a device or across cpu and cuda (through a host
// staging buffer in dst's dtype when the dtypes differ).
void convert_between(NativeTensor* s, NativeTensor* d) {
  const TensorRef& sr = s->ref();
  const TensorRef& dr = d->ref();
  int64_t n = sr.numel();
  if (s->device() == Device::CPU && d->device() == Device::CPU) {
    cpu::convert(sr.data, sr.dtype, dr.data, dr.dtype, n);
    return;
  }
#ifdef LORAKIT_WITH_CUDA
  size_t bytes = static_cast<size_t>(n) * dtype_size(dr.dtype);
  if (s->device() == Device::CUDA && d->device() == Device::CUDA) {
    cuda::convert(sr.data, sr.dtype, dr.data, dr.dtype, n);
  } else if (s->device() == Device::CPU) {  // host → device
    if (sr.dtype == dr.dtype) {
      cuda::copy_to_device(dr.data, sr.data, bytes);
    } else {
      std::vector<uint8_t> tmp(bytes);
      cpu::convert(sr.data, sr.dtype, tmp.data(), dr.dtype, n);
      cuda::copy_to_device(dr.data, tmp.data(), bytes);
    }
  } else {  // device → host
    size_t sbytes = static_cast<size_t>(n) * dtype_size(sr.dtype);
    if (sr.dtype == dr.dtype) {
      cuda::copy_to_host(dr.data, sr.data, sbytes);
    } else {
      std::vector<uint8_t> tmp(sbytes);
      cuda::copy_to_host(tmp.data(), sr.data, sbytes);
      cpu::convert(tmp.data(), sr.dtype, dr.data, dr.dtype, n);
    }
  }
#else
  throw_type("device: 'cuda' is not available in this build");
#endif
}

// convert(src, dst): copies src into dst, converting float dtypes; integer tensors must match.
Napi::Value Convert(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    NativeTensor* s = get_tensor(info[0], "src");
    NativeTensor* d = get_tensor(info[1], "dst");
    if (s->ref().numel() != d->ref().numel())
      throw_range("src: has " + std::to_string(s->ref().numel()) + " elements (shape " + shape_str(s->ref().shape) +
                  ") but dst has " + std::to_string(d->ref().numel()) + " (shape " + shape_str(d->ref().shape) + ")");
    DType st = s->ref().dtype, dt = d->ref().dtype;
    if (dtype_is_float(st) != dtype_is_float(dt) || (!dtype_is_float(st) && st != dt))
      throw_type(std::string("dst: cannot convert ") + dtype_name(st) + " to " + dtype_name(dt));
    convert_between(s, d);
    return info.Env().Undefined();
  });
}

Napi::Value AllFinite(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    Device dev = device_of(info, 0, "tensor");
    const TensorRef& t = float_arg(info, 0, "tensor", dev);
    bool ok = true;
    dispatch(dev, [&] { ok = cpu::all_finite(t); }, [&] { LK_IF_CUDA(ok = cuda::all_finite(t);) });
    return Napi::Boolean::New(info.Env(), ok);
  });
}

Napi::Value BackendInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("cpuPath", kernel_table().name);
  o.Set("threads", num_threads());
  Napi::Array compiled = Napi::Array::New(env);
  compiled.Set(0u, "cpu");
  Napi::Array usable = Napi::Array::New(env);
  usable.Set(0u, "cpu");
#ifdef LORAKIT_WITH_CUDA
  compiled.Set(1u, "cuda");
  if (cuda::device_count() > 0) {
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
  exports.Set("shrink", Napi::Function::New<Shrink>(env, "shrink"));
  exports.Set("linearForward", Napi::Function::New<LinearForward>(env, "linearForward"));
  exports.Set("loraForward", Napi::Function::New<LoraForward>(env, "loraForward"));
  exports.Set("linearBackward", Napi::Function::New<LinearBackward>(env, "linearBackward"));
  exports.Set("mergeDelta", Napi::Function::New<MergeDelta>(env, "mergeDelta"));
  exports.Set("dropout", Napi::Function::New<Dropout>(env, "dropout"));
  exports.Set("convert", Napi::Function::New<Convert>(env, "convert"));
  exports.Set("allFinite", Napi::Function::New<AllFinite>(env, "allFinite"));
  exports.Set("backendInfo", Napi::Function::New<BackendInfo>(env, "backendInfo"));
  exports.Set("setNumThreads", Napi::Function::New<SetNumThreads>(env, "setNumThreads"));
}

}  // namespace napi
}  // namespace lorakit
