// Device-level bindings, outside the kernel op list: backend information and traits, the cpu
// thread pool and peaks, and the CUDA backend's extras (the one file with device-specific code).
#include "device.h"
#include <string>
#include "../core/backend.h"
#include "../core/thread_pool.h"
#include "../cpu/backend.h"
#include "../cpu/gemm.h"
#include "../cpu/microkernel.h"
#include "../cpu/peak.h"
#include "args.h"
#include "async_worker.h"
#ifdef LORAKIT_WITH_CUDA
#include "../cuda/backend.h"
#include "../cuda/ops.h"
#include "../cuda/graph_replay.h"
#include "../cuda/runtime.h"
#endif

namespace lorakit {
namespace napi {
namespace {

Device device_arg(const Napi::CallbackInfo& info, size_t i) {
  std::string d = get_string(info, i, "device");
  if (d == "cpu") return Device::CPU;
  if (d == "cuda") return Device::CUDA;
  throw_type("device: expected 'cpu' or 'cuda', got '" + d + "'");
}

#ifndef LORAKIT_WITH_CUDA
// Why this build has no CUDA backend: the build system's finding, or node-gyp (CPU only).
#if defined(LORAKIT_CUDA_REASON)
constexpr const char* kCudaReason = LORAKIT_CUDA_REASON;
#elif defined(LORAKIT_NODE_GYP)
constexpr const char* kCudaReason = "the addon was built with node-gyp, which builds the CPU backend only (cmake-js adds CUDA when nvcc and cuBLAS are found)";
#else
constexpr const char* kCudaReason = "the addon was built without the CUDA backend";
#endif
#endif

// gemmBlocks' wInPlace (f32 W read in place by the CPU GEMM) and wInPlaceTimed (decided per call shape).
void set_w_in_place(Napi::Object& o) {
  o.Set("wInPlace", gemm_w_in_place_enabled());
  o.Set("wInPlaceTimed", gemm_w_in_place_enabled() && kernel_table().w_in_place_timed);
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
  {
    const GemmBlocks& g = gemm_blocks();
    Napi::Object gb = Napi::Object::New(env);
    gb.Set("mc", static_cast<double>(g.mc));
    gb.Set("kc", static_cast<double>(g.kc));
    gb.Set("nc", static_cast<double>(g.nc));
    gb.Set("source", gemm_blocks_source());
    set_w_in_place(gb);
    o.Set("gemmBlocks", gb);
  }
  Napi::Array compiled = Napi::Array::New(env);
  Napi::Array usable = Napi::Array::New(env);
  for (Device d : {Device::CPU, Device::CUDA}) {
    const Backend* b = find_backend(d);
    if (!b) continue;
    compiled.Set(compiled.Length(), b->name);
    if (b->usable()) usable.Set(usable.Length(), b->name);  // cudaGetDeviceCount at run time
  }
#ifdef LORAKIT_WITH_CUDA
  if (cuda::device_count() > 0) {
    o.Set("cudaDevice", cuda::device_description());
    o.Set("cudaUnavailable", env.Null());
  } else {
    o.Set("cudaUnavailable", "the CUDA backend is compiled in, but no CUDA device is usable here (no NVIDIA GPU, or no driver)");
  }
#else
  o.Set("cudaUnavailable", kCudaReason);
#endif
  o.Set("compiled", compiled);
  o.Set("usable", usable);
  return o;
}

// scratchDtype(device, dtype): the dtype of the shrink output u = x·Aᵀ for x of that dtype.
Napi::Value ScratchDtype(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const Backend& b = backend_for(device_arg(info, 0));
    std::string name = get_string(info, 1, "dtype");
    DType dt;
    if (!dtype_from_name(name, &dt) || !dtype_is_float(dt)) throw_type("dtype: expected f32, f16 or bf16, got '" + name + "'");
    return Napi::String::New(info.Env(), dtype_name(b.scratch_dtype(dt)));
  });
}

// mixedDtypes(device): whether one call may mix float dtypes (else activations, weights and
// outputs share the weight's dtype).
Napi::Value MixedDtypes(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    return Napi::Boolean::New(info.Env(), backend_for(device_arg(info, 0)).mixed_dtypes);
  });
}

Napi::Value SetNumThreads(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    set_num_threads(static_cast<int>(to_size(get_number(info, 0, "n"), 0, 256, "n")));
    return Napi::Number::New(info.Env(), num_threads());
  });
}

// measurePeaks(bufferBytes): { fmaGflops, amxGflops, bf16DotGflops, copyGBs, readGBs, threads, caches, gemmBlocks }
Napi::Value MeasurePeaks(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    int64_t bytes = to_size(get_number(info, 0, "bufferBytes"), int64_t(1) << 20, int64_t(16) << 30, "bufferBytes");
    Peaks p = measure_peaks(bytes);
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("fmaGflops", p.fma_gflops);
    o.Set("amxGflops", p.amx_gflops);
    o.Set("bf16DotGflops", p.bf16_dot_gflops);
    o.Set("copyGBs", p.copy_gbs);
    o.Set("readGBs", p.read_gbs);
    o.Set("threads", p.threads);
    Napi::Object c = Napi::Object::New(info.Env());
    c.Set("l1dBytes", static_cast<double>(p.l1d_bytes));
    c.Set("l2Bytes", static_cast<double>(p.l2_bytes));
    c.Set("l3Bytes", static_cast<double>(p.l3_bytes));
    c.Set("source", p.cache_source);
    o.Set("caches", c);
    Napi::Object g = Napi::Object::New(info.Env());
    g.Set("mc", static_cast<double>(p.gemm_mc));
    g.Set("kc", static_cast<double>(p.gemm_kc));
    g.Set("nc", static_cast<double>(p.gemm_nc));
    g.Set("source", p.gemm_blocks_source);
    set_w_in_place(g);
    o.Set("gemmBlocks", g);
    return o;
  });
}

#ifdef LORAKIT_WITH_CUDA
// These calls run at once on the current stream. Every tensor counts as written for the
// cross-stream ordering: it may wait more than needed, never less.
const TensorRef& cuda_float(const Napi::Value& v, const std::string& name) {
  NativeTensor* t = get_tensor(v, name);
  require_float_on(t, Device::CUDA, name);
  cuda::order_use(t->ref().data, true);
  return t->ref();
}

Napi::Value Synchronize(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    cuda::synchronize();
    return info.Env().Undefined();
  });
}

// Stream ids are small integers: 0 is the default stream.
uint64_t stream_id(const Napi::CallbackInfo& info, size_t i) {
  return static_cast<uint64_t>(to_size(get_number(info, i, "stream"), 0, 0xffffffffll, "stream"));
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
  o.Set("deviceMallocs", static_cast<double>(cuda::device_mallocs()));
  return o;
}

Napi::Value KernelStats(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("sm90GemmUsable", cuda::device_count() > 0 && cuda::sm90_gemm_usable());
    o.Set("sm90GemmLaunches", static_cast<double>(cuda::sm90_gemm_launches()));
    const cuda::GraphStats g = cuda::graph_stats();
    o.Set("graphReplay", cuda::graph_replay());
    o.Set("graphCaptures", static_cast<double>(g.captures));
    o.Set("graphReplays", static_cast<double>(g.replays));
    o.Set("graphFallbacks", static_cast<double>(g.fallbacks));
    o.Set("graphs", static_cast<double>(g.graphs));
    o.Set("graphHeldBytes", static_cast<double>(g.held_bytes));
    return o;
  });
}

// setGraphReplay(on): graph capture and replay of repeated identical layer calls (graph_replay.h);
// off also destroys the cached graphs.
Napi::Value SetGraphReplay(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    cuda::set_graph_replay(get_bool(info, 0, "on"));
    return info.Env().Undefined();
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
#else
Napi::Value NotBuilt(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    backend_for(Device::CUDA);  // throws: not compiled in
    return info.Env().Undefined();
  });
}
#endif

}  // namespace

void RegisterBackends() {
  cpu::register_backend();
#ifdef LORAKIT_WITH_CUDA
  cuda::register_backend();
#endif
}

void InitDevice(Napi::Env env, Napi::Object exports) {
  exports.Set("backendInfo", Napi::Function::New<BackendInfo>(env, "backendInfo"));
  exports.Set("scratchDtype", Napi::Function::New<ScratchDtype>(env, "scratchDtype"));
  exports.Set("mixedDtypes", Napi::Function::New<MixedDtypes>(env, "mixedDtypes"));
  exports.Set("setNumThreads", Napi::Function::New<SetNumThreads>(env, "setNumThreads"));
  exports.Set("measurePeaks", Napi::Function::New<MeasurePeaks>(env, "measurePeaks"));
#ifdef LORAKIT_WITH_CUDA
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
  exports.Set("cudaSetGraphReplay", Napi::Function::New<SetGraphReplay>(env, "cudaSetGraphReplay"));
  cuda::set_graph_capture_gate([] { return async_calls_in_flight() == 0; });
#else
  for (const char* name : {"cudaSynchronize", "cudaStreamCreate", "cudaStreamRelease", "cudaStreamSynchronize", "cudaSetStream",
                           "cudaCurrentStream", "cudaTimerStart", "cudaTimerStop", "cudaMemoryStats", "cudaEmptyCache",
                           "cudaKernelStats", "cudaBaseGemm", "cudaSetGraphReplay"})
    exports.Set(name, Napi::Function::New<NotBuilt>(env, name));
#endif
}

}  // namespace napi
}  // namespace lorakit
