#pragma once
#include <napi.h>

namespace lorakit {
namespace napi {
// Registers the compiled-in backends (core/backend.h); call first at module load.
void RegisterBackends();
// Device and backend information, the cpu thread pool, the benchmark's measured peaks, and the
// CUDA extras (streams, timers, allocator and kernel statistics, the reference base GEMM). The
// CUDA extras are always exported; without the CUDA backend they throw a TypeError.
void InitDevice(Napi::Env env, Napi::Object exports);
}  // namespace napi
}  // namespace lorakit
