// A validated kernel invocation: the work to run plus the tensors it reads and writes. Bindings
// build one on the JS thread; it then runs at once (sync bindings) or on a libuv worker thread
// (async_binding.cc) while the tensors it uses are held busy.
#pragma once
#include <napi.h>
#include <functional>
#include <string>
#include <vector>
#include "args.h"
#include "tensor_binding.h"

namespace lorakit {
namespace napi {

struct KernelCall {
  struct Use {
    NativeTensor* tensor;
    std::string name;
    bool write;
    bool inplace_ok;  // a read that may be the same tensor as an output (in-place update)
  };
  std::vector<Use> uses;
  std::function<void()> run;                     // pure C++: no N-API calls (it may run off-thread)
  std::function<Napi::Value(Napi::Env)> result;  // builds the JS result on the JS thread; null: undefined
  uint64_t stream = 0;                           // cuda: the stream it runs on (the caller's current one)

  const TensorRef& read(NativeTensor* t, const std::string& name, bool inplace_ok = false) {
    uses.push_back({t, name, false, inplace_ok});
    return t->ref();
  }
  const TensorRef& write(NativeTensor* t, const std::string& name) {
    uses.push_back({t, name, true, false});
    return t->ref();
  }
  // StateError when async work holds a tensor in a conflicting way; RangeError when an output is
  // also passed as another operand (the kernels do not support aliasing).
  void check_access() const;
  // cuda: takes the calling thread's current stream and orders it after other streams' conflicting
  // use of the tensors (events). Called on the JS thread, in call order, before the work is queued.
  void order_streams();
  Napi::Value result_value(Napi::Env env) const { return result ? result(env) : env.Undefined(); }
};

#ifdef LORAKIT_WITH_CUDA
#define LK_IF_CUDA(...) __VA_ARGS__
#else
#define LK_IF_CUDA(...)
#endif

// The work of a call: the cpu or the cuda version of an op (wrap the cuda call in LK_IF_CUDA so a
// CPU-only build compiles; there a cuda call is refused here).
template <class Cpu, class Cuda>
std::function<void()> on_device(Device dev, Cpu cpu_fn, Cuda cuda_fn) {
  if (dev == Device::CPU) return cpu_fn;
#ifdef LORAKIT_WITH_CUDA
  return cuda_fn;
#else
  (void)cuda_fn;
  throw_type("device: 'cuda' is not available in this build");
#endif
}

// Each builder validates its JS arguments and returns the call without running it.
using KernelBuilder = KernelCall (*)(const Napi::CallbackInfo& info);
KernelCall BuildShrink(const Napi::CallbackInfo& info);
KernelCall BuildLinearForward(const Napi::CallbackInfo& info);
KernelCall BuildLoraForward(const Napi::CallbackInfo& info);
KernelCall BuildLinearBackward(const Napi::CallbackInfo& info);
KernelCall BuildMergeDelta(const Napi::CallbackInfo& info);
KernelCall BuildDropout(const Napi::CallbackInfo& info);
KernelCall BuildConvert(const Napi::CallbackInfo& info);
KernelCall BuildAllFinite(const Napi::CallbackInfo& info);

// The sync export of a builder: validate, run at once on the JS thread, return the result.
template <KernelBuilder build>
Napi::Value RunSync(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    KernelCall c = build(info);
    c.check_access();
    c.order_streams();
    c.run();
    return c.result_value(info.Env());
  });
}

}  // namespace napi
}  // namespace lorakit
