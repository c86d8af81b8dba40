#include "operands.h"
#include "../core/backend.h"

namespace lorakit {
namespace napi {
namespace {

TensorRef use(KernelCall& c, NativeTensor* t, const std::string& name, Access a) {
  return a == Access::Write ? c.write(t, name) : c.read(t, name, a == Access::ReadInPlace);
}

}  // namespace

Device device_of(const Napi::Value& v, const std::string& name) { return get_tensor(v, name)->device(); }

TensorRef float_operand(KernelCall& c, const Napi::Value& v, const std::string& name, Device dev, Access a) {
  NativeTensor* t = get_tensor(v, name);
  require_float_on(t, dev, name);
  return use(c, t, name, a);
}

OptRef float_operand_or_null(KernelCall& c, const Napi::Value& v, const std::string& name, Device dev, Access a) {
  OptRef o;
  NativeTensor* t = get_tensor_or_null(v, name);
  if (!t) return o;
  require_float_on(t, dev, name);
  o.ref = use(c, t, name, a);
  o.set = true;
  return o;
}

TensorRef f32_operand(KernelCall& c, const Napi::Value& v, const std::string& name, Device dev,
                      const std::vector<int64_t>& shape, Access a) {
  NativeTensor* t = get_tensor(v, name);
  require_float_on(t, dev, name);
  if (t->ref().dtype != DType::F32) throw_type(name + ": expected an f32 tensor, got " + dtype_name(t->ref().dtype));
  require_same_shape(t->ref(), shape, name);
  return use(c, t, name, a);
}

void require_distinct(const TensorRef& out, const TensorRef& in, const std::string& oname, const std::string& iname) {
  if (out.data == in.data && out.numel() > 0) throw_range(oname + ": must not be the same tensor as " + iname);
}

void require_backend_dtype(Device dev, std::initializer_list<const TensorRef*> ts, DType want, const std::string& names,
                           const std::string& want_name) {
  const Backend& b = backend_for(dev);
  if (b.mixed_dtypes) return;
  std::string got;
  bool ok = true;
  for (const TensorRef* t : ts) {
    ok = ok && t->dtype == want;
    got += (got.empty() ? "" : " and ") + std::string(dtype_name(t->dtype));
  }
  if (!ok) throw_type(names + ": on " + b.name + ", expected " + want_name + " " + dtype_name(want) + ", got " + got);
}

void check_adapter(const TensorRef& A, const TensorRef& B, LinearDims d, const std::string& prefix) {
  if (A.shape.size() != 2 || A.shape[1] != d.in || A.shape[0] < 1)
    throw_range(prefix + "A: expected shape [r, " + std::to_string(d.in) + "] with r >= 1, got " + shape_str(A.shape));
  if (B.shape.size() != 2 || B.shape[0] != d.out || B.shape[1] != A.shape[0])
    throw_range(prefix + "B: expected shape [" + std::to_string(d.out) + ", " + std::to_string(A.shape[0]) + "], got " +
                shape_str(B.shape));
}

std::vector<AdapterFactors> factor_list(KernelCall& c, const Napi::Value& v, int64_t in, int64_t out,
                                        const std::string& name, Device dev) {
  if (!v.IsArray()) throw_type(name + ": expected an array of [A, B, scale]");
  Napi::Array arr = v.As<Napi::Array>();
  std::vector<AdapterFactors> list;
  for (uint32_t i = 0; i < arr.Length(); i++) {
    std::string w = name + "[" + std::to_string(i) + "]";
    Napi::Value tv = arr.Get(i);
    if (!tv.IsArray() || tv.As<Napi::Array>().Length() != 3) throw_type(w + ": expected [A, B, scale]");
    Napi::Array t = tv.As<Napi::Array>();
    TensorRef A = float_operand(c, t.Get(0u), w + ".A", dev);
    TensorRef B = float_operand(c, t.Get(1u), w + ".B", dev);
    check_adapter(A, B, LinearDims{in, out}, w + ".");
    list.push_back({A, B, scale_arg(t.Get(2u), w + ".scale")});
  }
  return list;
}

std::vector<int32_t> row_adapter_arg(const Napi::Value& v, int64_t n, size_t count, const std::string& name,
                                     bool nullable) {
  if (nullable && (v.IsNull() || v.IsUndefined())) return {};
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw_type(name + (nullable ? ": expected an Int32Array or null" : ": expected an Int32Array"));
  Napi::Int32Array a = v.As<Napi::Int32Array>();
  if (static_cast<int64_t>(a.ElementLength()) != n)
    throw_range(name + ": expected " + std::to_string(n) + " entries (one per row), got " + std::to_string(a.ElementLength()));
  std::vector<int32_t> p(a.Data(), a.Data() + n);
  for (int64_t i = 0; i < n; i++)
    if (p[i] < -1 || p[i] >= static_cast<int32_t>(count))
      throw_range(name + "[" + std::to_string(i) + "]: " + std::to_string(p[i]) + " is not -1 (base) or an adapter index below " +
                  std::to_string(count));
  return p;
}

}  // namespace napi
}  // namespace lorakit
