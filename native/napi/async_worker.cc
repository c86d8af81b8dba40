// The libuv worker behind RunAsync (async_worker.h).
#include "async_worker.h"
#include <atomic>
#include <memory>
#include <new>
#include <vector>
#include "args.h"

namespace lorakit {
namespace napi {
namespace {

std::atomic<int> g_in_flight{0};

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
    g_in_flight++;
  }

  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      StreamScope on_stream(call_.stream_backend, call_.stream);
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
    if (!args_.IsEmpty()) g_in_flight--;
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

}  // namespace

int async_calls_in_flight() { return g_in_flight.load(); }

Napi::Value queue_async(const Napi::CallbackInfo& info, KernelCall call) {
  // JS runs while the work does: an ArrayBuffer a tensor wraps could be detached or shrunk under it.
  for (const auto& u : call.uses)
    if (u.tensor->wraps_detachable())
      throw_state(u.name + ": the tensor wraps a typed array on an ArrayBuffer, which could be detached or resized " +
                  "while async work runs; use the sync form, or wrap an array on a SharedArrayBuffer");
  auto* w = new KernelWorker(info, std::move(call));  // deletes itself after OnOK/OnError
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

}  // namespace napi
}  // namespace lorakit
