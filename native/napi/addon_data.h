// Per-environment state (one per main thread or worker): nothing here is shared between
// instances, which keeps the addon safe to load in worker_threads.
#pragma once
#include <napi.h>

namespace lorakit {
namespace napi {

struct AddonData {
  Napi::FunctionReference tensor_ctor;
  napi_type_tag tensor_tag;
};

AddonData* addon_data(Napi::Env env);

}  // namespace napi
}  // namespace lorakit
