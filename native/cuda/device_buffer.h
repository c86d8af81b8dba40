// A device buffer from the caching allocator, returned at scope exit, and an f32 view of a float
// tensor (for the kernels that compute in f32 whatever the storage dtype).
#pragma once
#include <cstddef>
#include <vector>
#include "../core/tensor.h"
#include "ops.h"
#include "runtime.h"

namespace lorakit {
namespace cuda {

struct Buf {
  void* p = nullptr;
  size_t n = 0;
  explicit Buf(size_t bytes = 0) : p(bytes ? alloc(bytes, false) : nullptr), n(bytes) {}
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  Buf(Buf&& o) noexcept : p(o.p), n(o.n) { o.p = nullptr; }
  ~Buf() {
    if (p) cuda::free(p, n);
  }
  float* f() const { return static_cast<float*>(p); }
};

// t itself when it is f32, else a converted copy kept alive by `hold`.
inline const float* as_f32(const TensorRef& t, std::vector<Buf>& hold) {
  if (t.dtype == DType::F32) return t.as<float>();
  hold.emplace_back(t.numel() * sizeof(float));
  convert(t.data, t.dtype, hold.back().p, DType::F32, t.numel());
  return hold.back().f();
}

}  // namespace cuda
}  // namespace lorakit
