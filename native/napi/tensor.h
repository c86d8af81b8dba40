// NativeTensor: the JS-visible handle that owns a tensor's native memory. Memory is reported to V8
// and freed on dispose() or when the handle is garbage collected. A wrapped tensor (Tensor.wrap)
// uses a JS typed array's memory instead, holding a reference to the array so it stays alive.
#pragma once
#include <napi.h>
#include <memory>
#include <string>
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
  // A wrapped tensor: StateError naming `name` when its array was detached or shrunk (its memory
  // may be gone); nothing for owned memory. Checked before every use.
  void check_wrapped(Napi::Env env, const std::string& name) const;
  // Wrapped over a (detachable, resizable) ArrayBuffer: async work must not use it, since the
  // array could change while the work runs. A SharedArrayBuffer can neither be detached nor shrunk.
  bool wraps_detachable() const { return wrap_detachable_; }

 private:
  Napi::Value Write(const Napi::CallbackInfo& info);
  Napi::Value Read(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value ByteLength(const Napi::CallbackInfo& info);
  Napi::Value Version(const Napi::CallbackInfo& info);
  void release(Napi::Env env);
  void init_owned(const Napi::CallbackInfo& info);
  void init_wrapped(const Napi::CallbackInfo& info);

  std::shared_ptr<Storage> storage_;
  TensorRef ref_;
  int64_t reported_ = 0;
  Napi::ObjectReference wrapped_;  // the typed array of a wrapped tensor (keeps its buffer alive)
  bool wrap_detachable_ = false;
};

}  // namespace napi
}  // namespace lorakit
