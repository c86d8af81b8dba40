// CPU-only timing harness for the bf16 GEMM (the LoRA base GEMM y = x·Wᵀ, x [n, d], W [d, d] bf16),
// for kernel iteration where Node is not at hand. Build (repository root):
//   g++ -O3 -std=c++17 -pthread -Inative bench/harness/gemm_bf16.cc native/core/*.cc native/cpu/*.cc -o gemm_bf16
// Run: LORAKIT_CPU_PATH=amx ./gemm_bf16 <threads> <d> <n>...   prints path, peak, GFLOP/s and % of peak.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "core/thread_pool.h"
#include "cpu/gemm.h"
#include "cpu/microkernel.h"
#include "cpu/peak.h"

using namespace lorakit;

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int main(int argc, char** argv) {
  if (argc < 4) return std::fprintf(stderr, "usage: %s threads d n...\n", argv[0]), 2;
  set_num_threads(std::atoi(argv[1]));
  const int64_t d = std::atoll(argv[2]);
  const KernelTable& kt = kernel_table();
  Peaks p = measure_peaks(64 << 20);
  const double peak = p.amx_gflops > 0 ? p.amx_gflops : p.bf16_dot_gflops > 0 ? p.bf16_dot_gflops : p.fma_gflops;
  std::printf("path %s threads %d peak %.1f GFLOP/s (amx %.1f, dpbf16 %.1f, fma %.1f)\n", kt.name, num_threads(), peak,
              p.amx_gflops, p.bf16_dot_gflops, p.fma_gflops);
  std::vector<uint16_t> W(d * d);
  for (int64_t i = 0; i < d * d; i++) W[i] = f32_to_bf16(0.02f * std::sin(0.37f * i));
  for (int a = 3; a < argc; a++) {
    const int64_t n = std::atoll(argv[a]);
    std::vector<uint16_t> x(n * d), y(n * d);
    for (int64_t i = 0; i < n * d; i++) x[i] = f32_to_bf16(std::cos(0.11f * i));
    std::vector<KSegment> segs{{row_major(x.data(), DType::BF16, d), transposed(W.data(), DType::BF16, d), d, 1.f}};
    GemmOutput o;
    o.data = y.data();
    o.dtype = DType::BF16;
    o.ldc = d;
    gemm(n, d, segs, o);
    // spot check against a float64 dot product
    double worst = 0;
    for (int64_t t = 0; t < 64; t++) {
      int64_t i = (t * 7919) % n, j = (t * 104729) % d;
      double ref = 0;
      for (int64_t k = 0; k < d; k++) ref += double(bf16_to_f32(x[i * d + k])) * bf16_to_f32(W[j * d + k]);
      worst = std::max(worst, std::fabs(bf16_to_f32(y[i * d + j]) - ref) / (std::fabs(ref) + 1e-3));
    }
    std::vector<double> ts;
    double t0 = now();
    while (ts.size() < 5 || (ts.size() < 200 && now() - t0 < 0.3)) {
      double a0 = now();
      gemm(n, d, segs, o);
      ts.push_back(now() - a0);
    }
    std::sort(ts.begin(), ts.end());
    const double gf = 2.0 * n * d * d / ts[0] / 1e9;
    std::printf("d=%lld n=%lld best %.3f ms median %.3f ms  %.1f GFLOP/s  %.1f%% peak  spot rel err %.1e\n", (long long)d,
                (long long)n, ts[0] * 1e3, ts[ts.size() / 2] * 1e3, gf, 100 * gf / peak, worst);
  }
  return 0;
}
