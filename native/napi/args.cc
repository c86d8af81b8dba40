#include "args.h"
#include <cmath>

namespace lorakit {
namespace napi {

namespace {
constexpr double kTwoTo53 = 9007199254740992.0;

bool is_integer(double v) { return std::isfinite(v) && v == std::floor(v); }
}  // namespace

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

double number_value(const Napi::Value& v, const std::string& name) {
  if (!v.IsNumber()) throw_type(name + ": expected a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) throw_range(name + ": expected a finite number, got " + std::to_string(d));
  return d;
}

double get_number(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i) throw_type(std::string(name) + ": expected a number");
  return number_value(info[i], name);
}

double number_prop(const Napi::Object& o, const char* key, const std::string& where) {
  return number_value(o.Get(key), where + "." + key);
}

bool get_bool(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsBoolean()) throw_type(std::string(name) + ": expected a boolean");
  return info[i].As<Napi::Boolean>().Value();
}

std::string get_string(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsString()) throw_type(std::string(name) + ": expected a string");
  return info[i].As<Napi::String>().Utf8Value();
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

uint64_t to_counter(double v, const std::string& name) {
  if (!(v >= 0) || !is_integer(v) || v > kTwoTo53)
    throw_range(name + ": expected an integer in [0, 2^53], got " + std::to_string(v));
  return static_cast<uint64_t>(v);
}

int64_t to_index(double v, int64_t bound, const std::string& name) {
  if (!(v >= 0) || !is_integer(v) || v >= static_cast<double>(bound))
    throw_range(name + ": expected an integer in [0, " + std::to_string(bound) + "), got " + std::to_string(v));
  return static_cast<int64_t>(v);
}

int64_t to_size(double v, int64_t lo, int64_t hi, const std::string& name) {
  if (!is_integer(v) || v < static_cast<double>(lo) || v > static_cast<double>(hi))
    throw_range(name + ": expected an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " +
                std::to_string(v));
  return static_cast<int64_t>(v);
}

double unit_interval(double v, const std::string& name) {
  if (!(v >= 0 && v < 1)) throw_range(name + ": expected 0 <= value < 1, got " + std::to_string(v));
  return v;
}

double nonneg(double v, const std::string& name) {
  if (!(v >= 0) || !std::isfinite(v)) throw_range(name + ": expected >= 0, got " + std::to_string(v));
  return v;
}

float dropout_prob(double v, const std::string& name) {
  if (!(v >= 0 && v < 1) || static_cast<float>(v) >= 1.f)
    throw_range(name + ": expected 0 <= p < 1 (also in f32), got " + std::to_string(v));
  return static_cast<float>(v);
}

NativeTensor* get_tensor(const Napi::Value& v, const std::string& name) {
  NativeTensor* t = NativeTensor::Unwrap(v);
  if (!t) throw_type(name + ": expected a lorakit Tensor");
  if (t->disposed()) throw_state(name + ": the tensor was disposed");
  t->check_wrapped(v.Env(), name);
  return t;
}

NativeTensor* get_tensor_or_null(const Napi::Value& v, const std::string& name) {
  if (v.IsNull() || v.IsUndefined()) return nullptr;
  return get_tensor(v, name);
}

void require_float_on(NativeTensor* t, Device device, const std::string& name) {
  if (!dtype_is_float(t->ref().dtype))
    throw_type(name + ": expected a float tensor (f32, f16 or bf16), got " + dtype_name(t->ref().dtype));
  if (t->device() != device)
    throw_type(name + ": expected a " + device_name(device) + " tensor (like the other arguments), got a " +
               device_name(t->device()) + " tensor");
}

void require_same_shape(const TensorRef& t, const std::vector<int64_t>& s, const std::string& name) {
  if (t.shape != s) throw_range(name + ": expected shape " + shape_str(s) + ", got " + shape_str(t.shape));
}

void require_last_dim(const TensorRef& t, int64_t d, const std::string& name, const std::string& why) {
  if (t.shape.empty() || t.shape.back() != d)
    throw_range(name + ": expected last dimension " + std::to_string(d) + " (" + why + "), got shape " +
                shape_str(t.shape));
}

std::vector<int64_t> with_last(std::vector<int64_t> s, int64_t d) {
  s.back() = d;
  return s;
}

LinearDims linear_dims(const TensorRef& W, bool fifo) {
  if (W.shape.size() != 2) throw_range("weight: expected 2 dimensions, got shape " + shape_str(W.shape));
  if (W.shape[0] < 1 || W.shape[1] < 1)
    throw_range("weight: in_features and out_features must be at least 1, got shape " + shape_str(W.shape));
  return fifo ? LinearDims{W.shape[0], W.shape[1]} : LinearDims{W.shape[1], W.shape[0]};
}

}  // namespace napi
}  // namespace lorakit
