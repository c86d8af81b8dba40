// Module entry: registers the backends, creates the per-environment state and exports the
// tensor class, the kernel ops (ops.h) and the device-level bindings.
#include <napi.h>
#include <atomic>
#include <chrono>
#include <cstdint>
#include "addon_data.h"
#include "device.h"
#include "ops.h"
#include "tensor.h"

namespace lorakit {
namespace napi {

AddonData* addon_data(Napi::Env env) { return env.GetInstanceData<AddonData>(); }

// A fresh tag word per load: splitmix64 of this copy's address, the time and a counter (distinct per
// copy and per environment). Not std::random_device: with the prebuilt binaries' static libstdc++ it
// needs glibc 2.36 (arc4random), and the tag only has to differ, not be secret.
namespace {
uint64_t fresh_tag_word() {
  static std::atomic<uint64_t> counter{0};
  uint64_t x = reinterpret_cast<uintptr_t>(&counter) ^
               static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
               (counter.fetch_add(1) * 0x9e3779b97f4a7c15ull);
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  RegisterBackends();
  auto* data = new AddonData();
  data->tensor_tag.lower = fresh_tag_word();  // objects from another copy of the addon are rejected
  data->tensor_tag.upper = fresh_tag_word();
  env.SetInstanceData<AddonData>(data);
  NativeTensor::Init(env, exports);
  InitKernelOps(env, exports);
  InitQuantFunctions(env, exports);
  InitDevice(env, exports);
  return exports;
}

NODE_API_MODULE(lorakit, Init)

}  // namespace napi
}  // namespace lorakit
