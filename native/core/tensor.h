// A contiguous, row-major tensor: shared storage plus dtype and shape. Kernels see TensorRef only.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>
#include "dtype.h"
#include "errors.h"

namespace lorakit {

enum class Device : int { CPU = 0, CUDA = 1 };

inline const char* device_name(Device d) { return d == Device::CUDA ? "cuda" : "cpu"; }

// Device memory functions, registered by a device backend at load time so that core does not
// depend on CUDA. alloc returns memory (zeroed when asked) or throws lorakit::Error; free never throws.
struct DeviceMemory {
  void* (*alloc)(size_t nbytes, bool zero);
  void (*free)(void* p, size_t nbytes);
};
void set_device_memory(Device device, const DeviceMemory* fns);

// Owns one allocation. Freed when the last reference drops or on explicit release().
struct Storage {
  void* data = nullptr;
  size_t nbytes = 0;
  Device device = Device::CPU;
  bool mapped = false;       // large CPU buffers come straight from mmap (see tensor.cc)
  bool external = false;     // memory owned elsewhere (a wrapped JS typed array): never freed here
  std::atomic<int> busy{0};     // > 0 while async work uses the buffer (no writes, no dispose)
  std::atomic<int> writers{0};  // > 0 while async work writes it (no reads either)
  // Bumped (on the JS thread) by every call that writes the buffer, so JS caches derived from a
  // tensor (the DoRA weight norm) can tell when it changed.
  std::atomic<uint64_t> version{0};
  // zero = false may leave device memory uninitialised (cpu memory is always zeroed).
  static std::shared_ptr<Storage> allocate(size_t nbytes, Device device, bool zero = true);
  // CPU memory the caller owns and keeps alive for the storage's lifetime (no copy, no free).
  static std::shared_ptr<Storage> external_cpu(void* data, size_t nbytes);
  void release();
  ~Storage() { release(); }
};

struct TensorRef {
  void* data = nullptr;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  int64_t numel() const {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
  int64_t dim(int i) const { return shape[i < 0 ? shape.size() + i : i]; }
  int64_t rows() const {  // product of all but the last dim
    int64_t n = 1;
    for (size_t i = 0; i + 1 < shape.size(); i++) n *= shape[i];
    return n;
  }
  template <class T> T* as() const { return static_cast<T*>(data); }
};

// Checked product of dims; throws on overflow or negative dims.
int64_t checked_numel(const std::vector<int64_t>& shape, const char* what);

}  // namespace lorakit
