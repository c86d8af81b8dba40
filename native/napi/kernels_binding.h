#pragma once
#include <napi.h>

namespace lorakit {
namespace napi {
void InitKernels(Napi::Env env, Napi::Object exports);
}
}  // namespace lorakit
