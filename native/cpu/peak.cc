#include "peak.h"
#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include "../core/thread_pool.h"
#include "microkernel.h"

namespace lorakit {
namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Best rate of a few runs of `work(task)` on every pool thread; each run's amount is `units(iters)`.
template <typename Work>
double best_parallel_rate(int threads, int repeats, Work work) {
  double best = 0;
  for (int r = 0; r < repeats; r++) {
    std::unique_ptr<double[]> done(new double[threads]());
    double t0 = now();
    parallel_for(threads, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; t++) done[t] = work(t);
    });
    double dt = now() - t0;
    double total = 0;
    for (int t = 0; t < threads; t++) total += done[t];
    best = std::max(best, total / dt);
  }
  return best;
}

int64_t calibrate(double (*fn)(int64_t), double seconds) {
  int64_t iters = 1 << 12;
  for (;;) {
    double t0 = now();
    fn(iters);
    double dt = now() - t0;
    if (dt > seconds / 4 || iters > (int64_t(1) << 40)) return static_cast<int64_t>(iters * seconds / std::max(dt, 1e-9));
    iters *= 4;
  }
}

}  // namespace

Peaks measure_peaks(int64_t buffer_bytes) {
  const KernelTable& kt = kernel_table();
  Peaks p;
  p.threads = num_threads();
  int64_t it = calibrate(kt.fma_peak, 0.05);
  p.fma_gflops = best_parallel_rate(p.threads, 3, [&](int64_t) { return kt.fma_peak(it); }) / 1e9;
  if (kt.amx_peak) {
    int64_t ia = calibrate(kt.amx_peak, 0.05);
    p.amx_gflops = best_parallel_rate(p.threads, 3, [&](int64_t) { return kt.amx_peak(ia); }) / 1e9;
  }
  int64_t words = std::max<int64_t>(buffer_bytes / 8, 1 << 20);
  std::unique_ptr<uint64_t[]> src(new uint64_t[words]), dst(new uint64_t[words]);
  for (int64_t i = 0; i < words; i++) src[i] = static_cast<uint64_t>(i), dst[i] = 0;  // touch every page
  const int64_t chunk = (words + p.threads - 1) / p.threads;
  p.copy_gbs = best_parallel_rate(p.threads, 4, [&](int64_t t) {
                 int64_t b = t * chunk, e = std::min(words, b + chunk);
                 if (b >= e) return 0.0;
                 std::memcpy(dst.get() + b, src.get() + b, (e - b) * 8);
                 return 2.0 * (e - b) * 8;
               }) / 1e9;
  volatile uint64_t sink = 0;
  p.read_gbs = best_parallel_rate(p.threads, 4, [&](int64_t t) {
                 int64_t b = t * chunk, e = std::min(words, b + chunk);
                 uint64_t lanes[8] = {};  // independent lanes: vectorised by the compiler
                 int64_t i = b;
                 for (; i + 8 <= e; i += 8)
                   for (int l = 0; l < 8; l++) lanes[l] += src[i + l];
                 for (; i < e; i++) lanes[0] += src[i];
                 uint64_t s = 0;
                 for (int l = 0; l < 8; l++) s += lanes[l];
                 sink = sink + s;
                 return 1.0 * (e > b ? e - b : 0) * 8;
               }) / 1e9;
  return p;
}

}  // namespace lorakit
