// Bindings for the peft-parity ops: argument unpacking and checks only, no math. Each is a
// KernelBuilder (kernel_call.h), so the sync export and its Async form (async_binding.cc) share
// the checks; `run` holds copies of everything it needs and makes no N-API calls.
#include <napi.h>
#include <cmath>
#include <memory>
#include "../cpu/ops.h"
#include "../cpu/parity_ops.h"
#ifdef LORAKIT_WITH_CUDA
#include "../cuda/ops.h"
#endif
#include "args.h"
#include "kernel_call.h"
#include "parity_binding.h"

namespace lorakit {
namespace napi {
namespace {

// A nullable tensor operand, held by value so a closure can carry it.
struct OptRef {
  TensorRef ref;
  bool set = false;
  const TensorRef* ptr() const { return set ? &ref : nullptr; }
};

enum class Access { Read, Write, ReadInPlace };

TensorRef use(KernelCall& c, NativeTensor* t, const std::string& name, Access a) {
  return a == Access::Write ? c.write(t, name) : c.read(t, name, a == Access::ReadInPlace);
}

// A float tensor on `dev` (the cpu unless the op also runs on cuda), with the cpu-only message on the cpu.
void require_float_at(NativeTensor* t, Device dev, const std::string& name) {
  if (dev == Device::CPU) require_float_cpu(t, name);
  else require_float_on(t, dev, name);
}

TensorRef float_arg(KernelCall& c, const Napi::CallbackInfo& info, size_t i, const std::string& name,
                    Access a = Access::Read, Device dev = Device::CPU) {
  if (info.Length() <= i) throw_type(name + ": missing argument");
  NativeTensor* t = get_tensor(info[i], name);
  require_float_at(t, dev, name);
  return use(c, t, name, a);
}

OptRef float_arg_or_null(KernelCall& c, const Napi::CallbackInfo& info, size_t i, const std::string& name,
                         Access a = Access::Read, Device dev = Device::CPU) {
  OptRef o;
  if (info.Length() <= i) return o;
  NativeTensor* t = get_tensor_or_null(info[i], name);
  if (!t) return o;
  require_float_at(t, dev, name);
  o.ref = use(c, t, name, a);
  o.set = true;
  return o;
}

void require_distinct(const TensorRef& out, const TensorRef& in, const std::string& oname, const std::string& iname) {
  if (out.data == in.data && out.numel() > 0) throw_range(oname + ": must not be the same tensor as " + iname);
}

// [A, B, scale][] with A [r, in], B [out, r]
std::vector<cpu::AdapterFactors> factor_list(KernelCall& c, const Napi::Value& v, int64_t in, int64_t out,
                                             const std::string& name, Device dev = Device::CPU) {
  if (!v.IsArray()) throw_type(name + ": expected an array of [A, B, scale]");
  Napi::Array arr = v.As<Napi::Array>();
  std::vector<cpu::AdapterFactors> list;
  for (uint32_t i = 0; i < arr.Length(); i++) {
    std::string w = name + "[" + std::to_string(i) + "]";
    Napi::Value tv = arr.Get(i);
    if (!tv.IsArray() || tv.As<Napi::Array>().Length() != 3) throw_type(w + ": expected [A, B, scale]");
    Napi::Array t = tv.As<Napi::Array>();
    NativeTensor* A = get_tensor(t.Get(0u), w + ".A");
    NativeTensor* B = get_tensor(t.Get(1u), w + ".B");
    require_float_at(A, dev, w + ".A");
    require_float_at(B, dev, w + ".B");
    const auto& as = A->ref().shape;
    if (as.size() != 2 || as[1] != in)
      throw_range(w + ".A: expected shape [r, " + std::to_string(in) + "], got " + shape_str(as));
    require_same_shape(B->ref(), {out, as[0]}, w + ".B");
    list.push_back({c.read(A, w + ".A"), c.read(B, w + ".B"), scale_arg(t.Get(2u), w + ".scale")});
  }
  return list;
}

}  // namespace

// mixedLinearForward(x, W, bias|null, fifo, adapters: [A, B, scale][], rowAdapter: Int32Array, y)
// Runs on the device of x (cpu or cuda); every tensor must be there.
KernelCall BuildMixedLinearForward(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = info.Length() > 0 ? get_tensor(info[0], "x")->device() : Device::CPU;
  TensorRef x = float_arg(c, info, 0, "x", Access::Read, dev);
  TensorRef W = float_arg(c, info, 1, "weight", Access::Read, dev);
  OptRef bias = float_arg_or_null(c, info, 2, "bias", Access::Read, dev);
  bool fifo = get_bool(info, 3, "fanInFanOut");
  LinearDims d = linear_dims(W, fifo);
  if (x.shape.empty() || x.shape.back() != d.in)
    throw_range("x: expected shape [..., " + std::to_string(d.in) + "] (in_features), got " + shape_str(x.shape));
  if (bias.set) require_same_shape(bias.ref, {d.out}, "bias");
  auto adapters = factor_list(c, info[4], d.in, d.out, "adapters", dev);
  if (info.Length() <= 5 || !info[5].IsTypedArray() ||
      info[5].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw_type("rowAdapter: expected an Int32Array");
  Napi::Int32Array rows = info[5].As<Napi::Int32Array>();
  int64_t n = x.rows();
  if (static_cast<int64_t>(rows.ElementLength()) != n)
    throw_range("rowAdapter: expected " + std::to_string(n) + " entries (one per row of x), got " +
                std::to_string(rows.ElementLength()));
  // Copied: the JS array may change or be detached while async work runs.
  std::vector<int32_t> rp(rows.Data(), rows.Data() + n);
  for (int64_t i = 0; i < n; i++)
    if (rp[i] < -1 || rp[i] >= static_cast<int32_t>(adapters.size()))
      throw_range("rowAdapter[" + std::to_string(i) + "]: " + std::to_string(rp[i]) + " is not -1 (base) or an adapter index below " +
                  std::to_string(adapters.size()));
  TensorRef y = float_arg(c, info, 6, "y", Access::Write, dev);
  require_same_shape(y, with_last(x.shape, d.out), "y");
  require_distinct(y, x, "y", "x");
  if (dev == Device::CUDA && (x.dtype != W.dtype || y.dtype != W.dtype))
    throw_type("x, y: on cuda, expected the weight's dtype " + std::string(dtype_name(W.dtype)) + ", got " +
               dtype_name(x.dtype) + " and " + dtype_name(y.dtype));
  c.run = on_device(
      dev, [=] { cpu::mixed_linear_forward(x, W, bias.ptr(), fifo, adapters, rp.data(), y); },
      [=] { LK_IF_CUDA(cuda::mixed_linear_forward(x, W, bias.ptr(), fifo, adapters, rp.data(), y);) });
  return c;
}

namespace {

TensorRef f32_arg(KernelCall& c, const Napi::Value& v, const std::string& name, const std::vector<int64_t>& shape,
                  Access a, Device dev = Device::CPU) {
  NativeTensor* t = get_tensor(v, name);
  require_float_at(t, dev, name);
  if (t->ref().dtype != DType::F32) throw_type(name + ": expected an f32 tensor, got " + dtype_name(t->ref().dtype));
  require_same_shape(t->ref(), shape, name);
  return use(c, t, name, a);
}

// A: [r, in], B: [out, r]
int64_t check_factors(const TensorRef& A, const TensorRef& B, LinearDims d, const std::string& where) {
  if (A.shape.size() != 2 || A.shape[1] != d.in)
    throw_range(where + "A: expected shape [r, " + std::to_string(d.in) + "], got " + shape_str(A.shape));
  require_same_shape(B, {d.out, A.shape[0]}, where + "B");
  return A.shape[0];
}

}  // namespace

// doraWeightNorm(W, A, B, scale, fifo, norm f32 [out])
KernelCall BuildDoraWeightNorm(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = info.Length() > 0 ? get_tensor(info[0], "weight")->device() : Device::CPU;
  TensorRef W = float_arg(c, info, 0, "weight", Access::Read, dev);
  TensorRef A = float_arg(c, info, 1, "A", Access::Read, dev);
  TensorRef B = float_arg(c, info, 2, "B", Access::Read, dev);
  float scale = static_cast<float>(get_number(info, 3, "scale"));
  bool fifo = get_bool(info, 4, "fanInFanOut");
  LinearDims d = linear_dims(W, fifo);
  check_factors(A, B, d, "");
  TensorRef norm = f32_arg(c, info[5], "norm", {d.out}, Access::Write, dev);
  c.run = on_device(
      dev, [=] { cpu::dora_weight_norm(W, A, B, scale, fifo, norm.as<float>()); },
      [=] { LK_IF_CUDA(cuda::dora_weight_norm(W, A, B, scale, fifo, norm.as<float>());) });
  return c;
}

// doraLinearForward(x, xa, W, bias|null, fifo, u, A, B, scale, norm (written), magnitude, y, pre (written))
KernelCall BuildDoraLinearForward(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = info.Length() > 0 ? get_tensor(info[0], "x")->device() : Device::CPU;
  TensorRef x = float_arg(c, info, 0, "x", Access::Read, dev);
  TensorRef xa = float_arg(c, info, 1, "xa", Access::Read, dev);
  TensorRef W = float_arg(c, info, 2, "weight", Access::Read, dev);
  OptRef bias = float_arg_or_null(c, info, 3, "bias", Access::Read, dev);
  bool fifo = get_bool(info, 4, "fanInFanOut");
  LinearDims d = linear_dims(W, fifo);
  if (x.shape.empty() || x.shape.back() != d.in)
    throw_range("x: expected shape [..., " + std::to_string(d.in) + "] (in_features), got " + shape_str(x.shape));
  require_same_shape(xa, x.shape, "xa");
  if (bias.set) require_same_shape(bias.ref, {d.out}, "bias");
  TensorRef u = float_arg(c, info, 5, "u", Access::Read, dev);
  TensorRef A = float_arg(c, info, 6, "A", Access::Read, dev);
  TensorRef B = float_arg(c, info, 7, "B", Access::Read, dev);
  int64_t r = check_factors(A, B, d, "");
  int64_t n = x.rows();
  require_same_shape(u, with_last(x.shape, r), "u");
  float scale = static_cast<float>(get_number(info, 8, "scale"));
  TensorRef norm = f32_arg(c, info[9], "norm", {d.out}, Access::Write, dev);
  TensorRef mag = float_arg(c, info, 10, "magnitude", Access::Read, dev);
  require_same_shape(mag, {d.out}, "magnitude");
  TensorRef y = float_arg(c, info, 11, "y", Access::Write, dev);
  require_same_shape(y, with_last(x.shape, d.out), "y");
  require_distinct(y, x, "y", "x");
  TensorRef pre = f32_arg(c, info[12], "pre", {n, d.out}, Access::Write, dev);
  c.run = on_device(
      dev, [=] { cpu::dora_linear_forward(x, xa, W, bias.ptr(), fifo, u, A, B, scale, mag, y, pre.as<float>(), norm.as<float>()); },
      [=] { LK_IF_CUDA(cuda::dora_linear_forward(x, xa, W, bias.ptr(), fifo, u, A, B, scale, mag, y, pre.as<float>(), norm.as<float>());) });
  return c;
}

// doraLinearBackward(dy, W, fifo, {xa, u, A, B, magnitude, scale, p, seed, stream, norm, pre}, dx|null, dA|null, dB|null, dmag|null)
KernelCall BuildDoraLinearBackward(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = info.Length() > 0 ? get_tensor(info[0], "dy")->device() : Device::CPU;
  TensorRef dy = float_arg(c, info, 0, "dy", Access::Read, dev);
  TensorRef W = float_arg(c, info, 1, "weight", Access::Read, dev);
  bool fifo = get_bool(info, 2, "fanInFanOut");
  LinearDims d = linear_dims(W, fifo);
  if (dy.shape.empty() || dy.shape.back() != d.out)
    throw_range("dy: expected shape [..., " + std::to_string(d.out) + "] (out_features), got " + shape_str(dy.shape));
  int64_t n = dy.rows();
  if (info.Length() < 4 || !info[3].IsObject()) throw_type("term: expected an object");
  Napi::Object o = info[3].As<Napi::Object>();
  cpu::DoraBackwardArgs a;
  NativeTensor* xa = get_tensor(o.Get("xa"), "term.xa");
  NativeTensor* u = get_tensor(o.Get("u"), "term.u");
  NativeTensor* A = get_tensor(o.Get("A"), "term.A");
  NativeTensor* B = get_tensor(o.Get("B"), "term.B");
  NativeTensor* mag = get_tensor(o.Get("magnitude"), "term.magnitude");
  for (auto* t : {xa, u, A, B, mag}) require_float_at(t, dev, "term");
  int64_t r = check_factors(A->ref(), B->ref(), d, "term.");
  std::vector<int64_t> xshape = with_last(dy.shape, d.in);
  require_same_shape(xa->ref(), xshape, "term.xa");
  require_same_shape(u->ref(), with_last(dy.shape, r), "term.u");
  require_same_shape(mag->ref(), {d.out}, "term.magnitude");
  a.xa = c.read(xa, "term.xa");
  a.u = c.read(u, "term.u");
  a.A = c.read(A, "term.A");
  a.B = c.read(B, "term.B");
  a.magnitude = c.read(mag, "term.magnitude");
  a.scale = static_cast<float>(number_prop(o, "scale", "term"));
  a.dropout_p = static_cast<float>(number_prop(o, "p", "term"));
  if (!(a.dropout_p >= 0.f && a.dropout_p < 1.f)) throw_range("term.p: expected 0 <= p < 1");
  a.seed = static_cast<uint64_t>(number_prop(o, "seed", "term"));
  a.stream = static_cast<uint64_t>(number_prop(o, "stream", "term"));
  a.norm = f32_arg(c, o.Get("norm"), "term.norm", {d.out}, Access::Read, dev).as<float>();
  a.pre = f32_arg(c, o.Get("pre"), "term.pre", {n, d.out}, Access::Read, dev).as<float>();
  OptRef dx = float_arg_or_null(c, info, 4, "dx", Access::Write, dev);
  OptRef dA = float_arg_or_null(c, info, 5, "dA", Access::Write, dev);
  OptRef dB = float_arg_or_null(c, info, 6, "dB", Access::Write, dev);
  OptRef dm = float_arg_or_null(c, info, 7, "dmagnitude", Access::Write, dev);
  if (dx.set) {
    require_same_shape(dx.ref, xshape, "dx");
    require_distinct(dx.ref, dy, "dx", "dy");
  }
  if (dA.set) require_same_shape(dA.ref, a.A.shape, "dA");
  if (dB.set) require_same_shape(dB.ref, a.B.shape, "dB");
  if (dm.set) require_same_shape(dm.ref, {d.out}, "dmagnitude");
  c.run = on_device(
      dev, [=] { cpu::dora_linear_backward(dy, W, fifo, a, dx.ptr(), dA.ptr(), dB.ptr(), dm.ptr()); },
      [=] { LK_IF_CUDA(cuda::dora_linear_backward(dy, W, fifo, a, dx.ptr(), dA.ptr(), dB.ptr(), dm.ptr());) });
  return c;
}

// doraMerge(W, A, B, scale, fifo, magnitude, norm, inverse, out); out may be W
KernelCall BuildDoraMerge(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = info.Length() > 0 ? get_tensor(info[0], "weight")->device() : Device::CPU;
  TensorRef W = float_arg(c, info, 0, "weight", Access::ReadInPlace, dev);
  TensorRef A = float_arg(c, info, 1, "A", Access::Read, dev);
  TensorRef B = float_arg(c, info, 2, "B", Access::Read, dev);
  float scale = static_cast<float>(get_number(info, 3, "scale"));
  bool fifo = get_bool(info, 4, "fanInFanOut");
  LinearDims d = linear_dims(W, fifo);
  check_factors(A, B, d, "");
  TensorRef mag = float_arg(c, info, 5, "magnitude", Access::Read, dev);
  require_same_shape(mag, {d.out}, "magnitude");
  TensorRef norm = f32_arg(c, info[6], "norm", {d.out}, Access::Read, dev);
  bool inverse = get_bool(info, 7, "inverse");
  TensorRef out = float_arg(c, info, 8, "out", Access::Write, dev);
  require_same_shape(out, W.shape, "out");
  if (dev == Device::CUDA && out.dtype != W.dtype)
    throw_type("out: on cuda, expected the weight's dtype " + std::string(dtype_name(W.dtype)));
  c.run = on_device(
      dev, [=] { cpu::dora_merge(W, A, B, scale, fifo, mag, norm.as<float>(), inverse, out); },
      [=] { LK_IF_CUDA(cuda::dora_merge(W, A, B, scale, fifo, mag, norm.as<float>(), inverse, out);) });
  return c;
}

namespace {

// An i32/i64 index tensor whose values all lie in [0, num). Read-held, so async work sees the
// values checked here.
TensorRef index_arg(KernelCall& c, const Napi::Value& v, const std::string& name, int64_t num) {
  NativeTensor* t = get_tensor(v, name);
  const TensorRef& r = t->ref();
  if (r.dtype != DType::I32 && r.dtype != DType::I64)
    throw_type(name + ": expected an i32 or i64 index tensor, got " + dtype_name(r.dtype));
  if (t->device() != Device::CPU) throw_type(name + ": expected a cpu tensor");
  int64_t n = r.numel();
  for (int64_t p = 0; p < n; p++) {
    int64_t i = cpu::index_at(r, p);
    if (i < 0 || i >= num)
      throw_range(name + ": index " + std::to_string(i) + " at position " + std::to_string(p) +
                  " is out of range for num_embeddings " + std::to_string(num));
  }
  return c.read(t, name);
}

// A copy of an optional Int32Array of per-row adapter indices (empty: none); copied because the
// JS array may change or be detached while async work runs.
std::vector<int32_t> row_adapter_arg(const Napi::Value& v, int64_t n, size_t count, const std::string& name) {
  if (v.IsNull() || v.IsUndefined()) return {};
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw_type(name + ": expected an Int32Array or null");
  Napi::Int32Array a = v.As<Napi::Int32Array>();
  if (static_cast<int64_t>(a.ElementLength()) != n)
    throw_range(name + ": expected " + std::to_string(n) + " entries, got " + std::to_string(a.ElementLength()));
  std::vector<int32_t> p(a.Data(), a.Data() + n);
  for (int64_t i = 0; i < n; i++)
    if (p[i] < -1 || p[i] >= static_cast<int32_t>(count))
      throw_range(name + "[" + std::to_string(i) + "]: " + std::to_string(p[i]) + " is not -1 or an adapter index below " +
                  std::to_string(count));
  return p;
}

}  // namespace

// embeddingForward(idx, W, adapters: [A, B, scale][], rowAdapter|null, y)
// The weight's device runs it; indices are always a cpu tensor (a cuda call uploads them).
KernelCall BuildEmbeddingForward(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = info.Length() > 1 ? get_tensor(info[1], "weight")->device() : Device::CPU;
  TensorRef W = float_arg(c, info, 1, "weight", Access::Read, dev);
  if (W.shape.size() != 2) throw_range("weight: expected [num_embeddings, dim], got " + shape_str(W.shape));
  int64_t num = W.shape[0], dim = W.shape[1];
  TensorRef idx = index_arg(c, info[0], "indices", num);
  auto adapters = factor_list(c, info[2], num, dim, "adapters", dev);
  std::vector<int32_t> rows = row_adapter_arg(info[3], idx.numel(), adapters.size(), "rowAdapter");
  TensorRef y = float_arg(c, info, 4, "y", Access::Write, dev);
  std::vector<int64_t> ys = idx.shape;
  ys.push_back(dim);
  require_same_shape(y, ys, "y");
  require_distinct(y, W, "y", "weight");
  if (dev == Device::CUDA && y.dtype != W.dtype)
    throw_type("y: on cuda, expected the weight's dtype " + std::string(dtype_name(W.dtype)));
  c.run = on_device(
      dev, [=] { cpu::embedding_forward(idx, W, adapters, rows.empty() ? nullptr : rows.data(), y); },
      [=] { LK_IF_CUDA(cuda::embedding_forward(idx, W, adapters, rows.empty() ? nullptr : rows.data(), y);) });
  return c;
}

// embeddingBackward(idx, dy, A, B, scale, paddingIdx, dA|null, dB|null)
KernelCall BuildEmbeddingBackward(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = info.Length() > 2 ? get_tensor(info[2], "A")->device() : Device::CPU;
  TensorRef A = float_arg(c, info, 2, "A", Access::Read, dev);
  TensorRef B = float_arg(c, info, 3, "B", Access::Read, dev);
  if (A.shape.size() != 2) throw_range("A: expected [r, num_embeddings], got " + shape_str(A.shape));
  int64_t r = A.shape[0], num = A.shape[1];
  if (B.shape.size() != 2 || B.shape[1] != r)
    throw_range("B: expected shape [dim, " + std::to_string(r) + "], got " + shape_str(B.shape));
  int64_t dim = B.shape[0];
  TensorRef idx = index_arg(c, info[0], "indices", num);
  TensorRef dy = float_arg(c, info, 1, "dy", Access::Read, dev);
  std::vector<int64_t> ys = idx.shape;
  ys.push_back(dim);
  require_same_shape(dy, ys, "dy");
  float scale = static_cast<float>(get_number(info, 4, "scale"));
  double pad = get_number(info, 5, "paddingIdx");
  if (pad != std::floor(pad) || pad < -1 || pad >= num) throw_range("paddingIdx: expected -1 (none) or an index below num_embeddings");
  OptRef dA = float_arg_or_null(c, info, 6, "dA", Access::Write, dev);
  OptRef dB = float_arg_or_null(c, info, 7, "dB", Access::Write, dev);
  if (dA.set) require_same_shape(dA.ref, A.shape, "dA");
  if (dB.set) require_same_shape(dB.ref, B.shape, "dB");
  int64_t padding = static_cast<int64_t>(pad);
  c.run = on_device(
      dev, [=] { cpu::embedding_backward(idx, dy, A, B, scale, padding, dA.ptr(), dB.ptr()); },
      [=] { LK_IF_CUDA(cuda::embedding_backward(idx, dy, A, B, scale, padding, dA.ptr(), dB.ptr());) });
  return c;
}

namespace {

// geom: [sh, sw, ph, pw, dh, dw, groups]
cpu::ConvGeom geom_arg(const Napi::Value& v) {
  if (!v.IsArray() || v.As<Napi::Array>().Length() != 7) throw_type("geom: expected [sh, sw, ph, pw, dh, dw, groups]");
  Napi::Array a = v.As<Napi::Array>();
  int64_t g[7];
  for (uint32_t i = 0; i < 7; i++) {
    Napi::Value e = a.Get(i);
    double d = e.IsNumber() ? e.As<Napi::Number>().DoubleValue() : -1;
    bool pad = i == 2 || i == 3;
    if (!(d >= (pad ? 0 : 1)) || d != std::floor(d) || d > (1 << 20)) throw_range("geom[" + std::to_string(i) + "]: invalid value");
    g[i] = static_cast<int64_t>(d);
  }
  cpu::ConvGeom c;
  c.sh = g[0]; c.sw = g[1]; c.ph = g[2]; c.pw = g[3]; c.dh = g[4]; c.dw = g[5]; c.groups = g[6];
  return c;
}

struct ConvShape {
  int64_t N, C, H, W, O, kh, kw, Ho, Wo;
};

ConvShape conv_shape(const TensorRef& x, const TensorRef& W, const cpu::ConvGeom& g) {
  if (W.shape.size() != 4) throw_range("weight: expected [out, in/groups, kh, kw], got " + shape_str(W.shape));
  if (x.shape.size() != 4) throw_range("x: expected [N, C, H, W], got " + shape_str(x.shape));
  ConvShape s{x.shape[0], x.shape[1], x.shape[2], x.shape[3], W.shape[0], W.shape[2], W.shape[3], 0, 0};
  if (s.O % g.groups != 0 || s.C % g.groups != 0 || W.shape[1] * g.groups != s.C)
    throw_range("x: " + std::to_string(s.C) + " channels do not match weight " + shape_str(W.shape) + " with groups " +
                std::to_string(g.groups));
  s.Ho = cpu::conv_out_size(s.H, s.kh, g.sh, g.ph, g.dh);
  s.Wo = cpu::conv_out_size(s.W, s.kw, g.sw, g.pw, g.dw);
  if (s.Ho <= 0 || s.Wo <= 0 || s.H + 2 * g.ph < g.dh * (s.kh - 1) + 1 || s.W + 2 * g.pw < g.dw * (s.kw - 1) + 1)
    throw_range("x: spatial size " + std::to_string(s.H) + "×" + std::to_string(s.W) + " is too small for the kernel");
  return s;
}

// The conv terms and the dA/dB refs they point at, in one heap block the closure shares.
struct ConvTerms {
  std::vector<cpu::ConvTerm> terms;
  std::vector<TensorRef> grads;  // reserved up front so the terms' pointers stay valid
};

// terms: [{xa, u, A, B, scale, p?, seed?, stream?, dA?, dB?}]; the forward writes u, the backward
// reads it and writes dA/dB.
std::shared_ptr<ConvTerms> conv_terms(KernelCall& c, const Napi::Value& v, const TensorRef& x_like, const ConvShape& s,
                                      const cpu::ConvGeom& g, bool backward, Device dev) {
  if (!v.IsArray()) throw_type("terms: expected an array");
  Napi::Array arr = v.As<Napi::Array>();
  auto out = std::make_shared<ConvTerms>();
  out->grads.reserve(2 * arr.Length());
  if (arr.Length() > 0 &&
      (cpu::conv_out_size(s.H, s.kh, g.sh, g.ph, 1) != s.Ho || cpu::conv_out_size(s.W, s.kw, g.sw, g.pw, 1) != s.Wo))
    throw_range("x: the adapter's conv (dilation 1, as peft's lora_A) gives another output size than the base conv");
  for (uint32_t i = 0; i < arr.Length(); i++) {
    std::string w = "terms[" + std::to_string(i) + "]";
    Napi::Value tv = arr.Get(i);
    if (!tv.IsObject()) throw_type(w + ": expected an object");
    Napi::Object o = tv.As<Napi::Object>();
    NativeTensor* xa = get_tensor(o.Get("xa"), w + ".xa");
    NativeTensor* A = get_tensor(o.Get("A"), w + ".A");
    NativeTensor* B = get_tensor(o.Get("B"), w + ".B");
    for (auto* t : {xa, A, B}) require_float_at(t, dev, w);
    require_same_shape(xa->ref(), x_like.shape, w + ".xa");
    const auto& as = A->ref().shape;
    if (as.size() != 4 || as[1] != s.C || as[2] != s.kh || as[3] != s.kw)
      throw_range(w + ".A: expected shape [r, " + std::to_string(s.C) + ", " + std::to_string(s.kh) + ", " + std::to_string(s.kw) +
                  "], got " + shape_str(as));
    int64_t r = as[0];
    if (r % g.groups != 0) throw_range(w + ".A: rank " + std::to_string(r) + " is not a multiple of groups " + std::to_string(g.groups));
    require_same_shape(B->ref(), {s.O, r / g.groups, 1, 1}, w + ".B");
    cpu::ConvTerm t;
    t.u = f32_arg(c, o.Get("u"), w + ".u", {s.N, r, s.Ho * s.Wo}, backward ? Access::Read : Access::Write, dev);
    t.xa = c.read(xa, w + ".xa");
    t.A = c.read(A, w + ".A");
    t.B = c.read(B, w + ".B");
    t.scale = static_cast<float>(number_prop(o, "scale", w));
    t.dropout_p = 0.f;
    t.seed = t.stream = 0;
    t.dA = t.dB = nullptr;
    if (backward) {
      t.dropout_p = static_cast<float>(number_prop(o, "p", w));
      if (!(t.dropout_p >= 0.f && t.dropout_p < 1.f)) throw_range(w + ".p: expected 0 <= p < 1");
      t.seed = static_cast<uint64_t>(number_prop(o, "seed", w));
      t.stream = static_cast<uint64_t>(number_prop(o, "stream", w));
      NativeTensor* dA = get_tensor_or_null(o.Get("dA"), w + ".dA");
      NativeTensor* dB = get_tensor_or_null(o.Get("dB"), w + ".dB");
      if (dA) {
        require_float_at(dA, dev, w + ".dA");
        require_same_shape(dA->ref(), as, w + ".dA");
        out->grads.push_back(c.write(dA, w + ".dA"));
        t.dA = &out->grads.back();
      }
      if (dB) {
        require_float_at(dB, dev, w + ".dB");
        require_same_shape(dB->ref(), B->ref().shape, w + ".dB");
        out->grads.push_back(c.write(dB, w + ".dB"));
        t.dB = &out->grads.back();
      }
    }
    out->terms.push_back(t);
  }
  return out;
}

}  // namespace

// conv2dForward(x, W, bias|null, geom, terms [{xa, u, A, B, scale}], y, imageAdapter: Int32Array|null)
KernelCall BuildConv2dForward(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = info.Length() > 0 ? get_tensor(info[0], "x")->device() : Device::CPU;
  TensorRef x = float_arg(c, info, 0, "x", Access::Read, dev);
  TensorRef W = float_arg(c, info, 1, "weight", Access::Read, dev);
  OptRef bias = float_arg_or_null(c, info, 2, "bias", Access::Read, dev);
  cpu::ConvGeom g = geom_arg(info[3]);
  ConvShape s = conv_shape(x, W, g);
  if (bias.set) require_same_shape(bias.ref, {s.O}, "bias");
  auto terms = conv_terms(c, info[4], x, s, g, false, dev);
  TensorRef y = float_arg(c, info, 5, "y", Access::Write, dev);
  require_same_shape(y, {s.N, s.O, s.Ho, s.Wo}, "y");
  require_distinct(y, x, "y", "x");
  for (const auto& t : terms->terms) require_distinct(y, t.xa, "y", "terms[].xa");
  std::vector<int32_t> images = row_adapter_arg(info[6], s.N, terms->terms.size(), "imageAdapter");
  c.run = on_device(
      dev, [=] { cpu::conv2d_forward(x, W, bias.ptr(), g, terms->terms, images.empty() ? nullptr : images.data(), y); },
      [=] { LK_IF_CUDA(cuda::conv2d_forward(x, W, bias.ptr(), g, terms->terms, images.empty() ? nullptr : images.data(), y);) });
  return c;
}

// conv2dBackward(dy, x, W, geom, terms [{xa, u, A, B, scale, p, seed, stream, dA, dB}], dx|null)
KernelCall BuildConv2dBackward(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = info.Length() > 0 ? get_tensor(info[0], "dy")->device() : Device::CPU;
  TensorRef dy = float_arg(c, info, 0, "dy", Access::Read, dev);
  TensorRef x = float_arg(c, info, 1, "x", Access::Read, dev);
  TensorRef W = float_arg(c, info, 2, "weight", Access::Read, dev);
  cpu::ConvGeom g = geom_arg(info[3]);
  ConvShape s = conv_shape(x, W, g);
  require_same_shape(dy, {s.N, s.O, s.Ho, s.Wo}, "dy");
  auto terms = conv_terms(c, info[4], x, s, g, true, dev);
  OptRef dx = float_arg_or_null(c, info, 5, "dx", Access::Write, dev);
  if (dx.set) {
    require_same_shape(dx.ref, x.shape, "dx");
    require_distinct(dx.ref, dy, "dx", "dy");
  }
  c.run = on_device(
      dev, [=] { cpu::conv2d_backward(dy, W, g, terms->terms, dx.ptr()); },
      [=] { LK_IF_CUDA(cuda::conv2d_backward(dy, W, g, terms->terms, dx.ptr());) });
  return c;
}

// conv2dMergeDelta(W, A, B, scale, out): out = W + scale·B·A over the flattened kernel (groups 1); out may be W
KernelCall BuildConv2dMergeDelta(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = info.Length() > 0 ? get_tensor(info[0], "weight")->device() : Device::CPU;
  TensorRef W = float_arg(c, info, 0, "weight", Access::ReadInPlace, dev);
  TensorRef A = float_arg(c, info, 1, "A", Access::Read, dev);
  TensorRef B = float_arg(c, info, 2, "B", Access::Read, dev);
  float scale = static_cast<float>(get_number(info, 3, "scale"));
  TensorRef out = float_arg(c, info, 4, "out", Access::Write, dev);
  if (W.shape.size() != 4) throw_range("weight: expected [out, in, kh, kw], got " + shape_str(W.shape));
  int64_t O = W.shape[0], K = W.shape[1] * W.shape[2] * W.shape[3];
  if (A.shape.size() != 4 || A.shape[1] != W.shape[1] || A.shape[2] != W.shape[2] || A.shape[3] != W.shape[3])
    throw_range("A: expected shape [r, " + std::to_string(W.shape[1]) + ", " + std::to_string(W.shape[2]) + ", " +
                std::to_string(W.shape[3]) + "] (groups 1), got " + shape_str(A.shape));
  int64_t r = A.shape[0];
  require_same_shape(B, {O, r, 1, 1}, "B");
  require_same_shape(out, W.shape, "out");
  TensorRef w2 = W, a2 = A, b2 = B, o2 = out;
  w2.shape = {O, K};
  a2.shape = {r, K};
  b2.shape = {O, r};
  o2.shape = {O, K};
  if (dev == Device::CUDA && (out.dtype != W.dtype || A.dtype != B.dtype))
    throw_type("out, A, B: on cuda, out must have the weight's dtype and A and B one dtype");
  c.run = on_device(
      dev, [=] { cpu::merge_delta(w2, a2, b2, scale, false, o2); },
      [=] { LK_IF_CUDA(cuda::merge_delta(w2, a2, b2, scale, false, o2);) });
  return c;
}

void InitParity(Napi::Env env, Napi::Object exports) {
  exports.Set("mixedLinearForward", Napi::Function::New<RunSync<BuildMixedLinearForward>>(env, "mixedLinearForward"));
  exports.Set("doraWeightNorm", Napi::Function::New<RunSync<BuildDoraWeightNorm>>(env, "doraWeightNorm"));
  exports.Set("doraLinearForward", Napi::Function::New<RunSync<BuildDoraLinearForward>>(env, "doraLinearForward"));
  exports.Set("doraLinearBackward", Napi::Function::New<RunSync<BuildDoraLinearBackward>>(env, "doraLinearBackward"));
  exports.Set("embeddingForward", Napi::Function::New<RunSync<BuildEmbeddingForward>>(env, "embeddingForward"));
  exports.Set("embeddingBackward", Napi::Function::New<RunSync<BuildEmbeddingBackward>>(env, "embeddingBackward"));
  exports.Set("conv2dForward", Napi::Function::New<RunSync<BuildConv2dForward>>(env, "conv2dForward"));
  exports.Set("conv2dBackward", Napi::Function::New<RunSync<BuildConv2dBackward>>(env, "conv2dBackward"));
  exports.Set("conv2dMergeDelta", Napi::Function::New<RunSync<BuildConv2dMergeDelta>>(env, "conv2dMergeDelta"));
  exports.Set("doraMerge", Napi::Function::New<RunSync<BuildDoraMerge>>(env, "doraMerge"));
}

}  // namespace napi
}  // namespace lorakit
