// gemm's block sizes: derived from the measured caches, and, where the microkernel's sums do not
// depend on them, chosen between two derivations by timing real calls.
//
// BLIS's rules (gemm.cc's structure): the kc × NR micro-panel of B, reused across the A panels,
// lives in L1d; the mc × kc block of A in half of L2; the kc × nc block of B in a quarter of L2.
// How much of L1d the B micro-panel may take is the open parameter. Half (the A panel streams
// through the other half) suits cores whose FMAs outrun L2; on a Zen 4 EPYC, whose AVX-512 FMAs
// run on 256-bit units, the whole of L1d (kc twice as long: fewer C tile sweeps, longer runs of W
// when packed) ran the f32 GEMM 3-5% faster at n = 512 (bench/results/cpu-gemm-blocks-2026-12-07-zen4.txt).
// So where both derivations give the same bits (the microkernel continues each element's chain of
// fused multiply-adds from C: KernelTable::micro_sums_ignore_blocks), the first large calls
// alternate between them, per call shape, and the faster is kept; the output never depends on the choice.
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <numeric>
#include <string>
#include <vector>
#include "../core/thread_pool.h"
#include "caches.h"
#include "gemm.h"
#include "microkernel.h"

namespace lorakit {
namespace {

// LORAKIT_GEMM_BLOCKS=mc,kc,nc forces the block sizes (rounded up to the units): for tuning on a new
// machine and for tests of odd blockings. Anything unparsable is ignored.
bool forced_blocks(int64_t* v) {
  const char* e = std::getenv("LORAKIT_GEMM_BLOCKS");
  if (!e || !*e) return false;
  char* end = nullptr;
  for (int i = 0; i < 3; i++) {
    const long long x = std::strtoll(e, &end, 10);
    if (end == e || x <= 0 || x > (1 << 16)) return false;
    v[i] = x;
    e = end + (*end == ',' ? 1 : 0);
    if (i < 2 && *end != ',') return false;
  }
  return *end == 0;
}

// The B micro-panel takes 1 / l1_div of L1d.
GemmBlocks derive_blocks(const KernelTable& kt, const CacheSizes& c, int64_t l1_div) {
  GemmBlocks b;
  const GemmUnits u = gemm_block_units(kt);
  const int64_t um = u.m, un = u.n, uk = u.k;
  b.kc = std::min<int64_t>(1024, gemm_round_down(c.l1d / l1_div / (kt.nr * 4), uk));
  b.kc = std::max<int64_t>(b.kc, 64);
  b.mc = std::min(gemm_round_down(GEMM_MAX_RC, um), gemm_round_down(c.l2 / 2 / (b.kc * 4), um));
  b.nc = std::min<int64_t>(gemm_round_down(1024, un), gemm_round_down(c.l2 / 4 / (b.kc * 4), un));
  b.source = c.source;
  return b;
}

// Timing state per call shape (GemmShapeTiming, best in seconds per FLOP): the candidates alternate
// within each shape, so a loop whose calls alternate between two shapes (forward, backward) does not give
// each candidate one of them.

struct Plan {
  std::vector<GemmBlocks> cand;
  GemmBlocks max;  // elementwise max: scratch sizes
  std::mutex mu;
  std::atomic<int> chosen{-1};  // -1 while timing
  std::map<GemmShape, GemmShapeTiming> shapes;
  std::string report;
};

Plan& plan() {
  static Plan* p = [] {
    auto* p = new Plan;
    const KernelTable& kt = kernel_table();
    const CacheSizes& c = cache_sizes();
    int64_t f[3];
    if (forced_blocks(f)) {
      const GemmUnits u = gemm_block_units(kt);
      GemmBlocks b;
      b.mc = gemm_round_up(f[0], u.m), b.kc = gemm_round_up(f[1], u.k), b.nc = gemm_round_up(f[2], u.n);
      b.source = "LORAKIT_GEMM_BLOCKS";
      p->cand.push_back(b);
    } else {
      p->cand.push_back(derive_blocks(kt, c, 2));
      const GemmBlocks whole = derive_blocks(kt, c, 1);
      if (kt.micro_sums_ignore_blocks && whole.kc != p->cand[0].kc) p->cand.push_back(whole);
    }
    for (const GemmBlocks& b : p->cand) {
      p->max.mc = std::max(p->max.mc, b.mc), p->max.kc = std::max(p->max.kc, b.kc), p->max.nc = std::max(p->max.nc, b.nc);
    }
    p->max.source = p->cand[0].source;
    if (p->cand.size() == 1) p->chosen = 0;
    return p;
  }();
  return *p;
}

std::string blocks_str(const GemmBlocks& b) {
  return std::to_string(b.mc) + "," + std::to_string(b.kc) + "," + std::to_string(b.nc);
}

}  // namespace

GemmTasks gemm_tasks(int64_t m, int64_t n, int64_t um, int64_t un, int64_t nc) {
  const int64_t nt = num_threads();
  GemmTasks t;
  t.m = m, t.n = n, t.un = un;
  // Columns: the fewest tasks of at most nc columns, raised to a multiple of the thread count, or,
  // past it, of parallel_for's 4·nt chunks (so that every chunk gets equal work: with 14 tasks in 8
  // chunks, one thread idled for a whole task at the end), split as evenly as un-column units allow.
  t.units_n = (n + un - 1) / un;
  t.tn = (n + nc - 1) / nc;
  t.tn = std::min(t.units_n, gemm_round_up(t.tn, t.tn > nt ? 4 * nt : nt));
  // Rows: enough chunks of um-row units to give every thread several tasks, each at most GEMM_MAX_RC rows
  // (a task packs its B block once for all its rows: fewer, taller row chunks repack B less).
  const int64_t units_m = (m + um - 1) / um;
  const int64_t want = std::max<int64_t>(1, (4 * nt + t.tn - 1) / t.tn);
  const int64_t per_chunk = std::max<int64_t>(1, std::min(GEMM_MAX_RC / um, (units_m + want - 1) / want));
  t.rc = per_chunk * um;
  t.tm = (m + t.rc - 1) / t.rc;
  return t;
}

GemmUnits gemm_block_units(const KernelTable& kt) {
  return {std::lcm<int64_t>(kt.mr, 32), 32, std::lcm<int64_t>(kt.nr, 32)};
}

const GemmBlocks& gemm_blocks() {
  Plan& p = plan();
  const int c = p.chosen.load(std::memory_order_acquire);
  return p.cand[c < 0 ? 0 : c];
}

const GemmBlocks& gemm_blocks_max() { return plan().max; }

GemmPlan gemm_plan(int64_t m, int64_t n, int64_t k) {
  Plan& p = plan();
  const int c = p.chosen.load(std::memory_order_acquire);
  if (c >= 0) return {&p.cand[c], -1, {m, n, k}};
  if (2.0 * double(m) * double(n) * double(k) < GEMM_TIMED_FLOPS) return {&p.cand[0], -1, {m, n, k}};
  std::lock_guard<std::mutex> lock(p.mu);
  const int i = gemm_shape_entry(p.shapes, {m, n, k}).take();  // timing runs with exactly two candidates
  return {&p.cand[i], i, {m, n, k}};
}

void gemm_plan_done(const GemmPlan& g, double seconds) {
  if (g.candidate < 0) return;
  Plan& p = plan();
  std::lock_guard<std::mutex> lock(p.mu);
  if (p.chosen.load() >= 0) return;
  GemmShapeTiming& t = p.shapes[g.shape];
  const double flops = 2.0 * double(g.shape[0]) * double(g.shape[1]) * double(g.shape[2]);
  if (!t.add(g.candidate, seconds / flops)) return;
  const int w = t.best[1] < t.best[0] ? 1 : 0;
  char buf[200];
  std::snprintf(buf, sizeof buf, "; timed: %s at %.1f GFLOP/s against %s at %.1f (m %lld, n %lld, k %lld)",
                blocks_str(p.cand[w]).c_str(), 1e-9 / t.best[w], blocks_str(p.cand[1 - w]).c_str(), 1e-9 / t.best[1 - w],
                static_cast<long long>(g.shape[0]), static_cast<long long>(g.shape[1]), static_cast<long long>(g.shape[2]));
  p.report = buf;
  p.shapes.clear();
  p.chosen.store(w, std::memory_order_release);
}

std::string gemm_blocks_source() {
  Plan& p = plan();
  std::lock_guard<std::mutex> lock(p.mu);
  std::string s = p.cand[0].source;
  if (p.cand.size() > 1)
    s += p.chosen.load() >= 0 ? p.report
                               : "; " + blocks_str(p.cand[0]) + " and " + blocks_str(p.cand[1]) + " to be timed on the first large calls";
  return s;
}

}  // namespace lorakit
