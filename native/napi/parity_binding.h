#pragma once
#include <napi.h>

namespace lorakit {
namespace napi {
// Bindings for the peft-parity ops (native/cpu/parity_ops.h).
void InitParity(Napi::Env env, Napi::Object exports);
}
}  // namespace lorakit
