#include "backend.h"
#include <atomic>

namespace lorakit {
namespace {
// Indexed by Device; written at module load (once per addon instance, the same pointers each time).
std::atomic<const Backend*> g_backends[2];
}  // namespace

void register_backend(Device device, const Backend* backend) {
  g_backends[static_cast<int>(device)].store(backend, std::memory_order_release);
}

const Backend* find_backend(Device device) {
  int i = static_cast<int>(device);
  if (i < 0 || i > 1) return nullptr;
  return g_backends[i].load(std::memory_order_acquire);
}

const Backend& backend_for(Device device) {
  const Backend* b = find_backend(device);
  if (!b)
    throw_type(std::string("device: '") + device_name(device) + "' is not available in this build" +
               (device == Device::CUDA ? " (built without the CUDA toolkit and cuBLAS)" : ""));
  return *b;
}

}  // namespace lorakit
