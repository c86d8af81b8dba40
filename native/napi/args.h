// The argument vocabulary of the native boundary: every value from JS is re-validated here, and
// every JS number becomes a scale, counter, index, size or bounded real through one checked helper
// (never a raw cast of a JS double: a NaN or negative double cast to an integer is undefined
// behaviour). Kernel errors (lorakit::Error) become JS errors with a stable `code`.
#pragma once
#include <napi.h>
#include <cstdint>
#include <new>
#include <string>
#include <vector>
#include "../core/errors.h"
#include "../core/tensor.h"
#include "tensor.h"

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

// ---- Raw JS values (TypeError when absent or of another type).
double get_number(const Napi::CallbackInfo& info, size_t i, const char* name);  // finite
double number_value(const Napi::Value& v, const std::string& name);             // finite
double number_prop(const Napi::Object& o, const char* key, const std::string& where);  // finite, named where.key
bool get_bool(const Napi::CallbackInfo& info, size_t i, const char* name);
std::string get_string(const Napi::CallbackInfo& info, size_t i, const char* name);

// ---- JS numbers to C++ values (RangeError naming the argument).
// A scale the f32 kernels can use: finite and still finite after narrowing to f32.
float to_scale(double v, const std::string& name);
float scale_arg(const Napi::Value& v, const std::string& name);  // also TypeError for a non-number
// Seeds and stream counters: integers in [0, 2^53].
uint64_t to_counter(double v, const std::string& name);
inline uint64_t to_seed(double v, const std::string& name) { return to_counter(v, name); }
// An integer in [0, bound).
int64_t to_index(double v, int64_t bound, const std::string& name);
// An integer in [lo, hi] (sizes, counts, step numbers).
int64_t to_size(double v, int64_t lo, int64_t hi, const std::string& name);
// A real in [0, 1) (betas).
double unit_interval(double v, const std::string& name);
// A real >= 0 (learning rates, eps, decay).
double nonneg(double v, const std::string& name);
// A dropout probability: 0 <= p < 1, also after rounding to f32.
float dropout_prob(double v, const std::string& name);

// ---- Tensors
// A tensor argument of this addon instance; nullable ones return nullptr for null/undefined.
NativeTensor* get_tensor(const Napi::Value& v, const std::string& name);
NativeTensor* get_tensor_or_null(const Napi::Value& v, const std::string& name);
// Requires a float dtype on the call's device (all tensors of one call share a device).
void require_float_on(NativeTensor* t, Device device, const std::string& name);
void require_same_shape(const TensorRef& t, const std::vector<int64_t>& s, const std::string& name);
void require_last_dim(const TensorRef& t, int64_t d, const std::string& name, const std::string& why);
std::vector<int64_t> with_last(std::vector<int64_t> s, int64_t d);

// (in, out) of a linear weight ([out, in], or [in, out] with fan_in_fan_out); both must be >= 1.
struct LinearDims {
  int64_t in, out;
};
LinearDims linear_dims(const TensorRef& W, bool fifo);

}  // namespace napi
}  // namespace lorakit
