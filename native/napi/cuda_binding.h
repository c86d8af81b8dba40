#pragma once
#include <napi.h>

namespace lorakit {
namespace napi {
// CUDA-only entry points (stream sync, timers, allocator stats, the reference base GEMM, fused
// optimizer steps). Always exported; without the CUDA backend they throw a TypeError.
void InitCuda(Napi::Env env, Napi::Object exports);
}  // namespace napi
}  // namespace lorakit
