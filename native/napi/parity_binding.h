#pragma once
#include <napi.h>
#include "kernel_call.h"

namespace lorakit {
namespace napi {
// Bindings for the peft-parity ops (native/cpu/parity_ops.h); async forms in async_binding.cc.
void InitParity(Napi::Env env, Napi::Object exports);

KernelCall BuildMixedLinearForward(const Napi::CallbackInfo& info);
KernelCall BuildDoraWeightNorm(const Napi::CallbackInfo& info);
KernelCall BuildDoraLinearForward(const Napi::CallbackInfo& info);
KernelCall BuildDoraLinearBackward(const Napi::CallbackInfo& info);
KernelCall BuildDoraMerge(const Napi::CallbackInfo& info);
KernelCall BuildEmbeddingForward(const Napi::CallbackInfo& info);
KernelCall BuildEmbeddingBackward(const Napi::CallbackInfo& info);
KernelCall BuildConv2dForward(const Napi::CallbackInfo& info);
KernelCall BuildConv2dBackward(const Napi::CallbackInfo& info);
KernelCall BuildConv2dMergeDelta(const Napi::CallbackInfo& info);
}  // namespace napi
}  // namespace lorakit
