// The CPU backend's registration (its op table is in backend.cc).
#pragma once

namespace lorakit {
namespace cpu {
// Registers the cpu op table with core/backend.h (called at module load).
void register_backend();
}  // namespace cpu
}  // namespace lorakit
