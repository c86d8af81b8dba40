// NativeTensor: allocation, host reads and writes (through the device backend's copies), dispose.
#include "tensor.h"
#include <algorithm>
#include <cmath>
#include <cstring>
#include "../core/backend.h"
#include "addon_data.h"
#include "args.h"

namespace lorakit {
namespace napi {
namespace {
constexpr int64_t kDeviceReportBytes = int64_t(4) << 20;
}  // namespace

void NativeTensor::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = DefineClass(env, "NativeTensor",
                                    {InstanceMethod<&NativeTensor::Write>("write"),
                                     InstanceMethod<&NativeTensor::Read>("read"),
                                     InstanceMethod<&NativeTensor::Dispose>("dispose"),
                                     InstanceMethod<&NativeTensor::ByteLength>("byteLength"),
                                     InstanceMethod<&NativeTensor::Version>("version")});
  addon_data(env)->tensor_ctor = Napi::Persistent(ctor);
  exports.Set("NativeTensor", ctor);
}

NativeTensor* NativeTensor::Unwrap(const Napi::Value& v) {
  if (!v.IsObject()) return nullptr;
  Napi::Object o = v.As<Napi::Object>();
  if (!o.CheckTypeTag(&addon_data(v.Env())->tensor_tag)) return nullptr;
  return Napi::ObjectWrap<NativeTensor>::Unwrap(o);
}

namespace {

// dtype name and shape array at info[i], info[i + 1].
void dtype_and_shape(const Napi::CallbackInfo& info, size_t i, TensorRef* ref) {
  std::string dt = get_string(info, i, "dtype");
  if (!dtype_from_name(dt, &ref->dtype)) throw_type("dtype: expected one of f32, f16, bf16, i32, i64, got '" + dt + "'");
  if (info.Length() < i + 2 || !info[i + 1].IsArray()) throw_type("shape: expected an array of non-negative integers");
  Napi::Array shape = info[i + 1].As<Napi::Array>();
  if (shape.Length() > 16) throw_range("shape: at most 16 dimensions are supported");
  for (uint32_t k = 0; k < shape.Length(); k++) {
    Napi::Value d = shape.Get(k);
    double v = d.IsNumber() ? d.As<Napi::Number>().DoubleValue() : -1;
    ref->shape.push_back(to_size(v, 0, (int64_t(1) << 53) - 1, "shape[" + std::to_string(k) + "]"));
  }
}

struct TypedArrayInfo {
  napi_typedarray_type type;
  size_t length = 0;
  void* data = nullptr;
  napi_value buffer = nullptr;
};

bool typed_array_info(napi_env env, napi_value v, TypedArrayInfo* t) {
  size_t offset = 0;  // data already includes it
  return napi_get_typedarray_info(env, v, &t->type, &t->length, &t->data, &t->buffer, &offset) == napi_ok;
}

}  // namespace

// new NativeTensor(dtype, shape, device = 'cpu', zero = true): owned memory.
// new NativeTensor(typedArray, dtype, shape): the array's own memory (cpu), no copy.
NativeTensor::NativeTensor(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeTensor>(info) {
  Napi::Env env = info.Env();
  try {
    if (info.Length() > 0 && info[0].IsTypedArray()) init_wrapped(info);
    else init_owned(info);
    info.This().As<Napi::Object>().TypeTag(&addon_data(env)->tensor_tag);
  } catch (const Error& e) {
    throw_js(env, e);
  }
}

void NativeTensor::init_wrapped(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  dtype_and_shape(info, 1, &ref_);
  TypedArrayInfo t;
  if (!typed_array_info(env, info[0], &t)) throw_type("data: could not read the typed array");
  const DType dt = ref_.dtype;
  const bool kind_ok = (dt == DType::F32 && t.type == napi_float32_array) ||
                       ((dt == DType::F16 || dt == DType::BF16) && t.type == napi_uint16_array) ||
                       (dt == DType::I32 && t.type == napi_int32_array) || (dt == DType::I64 && t.type == napi_bigint64_array);
  if (!kind_ok)
    throw_type(std::string("data: a ") + dtype_name(dt) + " tensor wraps a " +
               (dt == DType::F32 ? "Float32Array" : dt == DType::I32 ? "Int32Array" : dt == DType::I64 ? "BigInt64Array" : "Uint16Array") +
               " (wrapping never converts)");
  int64_t n = checked_numel(ref_.shape, "shape");
  if (static_cast<int64_t>(t.length) != n)
    throw_range("data: has " + std::to_string(t.length) + " elements but shape " + shape_str(ref_.shape) + " needs " + std::to_string(n));
  bool is_array_buffer = false;
  if (napi_is_arraybuffer(env, t.buffer, &is_array_buffer) != napi_ok) throw_type("data: could not read the typed array's buffer");
  bool detached = false;
  if (is_array_buffer && napi_is_detached_arraybuffer(env, t.buffer, &detached) != napi_ok) detached = false;
  if (detached || (t.data == nullptr && n > 0)) throw_type("data: the ArrayBuffer is detached (transferred or released)");
  storage_ = Storage::external_cpu(t.data, static_cast<size_t>(n) * dtype_size(dt));
  ref_.data = t.data;
  wrapped_ = Napi::Persistent(info[0].As<Napi::Object>());
  wrap_detachable_ = is_array_buffer;  // false: a SharedArrayBuffer
  reported_ = 0;                       // V8 already counts the array's memory
}

void NativeTensor::check_wrapped(Napi::Env env, const std::string& name) const {
  if (wrapped_.IsEmpty() || !storage_) return;
  TypedArrayInfo t;
  if (!typed_array_info(env, wrapped_.Value(), &t)) throw_state(name + ": the typed array this tensor wraps cannot be read");
  bool detached = false;
  if (wrap_detachable_ && napi_is_detached_arraybuffer(env, t.buffer, &detached) != napi_ok) detached = true;
  const int64_t n = ref_.numel();
  if (detached && n > 0)
    throw_state(name + ": the typed array this tensor wraps was detached (transferred or released), so the tensor " +
                shape_str(ref_.shape) + " has no memory left; wrap the array that now holds the data");
  // A resizable buffer that shrank: a length-tracking view gets shorter, a fixed one reads as empty.
  if (n > 0 && (t.data != ref_.data || static_cast<int64_t>(t.length) < n))
    throw_state(name + ": the typed array this tensor wraps was resized: it now has " + std::to_string(t.length) +
                " elements, the tensor " + shape_str(ref_.shape) + " needs " + std::to_string(n));
}

void NativeTensor::init_owned(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  dtype_and_shape(info, 0, &ref_);
  std::string dev = info.Length() > 2 && info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : "cpu";
  Device device = Device::CPU;
  if (dev == "cuda") {
    device = Device::CUDA;
    if (!backend_for(device).usable()) throw_state("device: 'cuda' is compiled in but no CUDA device is usable here");
  } else if (dev != "cpu") {
    throw_type("device: expected 'cpu' or 'cuda', got '" + dev + "'");
  }
  // A 4th argument `false` skips zero-filling (for outputs a kernel overwrites entirely).
  bool zero = !(info.Length() > 3 && info[3].IsBoolean() && !info[3].As<Napi::Boolean>().Value());
  int64_t n = checked_numel(ref_.shape, "shape");
  size_t bytes = static_cast<size_t>(n) * dtype_size(ref_.dtype);
  if (n > (int64_t(1) << 40)) throw_range("shape: " + shape_str(ref_.shape) + " is too large to allocate");
  storage_ = Storage::allocate(bytes, device, zero || device == Device::CPU);
  ref_.data = storage_->data;
  // V8 counts external memory toward its GC heuristics. A cuda tensor holds little host memory,
  // so it counts at most kDeviceReportBytes: with its full size, each allocation past V8's 64 MB
  // soft limit cost GC work on the host (Tensor.empty of 128 MiB on the H200: 198 µs, against
  // 6 µs for 32 MiB), enough to starve the GPU. Leaked device tensors still add up to pressure.
  reported_ = device == Device::CPU ? static_cast<int64_t>(bytes) : std::min<int64_t>(static_cast<int64_t>(bytes), kDeviceReportBytes);
  Napi::MemoryManagement::AdjustExternalMemory(env, reported_);
}

Napi::Object NativeTensor::Adopt(Napi::Env env, std::shared_ptr<Storage> storage, DType dtype, std::vector<int64_t> shape) {
  // An empty host tensor first (the constructor's checks and type tag), then the storage swapped in.
  Napi::Object o = addon_data(env)->tensor_ctor.New({Napi::String::New(env, dtype_name(dtype)), Napi::Array::New(env, 0)});
  NativeTensor* t = Unwrap(o);
  const int64_t bytes = static_cast<int64_t>(storage->nbytes);
  const Device device = storage->device;
  t->release(env);
  t->storage_ = std::move(storage);
  t->ref_.dtype = dtype;
  t->ref_.shape = std::move(shape);
  t->ref_.data = t->storage_->data;
  t->reported_ = device == Device::CPU ? bytes : std::min<int64_t>(bytes, kDeviceReportBytes);
  Napi::MemoryManagement::AdjustExternalMemory(env, t->reported_);
  return o;
}

NativeTensor::~NativeTensor() {
  // The env may be gone at teardown; only the memory is released here.
  storage_.reset();
}

void NativeTensor::release(Napi::Env env) {
  if (!storage_) return;
  if (storage_->busy.load() > 0) throw_state("dispose: the tensor is in use by async work");
  storage_.reset();
  ref_.data = nullptr;
  wrapped_.Reset();
  if (reported_) Napi::MemoryManagement::AdjustExternalMemory(env, -reported_);
  reported_ = 0;
}

Napi::Value NativeTensor::Dispose(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    release(info.Env());
    return info.Env().Undefined();
  });
}

Napi::Value NativeTensor::ByteLength(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), storage_ ? static_cast<double>(storage_->nbytes) : 0);
}

// version(): how many writes the storage has seen; -1 for a wrapped array's memory, which JS may
// change without a call, so nothing may be cached from it.
Napi::Value NativeTensor::Version(const Napi::CallbackInfo& info) {
  if (!storage_ || storage_->external) return Napi::Number::New(info.Env(), -1);
  return Napi::Number::New(info.Env(), static_cast<double>(storage_->version.load()));
}

// write(typedArray): fills the whole tensor, converting to its dtype.
Napi::Value NativeTensor::Write(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    if (!storage_) throw_state("data: the tensor was disposed");
    check_wrapped(info.Env(), "tensor");
    if (storage_->busy.load() > 0) throw_state("data: the tensor is in use by async work");
    if (info.Length() < 1 || !info[0].IsTypedArray()) throw_type("data: expected a typed array");
    // Raw info rather than ta.ArrayBuffer(): that fails on SharedArrayBuffer-backed arrays, and
    // the data pointer here already includes the byte offset.
    napi_typedarray_type tt;
    size_t len = 0, byte_offset = 0;
    void* raw = nullptr;
    napi_value ab;
    if (napi_get_typedarray_info(info.Env(), info[0], &tt, &len, &raw, &ab, &byte_offset) != napi_ok)
      throw_type("data: could not read the typed array");
    int64_t n = ref_.numel();
    if (static_cast<int64_t>(len) != n)
      throw_range("data: has " + std::to_string(len) + " elements but shape " + shape_str(ref_.shape) +
                  " needs " + std::to_string(n));
    if (raw == nullptr && n > 0) throw_type("data: the ArrayBuffer is detached");
    if (n == 0) return info.Env().Undefined();
    storage_->version.fetch_add(1);
    const uint8_t* src = static_cast<const uint8_t*>(raw);
    DType dt = ref_.dtype;
    // A cuda tensor is filled through a host staging copy in its own dtype.
    std::vector<uint8_t> staging;
    void* const dst = storage_->device == Device::CPU ? ref_.data
                                                       : (staging.resize(storage_->nbytes), static_cast<void*>(staging.data()));
    if (dtype_is_float(dt)) {
      if (tt == napi_float32_array) {
        std::vector<float> tmp(n);  // copy first: the source may be unaligned
        std::memcpy(tmp.data(), src, n * 4);
        backend_for(Device::CPU).convert(tmp.data(), DType::F32, dst, dt, n);
      } else if (tt == napi_float64_array) {
        for (int64_t i = 0; i < n; i++) {
          double v;
          std::memcpy(&v, src + i * 8, 8);
          store_f32(dst, dt, i, static_cast<float>(v));
        }
      } else if (tt == napi_uint16_array && dt != DType::F32) {
        std::memcpy(dst, src, n * 2);
      } else {
        throw_type(std::string("data: a ") + dtype_name(dt) +
                   " tensor takes Float32Array or Float64Array" + (dt != DType::F32 ? " (or Uint16Array bit patterns)" : ""));
      }
    } else if (dt == DType::I32 && tt == napi_int32_array) {
      std::memcpy(dst, src, n * 4);
    } else if (dt == DType::I64 && tt == napi_bigint64_array) {
      std::memcpy(dst, src, n * 8);
    } else if (dt == DType::I64 && tt == napi_int32_array) {
      for (int64_t i = 0; i < n; i++) {
        int32_t v;
        std::memcpy(&v, src + i * 4, 4);
        static_cast<int64_t*>(dst)[i] = v;
      }
    } else {
      throw_type(std::string("data: a ") + dtype_name(dt) + " tensor takes " +
                 (dt == DType::I32 ? "Int32Array" : "BigInt64Array or Int32Array"));
    }
    if (storage_->device != Device::CPU) backend_for(storage_->device).copy_from_host(ref_.data, staging.data(), storage_->nbytes);
    return info.Env().Undefined();
  });
}

// read(kind): a copy as 'f32' (Float32Array), 'bits' (Uint16Array), 'i32' or 'i64'.
Napi::Value NativeTensor::Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (!storage_) throw_state("tensor: the tensor was disposed");
    check_wrapped(env, "tensor");
    if (storage_->writers.load() > 0) throw_state("tensor: the tensor is being written by async work");
    std::string kind = get_string(info, 0, "kind");
    int64_t n = ref_.numel();
    DType dt = ref_.dtype;
    // A cuda tensor is read through a host copy (which also waits for pending kernels).
    std::vector<uint8_t> staging;
    const void* data = ref_.data;
    if (storage_->device != Device::CPU) {
      staging.resize(storage_->nbytes);
      backend_for(storage_->device).copy_to_host(staging.data(), ref_.data, storage_->nbytes);
      data = staging.data();
    }
    if (kind == "f32" && dtype_is_float(dt)) {
      Napi::Float32Array out = Napi::Float32Array::New(env, n);
      backend_for(Device::CPU).convert(data, dt, out.Data(), DType::F32, n);
      return out;
    }
    if (kind == "bits" && (dt == DType::F16 || dt == DType::BF16)) {
      Napi::Uint16Array out = Napi::Uint16Array::New(env, n);
      std::memcpy(out.Data(), data, n * 2);
      return out;
    }
    if (kind == "i32" && dt == DType::I32) {
      Napi::Int32Array out = Napi::Int32Array::New(env, n);
      std::memcpy(out.Data(), data, n * 4);
      return out;
    }
    if (kind == "i64" && dt == DType::I64) {
      Napi::BigInt64Array out = Napi::BigInt64Array::New(env, n);
      std::memcpy(out.Data(), data, n * 8);
      return out;
    }
    throw_type("kind: cannot read a " + std::string(dtype_name(dt)) + " tensor as '" + kind + "'");
  });
}

}  // namespace napi
}  // namespace lorakit
