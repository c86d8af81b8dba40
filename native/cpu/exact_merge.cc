// Exact merge on the cpu: W ← round(W + s·B·A) (DoRA: round(k ⊙ (W + s·B·A))) with the side
// information that undoes the rounding bit for bit (format and rationale: core/exact_format.h).
// peft's merge/unmerge compute the same W + ΔW and W − ΔW and drift; here the undo is exact.
//
// One pass over W, in row groups of 8 rows × 256-column chunks split over the thread pool: each
// step's delta for the chunk is computed once into an f32 tile by the merge's own kernel
// (KernelTable::merge_rows on a zero tile: r fused multiply-adds in order of q, the same on merge
// and unmerge), then each 256-element row segment runs the undo steps (decode the record, R from the
// current bits, apply c) and the merge steps (x', R, c, encode) in registers and L1, and is written
// back once. Each task appends its segments' streams to its own buffers; the record is assembled
// afterwards (offsets by a prefix sum, then a parallel copy of the streams only).
#include <algorithm>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>
#include "../core/exact_format.h"
#include "../core/thread_pool.h"
#include "merge_factors.h"
#include "microkernel.h"
#include "ops.h"
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace lorakit {
namespace cpu {
namespace {

using exact::kRaw;
using exact::kSeg;
constexpr int64_t kGroupRows = 8;

// One step's factors and, for undo steps, its record.
struct StepPlan {
  int64_t r = 0;
  std::unique_ptr<float[]> P, Q;
  std::unique_ptr<float[]> k;  // DoRA: magnitude / norm per output feature; null otherwise
  const uint32_t* offsets = nullptr;
  const uint8_t* stream = nullptr;
};

StepPlan plan_step(const KernelTable& kt, const ExactStep& s, bool fifo, int64_t rows, int64_t cols) {
  StepPlan p;
  p.r = s.A.dim(0);
  const int64_t panels = (cols + RANK_PANEL - 1) / RANK_PANEL;
  p.P.reset(new float[rows * p.r]);
  p.Q.reset(new float[panels * RANK_PANEL * p.r]);
  prepare_factors(kt, s.A, s.B, s.scale, fifo, rows, cols, p.r, false, p.P.get(), p.Q.get());
  if (s.magnitude) {
    const int64_t outf = fifo ? cols : rows;
    p.k.reset(new float[outf]);
    for (int64_t o = 0; o < outf; o++) p.k[o] = load_f32(s.magnitude->data, s.magnitude->dtype, o) / s.norm[o];
  }
  return p;
}

// The record's offsets, checked to be a non-decreasing walk over the stream.
void attach_record(StepPlan& p, const ExactStep& s, DType t, int64_t rows, int64_t cols, const std::string& name) {
  exact::ExactHeader h;
  if (s.record_bytes < sizeof h) throw_range(name + ": the record is truncated");
  std::memcpy(&h, s.record, sizeof h);
  exact::check_header(h, t, rows, cols, s.record_bytes, name);
  p.offsets = reinterpret_cast<const uint32_t*>(static_cast<const uint8_t*>(s.record) + sizeof h);
  p.stream = reinterpret_cast<const uint8_t*>(p.offsets) + exact::offsets_bytes(rows, cols);
  const int64_t S = exact::segment_count(rows, cols);
  if (p.offsets[0] != 0 || p.offsets[S] != h.stream_bytes) throw_range(name + ": the record's offsets are corrupt");
  for (int64_t i = 0; i < S; i++)
    if (p.offsets[i + 1] < p.offsets[i] || p.offsets[i + 1] - p.offsets[i] > uint32_t(exact::kMaxSegmentBytes))
      throw_range(name + ": the record's offsets are corrupt");
}

// Per-element arithmetic of one step on a segment (n ≤ 256). xp = round_T(x + d) (or k·(x + d));
// R = round_T(xp − d) (or xp/k − d). Merge and unmerge both call reconstruct, on the same bits.
// No multiply-add pairs here, so no contraction can make the two calls round differently.
struct Dora {
  const float* k;  // null: plain LoRA
  bool per_column;
  float at(int64_t j) const { return k[per_column ? j : 0]; }
};

void forward(const KernelTable& kt, DType t, const void* x, const float* d, Dora k, int n, void* xp, float* tmp) {
  kt.load_row(x, t, 1.f, n, tmp);
  if (!k.k)
    for (int j = 0; j < n; j++) tmp[j] = tmp[j] + d[j];
  else if (k.per_column)
    for (int j = 0; j < n; j++) tmp[j] = k.k[j] * (tmp[j] + d[j]);
  else {
    const float kk = k.k[0];
    for (int j = 0; j < n; j++) tmp[j] = kk * (tmp[j] + d[j]);
  }
  kt.store_row(tmp, xp, t, n);
}

void reconstruct(const KernelTable& kt, DType t, const void* xp, const float* d, Dora k, int n, void* R, float* tmp) {
  kt.load_row(xp, t, 1.f, n, tmp);
  if (!k.k)
    for (int j = 0; j < n; j++) tmp[j] = tmp[j] - d[j];
  else if (k.per_column)
    for (int j = 0; j < n; j++) tmp[j] = tmp[j] / k.k[j] - d[j];
  else {
    const float kk = k.k[0];
    for (int j = 0; j < n; j++) tmp[j] = tmp[j] / kk - d[j];
  }
  kt.store_row(tmp, R, t, n);
}

// Bit patterns widened to u32 for the codec (U: uint16_t or uint32_t).
template <class U>
void widen(const U* x, int n, uint32_t* out) {
  for (int j = 0; j < n; j++) out[j] = x[j];
}

template <class U>
void corrections(const U* x, const U* R, int n, DType t, int8_t* c) {
  for (int j = 0; j < n; j++) c[j] = exact::correction(x[j], R[j], t);
}

template <class U>
void apply_corrections(const U* R, const int8_t* c, const uint32_t* raw, int n, DType t, U* x) {
  for (int j = 0; j < n; j++) x[j] = static_cast<U>(c[j] == kRaw ? raw[j] : exact::corrected(R[j], c[j], t));
}

// nz[w] bit b = c[64w + b] != 0, c zero-padded to 256.
void nonzero_masks(const int8_t* c, uint64_t (&nz)[4]) {
#if defined(__SSE2__)
  const __m128i zero = _mm_setzero_si128();
  for (int w = 0; w < 4; w++) {
    uint64_t m = 0;
    for (int b = 0; b < 4; b++) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(c + w * 64 + b * 16));
      const uint32_t z = static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(v, zero)));
      m |= static_cast<uint64_t>(~z & 0xffffu) << (16 * b);
    }
    nz[w] = m;
  }
#else
  for (int w = 0; w < 4; w++) nz[w] = 0;
  for (int j = 0; j < kSeg; j++) nz[j >> 6] |= static_cast<uint64_t>(c[j] != 0) << (j & 63);
#endif
}

// A task's output for one merge step: its segments' streams, appended in the order it makes them.
struct TaskStream {
  std::vector<uint8_t> bytes;
};

struct SegmentRef {
  uint32_t task;  // index into the step's task streams
  uint32_t at;    // byte offset in that stream
  uint32_t len;
};

template <class U>
class ExactPass {
 public:
  ExactPass(const TensorRef& W, bool fifo, std::vector<StepPlan>& undo, std::vector<StepPlan>& merge)
      : kt_(kernel_table()), W_(W), fifo_(fifo), undo_(undo), merge_(merge) {
    rows_ = W.dim(0);
    cols_ = W.dim(1);
    spr_ = exact::segments_per_row(cols_);
    segs_.resize(merge_.size());
    for (auto& s : segs_) s.resize(static_cast<size_t>(rows_ * spr_));
    streams_.resize(merge_.size());
  }

  void run() {
    const int64_t groups = (rows_ + kGroupRows - 1) / kGroupRows;
    const int64_t per_group = kGroupRows * cols_ * static_cast<int64_t>(1 + undo_.size() + merge_.size());
    parallel_for(groups, [&](int64_t g0, int64_t g1) { task(g0, g1); }, std::max<int64_t>(1, 65536 / per_group));
  }

  // Merge step m's record (header, offsets, streams) in host memory.
  std::shared_ptr<Storage> record(size_t m) const {
    const std::vector<SegmentRef>& segs = segs_[m];
    const int64_t S = static_cast<int64_t>(segs.size());
    std::vector<uint32_t> off(static_cast<size_t>(S + 1));
    uint64_t total = 0;
    for (int64_t s = 0; s < S; s++) {
      off[s] = static_cast<uint32_t>(total);
      total += segs[s].len;
      if (total > 0xffffffffull) throw_range("exact merge: the side information passed 4 GiB");
    }
    off[S] = static_cast<uint32_t>(total);
    const size_t head = sizeof(exact::ExactHeader) + static_cast<size_t>(exact::offsets_bytes(rows_, cols_));
    auto rec = Storage::allocate((head + total + 3) / 4 * 4, Device::CPU, false);
    uint8_t* out = static_cast<uint8_t*>(rec->data);
    exact::ExactHeader h{exact::kMagic, static_cast<uint32_t>(W_.dtype), static_cast<uint64_t>(rows_),
                         static_cast<uint64_t>(cols_), total};
    std::memcpy(out, &h, sizeof h);
    std::memcpy(out + sizeof h, off.data(), off.size() * 4);
    uint8_t* stream = out + head;
    const auto& tasks = streams_[m];
    parallel_for(
        S,
        [&](int64_t b, int64_t e) {
          for (int64_t s = b; s < e; s++)
            if (segs[s].len) std::memcpy(stream + off[s], tasks[segs[s].task]->bytes.data() + segs[s].at, segs[s].len);
        },
        4096);
    return rec;
  }

 private:
  void task(int64_t g0, int64_t g1) {
    const size_t nu = undo_.size(), nm = merge_.size();
    std::vector<TaskStream*> out(nm);
    std::vector<uint32_t> ids(nm);
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t m = 0; m < nm; m++) {
        ids[m] = static_cast<uint32_t>(streams_[m].size());
        streams_[m].emplace_back(new TaskStream);
        out[m] = streams_[m].back().get();
      }
    }
    const DType t = W_.dtype;
    std::unique_ptr<float[]> delta(new float[(nu + nm) * kGroupRows * kSeg]);
    alignas(64) float tmp[kSeg];
    alignas(64) U xa[kSeg], xb[kSeg], R[kSeg];
    alignas(64) int8_t c[kSeg];
    alignas(64) uint32_t wide[kSeg];
    uint8_t enc[exact::kMaxSegmentBytes];
    U* W = W_.as<U>();
    for (int64_t g = g0; g < g1; g++) {
      const int64_t i0 = g * kGroupRows, nr = std::min(kGroupRows, rows_ - i0);
      for (int64_t jc = 0; jc < spr_; jc++) {
        const int64_t j0 = jc * kSeg;
        const int n = static_cast<int>(std::min<int64_t>(kSeg, cols_ - j0));
        for (size_t s = 0; s < nu + nm; s++) {
          const StepPlan& p = s < nu ? undo_[s] : merge_[s - nu];
          float* d = delta.get() + s * kGroupRows * kSeg;
          std::fill(d, d + nr * kSeg, 0.f);
          kt_.merge_rows(p.r, p.P.get() + i0 * p.r, nr, p.Q.get() + j0 * p.r, n, d, DType::F32, kSeg, d, DType::F32, kSeg);
        }
        for (int64_t ii = 0; ii < nr; ii++) {
          const int64_t i = i0 + ii, seg = i * spr_ + jc;
          U* w = W + i * cols_ + j0;
          U* x = xa;
          U* xp = xb;
          std::memcpy(x, w, n * sizeof(U));
          for (size_t u = 0; u < nu; u++) {
            const StepPlan& p = undo_[u];
            const float* d = delta.get() + (u * kGroupRows + ii) * kSeg;
            reconstruct(kt_, t, x, d, dora(p, i, j0), n, R, tmp);
            std::memset(c, 0, sizeof c);
            const uint32_t at = p.offsets[seg];
            if (!exact::decode_segment(p.stream + at, static_cast<int>(p.offsets[seg + 1] - at), n, t, c, wide))
              throw_range("exact unmerge: a record's segment is corrupt");
            apply_corrections(R, c, wide, n, t, x);
          }
          for (size_t m = 0; m < nm; m++) {
            const StepPlan& p = merge_[m];
            const float* d = delta.get() + ((nu + m) * kGroupRows + ii) * kSeg;
            const Dora k = dora(p, i, j0);
            forward(kt_, t, x, d, k, n, xp, tmp);
            reconstruct(kt_, t, xp, d, k, n, R, tmp);
            std::memset(c, 0, sizeof c);
            corrections(x, R, n, t, c);
            uint64_t nz[4];
            nonzero_masks(c, nz);
            int len = 0;
            if (nz[0] | nz[1] | nz[2] | nz[3]) {
              widen(x, n, wide);
              len = exact::encode_segment_masked(c, wide, n, t, nz, enc);
            }
            segs_[m][seg] = {ids[m], static_cast<uint32_t>(out[m]->bytes.size()), static_cast<uint32_t>(len)};
            out[m]->bytes.insert(out[m]->bytes.end(), enc, enc + len);
            std::swap(x, xp);
          }
          std::memcpy(w, x, n * sizeof(U));
        }
      }
    }
  }

  Dora dora(const StepPlan& p, int64_t i, int64_t j0) const {
    if (!p.k) return {nullptr, false};
    return fifo_ ? Dora{p.k.get() + j0, true} : Dora{p.k.get() + i, false};
  }

  const KernelTable& kt_;
  const TensorRef& W_;
  bool fifo_;
  std::vector<StepPlan>& undo_;
  std::vector<StepPlan>& merge_;
  int64_t rows_ = 0, cols_ = 0, spr_ = 0;
  std::vector<std::vector<SegmentRef>> segs_;
  std::vector<std::vector<std::unique_ptr<TaskStream>>> streams_;
  std::mutex mu_;
};

template <class U>
void run_pass(const TensorRef& W, bool fifo, std::vector<StepPlan>& undo, std::vector<StepPlan>& merge,
              std::vector<std::shared_ptr<Storage>>* records) {
  ExactPass<U> pass(W, fifo, undo, merge);
  pass.run();
  records->clear();
  for (size_t m = 0; m < merge.size(); m++) records->push_back(pass.record(m));
}

}  // namespace

void exact_merge(const TensorRef& W, bool fan_in_fan_out, const std::vector<ExactStep>& undo,
                 const std::vector<ExactStep>& merge, std::vector<std::shared_ptr<Storage>>* records) {
  const KernelTable& kt = kernel_table();
  const int64_t rows = W.dim(0), cols = W.dim(1);
  std::vector<StepPlan> up, mp;
  for (size_t u = 0; u < undo.size(); u++) {
    up.push_back(plan_step(kt, undo[u], fan_in_fan_out, rows, cols));
    attach_record(up.back(), undo[u], W.dtype, rows, cols, "undo[" + std::to_string(u) + "].record");
  }
  for (const ExactStep& s : merge) mp.push_back(plan_step(kt, s, fan_in_fan_out, rows, cols));
  if (W.dtype == DType::F32) run_pass<uint32_t>(W, fan_in_fan_out, up, mp, records);
  else run_pass<uint16_t>(W, fan_in_fan_out, up, mp, records);
}

}  // namespace cpu
}  // namespace lorakit
