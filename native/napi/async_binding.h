#pragma once
#include <napi.h>

namespace lorakit {
namespace napi {
void InitAsync(Napi::Env env, Napi::Object exports);
}
}  // namespace lorakit
