#include "args.h"
#include <cmath>

namespace lorakit {
namespace napi {

void throw_js(Napi::Env env, const Error& e) {
  Napi::Error err;
  const char* code = "LORAKIT_ERROR";
  switch (e.kind) {
    case ErrorKind::Type: err = Napi::TypeError::New(env, e.what()); code = "LORAKIT_TYPE"; break;
    case ErrorKind::Range: err = Napi::RangeError::New(env, e.what()); code = "LORAKIT_RANGE"; break;
    case ErrorKind::State: err = Napi::Error::New(env, e.what()); code = "LORAKIT_STATE"; break;
    default: err = Napi::Error::New(env, e.what()); break;
  }
  err.Set("code", Napi::String::New(env, code));
  throw err;
}

double get_number(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsNumber()) throw_type(std::string(name) + ": expected a number");
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!std::isfinite(v)) throw_range(std::string(name) + ": expected a finite number, got " + std::to_string(v));
  return v;
}

bool get_bool(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsBoolean()) throw_type(std::string(name) + ": expected a boolean");
  return info[i].As<Napi::Boolean>().Value();
}

std::string get_string(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsString()) throw_type(std::string(name) + ": expected a string");
  return info[i].As<Napi::String>().Utf8Value();
}

double number_prop(const Napi::Object& o, const char* key, const std::string& where) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) throw_type(where + "." + key + ": expected a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) throw_range(where + "." + key + ": expected a finite number");
  return d;
}

NativeTensor* get_tensor(const Napi::Value& v, const std::string& name) {
  NativeTensor* t = NativeTensor::Unwrap(v);
  if (!t) throw_type(name + ": expected a lorakit Tensor");
  if (t->disposed()) throw_state(name + ": the tensor was disposed");
  return t;
}

NativeTensor* get_tensor_or_null(const Napi::Value& v, const std::string& name) {
  if (v.IsNull() || v.IsUndefined()) return nullptr;
  return get_tensor(v, name);
}

void require_float_cpu(NativeTensor* t, const std::string& name) {
  if (!dtype_is_float(t->ref().dtype))
    throw_type(name + ": expected a float tensor (f32, f16 or bf16), got " + dtype_name(t->ref().dtype));
  if (t->device() != Device::CPU) throw_type(name + ": expected a cpu tensor");
}

const char* device_name(Device d) { return d == Device::CUDA ? "cuda" : "cpu"; }

void require_float_on(NativeTensor* t, Device device, const std::string& name) {
  if (!dtype_is_float(t->ref().dtype))
    throw_type(name + ": expected a float tensor (f32, f16 or bf16), got " + dtype_name(t->ref().dtype));
  if (t->device() != device)
    throw_type(name + ": expected a " + device_name(device) + " tensor (like the other arguments), got a " +
               device_name(t->device()) + " tensor");
}

void require_shape(NativeTensor* t, const std::vector<int64_t>& shape, const std::string& name) {
  if (t->ref().shape != shape)
    throw_range(name + ": expected shape " + shape_str(shape) + ", got " + shape_str(t->ref().shape));
}

}  // namespace napi
}  // namespace lorakit
