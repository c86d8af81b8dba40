// CPU-only timing harness for the bf16 GEMM (the LoRA base GEMM y = x·Wᵀ, x [n, d], W [d, d] bf16),
// for kernel iteration where Node is not at hand. Build (repository root):
//   g++ -O3 -std=c++17 -pthread -Inative bench/harness/gemm_bf16.cc native/core/*.cc native/cpu/*.cc -o gemm_bf16
// Run: LORAKIT_CPU_PATH=amx ./gemm_bf16 <threads> <d> <n>...   prints path, peak, GFLOP/s and % of peak;
//      LORAKIT_CPU_PATH=amx ./gemm_bf16 micro                   one thread, one block, operands in cache.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>
#include "core/thread_pool.h"
#include "cpu/gemm.h"
#include "cpu/microkernel.h"
#include "cpu/peak.h"

using namespace lorakit;

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// One thread, one 32x32 block over K, operands resident in cache (L1 at K = 256, L2 up to 4096):
// the block kernels' own rate next to the register-only tile loop.
#ifndef LK_HARNESS_BEFORE_AVX512BF16
static int micro() {
  const KernelTable& kt = kernel_table();
  if (!kt.bf16_block || !kt.amx_peak) return std::printf("micro: needs LORAKIT_CPU_PATH=amx\n"), 1;
  double t0 = now();
  double pf = kt.amx_peak(1 << 22);
  const double peak = pf / (now() - t0) / 1e9;
  std::printf("one thread: register-only tile loop %.1f GFLOP/s\n", peak);
  for (int64_t K : {256, 1024, 4096, 16384}) {
    std::vector<uint16_t> w(32 * K), x(32 * K);
    for (int64_t i = 0; i < 32 * K; i++) w[i] = f32_to_bf16(0.01f * (i % 7)), x[i] = f32_to_bf16(0.02f * (i % 5));
    alignas(64) float acc[32 * 32] = {};
    const int64_t iters = std::max<int64_t>(4, int64_t(4e9 / (2.0 * 32 * 32 * K)));
    for (int v = 0; v < 2; v++) {
      double best = 1e30;
      for (int rep = 0; rep < 3; rep++) {
        double a0 = now();
        for (int64_t it = 0; it < iters; it++) {
          if (v == 0) kt.bf16_block_w(K, w.data(), K, nullptr, x.data(), acc, 32);
          else kt.bf16_block(K, w.data(), x.data(), acc, 32);
        }
        best = std::min(best, now() - a0);
      }
      const double gf = 2.0 * 32 * 32 * K * iters / best / 1e9;
      std::printf("K=%6lld %-26s %.1f GFLOP/s  %.0f%% of the tile loop (acc[0] %g)\n", (long long)K,
                  v == 0 ? "W in place (row stride K)" : "packed A and B", gf, 100 * gf / peak, acc[0]);
    }
  }
  return 0;
}
#endif

int main(int argc, char** argv) {
#ifndef LK_HARNESS_BEFORE_AVX512BF16
  if (argc == 2 && std::string(argv[1]) == "micro") return micro();
#endif
  if (argc < 4) return std::fprintf(stderr, "usage: %s threads d n...\n", argv[0]), 2;
  set_num_threads(std::atoi(argv[1]));
  const int64_t d = std::atoll(argv[2]);
  const KernelTable& kt = kernel_table();
  Peaks p = measure_peaks(64 << 20);
#ifdef LK_HARNESS_BEFORE_AVX512BF16  // building against sources older than the avx512bf16 path
  const double dot = 0;
#else
  const double dot = p.bf16_dot_gflops;
#endif
  const double peak = p.amx_gflops > 0 ? p.amx_gflops : dot > 0 ? dot : p.fma_gflops;
  std::printf("path %s threads %d peak %.1f GFLOP/s (amx %.1f, dpbf16 %.1f, fma %.1f)\n", kt.name, num_threads(), peak,
              p.amx_gflops, dot, p.fma_gflops);
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
