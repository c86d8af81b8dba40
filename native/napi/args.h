// Argument checking at the native boundary: every value from JS is re-validated here, and kernel
// errors (lorakit::Error) become JS errors with a stable `code`.
#pragma once
#include <napi.h>
#include <string>
#include "../core/errors.h"
#include "tensor_binding.h"

namespace lorakit {
namespace napi {

[[noreturn]] void throw_js(Napi::Env env, const Error& e);

// Runs fn, turning lorakit::Error into the matching JS error.
template <class F>
Napi::Value guarded(Napi::Env env, F&& fn) {
  try {
    return fn();
  } catch (const Error& e) {
    throw_js(env, e);
  } catch (const std::bad_alloc&) {
    throw_js(env, Error(ErrorKind::Range, "out of memory"));
  }
}

double get_number(const Napi::CallbackInfo& info, size_t i, const char* name);
bool get_bool(const Napi::CallbackInfo& info, size_t i, const char* name);
std::string get_string(const Napi::CallbackInfo& info, size_t i, const char* name);
double number_prop(const Napi::Object& o, const char* key, const std::string& where);

// A float tensor argument; nullable ones return nullptr for null/undefined.
NativeTensor* get_tensor(const Napi::Value& v, const std::string& name);
NativeTensor* get_tensor_or_null(const Napi::Value& v, const std::string& name);

// Requires a float dtype on the cpu device.
void require_float_cpu(NativeTensor* t, const std::string& name);
// Requires a float dtype on the given device (all tensors of one call share a device).
void require_float_on(NativeTensor* t, Device device, const std::string& name);
const char* device_name(Device d);
void require_shape(NativeTensor* t, const std::vector<int64_t>& shape, const std::string& name);

// Shape and value checks shared by the binding families.
struct LinearDims {
  int64_t in, out;
};
// (in, out) of a linear weight ([out, in], or [in, out] with fan_in_fan_out); both must be >= 1.
LinearDims linear_dims(const TensorRef& W, bool fifo);
void require_last_dim(const TensorRef& t, int64_t d, const std::string& name, const std::string& why);
void require_same_shape(const TensorRef& t, const std::vector<int64_t>& s, const std::string& name);
std::vector<int64_t> with_last(std::vector<int64_t> s, int64_t d);
// A scale the f32 kernels can use: finite in f64 and still finite after narrowing to f32.
float to_scale(double v, const std::string& name);
float scale_arg(const Napi::Value& v, const std::string& name);

}  // namespace napi
}  // namespace lorakit
