// The CUDA backend's host interface: device discovery, the caching allocator, copies and the
// stream. Plain C++ (no CUDA headers), so the N-API layer compiles with the host compiler.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace lorakit {
namespace cuda {

// Number of usable CUDA devices; 0 when there is no driver or GPU (never throws).
int device_count();
// "NVIDIA H200 (sm_90, 139 GiB)"; empty when no device.
std::string device_description();

// Registers the allocator with core's Storage (called once at module load).
void register_memory();

// Caching allocator: blocks are kept per rounded size and reused in stream order, so steady
// state does no cudaMalloc. On out-of-memory the cache is emptied and the allocation retried.
void* alloc(size_t nbytes, bool zero);
void free(void* p, size_t nbytes);
size_t cached_bytes();
size_t allocated_bytes();
void empty_cache();

// Copies on the backend's stream; the host-side calls return when the host buffer may be reused.
void copy_to_device(void* dst, const void* src, size_t nbytes);
void copy_to_host(void* dst, const void* src, size_t nbytes);
void copy_device(void* dst, const void* src, size_t nbytes);

// Waits for all work on the backend's stream; reports asynchronous kernel errors.
void synchronize();

// Device event timer for benchmarks: start() records, stop() records, syncs and returns ms.
void timer_start();
double timer_stop_ms();

}  // namespace cuda
}  // namespace lorakit
