// Promise-returning forms of the kernels: the call is validated on the JS thread exactly as the
// sync binding does, then runs on a libuv worker thread (Napi::AsyncWorker). While it runs, the
// JS arguments stay referenced, the storages are co-owned (a collected handle cannot free them),
// and each storage is marked busy: dispose, write and conflicting kernel calls throw StateError.
#include <napi.h>
#include <memory>
#include <new>
#include <vector>
#include "args.h"
#include "async_binding.h"
#include "kernel_call.h"
#include "parity_binding.h"
#ifdef LORAKIT_WITH_CUDA
#include "../cuda/runtime.h"
#endif

namespace lorakit {
namespace napi {
namespace {

class KernelWorker : public Napi::AsyncWorker {
 public:
  KernelWorker(const Napi::CallbackInfo& info, KernelCall call)
      : Napi::AsyncWorker(info.Env(), "lorakit:kernel"),
        deferred_(Napi::Promise::Deferred::New(info.Env())),
        call_(std::move(call)) {
    Napi::Array args = Napi::Array::New(info.Env(), info.Length());
    for (size_t i = 0; i < info.Length(); i++) args.Set(static_cast<uint32_t>(i), info[i]);
    args_ = Napi::Persistent(args);  // keeps every argument (and the handles inside arrays) alive
    for (const auto& u : call_.uses) {
      std::shared_ptr<Storage> s = u.tensor->shared_storage();
      Held* h = nullptr;
      for (auto& e : held_)
        if (e.storage == s) h = &e;
      if (!h) {
        held_.push_back({s, false});
        h = &held_.back();
      }
      h->write = h->write || u.write;
    }
    for (auto& h : held_) {
      h.storage->busy++;
      if (h.write) h.storage->writers++;
    }
    call_.uses.clear();  // raw handle pointers are not used past this point
  }

  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      LK_IF_CUDA(cuda::StreamScope on_stream(call_.stream);)
      call_.run();
    } catch (const Error& e) {
      kind_ = e.kind;
      SetError(e.what());
    } catch (const std::bad_alloc&) {
      kind_ = ErrorKind::Range;
      SetError("out of memory");
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }

  void OnOK() override {
    Napi::HandleScope scope(Env());
    release();
    deferred_.Resolve(call_.result_value(Env()));
  }

  void OnError(const Napi::Error& e) override {
    Napi::HandleScope scope(Env());
    release();
    Napi::Error err = e;
    try {
      throw_js(Env(), Error(kind_, e.Message()));
    } catch (const Napi::Error& mapped) {
      err = mapped;
    }
    deferred_.Reject(err.Value());
  }

 private:
  struct Held {
    std::shared_ptr<Storage> storage;
    bool write;
  };
  void release() {
    args_.Reset();
    for (auto& h : held_) {
      h.storage->busy--;
      if (h.write) h.storage->writers--;
    }
    held_.clear();
  }

  Napi::Promise::Deferred deferred_;
  Napi::Reference<Napi::Array> args_;
  KernelCall call_;
  std::vector<Held> held_;
  ErrorKind kind_ = ErrorKind::Generic;
};

template <KernelBuilder build>
Napi::Value RunAsync(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    KernelCall c = build(info);
    c.check_access();
    c.order_streams();
    auto* w = new KernelWorker(info, std::move(c));  // deletes itself after OnOK/OnError
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  });
}

}  // namespace

void InitAsync(Napi::Env env, Napi::Object exports) {
  exports.Set("shrinkAsync", Napi::Function::New<RunAsync<BuildShrink>>(env, "shrinkAsync"));
  exports.Set("linearForwardAsync", Napi::Function::New<RunAsync<BuildLinearForward>>(env, "linearForwardAsync"));
  exports.Set("loraForwardAsync", Napi::Function::New<RunAsync<BuildLoraForward>>(env, "loraForwardAsync"));
  exports.Set("linearBackwardAsync", Napi::Function::New<RunAsync<BuildLinearBackward>>(env, "linearBackwardAsync"));
  exports.Set("mergeDeltaAsync", Napi::Function::New<RunAsync<BuildMergeDelta>>(env, "mergeDeltaAsync"));
  exports.Set("dropoutAsync", Napi::Function::New<RunAsync<BuildDropout>>(env, "dropoutAsync"));
  exports.Set("convertAsync", Napi::Function::New<RunAsync<BuildConvert>>(env, "convertAsync"));
  exports.Set("allFiniteAsync", Napi::Function::New<RunAsync<BuildAllFinite>>(env, "allFiniteAsync"));
  // peft-parity ops (parity_binding.cc)
  exports.Set("mixedLinearForwardAsync", Napi::Function::New<RunAsync<BuildMixedLinearForward>>(env, "mixedLinearForwardAsync"));
  exports.Set("doraWeightNormAsync", Napi::Function::New<RunAsync<BuildDoraWeightNorm>>(env, "doraWeightNormAsync"));
  exports.Set("doraLinearForwardAsync", Napi::Function::New<RunAsync<BuildDoraLinearForward>>(env, "doraLinearForwardAsync"));
  exports.Set("doraLinearBackwardAsync", Napi::Function::New<RunAsync<BuildDoraLinearBackward>>(env, "doraLinearBackwardAsync"));
  exports.Set("doraMergeAsync", Napi::Function::New<RunAsync<BuildDoraMerge>>(env, "doraMergeAsync"));
  exports.Set("embeddingForwardAsync", Napi::Function::New<RunAsync<BuildEmbeddingForward>>(env, "embeddingForwardAsync"));
  exports.Set("embeddingBackwardAsync", Napi::Function::New<RunAsync<BuildEmbeddingBackward>>(env, "embeddingBackwardAsync"));
  exports.Set("conv2dForwardAsync", Napi::Function::New<RunAsync<BuildConv2dForward>>(env, "conv2dForwardAsync"));
  exports.Set("conv2dBackwardAsync", Napi::Function::New<RunAsync<BuildConv2dBackward>>(env, "conv2dBackwardAsync"));
  exports.Set("conv2dMergeDeltaAsync", Napi::Function::New<RunAsync<BuildConv2dMergeDelta>>(env, "conv2dMergeDeltaAsync"));
}

}  // namespace napi
}  // namespace lorakit
