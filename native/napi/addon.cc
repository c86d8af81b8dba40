// Module entry: creates the per-environment state and registers each binding family.
#include <napi.h>
#include <random>
#include "addon_data.h"
#include "async_binding.h"
#include "bench_binding.h"
#include "kernels_binding.h"
#include "optim_binding.h"
#include "parity_binding.h"
#include "tensor_binding.h"

namespace lorakit {
namespace napi {

AddonData* addon_data(Napi::Env env) { return env.GetInstanceData<AddonData>(); }

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  std::random_device rd;  // a fresh tag per load: objects from another copy of the addon are rejected
  data->tensor_tag.lower = (uint64_t(rd()) << 32) | rd();
  data->tensor_tag.upper = (uint64_t(rd()) << 32) | rd();
  env.SetInstanceData<AddonData>(data);
  NativeTensor::Init(env, exports);
  InitKernels(env, exports);
  InitAsync(env, exports);
  InitOptim(env, exports);
  InitParity(env, exports);
  InitBench(env, exports);
  return exports;
}

NODE_API_MODULE(lorakit, Init)

}  // namespace napi
}  // namespace lorakit
