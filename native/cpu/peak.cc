#include "peak.h"
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include "../core/thread_pool.h"
#include "caches.h"
#include "gemm.h"
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

// Sums [b, e) as four interleaved streams (as the GEMV reads four rows of W at a time).
uint64_t read_portable(const uint64_t* p, int64_t n) {
  uint64_t lanes[8] = {};  // independent lanes: vectorised by the compiler
  const int64_t q = n / 4;
  for (int64_t i = 0; i + 2 <= q; i += 2)
    for (int s = 0; s < 4; s++) {
      lanes[2 * s] += p[s * q + i];
      lanes[2 * s + 1] += p[s * q + i + 1];
    }
  uint64_t t = 0;
  for (int l = 0; l < 8; l++) t += lanes[l];
  return t;
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2"))) uint64_t read_avx2(const uint64_t* p, int64_t n) {
  const int64_t q = n / 4;
  const __m256i* s0 = reinterpret_cast<const __m256i*>(p);
  const __m256i* s1 = reinterpret_cast<const __m256i*>(p + q);
  const __m256i* s2 = reinterpret_cast<const __m256i*>(p + 2 * q);
  const __m256i* s3 = reinterpret_cast<const __m256i*>(p + 3 * q);
  __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
  for (int64_t i = 0; i < q / 4; i++) {
    a = _mm256_add_epi64(a, _mm256_loadu_si256(s0 + i));
    b = _mm256_add_epi64(b, _mm256_loadu_si256(s1 + i));
    c = _mm256_add_epi64(c, _mm256_loadu_si256(s2 + i));
    d = _mm256_add_epi64(d, _mm256_loadu_si256(s3 + i));
  }
  a = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
  return static_cast<uint64_t>(_mm256_extract_epi64(a, 0) + _mm256_extract_epi64(a, 3));
}
#endif

uint64_t read_stream(const uint64_t* p, int64_t n) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (__builtin_cpu_supports("avx2")) return read_avx2(p, n);
#endif
  return read_portable(p, n);
}

}  // namespace

Peaks measure_peaks(int64_t buffer_bytes) {
  const KernelTable& kt = kernel_table();
  Peaks p;
  p.threads = num_threads();
  const CacheSizes& c = cache_sizes();
  p.l1d_bytes = c.l1d, p.l2_bytes = c.l2, p.l3_bytes = c.l3, p.cache_source = c.source;
  const GemmBlocks& g = gemm_blocks();
  p.gemm_mc = g.mc, p.gemm_kc = g.kc, p.gemm_nc = g.nc, p.gemm_blocks_source = gemm_blocks_source();
  int64_t it = calibrate(kt.fma_peak, 0.05);
  p.fma_gflops = best_parallel_rate(p.threads, 3, [&](int64_t) { return kt.fma_peak(it); }) / 1e9;
  if (kt.amx_peak) {
    int64_t ia = calibrate(kt.amx_peak, 0.05);
    p.amx_gflops = best_parallel_rate(p.threads, 3, [&](int64_t) { return kt.amx_peak(ia); }) / 1e9;
  }
  if (kt.bf16_dot_peak) {
    int64_t ib = calibrate(kt.bf16_dot_peak, 0.05);
    p.bf16_dot_gflops = best_parallel_rate(p.threads, 3, [&](int64_t) { return kt.bf16_dot_peak(ib); }) / 1e9;
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
                 if (b >= e) return 0.0;
                 sink = sink + read_stream(src.get() + b, e - b);
                 return 1.0 * (e > b ? e - b : 0) * 8;
               }) / 1e9;
  return p;
}

}  // namespace lorakit
