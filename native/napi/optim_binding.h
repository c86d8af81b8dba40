#pragma once
#include <napi.h>

namespace lorakit {
namespace napi {
void InitOptim(Napi::Env env, Napi::Object exports);
}
}  // namespace lorakit
