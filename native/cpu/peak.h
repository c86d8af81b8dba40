// The machine's ceilings, measured natively for the benchmark: f32 FMA rate of the active path,
// AMX bf16 tile rate or AVX512-BF16 vdpbf16ps rate (on those paths), and copy / read bandwidth over buffers far larger than cache.
#pragma once
#include <cstdint>

namespace lorakit {

struct Peaks {
  double fma_gflops = 0;   // all pool threads
  double amx_gflops = 0;   // 0 without AMX
  double bf16_dot_gflops = 0;  // vdpbf16ps rate on the avx512bf16 path; 0 elsewhere
  double copy_gbs = 0;     // bytes read + bytes written per second
  double read_gbs = 0;
  int threads = 0;
};

Peaks measure_peaks(int64_t buffer_bytes);

}  // namespace lorakit
