#include "tensor.h"
#include <cstdlib>
#include <cstring>
#include <new>
#if (defined(__unix__) || defined(__APPLE__)) && !defined(__SANITIZE_ADDRESS__)
#include <sys/mman.h>
#define LORAKIT_HAVE_MMAP 1  // not under ASan: malloc'd buffers get redzones, mapped ones do not
#endif

namespace lorakit {

namespace {
const DeviceMemory* g_cuda_memory = nullptr;
}

void set_device_memory(Device device, const DeviceMemory* fns) {
  if (device == Device::CUDA) g_cuda_memory = fns;
}

std::shared_ptr<Storage> Storage::allocate(size_t nbytes, Device device, bool zero) {
  auto s = std::make_shared<Storage>();
  if (device == Device::CUDA) {
    if (!g_cuda_memory) throw_type("device: 'cuda' is not available in this build");
    s->data = g_cuda_memory->alloc(nbytes, zero);
    s->nbytes = nbytes;
    s->device = device;
    return s;
  }
  size_t rounded = ((nbytes + 63) / 64) * 64;
  if (rounded == 0) rounded = 64;
  void* p = nullptr;
#ifdef LORAKIT_HAVE_MMAP
  // Large buffers map pages directly: they arrive zeroed, and dispose() returns them to the OS at
  // once (aligned malloc of big blocks fragments glibc's heap and keeps freed memory resident).
  if (rounded >= (size_t(1) << 18)) {
    p = mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      p = nullptr;
    } else {
      s->mapped = true;
      // Every page of a fresh mapping faults on first touch, which a kernel's output (written
      // once, right away) pays on each call: 2048 faults for an 8 MiB output, a quarter of an f32
      // GEMM's time at n = 512 in a VM where faults are slow. Huge pages where the kernel gives
      // them on request (4 faults; also fewer TLB misses for a weight read in column blocks),
      // then, where supported, all pages populated in one call instead of one trap each.
#if defined(MADV_HUGEPAGE)
      if (rounded >= (size_t(2) << 20)) madvise(p, rounded, MADV_HUGEPAGE);
#endif
#if defined(MADV_POPULATE_WRITE)
      madvise(p, rounded, MADV_POPULATE_WRITE);  // best effort: EINVAL before Linux 5.14
#endif
    }
  }
#endif
  if (!p) {
    p = std::aligned_alloc(64, rounded);  // 64-byte alignment for vector loads
    if (p) std::memset(p, 0, rounded);
  }
  if (!p) throw Error(ErrorKind::Range, "out of memory allocating " + std::to_string(nbytes) + " bytes");
  s->data = p;
  s->nbytes = nbytes;
  s->device = device;
  return s;
}

std::shared_ptr<Storage> Storage::external_cpu(void* data, size_t nbytes) {
  auto s = std::make_shared<Storage>();
  s->data = data;
  s->nbytes = nbytes;
  s->external = true;
  return s;
}

void Storage::release() {
  if (external) {
    data = nullptr;
    return;
  }
  if (data && device == Device::CPU) {
#ifdef LORAKIT_HAVE_MMAP
    if (mapped) munmap(data, ((nbytes + 63) / 64) * 64);
    else
#endif
      std::free(data);
  }
  if (data && device == Device::CUDA && g_cuda_memory) g_cuda_memory->free(data, nbytes);
  data = nullptr;
}

int64_t checked_numel(const std::vector<int64_t>& shape, const char* what) {
  int64_t n = 1;
  for (auto d : shape) {
    if (d < 0) throw_range(std::string(what) + ": negative dimension in shape " + shape_str(shape));
    if (d != 0 && n > (int64_t(1) << 53) / d)
      throw_range(std::string(what) + ": shape " + shape_str(shape) + " has too many elements");
    n *= d;
  }
  return n;
}

}  // namespace lorakit
