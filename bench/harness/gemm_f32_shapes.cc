// CPU-only timing of the f32 GEMM y = x·Wᵀ on one rectangular shape (x [m, k], W [n, k] row-major), best of
// REPS calls after 6 warm-up calls (the block timing of gemm_blocks.cc settles in them). For comparing the
// in-place and packed forms of W in alternated processes (LORAKIT_GEMM_W_IN_PLACE=0 packs). Build (repository root):
//   g++ -O3 -std=c++17 -pthread -Inative bench/harness/gemm_f32_shapes.cc native/core/*.cc native/cpu/*.cc -o gemm_f32_shapes
// Run: ./gemm_f32_shapes m n k [reps]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <vector>
#include "core/thread_pool.h"
#include "cpu/gemm.h"
using namespace lorakit;
int main(int argc, char** argv) {
  int64_t m = atoll(argv[1]), n = atoll(argv[2]), k = atoll(argv[3]); int reps = argc > 4 ? atoi(argv[4]) : 4;
  unsigned seed = 7;
  std::vector<float> x(m * k), w(n * k), y(m * n);
  for (auto& v : w) v = (float)rand_r(&seed) / RAND_MAX - 0.5f;
  for (auto& v : x) v = (float)rand_r(&seed) / RAND_MAX - 0.5f;
  std::vector<KSegment> segs{{row_major(x.data(), DType::F32, k), transposed(w.data(), DType::F32, k), k, 1.f}};
  GemmOutput out{y.data(), DType::F32, n};
  double best = 1e9;
  for (int r = 0; r < reps + 6; r++) {
    auto t0 = std::chrono::steady_clock::now();
    gemm(m, n, segs, out);
    double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r >= 6) best = std::min(best, t);
  }
  printf("m %lld n %lld k %lld best %.3f ms %.1f GFLOP/s\n", (long long)m, (long long)n, (long long)k, best * 1e3, 2.0 * m * n * k / best / 1e9);
}
