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
// afterwards (offsets by a prefix sum, then a parallel copy of the streams only). Segments are
// encoded and decoded by the vector codec (exact_codec_avx512.cc) where the CPU has AVX-512 VBMI2:
// the scalar codec's cost grows with the corrections, ~30 cycles each, as much as the delta itself.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>
#include "../core/exact_format.h"
#include "../core/thread_pool.h"
#include "exact_codec.h"
#include "merge_factors.h"
#include "microkernel.h"
#include "ops.h"

namespace lorakit {
namespace cpu {
namespace {

using exact::kSeg;
constexpr int64_t kGroupRows = 8;

// One step's factors and, for undo steps, its record.
struct StepPlan {
  int64_t r = 0;
  std::unique_ptr<float[]> P, Q;
  std::unique_ptr<float[]> k;  // DoRA: magnitude / norm per output feature; null otherwise
  bool finite = true;          // P, Q and k: the kernels may then skip a NaN fix-up
  const uint32_t* offsets = nullptr;
  const uint8_t* stream = nullptr;
};

StepPlan plan_step(const KernelTable& kt, const ExactStep& s, bool fifo, int64_t rows, int64_t cols) {
  StepPlan p;
  p.r = s.A.dim(0);
  const int64_t panels = (cols + RANK_PANEL - 1) / RANK_PANEL;
  p.P.reset(new float[rows * p.r]);
  p.Q.reset(new float[(panels + 1) * RANK_PANEL * p.r]);  // + a zero panel: kernels read panels in pairs
  std::fill(p.Q.get() + panels * RANK_PANEL * p.r, p.Q.get() + (panels + 1) * RANK_PANEL * p.r, 0.f);
  p.finite = prepare_factors(kt, s.A, s.B, s.scale, fifo, rows, cols, p.r, false, p.P.get(), p.Q.get());
  if (s.magnitude) {
    const int64_t outf = fifo ? cols : rows;
    p.k.reset(new float[outf]);
    for (int64_t o = 0; o < outf; o++) {
      p.k[o] = load_f32(s.magnitude->data, s.magnitude->dtype, o) / s.norm[o];
      p.finite = p.finite && std::isfinite(p.k[o]);
    }
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

// A task's output for one merge step: its segments' streams, appended in the order it makes them.
struct TaskStream {
  std::vector<uint8_t> bytes;
};

struct SegmentRef {
  uint32_t at;    // byte offset in its task's stream
  uint16_t task;  // index into the step's task streams
  uint16_t len;   // ≤ exact::kMaxSegmentBytes
};

// Per-segment bookkeeping of `steps` merge steps, reused by the calling thread across calls: a fresh
// array of this size for every merge costs a page fault per 4 KiB, which some hosts make slower than
// the pass itself.
std::vector<std::vector<SegmentRef>>& segment_scratch(size_t steps, size_t n) {
  static thread_local std::vector<std::vector<SegmentRef>> pool;
  if (pool.size() < steps) pool.resize(steps);
  for (size_t m = 0; m < steps; m++)
    if (pool[m].size() < n) pool[m].resize(n);
  return pool;
}

// A record buffer from the heap rather than fresh pages: repeated merges reuse freed memory.
std::shared_ptr<Storage> host_record(size_t nbytes) {
  auto st = std::make_shared<Storage>();
  st->data = std::aligned_alloc(64, (nbytes + 63) / 64 * 64);
  if (!st->data) throw_range("out of memory allocating " + std::to_string(nbytes) + " bytes of side information");
  st->nbytes = nbytes;
  st->device = Device::CPU;
  return st;
}

// The segment codec: the vector one where the CPU has it and the kernel path is an AVX-512 one
// (LORAKIT_CPU_PATH=avx2 or portable keeps the scalar codec, so that it stays tested), else
// core/exact_format.h's. Both write the same bytes.
struct Codec {
  bool vec = exact_codec_vbmi2_supported() && (std::strncmp(kernel_table().name, "avx512", 6) == 0 ||
                                               std::strncmp(kernel_table().name, "amx", 3) == 0);
  template <class U>
  int encode(const int8_t* c, const U* orig, int len, DType t, const uint64_t (&nz)[4], uint8_t* out) const {
    return vec ? exact_encode_vbmi2(c, orig, len, t, nz, out) : exact::encode_segment_masked(c, orig, len, t, nz, out);
  }
  template <class U>
  bool decode(const uint8_t* s, int bytes, int len, DType t, int8_t* c, U* raw, uint64_t (&nz)[4]) const {
    return vec ? exact_decode_vbmi2(s, bytes, len, t, c, raw, nz) : exact::decode_segment(s, bytes, len, t, c, raw, nz);
  }
};

const Codec& codec() {
  static const Codec c;
  return c;
}

template <DType T>
class ExactPass {
  using U = typename std::conditional<T == DType::F32, uint32_t, uint16_t>::type;

 public:
  ExactPass(const TensorRef& W, bool fifo, std::vector<StepPlan>& undo, std::vector<StepPlan>& merge)
      : kt_(kernel_table()), W_(W), fifo_(fifo), undo_(undo), merge_(merge) {
    rows_ = W.dim(0);
    cols_ = W.dim(1);
    spr_ = exact::segments_per_row(cols_);
    auto& pool = segment_scratch(merge_.size(), static_cast<size_t>(rows_ * spr_));
    for (size_t m = 0; m < merge_.size(); m++) segs_.push_back(&pool[m]);
    streams_.resize(merge_.size());
  }

  void run() {
    const int64_t groups = (rows_ + kGroupRows - 1) / kGroupRows;
    const int64_t per_group = kGroupRows * cols_ * static_cast<int64_t>(1 + undo_.size() + merge_.size());
    parallel_for(groups, [&](int64_t g0, int64_t g1) { task(g0, g1); }, std::max<int64_t>(1, 65536 / per_group));
  }

  // Merge step m's record (header, offsets, streams) in host memory.
  std::shared_ptr<Storage> record(size_t m) const {
    const SegmentRef* segs = segs_[m]->data();
    const int64_t S = rows_ * spr_;
    uint64_t total = 0;
    for (int64_t s = 0; s < S; s++) total += segs[s].len;
    if (total > 0xffffffffull) throw_range("exact merge: the side information passed 4 GiB");
    const size_t head = sizeof(exact::ExactHeader) + static_cast<size_t>(exact::offsets_bytes(rows_, cols_));
    auto rec = host_record((head + total + 3) / 4 * 4);
    uint8_t* out = static_cast<uint8_t*>(rec->data);
    exact::ExactHeader h{exact::kMagic, static_cast<uint32_t>(W_.dtype), static_cast<uint64_t>(rows_),
                         static_cast<uint64_t>(cols_), total};
    std::memcpy(out, &h, sizeof h);
    uint32_t* off = reinterpret_cast<uint32_t*>(out + sizeof h);
    uint32_t at = 0;
    for (int64_t s = 0; s < S; s++) {
      off[s] = at;
      at += segs[s].len;
    }
    off[S] = at;
    std::memset(out + head + total, 0, rec->nbytes - head - total);  // the padding to 4 bytes
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
    const size_t nu = undo_.size(), nm = merge_.size(), ns = nu + nm;
    std::vector<TaskStream*> out(nm);
    std::vector<uint16_t> ids(nm);
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t m = 0; m < nm; m++) {
        if (streams_[m].size() > 0xffff) throw_range("exact merge: too many tasks");
        ids[m] = static_cast<uint16_t>(streams_[m].size());
        streams_[m].emplace_back(new TaskStream);
        out[m] = streams_[m].back().get();
      }
    }
    constexpr DType t = T;
    constexpr int64_t kBlock = kGroupRows * kSeg;
    std::vector<int8_t> cbuf(ns * kBlock);
    std::vector<U> aux(ns * kBlock);
    std::vector<uint64_t> nz(ns * kGroupRows * 4);
    std::vector<ExactRowStep> steps(ns);
    uint8_t enc[exact::kMaxSegmentBytes];
    const Codec& cd = codec();
    U* W = W_.as<U>();
    for (size_t m = 0; m < nm; m++)  // ~1.5 bits per weight: growth copies only at large deltas
      out[m]->bytes.reserve(static_cast<size_t>((g1 - g0) * kGroupRows * spr_ * 48));
    for (int64_t g = g0; g < g1; g++) {
      const int64_t i0 = g * kGroupRows, nr = std::min(kGroupRows, rows_ - i0);
      for (int64_t jc = 0; jc < spr_; jc++) {
        const int64_t j0 = jc * kSeg;
        const int n = static_cast<int>(std::min<int64_t>(kSeg, cols_ - j0));
        for (size_t s = 0; s < ns; s++) {
          const StepPlan& p = s < nu ? undo_[s] : merge_[s - nu];
          const float* k = p.k ? p.k.get() + (fifo_ ? j0 : i0) : nullptr;
          steps[s] = {p.P.get() + i0 * p.r, p.Q.get() + j0 * p.r, p.r, k, fifo_, s < nu, !p.finite,
                      cbuf.data() + s * kBlock, aux.data() + s * kBlock, nz.data() + s * kGroupRows * 4};
          std::fill(steps[s].nz, steps[s].nz + kGroupRows * 4, uint64_t(0));  // padding rows too
          for (int64_t ii = 0; ii < nr && s < nu; ii++) {
            uint64_t(&z)[4] = *reinterpret_cast<uint64_t(*)[4]>(steps[s].nz + ii * 4);
            const int64_t seg = (i0 + ii) * spr_ + jc;
            const uint32_t at = p.offsets[seg];
            if (!cd.decode(p.stream + at, static_cast<int>(p.offsets[seg + 1] - at), n, t,
                                       steps[s].c + ii * kSeg, aux.data() + s * kBlock + ii * kSeg, z))
              throw_range("exact unmerge: a record's segment is corrupt");
          }
        }
        kt_.exact_rows(t, W + i0 * cols_ + j0, cols_, nr, n, steps.data(), static_cast<int>(ns));
        for (size_t m = 0; m < nm; m++) {
          const ExactRowStep& st = steps[nu + m];
          for (int64_t ii = 0; ii < nr; ii++) {
            const uint64_t(&z)[4] = *reinterpret_cast<const uint64_t(*)[4]>(st.nz + ii * 4);
            const int len = (z[0] | z[1] | z[2] | z[3])
                                ? cd.encode(st.c + ii * kSeg, static_cast<const U*>(st.aux) + ii * kSeg, n, t, z, enc)
                                : 0;
            const int64_t seg = (i0 + ii) * spr_ + jc;
            (*segs_[m])[seg] = {static_cast<uint32_t>(out[m]->bytes.size()), ids[m], static_cast<uint16_t>(len)};
            out[m]->bytes.insert(out[m]->bytes.end(), enc, enc + len);
          }
        }
      }
    }
  }

  const KernelTable& kt_;
  const TensorRef& W_;
  bool fifo_;
  std::vector<StepPlan>& undo_;
  std::vector<StepPlan>& merge_;
  int64_t rows_ = 0, cols_ = 0, spr_ = 0;
  std::vector<std::vector<SegmentRef>*> segs_;
  std::vector<std::vector<std::unique_ptr<TaskStream>>> streams_;
  std::mutex mu_;
};

template <DType T>
void run_pass(const TensorRef& W, bool fifo, std::vector<StepPlan>& undo, std::vector<StepPlan>& merge,
              std::vector<std::shared_ptr<Storage>>* records) {
  ExactPass<T> pass(W, fifo, undo, merge);
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
  switch (W.dtype) {
    case DType::F32: return run_pass<DType::F32>(W, fan_in_fan_out, up, mp, records);
    case DType::F16: return run_pass<DType::F16>(W, fan_in_fan_out, up, mp, records);
    case DType::BF16: return run_pass<DType::BF16>(W, fan_in_fan_out, up, mp, records);
    default: throw_type("weight: expected a float dtype");
  }
}

}  // namespace cpu
}  // namespace lorakit
