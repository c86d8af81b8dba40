// Bindings for the CUDA backend's extras: argument checks only, no math.
#include "cuda_binding.h"
#include "args.h"
#ifdef LORAKIT_WITH_CUDA
#include "../cuda/ops.h"
#include "../cuda/runtime.h"
#endif

namespace lorakit {
namespace napi {
namespace {

#ifdef LORAKIT_WITH_CUDA
// These calls run at once on the current stream. Every tensor counts as written for the
// cross-stream ordering: it may wait more than needed, never less.
const TensorRef& cuda_float(const Napi::Value& v, const std::string& name) {
  NativeTensor* t = get_tensor(v, name);
  require_float_on(t, Device::CUDA, name);
  cuda::order_use(t->ref().data, true);
  return t->ref();
}

const TensorRef* optional_cuda(const Napi::CallbackInfo& info, size_t i, const std::string& name) {
  if (info.Length() <= i) return nullptr;
  NativeTensor* t = get_tensor_or_null(info[i], name);
  if (!t) return nullptr;
  require_float_on(t, Device::CUDA, name);
  cuda::order_use(t->ref().data, true);
  return &t->ref();
}

// accumulate(dst f32, src, alpha): dst += alpha·src
Napi::Value Accumulate(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const TensorRef& d = cuda_float(info[0], "dst");
    const TensorRef& s = cuda_float(info[1], "src");
    cuda::accumulate(d, s, static_cast<float>(get_number(info, 2, "alpha")));
    return info.Env().Undefined();
  });
}

Napi::Value SumSquares(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    return Napi::Number::New(info.Env(), cuda::sum_squares(cuda_float(info[0], "tensor")));
  });
}

Napi::Value Scale(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    cuda::scale_inplace(cuda_float(info[0], "tensor"), static_cast<float>(get_number(info, 1, "alpha")));
    return info.Env().Undefined();
  });
}

void require_same(const TensorRef& a, const TensorRef& b, const std::string& an, const std::string& bn) {
  if (a.shape != b.shape) throw_range(bn + ": expected the shape of " + an + " " + shape_str(a.shape) + ", got " + shape_str(b.shape));
}

Napi::Value Synchronize(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    cuda::synchronize();
    return info.Env().Undefined();
  });
}

// Stream ids are small integers: 0 is the default stream.
uint64_t stream_id(const Napi::CallbackInfo& info, size_t i) {
  double v = get_number(info, i, "stream");
  if (!(v >= 0) || v != static_cast<double>(static_cast<uint32_t>(v))) throw_range("stream: expected a stream id, got " + std::to_string(v));
  return static_cast<uint64_t>(v);
}

Napi::Value StreamCreate(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value { return Napi::Number::New(info.Env(), static_cast<double>(cuda::create_stream())); });
}

Napi::Value StreamRelease(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    cuda::release_stream(stream_id(info, 0));
    return info.Env().Undefined();
  });
}

Napi::Value StreamSynchronize(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    cuda::synchronize_stream(stream_id(info, 0));
    return info.Env().Undefined();
  });
}

// setStream(id): the JS thread's current stream (async calls take it when they are queued).
Napi::Value SetStream(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    cuda::set_current_stream(stream_id(info, 0));
    return info.Env().Undefined();
  });
}

Napi::Value CurrentStream(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(cuda::current_stream()));
}

Napi::Value TimerStart(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    cuda::timer_start();
    return info.Env().Undefined();
  });
}

Napi::Value TimerStop(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value { return Napi::Number::New(info.Env(), cuda::timer_stop_ms()); });
}

Napi::Value MemoryStats(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("allocatedBytes", static_cast<double>(cuda::allocated_bytes()));
  o.Set("cachedBytes", static_cast<double>(cuda::cached_bytes()));
  return o;
}

Napi::Value KernelStats(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("sm90GemmUsable", cuda::device_count() > 0 && cuda::sm90_gemm_usable());
    o.Set("sm90GemmLaunches", static_cast<double>(cuda::sm90_gemm_launches()));
    return o;
  });
}

Napi::Value EmptyCache(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    cuda::empty_cache();
    return info.Env().Undefined();
  });
}

// baseGemm(x, W, y, inputGrad): y = x·Wᵀ (or dx = dy·W), the bare cuBLASLt GEMMs the
// benchmarks compare against.
Napi::Value BaseGemm(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const TensorRef& x = cuda_float(info[0], "x");
    const TensorRef& W = cuda_float(info[1], "weight");
    const TensorRef& y = cuda_float(info[2], "y");
    bool input_grad = get_bool(info, 3, "inputGrad");
    if (W.shape.size() != 2) throw_range("weight: expected 2 dimensions, got shape " + shape_str(W.shape));
    int64_t k = input_grad ? W.shape[0] : W.shape[1], o = input_grad ? W.shape[1] : W.shape[0];
    if (x.shape.empty() || x.shape.back() != k)
      throw_range("x: expected last dimension " + std::to_string(k) + ", got shape " + shape_str(x.shape));
    std::vector<int64_t> ys = x.shape;
    ys.back() = o;
    if (y.shape != ys) throw_range("y: expected shape " + shape_str(ys) + ", got " + shape_str(y.shape));
    cuda::base_gemm(x, W, y, input_grad);
    return info.Env().Undefined();
  });
}

// adamwStep(param, grad, expAvg, expAvgSq, {lr, beta1, beta2, eps, weightDecay, step}, master|null)
Napi::Value AdamwStep(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const TensorRef& p = cuda_float(info[0], "param");
    const TensorRef& g = cuda_float(info[1], "grad");
    const TensorRef& m = cuda_float(info[2], "expAvg");
    const TensorRef& v = cuda_float(info[3], "expAvgSq");
    require_same(p, g, "param", "grad");
    require_same(p, m, "param", "expAvg");
    require_same(p, v, "param", "expAvgSq");
    if (info.Length() < 5 || !info[4].IsObject()) throw_type("opts: expected an object");
    Napi::Object o = info[4].As<Napi::Object>();
    cuda::AdamWParams h;
    h.lr_d = number_prop(o, "lr", "opts");
    h.beta1_d = number_prop(o, "beta1", "opts");
    h.beta2_d = number_prop(o, "beta2", "opts");
    h.lr = static_cast<float>(h.lr_d);
    h.beta1 = static_cast<float>(h.beta1_d);
    h.beta2 = static_cast<float>(h.beta2_d);
    h.eps = static_cast<float>(number_prop(o, "eps", "opts"));
    h.weight_decay = static_cast<float>(number_prop(o, "weightDecay", "opts"));
    double step = number_prop(o, "step", "opts");
    if (step < 1 || step != static_cast<double>(static_cast<int64_t>(step))) throw_range("opts.step: expected an integer >= 1");
    if (!(h.beta1 >= 0 && h.beta1 < 1) || !(h.beta2 >= 0 && h.beta2 < 1)) throw_range("opts.beta1/beta2: expected values in [0, 1)");
    h.step = static_cast<int64_t>(step);
    const TensorRef* master = optional_cuda(info, 5, "master");
    cuda::adamw_step(p, g, m, v, master, h);
    return info.Env().Undefined();
  });
}

// sgdStep(param, grad, momentumBuffer|null, {lr, momentum, dampening, weightDecay, nesterov, firstStep}, master|null)
Napi::Value SgdStep(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const TensorRef& p = cuda_float(info[0], "param");
    const TensorRef& g = cuda_float(info[1], "grad");
    require_same(p, g, "param", "grad");
    NativeTensor* bt = get_tensor_or_null(info[2], "momentumBuffer");
    if (bt) {
      require_float_on(bt, Device::CUDA, "momentumBuffer");
      cuda::order_use(bt->ref().data, true);
    }
    if (info.Length() < 4 || !info[3].IsObject()) throw_type("opts: expected an object");
    Napi::Object o = info[3].As<Napi::Object>();
    cuda::SgdParams h;
    h.lr = static_cast<float>(number_prop(o, "lr", "opts"));
    h.momentum = static_cast<float>(number_prop(o, "momentum", "opts"));
    h.dampening = static_cast<float>(number_prop(o, "dampening", "opts"));
    h.weight_decay = static_cast<float>(number_prop(o, "weightDecay", "opts"));
    h.nesterov = o.Get("nesterov").ToBoolean().Value();
    h.first_step = o.Get("firstStep").ToBoolean().Value();
    cuda::sgd_step(p, g, bt ? &bt->ref() : nullptr, optional_cuda(info, 4, "master"), h);
    return info.Env().Undefined();
  });
}
#else
Napi::Value NotBuilt(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    throw_type("device: 'cuda' is not available in this build (built without the CUDA toolkit and cuBLAS)");
  });
}
#endif

}  // namespace

void InitCuda(Napi::Env env, Napi::Object exports) {
#ifdef LORAKIT_WITH_CUDA
  cuda::register_memory();
  exports.Set("cudaSynchronize", Napi::Function::New<Synchronize>(env, "cudaSynchronize"));
  exports.Set("cudaStreamCreate", Napi::Function::New<StreamCreate>(env, "cudaStreamCreate"));
  exports.Set("cudaStreamRelease", Napi::Function::New<StreamRelease>(env, "cudaStreamRelease"));
  exports.Set("cudaStreamSynchronize", Napi::Function::New<StreamSynchronize>(env, "cudaStreamSynchronize"));
  exports.Set("cudaSetStream", Napi::Function::New<SetStream>(env, "cudaSetStream"));
  exports.Set("cudaCurrentStream", Napi::Function::New<CurrentStream>(env, "cudaCurrentStream"));
  exports.Set("cudaTimerStart", Napi::Function::New<TimerStart>(env, "cudaTimerStart"));
  exports.Set("cudaTimerStop", Napi::Function::New<TimerStop>(env, "cudaTimerStop"));
  exports.Set("cudaMemoryStats", Napi::Function::New<MemoryStats>(env, "cudaMemoryStats"));
  exports.Set("cudaEmptyCache", Napi::Function::New<EmptyCache>(env, "cudaEmptyCache"));
  exports.Set("cudaKernelStats", Napi::Function::New<KernelStats>(env, "cudaKernelStats"));
  exports.Set("cudaBaseGemm", Napi::Function::New<BaseGemm>(env, "cudaBaseGemm"));
  exports.Set("cudaAdamwStep", Napi::Function::New<AdamwStep>(env, "cudaAdamwStep"));
  exports.Set("cudaSgdStep", Napi::Function::New<SgdStep>(env, "cudaSgdStep"));
  exports.Set("cudaAccumulate", Napi::Function::New<Accumulate>(env, "cudaAccumulate"));
  exports.Set("cudaSumSquares", Napi::Function::New<SumSquares>(env, "cudaSumSquares"));
  exports.Set("cudaScale", Napi::Function::New<Scale>(env, "cudaScale"));
#else
  for (const char* name : {"cudaSynchronize", "cudaStreamCreate", "cudaStreamRelease", "cudaStreamSynchronize",
                           "cudaSetStream", "cudaCurrentStream", "cudaTimerStart", "cudaTimerStop", "cudaMemoryStats", "cudaEmptyCache", "cudaKernelStats",
                           "cudaBaseGemm", "cudaAdamwStep", "cudaSgdStep", "cudaAccumulate", "cudaSumSquares", "cudaScale"})
    exports.Set(name, Napi::Function::New<NotBuilt>(env, name));
#endif
}

}  // namespace napi
}  // namespace lorakit
