#include "ops.h"
#include "async_worker.h"

namespace lorakit {
namespace napi {
namespace {

struct OpExport {
  const char* name;
  const char* async_name;
  Napi::Value (*sync)(const Napi::CallbackInfo&);
  Napi::Value (*async)(const Napi::CallbackInfo&);
};

#define LORAKIT_OP_EXPORT(name, build) {#name, #name "Async", RunSync<build>, RunAsync<build>},
const OpExport kOps[] = {LORAKIT_KERNEL_OPS(LORAKIT_OP_EXPORT)};
#undef LORAKIT_OP_EXPORT

}  // namespace

void InitKernelOps(Napi::Env env, Napi::Object exports) {
  for (const OpExport& op : kOps) {
    exports.Set(op.name, Napi::Function::New(env, op.sync, op.name));
    exports.Set(op.async_name, Napi::Function::New(env, op.async, op.async_name));
  }
}

}  // namespace napi
}  // namespace lorakit
