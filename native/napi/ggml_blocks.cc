// ggml block format ops (core/ggml_blocks.h): ggml-typed bytes ↔ f32 values, on host memory.
// Argument checks only. The inputs are copied into the call (so the async form never touches JS
// memory off-thread) and the result array is made on the JS thread.
#include <napi.h>
#include <cstring>
#include <memory>
#include <vector>
#include "../core/backend.h"
#include "../core/ggml_blocks.h"
#include "args.h"
#include "ops.h"

namespace lorakit {
namespace napi {
namespace {

constexpr int64_t kMaxValues = int64_t{1} << 40;

GgmlType ggml_type_arg(const Napi::CallbackInfo& info, size_t i, const char* name, bool quantize) {
  const int64_t id = to_size(get_number(info, i, name), 0, 1 << 16, name);
  const GgmlType t = static_cast<GgmlType>(id);
  if (quantize ? !ggml_can_quantize(t) : !ggml_can_dequantize(t))
    throw_type(std::string(name) + ": ggml type " + std::to_string(id) +
               (quantize ? " cannot be written (F32 0, F16 1, BF16 30, Q4_0 2, Q4_1 3, Q5_0 6, Q5_1 7, Q8_0 8, Q4_K 12, Q5_K 13, Q6_K 14)"
                         : " cannot be read (F32, F16, BF16, F64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)"));
  return t;
}

// n must be whole blocks of t; returns the byte size of n values.
int64_t bytes_of(GgmlType t, int64_t n, const char* name) {
  const GgmlTypeSize s = ggml_type_size(t);
  if (n % s.block != 0)
    throw_range(std::string(name) + ": " + std::to_string(n) + " values are not a whole number of blocks of " + std::to_string(s.block));
  return n / s.block * s.bytes;
}

template <napi_typedarray_type kType, class T>
std::shared_ptr<std::vector<T>> copy_typed(const Napi::Value& v, const char* name, const char* want) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != kType) throw_type(std::string(name) + ": expected " + want);
  Napi::TypedArrayOf<T> a = v.As<Napi::TypedArrayOf<T>>();
  return std::make_shared<std::vector<T>>(a.Data(), a.Data() + a.ElementLength());
}

}  // namespace

// ggmlDequantize(type, src: Uint8Array, n) → Float32Array of n values
KernelCall BuildGgmlDequantize(const Napi::CallbackInfo& info) {
  KernelCall c;
  const GgmlType t = ggml_type_arg(info, 0, "type", false);
  auto src = copy_typed<napi_uint8_array, uint8_t>(info[1], "src", "a Uint8Array");
  const int64_t n = to_size(get_number(info, 2, "n"), 0, kMaxValues, "n");
  const int64_t need = bytes_of(t, n, "n");
  if (static_cast<int64_t>(src->size()) != need)
    throw_range("src: " + std::to_string(n) + " values of this type take " + std::to_string(need) + " bytes, got " + std::to_string(src->size()));
  auto out = std::make_shared<std::vector<float>>(static_cast<size_t>(n));
  auto dequantize = LORAKIT_OP(Device::CPU, ggml_dequantize);
  c.run = [=] { dequantize(t, src->data(), out->data(), n); };
  c.result = [out](Napi::Env env) -> Napi::Value {
    Napi::Float32Array a = Napi::Float32Array::New(env, out->size());
    if (!out->empty()) std::memcpy(a.Data(), out->data(), out->size() * sizeof(float));
    return a;
  };
  return c;
}

// ggmlQuantize(type, src: Float32Array) → Uint8Array
KernelCall BuildGgmlQuantize(const Napi::CallbackInfo& info) {
  KernelCall c;
  const GgmlType t = ggml_type_arg(info, 0, "type", true);
  auto src = copy_typed<napi_float32_array, float>(info[1], "src", "a Float32Array");
  const int64_t n = static_cast<int64_t>(src->size());
  auto out = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(bytes_of(t, n, "src")));
  auto quantize = LORAKIT_OP(Device::CPU, ggml_quantize);
  c.run = [=] { quantize(t, src->data(), out->data(), n); };
  c.result = [out](Napi::Env env) -> Napi::Value {
    Napi::Uint8Array a = Napi::Uint8Array::New(env, out->size());
    if (!out->empty()) std::memcpy(a.Data(), out->data(), out->size());
    return a;
  };
  return c;
}

// ggmlMergeRows(type, src: Uint8Array, rows, cols, A: Float32Array [r·cols], B: Float32Array [rows·r],
// scale, outType) → Uint8Array: rows of a ggml-typed weight W [rows, cols] decoded, merged as
// W + scale·B·A by the backend's merge_delta, and encoded as outType, in one call (a streamed GGUF
// merge's chunk), with the f32 rows in a per-thread buffer instead of three fresh arrays.
KernelCall BuildGgmlMergeRows(const Napi::CallbackInfo& info) {
  KernelCall c;
  const GgmlType t = ggml_type_arg(info, 0, "type", false);
  auto src = copy_typed<napi_uint8_array, uint8_t>(info[1], "src", "a Uint8Array");
  const int64_t rows = to_size(get_number(info, 2, "rows"), 1, kMaxValues, "rows");
  const int64_t cols = to_size(get_number(info, 3, "cols"), 1, kMaxValues, "cols");
  if (rows > kMaxValues / cols) throw_range("rows: rows·cols is too large");
  const int64_t n = rows * cols;
  if (cols % ggml_type_size(t).block != 0) throw_range("cols: " + std::to_string(cols) + " values per row are not a whole number of blocks");
  const int64_t need = bytes_of(t, n, "rows");
  if (static_cast<int64_t>(src->size()) != need)
    throw_range("src: " + std::to_string(rows) + " rows of " + std::to_string(cols) + " take " + std::to_string(need) + " bytes, got " + std::to_string(src->size()));
  auto A = copy_typed<napi_float32_array, float>(info[4], "A", "a Float32Array");
  auto B = copy_typed<napi_float32_array, float>(info[5], "B", "a Float32Array");
  if (A->empty() || A->size() % static_cast<size_t>(cols) != 0) throw_range("A: expected r·cols values (r ≥ 1, cols " + std::to_string(cols) + "), got " + std::to_string(A->size()));
  const int64_t r = static_cast<int64_t>(A->size()) / cols;
  if (static_cast<int64_t>(B->size()) != rows * r)
    throw_range("B: expected rows·r = " + std::to_string(rows * r) + " values, got " + std::to_string(B->size()));
  const float scale = to_scale(get_number(info, 6, "scale"), "scale");
  const GgmlType out_t = ggml_type_arg(info, 7, "outType", true);
  if (cols % ggml_type_size(out_t).block != 0) throw_range("outType: rows of " + std::to_string(cols) + " are not whole blocks of it");
  auto out = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(bytes_of(out_t, n, "rows")));
  auto dequantize = LORAKIT_OP(Device::CPU, ggml_dequantize);
  auto merge = LORAKIT_OP(Device::CPU, merge_delta);
  auto quantize = LORAKIT_OP(Device::CPU, ggml_quantize);
  c.run = [=] {
    thread_local std::vector<float> work;  // libuv's threads live long: no page faults after the first chunk
    work.resize(static_cast<size_t>(n));
    dequantize(t, src->data(), work.data(), n);
    TensorRef W{work.data(), DType::F32, {rows, cols}};
    TensorRef a{A->data(), DType::F32, {r, cols}};
    TensorRef b{B->data(), DType::F32, {rows, r}};
    merge(W, a, b, scale, false, W);
    quantize(out_t, work.data(), out->data(), n);
  };
  c.result = [out](Napi::Env env) -> Napi::Value {
    Napi::Uint8Array a = Napi::Uint8Array::New(env, out->size());
    if (!out->empty()) std::memcpy(a.Data(), out->data(), out->size());
    return a;
  };
  return c;
}

}  // namespace napi
}  // namespace lorakit
