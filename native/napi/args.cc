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

LinearDims linear_dims(const TensorRef& W, bool fifo) {
  if (W.shape.size() != 2) throw_range("weight: expected 2 dimensions, got shape " + shape_str(W.shape));
  if (W.shape[0] < 1 || W.shape[1] < 1)
    throw_range("weight: in_features and out_features must be at least 1, got shape " + shape_str(W.shape));
  return fifo ? LinearDims{W.shape[0], W.shape[1]} : LinearDims{W.shape[1], W.shape[0]};
}

void require_last_dim(const TensorRef& t, int64_t d, const std::string& name, const std::string& why) {
  if (t.shape.empty() || t.shape.back() != d)
    throw_range(name + ": expected last dimension " + std::to_string(d) + " (" + why + "), got shape " +
                shape_str(t.shape));
}

void require_same_shape(const TensorRef& t, const std::vector<int64_t>& s, const std::string& name) {
  if (t.shape != s) throw_range(name + ": expected shape " + shape_str(s) + ", got " + shape_str(t.shape));
}

std::vector<int64_t> with_last(std::vector<int64_t> s, int64_t d) {
  s.back() = d;
  return s;
}

float to_scale(double v, const std::string& name) {
  if (!(std::fabs(v) <= 3.4028234663852886e38))
    throw_range(name + ": expected a finite number within the f32 range, got " + std::to_string(v));
  return static_cast<float>(v);
}

float scale_arg(const Napi::Value& v, const std::string& name) {
  if (!v.IsNumber()) throw_type(name + ": expected a number");
  return to_scale(v.As<Napi::Number>().DoubleValue(), name);
}

}  // namespace napi
}  // namespace lorakit
