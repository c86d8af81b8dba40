// Module entry: registers the backends, creates the per-environment state and exports the
// tensor class, the kernel ops (ops.h) and the device-level bindings.
#include <napi.h>
#include <random>
#include "addon_data.h"
#include "device.h"
#include "ops.h"
#include "tensor.h"

namespace lorakit {
namespace napi {

AddonData* addon_data(Napi::Env env) { return env.GetInstanceData<AddonData>(); }

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  RegisterBackends();
  auto* data = new AddonData();
  std::random_device rd;  // a fresh tag per load: objects from another copy of the addon are rejected
  data->tensor_tag.lower = (uint64_t(rd()) << 32) | rd();
  data->tensor_tag.upper = (uint64_t(rd()) << 32) | rd();
  env.SetInstanceData<AddonData>(data);
  NativeTensor::Init(env, exports);
  InitKernelOps(env, exports);
  InitDevice(env, exports);
  return exports;
}

NODE_API_MODULE(lorakit, Init)

}  // namespace napi
}  // namespace lorakit
