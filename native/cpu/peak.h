// The machine's ceilings, measured natively for the benchmark: f32 FMA rate of the active path,
// AMX bf16 tile rate (where present), and copy / read bandwidth over buffers far larger than cache.
#pragma once
#include <cstdint>

namespace lorakit {

struct Peaks {
  double fma_gflops = 0;   // all pool threads
  double amx_gflops = 0;   // 0 without AMX
  double copy_gbs = 0;     // bytes read + bytes written per second
  double read_gbs = 0;
  int threads = 0;
};

Peaks measure_peaks(int64_t buffer_bytes);

}  // namespace lorakit
