// A validated kernel invocation: the work to run plus the tensors it reads and writes. Builders
// (one per op of ops.h) make one on the JS thread; it then runs at once (RunSync) or on a libuv
// worker thread (RunAsync, async_worker.h) while the tensors it uses are held busy.
#pragma once
#include <napi.h>
#include <functional>
#include <string>
#include <vector>
#include "../core/backend.h"
#include "args.h"
#include "tensor.h"

namespace lorakit {
namespace napi {

struct KernelCall {
  KernelCall() { uses.reserve(8); }  // one allocation for a call's operands, not one per growth
  struct Use {
    NativeTensor* tensor;
    std::string name;
    bool write;
    bool inplace_ok;  // a read that may be the same tensor as an output (in-place update)
  };
  std::vector<Use> uses;
  std::function<void()> run;                     // pure C++: no N-API calls (it may run off-thread)
  std::function<Napi::Value(Napi::Env)> result;  // builds the JS result on the JS thread; null: undefined
  const Backend* stream_backend = nullptr;       // the backend whose stream the call runs on; null: none
  uint64_t stream = 0;                           // that stream (the caller's current one)

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
  // Bumps the version of every tensor written (after check_access, before the work is queued).
  void mark_writes() const;
  // Devices with streams: takes the calling thread's current stream and orders it after other
  // streams' conflicting use of the tensors (events). Called on the JS thread, in call order,
  // before the work is queued.
  void order_streams();
  Napi::Value result_value(Napi::Env env) const { return result ? result(env) : env.Undefined(); }
};

// Runs the work of a queued call on the stream it was queued on, restoring the thread's stream after.
class StreamScope {
 public:
  StreamScope(const Backend* b, uint64_t id);
  ~StreamScope();
  StreamScope(const StreamScope&) = delete;
  StreamScope& operator=(const StreamScope&) = delete;

 private:
  const Backend* b_;
  uint64_t prev_;
};

// Each builder validates its JS arguments and returns the call without running it.
using KernelBuilder = KernelCall (*)(const Napi::CallbackInfo& info);

// The sync export of a builder: validate, run at once on the JS thread, return the result.
template <KernelBuilder build>
Napi::Value RunSync(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    KernelCall c = build(info);
    c.check_access();
    c.mark_writes();
    c.order_streams();
    c.run();
    return c.result_value(info.Env());
  });
}

}  // namespace napi
}  // namespace lorakit
