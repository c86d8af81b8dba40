// Device discovery, the backend's stream, the caching allocator and copies.
#include <mutex>
#include <unordered_map>
#include <vector>
#include "../core/tensor.h"
#include "common.cuh"
#include "runtime.h"

namespace lorakit {
namespace cuda {

void fail(cudaError_t e, const char* what) {
  cudaGetLastError();  // clear a non-sticky error so later calls can succeed
  std::string msg = std::string("cuda: ") + what + " failed: " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
  if (e == cudaErrorMemoryAllocation) throw Error(ErrorKind::Range, msg);
  throw Error(ErrorKind::State, msg);
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::string device_description() {
  if (device_count() == 0) return "";
  cudaDeviceProp p;
  if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) return "";
  return std::string(p.name) + " (sm_" + std::to_string(p.major) + std::to_string(p.minor) + ", " +
         std::to_string(p.totalGlobalMem >> 30) + " GiB)";
}

int sm_count() {
  static const int n = [] {
    int v = 0;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, 0) != cudaSuccess) {
      cudaGetLastError();
      v = 0;
    }
    return v > 0 ? v : 1;
  }();
  return n;
}

namespace {

// Process-wide state, deliberately leaked: destroying streams in static destructors can run
// after the driver has shut down.
struct State {
  std::mutex mu;
  cudaStream_t stream = nullptr;
  std::unordered_map<size_t, std::vector<void*>> free_blocks;
  size_t cached = 0, allocated = 0;
  cudaEvent_t t0 = nullptr, t1 = nullptr;
};

State& state() {
  static State* s = new State();
  return *s;
}

// Small blocks round to 512 B, large ones to 2 MiB, so sizes that differ a little share bins.
size_t round_size(size_t n) {
  if (n == 0) n = 1;
  const size_t small = 512, large = size_t(2) << 20;
  return n < (size_t(1) << 20) ? (n + small - 1) / small * small : (n + large - 1) / large * large;
}

void release_cache_locked(State& s) {
  for (auto& kv : s.free_blocks)
    for (void* p : kv.second) cudaFree(p);
  s.free_blocks.clear();
  s.cached = 0;
}

}  // namespace

cudaStream_t stream() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  if (!s.stream) {
    if (device_count() == 0) throw_state("cuda: no CUDA device is available on this machine");
    LK_CUDA(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking), "cudaStreamCreate");
  }
  return s.stream;
}

void* alloc(size_t nbytes, bool zero) {
  cudaStream_t st = stream();
  State& s = state();
  size_t sz = round_size(nbytes);
  void* p = nullptr;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    auto it = s.free_blocks.find(sz);
    if (it != s.free_blocks.end() && !it->second.empty()) {
      p = it->second.back();
      it->second.pop_back();
      s.cached -= sz;
    } else {
      cudaError_t e = cudaMalloc(&p, sz);
      if (e == cudaErrorMemoryAllocation) {  // give the cache back and retry once
        cudaGetLastError();
        cudaStreamSynchronize(st);
        release_cache_locked(s);
        e = cudaMalloc(&p, sz);
      }
      if (e != cudaSuccess) {
        cudaGetLastError();
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        std::string msg = "cuda: out of memory allocating " + std::to_string(nbytes) + " bytes (" +
                          std::to_string(fr >> 20) + " MiB free of " + std::to_string(tot >> 20) + " MiB)";
        if (e != cudaErrorMemoryAllocation) msg = std::string("cuda: cudaMalloc failed: ") + cudaGetErrorString(e);
        throw Error(e == cudaErrorMemoryAllocation ? ErrorKind::Range : ErrorKind::State, msg);
      }
    }
    s.allocated += sz;
  }
  if (zero) LK_CUDA(cudaMemsetAsync(p, 0, nbytes, st), "cudaMemsetAsync");
  return p;
}

void free(void* p, size_t nbytes) {
  if (!p) return;
  State& s = state();
  size_t sz = round_size(nbytes);
  std::lock_guard<std::mutex> lock(s.mu);
  // All work runs on one stream, so a block freed here is reused only by later work on it.
  s.free_blocks[sz].push_back(p);
  s.cached += sz;
  s.allocated -= sz;
}

size_t cached_bytes() {
  std::lock_guard<std::mutex> lock(state().mu);
  return state().cached;
}

size_t allocated_bytes() {
  std::lock_guard<std::mutex> lock(state().mu);
  return state().allocated;
}

void empty_cache() {
  cudaStream_t st = stream();
  LK_CUDA(cudaStreamSynchronize(st), "cudaStreamSynchronize");
  std::lock_guard<std::mutex> lock(state().mu);
  release_cache_locked(state());
}

void copy_to_device(void* dst, const void* src, size_t nbytes) {
  if (!nbytes) return;
  cudaStream_t st = stream();
  LK_CUDA(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, st), "copy to device");
  LK_CUDA(cudaStreamSynchronize(st), "copy to device");  // the host buffer is a temporary
}

void copy_to_host(void* dst, const void* src, size_t nbytes) {
  if (!nbytes) return;
  cudaStream_t st = stream();
  LK_CUDA(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, st), "copy to host");
  LK_CUDA(cudaStreamSynchronize(st), "copy to host");
}

void copy_device(void* dst, const void* src, size_t nbytes) {
  if (!nbytes || dst == src) return;
  LK_CUDA(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, stream()), "device copy");
}

void synchronize() { LK_CUDA(cudaStreamSynchronize(stream()), "cudaStreamSynchronize"); }

void timer_start() {
  cudaStream_t st = stream();
  State& s = state();
  if (!s.t0) {
    LK_CUDA(cudaEventCreate(&s.t0), "cudaEventCreate");
    LK_CUDA(cudaEventCreate(&s.t1), "cudaEventCreate");
  }
  LK_CUDA(cudaEventRecord(s.t0, st), "cudaEventRecord");
}

double timer_stop_ms() {
  cudaStream_t st = stream();
  State& s = state();
  if (!s.t0) throw_state("cuda timer: stop() without start()");
  LK_CUDA(cudaEventRecord(s.t1, st), "cudaEventRecord");
  LK_CUDA(cudaEventSynchronize(s.t1), "cudaEventSynchronize");
  float ms = 0;
  LK_CUDA(cudaEventElapsedTime(&ms, s.t0, s.t1), "cudaEventElapsedTime");
  return ms;
}

namespace {
const DeviceMemory kMemory{&alloc, &free};
}

void register_memory() { set_device_memory(Device::CUDA, &kMemory); }

}  // namespace cuda
}  // namespace lorakit
