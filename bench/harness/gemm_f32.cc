// CPU-only timing harness for the f32 base GEMM y = x·Wᵀ (x [n, d], W [d, d] row-major, the layout
// of `lorakit bench`'s gemm row), for kernel iteration without Node. Build (repository root):
//   g++ -O3 -std=c++17 -pthread -Inative bench/harness/gemm_f32.cc native/core/*.cc native/cpu/*.cc -o gemm_f32
// Run: ./gemm_f32 <threads> <d> <n>...   prints the path and, per n, best/median ms, GFLOP/s (wall and per CPU-second), with
// the largest relative error of 64 sampled outputs against a double-precision dot product. Compare
// with OpenBLAS by alternating with native/bench/openblas_ref.c's binary (separate processes:
// OpenBLAS's spinning threads would otherwise share the cores). REPS (env) sets the timed runs.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <sys/mman.h>
#include <vector>
#include "core/thread_pool.h"
#include "cpu/gemm.h"
#include "cpu/microkernel.h"

using namespace lorakit;

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Process CPU time: on a shared machine, FLOPs per CPU-second is the per-core rate whatever the
// other processes do (the pool's workers sleep when idle, so they add no time of their own).
static double cpu_now() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char** argv) {
  if (argc < 4) return std::fprintf(stderr, "usage: gemm_f32 THREADS D N...\n"), 2;
  set_num_threads(std::atoi(argv[1]));
  const int64_t d = std::atoll(argv[2]);
  const int reps = std::getenv("REPS") ? std::max(1, std::atoi(std::getenv("REPS"))) : 10;
  const GemmBlocks& bl = gemm_blocks();
  std::printf("path %s threads %d blocks mc %lld kc %lld nc %lld (%s)\n", kernel_table().name, num_threads(),
              (long long)bl.mc, (long long)bl.kc, (long long)bl.nc, bl.source);
  // HUGE=1: W in transparent huge pages (madvise), to see what TLB misses cost the packing of Wᵀ.
  const size_t wbytes = (d * d * sizeof(float) + (2u << 20) - 1) / (2u << 20) * (2u << 20);
  float* w = static_cast<float*>(std::aligned_alloc(2u << 20, wbytes));
  if (std::getenv("HUGE")) madvise(w, wbytes, MADV_HUGEPAGE);
  unsigned seed = 1;
  for (int64_t i = 0; i < d * d; i++) w[i] = static_cast<float>(rand_r(&seed)) / RAND_MAX - 0.5f;
  for (int a = 3; a < argc; a++) {
    const int64_t n = std::atoll(argv[a]);
    std::vector<float> x(n * d), y(n * d);
    for (auto& v : x) v = static_cast<float>(rand_r(&seed)) / RAND_MAX - 0.5f;
    std::vector<KSegment> segs{{row_major(x.data(), DType::F32, d), transposed(w, DType::F32, d), d, 1.f}};
    GemmOutput out{y.data(), DType::F32, d};
    gemm(n, d, segs, out);  // warm-up
    std::vector<double> t, ct;
    for (int r = 0; r < reps; r++) {
      double t0 = now(), c0 = cpu_now();
      gemm(n, d, segs, out);
      t.push_back(now() - t0);
      ct.push_back(cpu_now() - c0);
    }
    std::sort(t.begin(), t.end());
    std::sort(ct.begin(), ct.end());
    double worst = 0;
    for (int q = 0; q < 64; q++) {
      int64_t i = rand_r(&seed) % n, j = rand_r(&seed) % d;
      double ref = 0, mag = 0;
      for (int64_t k = 0; k < d; k++) {
        ref += double(x[i * d + k]) * w[j * d + k];
        mag += std::fabs(double(x[i * d + k]) * w[j * d + k]);
      }
      worst = std::max(worst, std::fabs(y[i * d + j] - ref) / (mag > 0 ? mag : 1));
    }
    std::printf("{\"n\":%lld,\"d\":%lld,\"best_ms\":%.3f,\"median_ms\":%.3f,\"gflops\":%.1f,\"cpu_gflops\":%.1f,\"maxRelErr\":%.2g}\n",
                (long long)n, (long long)d, t[0] * 1e3, t[reps / 2] * 1e3, 2.0 * n * d * d / t[0] / 1e9,
                2.0 * n * d * d / ct[0] / 1e9, worst);
  }
  std::free(w);
  return 0;
}
