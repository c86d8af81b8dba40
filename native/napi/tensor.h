// NativeTensor: the JS-visible handle that owns a tensor's native memory. Memory is reported to V8
// and freed on dispose() or when the handle is garbage collected.
#pragma once
#include <napi.h>
#include <memory>
#include <vector>
#include "../core/tensor.h"

namespace lorakit {
namespace napi {

class NativeTensor : public Napi::ObjectWrap<NativeTensor> {
 public:
  static void Init(Napi::Env env, Napi::Object exports);
  // Returns nullptr when v is not a NativeTensor of this addon instance.
  static NativeTensor* Unwrap(const Napi::Value& v);
  explicit NativeTensor(const Napi::CallbackInfo& info);
  // A new JS handle owning storage a kernel allocated (e.g. an exact merge's record), viewed as
  // dtype and shape (which must cover at most its bytes).
  static Napi::Object Adopt(Napi::Env env, std::shared_ptr<Storage> storage, DType dtype, std::vector<int64_t> shape);
  ~NativeTensor() override;

  bool disposed() const { return !storage_; }
  Device device() const { return storage_ ? storage_->device : Device::CPU; }
  const TensorRef& ref() const { return ref_; }
  Storage* storage() const { return storage_.get(); }
  // Async work holds this so the memory outlives a garbage-collected handle.
  std::shared_ptr<Storage> shared_storage() const { return storage_; }

 private:
  Napi::Value Write(const Napi::CallbackInfo& info);
  Napi::Value Read(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value ByteLength(const Napi::CallbackInfo& info);
  void release(Napi::Env env);

  std::shared_ptr<Storage> storage_;
  TensorRef ref_;
  int64_t reported_ = 0;
};

}  // namespace napi
}  // namespace lorakit
