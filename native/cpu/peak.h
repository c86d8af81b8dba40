// The machine's ceilings, measured natively for the benchmark: f32 FMA rate of the active path,
// AMX bf16 tile rate or AVX512-BF16 vdpbf16ps rate (on those paths), and copy / read bandwidth over buffers far larger than cache.
#pragma once
#include <cstdint>
#include <string>

namespace lorakit {

struct Peaks {
  double fma_gflops = 0;   // all pool threads
  double amx_gflops = 0;   // 0 without AMX
  double bf16_dot_gflops = 0;  // vdpbf16ps rate on the avx512bf16 path; 0 elsewhere
  double copy_gbs = 0;     // bytes read + bytes written per second
  double read_gbs = 0;
  int threads = 0;
  // Not measured here but reported with the peaks: the data caches (cache_sizes) and the GEMM block
  // sizes derived from them (gemm_blocks).
  int64_t l1d_bytes = 0, l2_bytes = 0, l3_bytes = 0;
  const char* cache_source = "";
  int64_t gemm_mc = 0, gemm_kc = 0, gemm_nc = 0;
  std::string gemm_blocks_source;
};

Peaks measure_peaks(int64_t buffer_bytes);

}  // namespace lorakit
