#pragma once
#include <napi.h>
namespace lorakit {
namespace napi {
void InitBench(Napi::Env env, Napi::Object exports);
}  // namespace napi
}  // namespace lorakit
