// Elementwise ops: dropout, dtype conversion (also across devices) and the finiteness check.
// Argument checks only.
#include <napi.h>
#include <memory>
#include <vector>
#include "../core/backend.h"
#include "args.h"
#include "operands.h"
#include "ops.h"

namespace lorakit {
namespace napi {
namespace {

// Copies src into dst converting dtypes, within a device or between the host and a device
// (through a host staging buffer when the dtypes differ).
void convert_between(const TensorRef& s, const Backend& sb, const TensorRef& d, const Backend& db) {
  const int64_t n = s.numel();
  if (&sb == &db) {
    sb.convert(s.data, s.dtype, d.data, d.dtype, n);
    return;
  }
  const Backend& host = backend_for(Device::CPU);
  const size_t sbytes = static_cast<size_t>(n) * dtype_size(s.dtype), dbytes = static_cast<size_t>(n) * dtype_size(d.dtype);
  if (&sb == &host) {  // host → device
    if (s.dtype == d.dtype) {
      db.copy_from_host(d.data, s.data, dbytes);
    } else {
      std::vector<uint8_t> tmp(dbytes);
      host.convert(s.data, s.dtype, tmp.data(), d.dtype, n);
      db.copy_from_host(d.data, tmp.data(), dbytes);
    }
  } else if (&db == &host) {  // device → host
    if (s.dtype == d.dtype) {
      sb.copy_to_host(d.data, s.data, sbytes);
    } else {
      std::vector<uint8_t> tmp(sbytes);
      sb.copy_to_host(tmp.data(), s.data, sbytes);
      host.convert(tmp.data(), s.dtype, d.data, d.dtype, n);
    }
  } else {
    throw_type(std::string("dst: cannot copy from ") + sb.name + " to " + db.name + " directly");
  }
}

}  // namespace

// dropout(x, p, seed, stream, out); out may be x
KernelCall BuildDropout(const Napi::CallbackInfo& info) {
  KernelCall c;
  Device dev = device_of(info[0], "x");
  TensorRef x = float_operand(c, info[0], "x", dev, Access::ReadInPlace);
  float p = dropout_prob(get_number(info, 1, "p"), "p");
  uint64_t seed = to_seed(get_number(info, 2, "seed"), "seed");
  uint64_t stream = to_counter(get_number(info, 3, "stream"), "stream");
  TensorRef out = float_operand(c, info[4], "out", dev, Access::Write);
  require_same_shape(out, x.shape, "out");
  auto dropout = LORAKIT_OP(dev, dropout);
  c.run = [=] { dropout(x, p, seed, stream, out); };
  return c;
}

// convert(src, dst): copies src into dst, converting float dtypes; integer tensors must match.
KernelCall BuildConvert(const Napi::CallbackInfo& info) {
  KernelCall c;
  NativeTensor* st = get_tensor(info[0], "src");
  NativeTensor* dt = get_tensor(info[1], "dst");
  const Backend* sb = &backend_for(st->device());
  const Backend* db = &backend_for(dt->device());
  TensorRef s = c.read(st, "src", /*inplace_ok=*/true);
  TensorRef d = c.write(dt, "dst");
  if (s.numel() != d.numel())
    throw_range("src: has " + std::to_string(s.numel()) + " elements (shape " + shape_str(s.shape) +
                ") but dst has " + std::to_string(d.numel()) + " (shape " + shape_str(d.shape) + ")");
  if (dtype_is_float(s.dtype) != dtype_is_float(d.dtype) || (!dtype_is_float(s.dtype) && s.dtype != d.dtype))
    throw_type(std::string("dst: cannot convert ") + dtype_name(s.dtype) + " to " + dtype_name(d.dtype));
  c.run = [=] { convert_between(s, *sb, d, *db); };
  return c;
}

// allFinite(t) → boolean
KernelCall BuildAllFinite(const Napi::CallbackInfo& info) {
  KernelCall c;
  Device dev = device_of(info[0], "tensor");
  TensorRef t = float_operand(c, info[0], "tensor", dev);
  auto all_finite = LORAKIT_OP(dev, all_finite);
  auto finite = std::make_shared<bool>(false);
  c.run = [t, finite, all_finite] { *finite = all_finite(t); };
  c.result = [finite](Napi::Env env) -> Napi::Value { return Napi::Boolean::New(env, *finite); };
  return c;
}

}  // namespace napi
}  // namespace lorakit
