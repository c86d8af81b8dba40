// Quantized bases (core/quant_formats.h; peft over bnb Linear8bitLt / Linear4bit, GGUF tensors):
// argument checks only. The quantized bytes live in an i32 tensor of quant_layout(spec).nbytes / 4
// words on the call's device; a spec arrives as {format, rows, cols, blockSize, doubleQuant}.
#include <napi.h>
#include <cstring>
#include <memory>
#include <string>
#include "../core/backend.h"
#include "args.h"
#include "linear_args.h"
#include "operands.h"
#include "ops.h"

namespace lorakit {
namespace napi {
namespace {

constexpr int64_t kMaxDim = int64_t{1} << 40;

// A QuantSpecArg object, checked: TypeError / RangeError naming `name.field`.
QuantSpec spec_arg(const Napi::Value& v, const std::string& name) {
  if (!v.IsObject() || v.IsArray()) throw_type(name + ": expected {format, rows, cols, blockSize, doubleQuant}");
  Napi::Object o = v.As<Napi::Object>();
  QuantSpec s;
  const Napi::Value f = o.Get("format");
  const std::string valid = "int8, nf4, fp4, q8_0, q4_0, q4_k, q6_k";
  if (!f.IsString()) throw_type(name + ".format: expected one of " + valid);
  const std::string fs = f.As<Napi::String>().Utf8Value();
  if (!quant_format_from_name(fs, &s.format)) throw_type(name + ".format: unknown format '" + fs + "' (expected one of " + valid + ")");
  s.rows = to_size(number_prop(o, "rows", name), 1, kMaxDim, name + ".rows");
  s.cols = to_size(number_prop(o, "cols", name), 1, kMaxDim, name + ".cols");
  if (s.rows > kMaxDim / s.cols) throw_range(name + ".rows: rows·cols is too large");
  const int64_t block = to_size(number_prop(o, "blockSize", name), 0, kMaxDim, name + ".blockSize");
  s.block = block == 0 ? quant_default_block(s.format, s.cols) : static_cast<int32_t>(std::min<int64_t>(block, INT32_MAX));
  const Napi::Value dq = o.Get("doubleQuant");
  if (!dq.IsBoolean()) throw_type(name + ".doubleQuant: expected a boolean");
  s.double_quant = dq.As<Napi::Boolean>().Value();
  const std::string why = quant_spec_problem(s);
  if (why.empty()) return s;
  // Which field is at fault: doubleQuant on another format, the block size itself, or cols that
  // the (valid) block size does not divide.
  if (s.double_quant && !quant_is_4bit_bnb(s.format)) throw_range(name + ".doubleQuant: " + why);
  QuantSpec whole = s;
  whole.cols = s.block;  // the same spec with one block per row: only the block size can fail it
  if (s.format != QuantFormat::INT8 && quant_spec_problem(whole).empty()) throw_range(name + ".cols: " + why);
  throw_range(name + ".blockSize: " + why);
}

// The i32 tensor holding spec's bytes on dev.
TensorRef quant_operand(KernelCall& c, const Napi::Value& v, const std::string& name, Device dev, const QuantSpec& s,
                        Access a) {
  NativeTensor* t = get_tensor(v, name);
  const TensorRef& r = t->ref();
  if (r.dtype != DType::I32) throw_type(name + ": expected the i32 tensor of a quantized weight, got " + dtype_name(r.dtype));
  if (t->device() != dev)
    throw_type(name + ": expected a " + std::string(device_name(dev)) + " tensor (like the other arguments), got a " +
               device_name(t->device()) + " tensor");
  const size_t nbytes = quant_layout(s).nbytes;
  if (static_cast<size_t>(r.numel()) * 4 != nbytes)
    throw_range(name + ": a " + quant_format_name(s.format) + " [" + std::to_string(s.rows) + ", " + std::to_string(s.cols) +
                "] weight takes " + std::to_string(nbytes / 4) + " i32 words (" + std::to_string(nbytes) + " bytes), got " +
                std::to_string(r.numel()));
  return a == Access::Write ? c.write(t, name) : c.read(t, name);
}

QuantWeight quant_weight(const TensorRef& q, const QuantSpec& s) { return QuantWeight{s, static_cast<const uint8_t*>(q.data)}; }

// quantLayout(spec) → {nbytes, dataOffset, dataBytes, nblocks}
Napi::Value QuantLayoutFn(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const QuantSpec s = spec_arg(info[0], "spec");
    const QuantLayout L = quant_layout(s);
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("nbytes", static_cast<double>(L.nbytes));
    o.Set("dataOffset", static_cast<double>(L.data_off));
    o.Set("dataBytes", static_cast<double>(L.data_bytes));
    o.Set("nblocks", static_cast<double>(L.nblocks));
    return o;
  });
}

// quantDynamicMap() → Float32Array(256): bnb's signed dynamic map (double quant's code book).
Napi::Value QuantDynamicMapFn(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    Napi::Float32Array a = Napi::Float32Array::New(info.Env(), 256);
    quant_dynamic_map(a.Data());
    return a;
  });
}

}  // namespace

// quantize(w: float [rows, cols], spec, out: i32 [nbytes / 4])
KernelCall BuildQuantize(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = device_of(info[0], "w");
  const TensorRef w = float_operand(c, info[0], "w", dev);
  const QuantSpec s = spec_arg(info[1], "spec");
  require_same_shape(w, {s.rows, s.cols}, "w");
  const TensorRef out = quant_operand(c, info[2], "out", dev, s, Access::Write);
  auto quantize = LORAKIT_OP(dev, quantize);
  c.run = [=] { quantize(w, s, static_cast<uint8_t*>(out.data)); };
  return c;
}

// dequantize(q: i32 [nbytes / 4], spec, out: float [rows, cols])
KernelCall BuildDequantize(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = device_of(info[0], "q");
  const QuantSpec s = spec_arg(info[1], "spec");
  const TensorRef q = quant_operand(c, info[0], "q", dev, s, Access::Read);
  const TensorRef out = float_operand(c, info[2], "out", dev, Access::Write);
  require_same_shape(out, {s.rows, s.cols}, "out");
  auto dequantize = LORAKIT_OP(dev, dequantize);
  c.run = [=] { dequantize(quant_weight(q, s), out); };
  return c;
}

// quantLoraForward(x, q, spec, bias|null, adapters: [A, B, scale, u|null][], y): loraForward over
// the quantized W [rows = out, cols = in].
KernelCall BuildQuantLoraForward(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = device_of(info[0], "x");
  const TensorRef x = float_operand(c, info[0], "x", dev);
  const QuantSpec s = spec_arg(info[2], "spec");
  const TensorRef q = quant_operand(c, info[1], "q", dev, s, Access::Read);
  const LinearDims d{s.cols, s.rows};
  require_last_dim(x, d.in, "x", "the weight's cols, in_features");
  const OptRef bias = float_operand_or_null(c, info[3], "bias", dev);
  if (bias.set) require_same_shape(bias.ref, {d.out}, "bias");
  const TensorRef y = float_operand(c, info[5], "y", dev, Access::Write);
  require_same_shape(y, with_last(x.shape, d.out), "y");
  auto a = fused_adapter_list(c, info[4], d, x.shape, dev);
  auto forward = LORAKIT_OP(dev, quant_lora_forward);
  c.run = [=] { forward(x, quant_weight(q, s), bias.ptr(), a->adapters, y); };
  return c;
}

// quantLinearBackward(dy, q, spec, terms: BackwardTermArg[], dx|null): linearBackward over the
// quantized W (dx through deq(W); dA, dB as usual).
KernelCall BuildQuantLinearBackward(const Napi::CallbackInfo& info) {
  KernelCall c;
  const Device dev = device_of(info[0], "dy");
  const TensorRef dy = float_operand(c, info[0], "dy", dev);
  const QuantSpec s = spec_arg(info[2], "spec");
  const TensorRef q = quant_operand(c, info[1], "q", dev, s, Access::Read);
  const LinearDims d{s.cols, s.rows};
  require_last_dim(dy, d.out, "dy", "the weight's rows, out_features");
  const OptRef dx = float_operand_or_null(c, info[4], "dx", dev, Access::Write);
  if (dx.set) require_same_shape(dx.ref, with_last(dy.shape, d.in), "dx");
  auto a = backward_term_list(c, info[3], d, dy.shape, dev);
  auto backward = LORAKIT_OP(dev, quant_linear_backward);
  c.run = [=] { backward(dy, quant_weight(q, s), a->terms, dx.ptr()); };
  return c;
}

void InitQuantFunctions(Napi::Env env, Napi::Object exports) {
  exports.Set("quantLayout", Napi::Function::New<QuantLayoutFn>(env, "quantLayout"));
  exports.Set("quantDynamicMap", Napi::Function::New<QuantDynamicMapFn>(env, "quantDynamicMap"));
}

}  // namespace napi
}  // namespace lorakit
