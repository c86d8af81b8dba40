// Tensor operands of a KernelCall: device, dtype and shape checks that record each tensor's use,
// and the adapter lists several op families share.
#pragma once
#include <napi.h>
#include <string>
#include <vector>
#include "../core/op_args.h"
#include "args.h"
#include "kernel_call.h"

namespace lorakit {
namespace napi {

enum class Access { Read, Write, ReadInPlace };

// A nullable tensor operand, held by value so a closure can carry it.
struct OptRef {
  TensorRef ref;
  bool set = false;
  const TensorRef* ptr() const { return set ? &ref : nullptr; }
};

// The device of a call: that of its tensor argument v (every other tensor must be there too).
Device device_of(const Napi::Value& v, const std::string& name);
// A float tensor on dev.
TensorRef float_operand(KernelCall& c, const Napi::Value& v, const std::string& name, Device dev,
                        Access a = Access::Read);
OptRef float_operand_or_null(KernelCall& c, const Napi::Value& v, const std::string& name, Device dev,
                             Access a = Access::Read);
// An f32 tensor on dev with exactly this shape (norms, saved pre-activations, conv shrinks).
TensorRef f32_operand(KernelCall& c, const Napi::Value& v, const std::string& name, Device dev,
                      const std::vector<int64_t>& shape, Access a);
// Outputs that the kernels cannot write in place of an input.
void require_distinct(const TensorRef& out, const TensorRef& in, const std::string& oname, const std::string& iname);
// Backends without mixed dtypes take one float dtype per call: every tensor named must have `want`.
void require_backend_dtype(Device dev, std::initializer_list<const TensorRef*> ts, DType want, const std::string& names,
                           const std::string& want_name);

// A [r, in] with r >= 1 and B [out, r]; names are prefix + "A" / "B".
void check_adapter(const TensorRef& A, const TensorRef& B, LinearDims d, const std::string& prefix);
// [A, B, scale][] with A [r, in], B [out, r].
std::vector<AdapterFactors> factor_list(KernelCall& c, const Napi::Value& v, int64_t in, int64_t out,
                                        const std::string& name, Device dev);
// A copy of an Int32Array of n per-row adapter indices, each -1 (none) or below count; copied
// because the JS array may change or be detached while async work runs. Nullable: empty for null.
std::vector<int32_t> row_adapter_arg(const Napi::Value& v, int64_t n, size_t count, const std::string& name,
                                     bool nullable);

}  // namespace napi
}  // namespace lorakit
