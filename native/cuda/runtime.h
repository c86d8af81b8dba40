// The CUDA backend's host interface: device discovery, the caching allocator, copies and the
// stream. Plain C++ (no CUDA headers), so the N-API layer compiles with the host compiler.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace lorakit {
namespace cuda {

// Number of usable CUDA devices; 0 when there is no driver or GPU (never throws).
int device_count();
// "NVIDIA H200 (sm_90, 139 GiB)"; empty when no device.
std::string device_description();

// Streams. Id 0 is the backend's default stream; create_stream() hands out others (kept for the
// process and reused after release, so ids stay valid for work already queued). Each thread runs
// its calls on its current stream (StreamScope sets it); memory records which streams used it and
// order_use() makes the current stream wait for the others where needed (events, no host sync).
uint64_t create_stream();
void release_stream(uint64_t id);      // waits for the stream's work first
void synchronize_stream(uint64_t id);  // waits for the stream's work
void set_current_stream(uint64_t id);  // this thread's; throws State for a released or unknown id
uint64_t current_stream();
// Sets this thread's current stream without checking the id (what StreamScope does): work queued
// on a stream runs there even if the stream was released meanwhile.
void set_thread_stream(uint64_t id);
class StreamScope {
 public:
  explicit StreamScope(uint64_t id);
  ~StreamScope();
  StreamScope(const StreamScope&) = delete;
  StreamScope& operator=(const StreamScope&) = delete;

 private:
  uint64_t prev_;
};
// Before work on the current stream reads (write = false) or writes device memory at p: waits
// for the other streams whose use of that block conflicts, then records this use. Memory the
// allocator does not own is ignored.
void order_use(const void* p, bool write);

// Registers the allocator with core's Storage (called once at module load).
void register_memory();

// Caching allocator: blocks are kept per (stream, rounded size) and reused in that stream's order,
// so steady state does no cudaMalloc. A block used on other streams makes its own stream wait for
// them when freed. On out-of-memory the cache is emptied and the allocation retried.
void* alloc(size_t nbytes, bool zero);
void free(void* p, size_t nbytes);

// For a graph capture (graph_replay.cu): while a GraphHold is active on a thread, blocks that
// thread allocates are kept, not returned to the pool, when freed, so no other tensor gets memory
// that a replay writes. finish() stops this and hands the kept blocks over (the graph frees them
// when it is destroyed); unreleased() counts blocks allocated meanwhile and still live. A hold
// destroyed unfinished frees what it kept.
class GraphHold {
 public:
  GraphHold();
  ~GraphHold();
  GraphHold(const GraphHold&) = delete;
  GraphHold& operator=(const GraphHold&) = delete;
  std::vector<std::pair<void*, size_t>> finish();
  size_t unreleased() const { return allocated_.size(); }
  // alloc() / free() on the holding thread.
  void on_alloc(void* p) { allocated_.push_back(p); }
  bool on_free(void* p, size_t nbytes);

 private:
  std::vector<void*> allocated_;
  std::vector<std::pair<void*, size_t>> kept_;
  GraphHold* prev_;
  bool active_ = true;
};
size_t cached_bytes();
size_t allocated_bytes();
uint64_t device_mallocs();  // cudaMalloc calls the caching allocator has made (its misses)
void empty_cache();

// Copies on the current stream, ordered after other streams' use of the memory; the host-side
// calls return when the host buffer may be reused.
void copy_to_device(void* dst, const void* src, size_t nbytes);
void copy_to_host(void* dst, const void* src, size_t nbytes);
void copy_device(void* dst, const void* src, size_t nbytes);

// Waits for all work on every stream; reports asynchronous kernel errors.
void synchronize();

// Device event timer for benchmarks: start() records, stop() records, syncs and returns ms.
void timer_start();
double timer_stop_ms();

}  // namespace cuda
}  // namespace lorakit
