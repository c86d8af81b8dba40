// Device discovery, streams and their ordering, the caching allocator and copies.
#include <algorithm>
#include <map>
#include <mutex>
#include <vector>
#include "../core/tensor.h"
#include "common.cuh"
#include "graph_replay.h"
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

// A live allocation: the stream it belongs to (its pool) and the streams that used it since.
struct Block {
  size_t size;
  cudaStream_t home;
  cudaStream_t writer;  // the last stream that wrote it
  std::vector<cudaStream_t> readers;  // streams that read it after that write
};

// Process-wide state, deliberately leaked: destroying streams in static destructors can run
// after the driver has shut down.
struct State {
  std::mutex mu;
  cudaStream_t default_stream = nullptr;
  std::vector<cudaStream_t> streams;  // id - 1 → stream, never destroyed (ids may be queued)
  std::vector<bool> released;
  std::vector<uint64_t> free_ids;
  std::map<std::pair<cudaStream_t, size_t>, std::vector<void*>> free_blocks;
  std::map<uintptr_t, Block> live;
  size_t cached = 0, allocated = 0;
  uint64_t device_mallocs = 0;  // cudaMalloc calls made for blocks (a miss of the cache)
  cudaEvent_t order_event = nullptr;
  cudaEvent_t t0 = nullptr, t1 = nullptr;
};

State& state() {
  static State* s = new State();
  return *s;
}

thread_local uint64_t t_current = 0;
thread_local GraphHold* t_hold = nullptr;

// Small blocks round to 512 B, large ones to 2 MiB, so sizes that differ a little share bins.
size_t round_size(size_t n) {
  if (n == 0) n = 1;
  const size_t small = 512, large = size_t(2) << 20;
  return n < (size_t(1) << 20) ? (n + small - 1) / small * small : (n + large - 1) / large * large;
}

void release_cache_locked(State& s) {
  cudaDeviceSynchronize();  // blocks in every stream's pool may still be in use by queued work
  cudaGetLastError();
  for (auto& kv : s.free_blocks)
    for (void* p : kv.second) cudaFree(p);
  s.free_blocks.clear();
  s.cached = 0;
}

cudaStream_t default_stream_locked(State& s) {
  if (!s.default_stream) {
    if (device_count() == 0) throw_state("cuda: no CUDA device is available on this machine");
    LK_CUDA(cudaStreamCreateWithFlags(&s.default_stream, cudaStreamNonBlocking), "cudaStreamCreate");
  }
  return s.default_stream;
}

cudaStream_t stream_locked(State& s, uint64_t id) {
  if (id == 0) return default_stream_locked(s);
  if (id > s.streams.size() || s.released[id - 1]) throw_state("stream: the cuda stream was disposed");
  return s.streams[id - 1];
}

// Makes `waiter` wait for the work queued on `other` so far (an event, no host sync).
void wait_for(State& s, cudaStream_t waiter, cudaStream_t other) {
  if (!other || other == waiter) return;
  if (!s.order_event) LK_CUDA(cudaEventCreateWithFlags(&s.order_event, cudaEventDisableTiming), "cudaEventCreate");
  LK_CUDA(cudaEventRecord(s.order_event, other), "cudaEventRecord");
  LK_CUDA(cudaStreamWaitEvent(waiter, s.order_event, 0), "cudaStreamWaitEvent");
}

Block* find_block(State& s, const void* p) {
  auto it = s.live.upper_bound(reinterpret_cast<uintptr_t>(p));
  if (it == s.live.begin()) return nullptr;
  --it;
  return reinterpret_cast<uintptr_t>(p) < it->first + it->second.size ? &it->second : nullptr;
}

}  // namespace

cudaStream_t stream() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  return stream_locked(s, t_current);
}

uint64_t create_stream() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  default_stream_locked(s);  // also the device check
  if (!s.free_ids.empty()) {
    uint64_t id = s.free_ids.back();
    s.free_ids.pop_back();
    s.released[id - 1] = false;
    return id;
  }
  cudaStream_t st = nullptr;
  LK_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), "cudaStreamCreate");
  s.streams.push_back(st);
  s.released.push_back(false);
  return s.streams.size();
}

void release_stream(uint64_t id) {
  if (id == 0) throw_range("stream: the default stream cannot be released");
  cudaStream_t st;
  {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mu);
    st = stream_locked(s, id);
    s.released[id - 1] = true;
    s.free_ids.push_back(id);
  }
  LK_CUDA(cudaStreamSynchronize(st), "cudaStreamSynchronize");
}

void synchronize_stream(uint64_t id) {
  cudaStream_t st;
  {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mu);
    st = stream_locked(s, id);
  }
  LK_CUDA(cudaStreamSynchronize(st), "cudaStreamSynchronize");
}

void set_current_stream(uint64_t id) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  if (id != 0) stream_locked(s, id);  // validates
  t_current = id;
}

uint64_t current_stream() { return t_current; }

void set_thread_stream(uint64_t id) { t_current = id; }

StreamScope::StreamScope(uint64_t id) : prev_(t_current) { t_current = id; }
StreamScope::~StreamScope() { t_current = prev_; }

void order_use(const void* p, bool write) {
  if (!p) return;
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  Block* b = find_block(s, p);
  if (!b) return;
  cudaStream_t cur = stream_locked(s, t_current);
  if (write) {
    wait_for(s, cur, b->writer);
    for (cudaStream_t r : b->readers) wait_for(s, cur, r);
    b->writer = cur;
    b->readers.clear();
  } else if (cur != b->writer && std::find(b->readers.begin(), b->readers.end(), cur) == b->readers.end()) {
    // A stream already among the readers waited for this write when it joined: no new wait (the
    // list is cleared by the next write), so frozen weights read every call cost one wait in all.
    wait_for(s, cur, b->writer);
    b->readers.push_back(cur);
  }
}

void* alloc(size_t nbytes, bool zero) {
  State& s = state();
  size_t sz = round_size(nbytes);
  void* p = nullptr;
  cudaStream_t st;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    st = stream_locked(s, t_current);
    auto it = s.free_blocks.find({st, sz});
    if (it != s.free_blocks.end() && !it->second.empty()) {
      p = it->second.back();
      it->second.pop_back();
      s.cached -= sz;
    } else {
      cudaError_t e = cudaMalloc(&p, sz);
      if (e == cudaErrorMemoryAllocation) {  // give the cache back and retry once
        cudaGetLastError();
        release_cache_locked(s);
        e = cudaMalloc(&p, sz);
      }
      if (e == cudaSuccess) s.device_mallocs++;
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
    s.live[reinterpret_cast<uintptr_t>(p)] = Block{sz, st, st, {}};
  }
  if (t_hold) t_hold->on_alloc(p);
  if (zero) LK_CUDA(cudaMemsetAsync(p, 0, nbytes, st), "cudaMemsetAsync");
  return p;
}

void free(void* p, size_t nbytes) {
  if (!p) return;
  if (t_hold && t_hold->on_free(p, nbytes)) return;  // kept for the graph being captured
  State& s = state();
  size_t sz = round_size(nbytes);
  std::lock_guard<std::mutex> lock(s.mu);
  cudaStream_t home = s.default_stream;
  auto it = s.live.find(reinterpret_cast<uintptr_t>(p));
  if (it != s.live.end()) {
    Block& b = it->second;
    home = b.home;
    // Its own stream reuses it next: that stream first waits for every other stream that used it.
    // Errors are dropped here (a finalizer cannot throw); the next call on the stream reports them.
    try {
      wait_for(s, home, b.writer);
      for (cudaStream_t r : b.readers) wait_for(s, home, r);
    } catch (const Error&) {
    }
    s.live.erase(it);
  }
  s.free_blocks[{home, sz}].push_back(p);
  s.cached += sz;
  s.allocated -= sz;
}

GraphHold::GraphHold() : prev_(t_hold) { t_hold = this; }

GraphHold::~GraphHold() {
  if (!active_) return;
  for (auto& b : finish()) cuda::free(b.first, b.second);
}

std::vector<std::pair<void*, size_t>> GraphHold::finish() {
  if (active_) {
    active_ = false;
    t_hold = prev_;
  }
  return std::move(kept_);
}

bool GraphHold::on_free(void* p, size_t nbytes) {
  auto it = std::find(allocated_.begin(), allocated_.end(), p);
  if (it == allocated_.end()) return false;
  allocated_.erase(it);
  kept_.emplace_back(p, nbytes);
  return true;
}

size_t cached_bytes() {
  std::lock_guard<std::mutex> lock(state().mu);
  return state().cached;
}

size_t allocated_bytes() {
  std::lock_guard<std::mutex> lock(state().mu);
  return state().allocated;
}

uint64_t device_mallocs() {
  std::lock_guard<std::mutex> lock(state().mu);
  return state().device_mallocs;
}

void empty_cache() {
  clear_graphs();  // first: the graphs' scratch goes back to the pool, then to the driver
  std::lock_guard<std::mutex> lock(state().mu);
  release_cache_locked(state());
}

void copy_to_device(void* dst, const void* src, size_t nbytes) {
  if (!nbytes) return;
  order_use(dst, true);
  cudaStream_t st = stream();
  LK_CUDA(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, st), "copy to device");
  LK_CUDA(cudaStreamSynchronize(st), "copy to device");  // the host buffer is a temporary
}

void copy_to_host(void* dst, const void* src, size_t nbytes) {
  if (!nbytes) return;
  order_use(src, false);
  cudaStream_t st = stream();
  LK_CUDA(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, st), "copy to host");
  LK_CUDA(cudaStreamSynchronize(st), "copy to host");
}

void copy_device(void* dst, const void* src, size_t nbytes) {
  if (!nbytes || dst == src) return;
  order_use(src, false);
  order_use(dst, true);
  LK_CUDA(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, stream()), "device copy");
}

void synchronize() {
  stream();  // the device check
  LK_CUDA(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

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
