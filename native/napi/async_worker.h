// Promise-returning forms of the kernel ops: the call is validated on the JS thread exactly as the
// sync form does, then runs on a libuv worker thread (Napi::AsyncWorker). While it runs, the JS
// arguments stay referenced, the storages are co-owned (a collected handle cannot free them), and
// each storage is marked busy: dispose, write and conflicting kernel calls throw StateError.
#pragma once
#include <napi.h>
#include "kernel_call.h"

namespace lorakit {
namespace napi {

// Queues a checked and stream-ordered call; returns its Promise.
Napi::Value queue_async(const Napi::CallbackInfo& info, KernelCall call);

// Async calls queued and not yet settled (their work may be running on a worker thread).
int async_calls_in_flight();

template <KernelBuilder build>
Napi::Value RunAsync(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    KernelCall c = build(info);
    c.check_access();
    c.mark_writes();
    c.order_streams();
    return queue_async(info, std::move(c));
  });
}

}  // namespace napi
}  // namespace lorakit
