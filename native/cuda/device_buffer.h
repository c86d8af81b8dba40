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
  Buf& operator=(Buf&& o) noexcept {
    if (this != &o) {
      if (p) cuda::free(p, n);
      p = o.p;
      n = o.n;
      o.p = nullptr;
    }
    return *this;
  }
  ~Buf() {
    if (p) cuda::free(p, n);
  }
  float* f() const { return static_cast<float*>(p); }
};

// t's data when it already has dtype dt, else a converted copy kept alive by `hold`.
inline const void* in_dtype(const TensorRef& t, DType dt, std::vector<Buf>& hold) {
  if (t.dtype == dt) return t.data;
  hold.emplace_back(t.numel() * dtype_size(dt));
  convert(t.data, t.dtype, hold.back().p, dt, t.numel());
  return hold.back().p;
}

inline const float* as_f32(const TensorRef& t, std::vector<Buf>& hold) {
  return static_cast<const float*>(in_dtype(t, DType::F32, hold));
}

}  // namespace cuda
}  // namespace lorakit
