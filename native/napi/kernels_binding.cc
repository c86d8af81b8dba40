// Bindings for the CPU op table: argument unpacking and shape checks only, no math.
#include <napi.h>
#include <cmath>
#include "../core/thread_pool.h"
#include "../cpu/microkernel.h"
#include "../cpu/ops.h"
#include "args.h"
#include "kernels_binding.h"

namespace lorakit {
namespace napi {
namespace {

const TensorRef& float_arg(const Napi::CallbackInfo& info, size_t i, const std::string& name) {
  NativeTensor* t = get_tensor(info[i], name);
  require_float_cpu(t, name);
  return t->ref();
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
    const TensorRef& x = float_arg(info, 0, "x");
    const TensorRef& A = float_arg(info, 1, "A");
    const TensorRef& out = float_arg(info, 2, "out");
    if (A.shape.size() != 2) throw_range("A: expected 2 dimensions, got shape " + shape_str(A.shape));
    require_last_dim(x, A.shape[1], "x", "A's in_features");
    require_same_shape(out, with_last(x.shape, A.shape[0]), "out");
    require_distinct(out, x, "out", "x");
    cpu::lora_shrink(x, A, out);
    return info.Env().Undefined();
  });
}

// linearForward(x, W, bias|null, fifo, terms: [u, B, scale][], y)
Napi::Value LinearForward(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const TensorRef& x = float_arg(info, 0, "x");
    const TensorRef& W = float_arg(info, 1, "weight");
    NativeTensor* bt = get_tensor_or_null(info[2], "bias");
    bool fifo = get_bool(info, 3, "fanInFanOut");
    LinearDims d = linear_dims(W, fifo);
    require_last_dim(x, d.in, "x", "in_features");
    if (bt) {
      require_float_cpu(bt, "bias");
      require_same_shape(bt->ref(), {d.out}, "bias");
    }
    if (info.Length() < 5 || !info[4].IsArray()) throw_type("terms: expected an array");
    Napi::Array arr = info[4].As<Napi::Array>();
    std::vector<cpu::ForwardTerm> terms;
    int64_t n = x.rows();
    const TensorRef& y = float_arg(info, 5, "y");
    require_same_shape(y, with_last(x.shape, d.out), "y");
    require_distinct(y, x, "y", "x");
    for (uint32_t i = 0; i < arr.Length(); i++) {
      std::string w = "terms[" + std::to_string(i) + "]";
      Napi::Value tv = arr.Get(i);
      if (!tv.IsArray() || tv.As<Napi::Array>().Length() != 3) throw_type(w + ": expected [u, B, scale]");
      Napi::Array t = tv.As<Napi::Array>();
      NativeTensor* u = get_tensor(t.Get(0u), w + ".u");
      NativeTensor* B = get_tensor(t.Get(1u), w + ".B");
      require_float_cpu(u, w + ".u");
      require_float_cpu(B, w + ".B");
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
    cpu::linear_forward(x, W, bt ? &bt->ref() : nullptr, fifo, terms, y);
    return info.Env().Undefined();
  });
}

// linearBackward(dy, W, fifo, terms: {xa, u, A, B, scale, p, seed, stream, dA|null, dB|null}[], dx|null)
Napi::Value LinearBackward(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const TensorRef& dy = float_arg(info, 0, "dy");
    const TensorRef& W = float_arg(info, 1, "weight");
    bool fifo = get_bool(info, 2, "fanInFanOut");
    LinearDims d = linear_dims(W, fifo);
    require_last_dim(dy, d.out, "dy", "out_features");
    int64_t n = dy.rows();
    if (info.Length() < 4 || !info[3].IsArray()) throw_type("terms: expected an array");
    Napi::Array arr = info[3].As<Napi::Array>();
    NativeTensor* dxt = info.Length() > 4 ? get_tensor_or_null(info[4], "dx") : nullptr;
    std::vector<int64_t> xshape = with_last(dy.shape, d.in);
    if (dxt) {
      require_float_cpu(dxt, "dx");
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
      for (auto* t : {xa, u, A, B}) require_float_cpu(t, w);
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
        require_float_cpu(dA, w + ".dA");
        require_same_shape(dA->ref(), A->ref().shape, w + ".dA");
        bt.dA = &dA->ref();
      }
      if (dB) {
        require_float_cpu(dB, w + ".dB");
        require_same_shape(dB->ref(), B->ref().shape, w + ".dB");
        bt.dB = &dB->ref();
      }
      terms.push_back(bt);
    }
    cpu::linear_backward(dy, W, fifo, terms, dxt ? &dxt->ref() : nullptr);
    return info.Env().Undefined();
  });
}

// mergeDelta(W, A, B, scale, fifo, out): out = W + scale·ΔW (out may be W)
Napi::Value MergeDelta(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const TensorRef& W = float_arg(info, 0, "weight");
    const TensorRef& A = float_arg(info, 1, "A");
    const TensorRef& B = float_arg(info, 2, "B");
    float scale = static_cast<float>(get_number(info, 3, "scale"));
    bool fifo = get_bool(info, 4, "fanInFanOut");
    const TensorRef& out = float_arg(info, 5, "out");
    LinearDims d = linear_dims(W, fifo);
    check_adapter(A, B, d, "adapter");
    require_same_shape(out, W.shape, "out");
    cpu::merge_delta(W, A, B, scale, fifo, out);
    return info.Env().Undefined();
  });
}

// dropout(x, p, seed, stream, out)
Napi::Value Dropout(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const TensorRef& x = float_arg(info, 0, "x");
    double p = get_number(info, 1, "p");
    if (!(p >= 0 && p < 1)) throw_range("p: expected 0 <= p < 1, got " + std::to_string(p));
    uint64_t seed = static_cast<uint64_t>(get_number(info, 2, "seed"));
    uint64_t stream = static_cast<uint64_t>(get_number(info, 3, "stream"));
    const TensorRef& out = float_arg(info, 4, "out");
    require_same_shape(out, x.shape, "out");
    cpu::dropout(x, static_cast<float>(p), seed, stream, out);
    return info.Env().Undefined();
  });
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
    cpu::convert(s->ref().data, st, d->ref().data, dt, s->ref().numel());
    return info.Env().Undefined();
  });
}

Napi::Value AllFinite(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const TensorRef& t = float_arg(info, 0, "tensor");
    return Napi::Boolean::New(info.Env(), cpu::all_finite(t));
  });
}

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
  exports.Set("shrink", Napi::Function::New<Shrink>(env, "shrink"));
  exports.Set("linearForward", Napi::Function::New<LinearForward>(env, "linearForward"));
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
