// The CUDA backend's registration (its op table is in backend.cu). Plain C++.
#pragma once

namespace lorakit {
namespace cuda {
// Registers the cuda op table with core/backend.h and the caching allocator with core's Storage
// (called at module load in builds with the CUDA backend; no CUDA call is made here).
void register_backend();
}  // namespace cuda
}  // namespace lorakit
