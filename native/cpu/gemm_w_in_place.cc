// x·Wᵀ with W read in place: gemm.cc's f32 GEMM with the operands' roles swapped, for f32 weights
// stored as rows along K (B = Wᵀ of a row-major W, the LoRA layout). The microkernel
// (KernelTable::microkernel_w) broadcasts W's values straight from its rows against x packed once
// per call as nr-token panels, so W is never packed. gemm.cc's transposing pack of W read each 1 KiB
// piece of 32 rows from DRAM at a latency the prefetchers did not hide (about 4.5% of the n = 512
// GEMM on a Zen 4 EPYC); broadcasts walk a few W rows in order, which they follow. Each output
// element is the same chain of fused multiply-adds in the same order as gemm.cc's (from its C tile,
// k ascending), so the bits do not change (test/gemm_w_in_place.test.ts).
//
// Per task (tokens [i0, i0 + rc) × W rows [j0, j0 + nc), all of K): for each kc block and each mc
// block of tokens, each mr-row tile of W (mr · kc floats, L1) meets every nr-token panel of x (L2);
// the task's C is held transposed (W rows × tokens) and transposed once into the output rows.
#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>
#include "../core/thread_pool.h"
#include "gemm.h"
#include "gemv_rows.h"
#include "microkernel.h"

namespace lorakit {

namespace {

bool qualifies(const std::vector<KSegment>& segs) {
  if (!gemm_w_in_place_enabled()) return false;
  for (const KSegment& s : segs) {
    if (s.b.decode || s.b.dtype != DType::F32 || s.b.rs != 1 || s.b.cs < s.k) return false;
    if (s.a.decode || s.a.cs != 1) return false;  // x's rows along K: the panels are transposing packs
  }
  return true;
}

std::vector<float>& packed_x_buffer() {
  thread_local std::vector<float> buf;  // the calling thread's; gemm is not re-entered from tasks
  return buf;
}

struct TaskScratch {
  std::vector<float> acc_t, acc, tmp, bias;
};

TaskScratch& task_scratch() {
  thread_local TaskScratch s;
  return s;
}

// The per-shape choice on paths whose in-place form is timed (gemm_form). On Zen 4's AVX2 path the in-place
// form ran 1.03-1.19x faster up to 128 tokens and 0.97-0.99x from 200 up (its 16-token x panels stream from
// L2 at a rate the packed form avoids; bench/results/cpu-gemm-w-in-place-2026-12-08-zen4.txt): where the
// crossing lies on another CPU is measured there, per call shape, on real calls.
// Calls below GEMM_TIMED_FLOPS are not timed; they run in place.
struct FormTiming {
  GemmShapeTiming timing;  // way 0 packed, 1 in place (best: seconds)
  int chosen = -1;
};

struct FormTable {
  std::mutex mu;
  std::map<GemmShape, FormTiming> shapes;
};

FormTable& form_table() {
  static FormTable* t = new FormTable;
  return *t;
}

}  // namespace

GemmForm gemm_form(int64_t m, int64_t n, int64_t k, const std::vector<KSegment>& segs) {
  const GemmShape shape{m, n, k};
  if (!qualifies(segs)) return {false, false, shape};
  if (!kernel_table().w_in_place_timed || 2.0 * double(m) * double(n) * double(k) < GEMM_TIMED_FLOPS) return {true, false, shape};
  FormTable& ft = form_table();
  std::lock_guard<std::mutex> lock(ft.mu);
  FormTiming& t = gemm_shape_entry(ft.shapes, shape);
  if (t.chosen >= 0) return {t.chosen == 1, false, shape};
  return {t.timing.take() == 1, true, shape};
}

void gemm_form_done(const GemmForm& f, double seconds) {
  if (!f.timed) return;
  FormTable& ft = form_table();
  std::lock_guard<std::mutex> lock(ft.mu);
  FormTiming& t = ft.shapes[f.shape];
  if (t.timing.add(f.in_place ? 1 : 0, seconds) && t.chosen < 0) t.chosen = t.timing.best[1] <= t.timing.best[0] ? 1 : 0;
}

bool gemm_w_in_place_enabled() {
  static const bool off = [] {
    const char* e = std::getenv("LORAKIT_GEMM_W_IN_PLACE");
    return e && e[0] == '0';
  }();
  return kernel_table().microkernel_w && !off;
}

bool gemm_w_in_place(const GemmBlocks& bl, int64_t m, int64_t n, const std::vector<KSegment>& segs, const GemmOutput& out) {
  const KernelTable& kt = kernel_table();
  if (!qualifies(segs)) return false;
  const int64_t mr = kt.mr_w, nr = kt.nr_w;  // mr: W rows per tile (broadcast); nr: tokens per panel
  // x packed as nr-token panels, per segment and kc block: panel (s, k0, i) = kc × nr floats.
  const int64_t m_pad = (m + nr - 1) / nr * nr;
  std::vector<int64_t> base;
  int64_t total = 0;
  for (const KSegment& s : segs) {
    base.push_back(total);
    total += s.k * m_pad;
  }
  std::vector<float>& xbuf = packed_x_buffer();
  if (static_cast<int64_t>(xbuf.size()) < total) xbuf.resize(total);
  float* const xp = xbuf.data();
  auto panel = [&](size_t si, int64_t k0, int64_t kc, int64_t i) { return xp + base[si] + k0 * m_pad + i * kc; };
  struct Unit {
    size_t seg;
    int64_t k0, i;
  };
  std::vector<Unit> units;
  for (size_t si = 0; si < segs.size(); si++)
    for (int64_t k0 = 0; k0 < segs[si].k; k0 += bl.kc)
      for (int64_t i = 0; i < m_pad; i += nr) units.push_back({si, k0, i});
  parallel_for(
      static_cast<int64_t>(units.size()),
      [&](int64_t b, int64_t e) {
        for (int64_t t = b; t < e; t++) {
          const Unit& u = units[t];
          const KSegment& s = segs[u.seg];
          const int64_t kc = std::min(bl.kc, s.k - u.k0), rows = std::min(nr, m - u.i);
          float* dst = panel(u.seg, u.k0, kc, u.i);
          const size_t es = dtype_size(s.a.dtype);
          const char* src = static_cast<const char*>(s.a.data) + (u.i * s.a.rs + u.k0) * static_cast<int64_t>(es);
          kt.pack_t(src, s.a.dtype, s.a.rs, rows, kc, dst, nr);
          for (int64_t k = 0; k < kc; k++) {
            float* row = dst + k * nr;
            if (s.alpha != 1.f)
              for (int64_t c = 0; c < rows; c++) row[c] *= s.alpha;
            std::fill(row + rows, row + nr, 0.f);
          }
        }
      },
      16);
  struct Release {
    ~Release() {
      auto& a = packed_x_buffer();
      if (a.size() > (size_t(4) << 20)) std::vector<float>().swap(a);
    }
  } release;

  // Tasks as gemm.cc's, over nr-token units and mr-row units of W (so that only W's last tile is partial).
  const GemmTasks tasks = gemm_tasks(m, n, nr, mr, bl.nc);
  const int64_t mc = std::max(nr, bl.mc / nr * nr);
  parallel_for(tasks.count(), [&](int64_t b, int64_t e) {
    TaskScratch& sc = task_scratch();
    for (int64_t t = b; t < e; t++) {
      int64_t i0, rc, j0, j1;
      tasks.at(t, &i0, &rc, &j0, &j1);
      const int64_t nc = j1 - j0;
      if (nc <= 0) continue;
      const int64_t ldt = (rc + 15) / 16 * 16;  // C transposed: nc W rows × rc tokens
      if (static_cast<int64_t>(sc.acc_t.size()) < nc * ldt) sc.acc_t.resize(nc * ldt);
      if (static_cast<int64_t>(sc.acc.size()) < rc * nc) sc.acc.resize(rc * nc);
      if (static_cast<int64_t>(sc.tmp.size()) < nc) sc.tmp.resize(nc), sc.bias.resize(nc);
      float* const acc_t = sc.acc_t.data();
      for (size_t si = 0; si < segs.size(); si++) {
        const KSegment& seg = segs[si];
        if (si == 0 && seg.k == 0)
          for (int64_t j = 0; j < nc; j++) std::fill(acc_t + j * ldt, acc_t + j * ldt + rc, 0.f);
        const float* const w = static_cast<const float*>(seg.b.data) + j0 * seg.b.cs;
        for (int64_t k0 = 0; k0 < seg.k; k0 += bl.kc) {
          const int64_t kc = std::min(bl.kc, seg.k - k0);
          for (int64_t ic = 0; ic < rc; ic += mc) {
            const int64_t me = std::min(rc, ic + mc);
            for (int64_t jr = 0; jr < nc; jr += mr) {
              const int64_t rows = std::min(mr, nc - jr);
              const float* wt = w + jr * seg.b.cs + k0;
              for (int64_t ir = ic; ir < me; ir += nr) {
                float* tile = acc_t + jr * ldt + ir;
                const int64_t cols = std::min(nr, rc - ir);
                if (si == 0 && k0 == 0)  // C starts at zero: each tile zeroed just before its first use
                  for (int64_t j = 0; j < rows; j++) std::fill(tile + j * ldt, tile + j * ldt + cols, 0.f);
                kt.microkernel_w(kc, wt, seg.b.cs, panel(si, k0, kc, i0 + ir), tile, ldt, rows, cols);
              }
            }
          }
        }
      }
      kt.pack_t(acc_t, DType::F32, ldt, nc, rc, sc.acc.data(), nc);  // back to tokens × W rows
      store_gemm_rows(kt, sc.acc.data(), nc, i0, rc, j0, nc, out, sc.tmp.data(), sc.bias.data());
    }
  });
  return true;
}

}  // namespace lorakit
