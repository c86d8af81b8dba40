// Exact merge on the cpu: W ← round(W + s·B·A) (DoRA: round(k ⊙ (W + s·B·A))) with the side
// information that undoes the rounding bit for bit (format and rationale: core/exact_format.h).
// peft's merge/unmerge compute the same W + ΔW and W − ΔW and drift; here the undo is exact.
//
// One pass over W, in row groups of 8 rows × 256-column chunks split over the thread pool: for each
// chunk the kernel (KernelTable::exact_rows) runs every step in registers and L1 — the undo steps
// (R from the current bits, then c from the decoded record) and the merge steps (x', R, the flags
// R ≠ x and their corrections) — and writes W back once; then each row segment of each
// merge step is encoded. A task encodes its group's segments into one small buffer per row and
// appends the rows in order, so its stream is the record's stream for its rows, in record order:
// the record is assembled by a prefix sum of the segment lengths and one copy per task. Segments
// are encoded and decoded by the vector codec (exact_codec_avx512.cc) where the CPU has AVX-512
// VBMI2, else by core/exact_format.h's scalar one. Buffers come from pools kept between calls:
// fresh pages for every merge cost a fault per 4 KiB, as much as the pass itself on some hosts.
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

#ifdef LK_EXACT_PROFILE  // harness builds only: cycles per phase
#include <x86intrin.h>
namespace lorakit { uint64_t g_exact_prof[8]; }
#define LK_PROF_T0 const uint64_t lk_t0 = __rdtsc();
#define LK_PROF_ADD(i) lorakit::g_exact_prof[i] += __rdtsc() - lk_t0;
#else
#define LK_PROF_T0
#define LK_PROF_ADD(i)
#endif

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

// Record buffers freed by their tensors, kept for the next merges (at most 64 MiB in all): fresh
// memory for every merge costs a page fault per 4 KiB (glibc maps blocks of this size afresh on
// most calls), as much as the encoding itself on a VM host.
class RecordPool {
 public:
  // A buffer of at least cap bytes (its capacity into *got), or null.
  void* get(size_t cap, size_t* got) {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < free_.size(); i++)
      if (free_[i].second >= cap && free_[i].second <= 2 * cap) {
        void* p = free_[i].first;
        *got = free_[i].second;
        held_ -= free_[i].second;
        free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
        return p;
      }
    return nullptr;
  }
  void put(void* p, size_t cap) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (held_ + cap <= (size_t(64) << 20)) {
        free_.emplace_back(p, cap);
        held_ += cap;
        return;
      }
    }
    std::free(p);
  }

 private:
  std::mutex mu_;
  std::vector<std::pair<void*, size_t>> free_;
  size_t held_ = 0;
};

RecordPool& record_pool() {
  static RecordPool* p = new RecordPool;  // never destroyed: tensors may be freed during exit
  return *p;
}

// A record buffer (64-byte aligned) that goes back to the pool when its tensor lets go of it.
std::shared_ptr<Storage> host_record(size_t nbytes) {
  const size_t cap = (nbytes + 63) / 64 * 64;
  size_t got = cap;
  void* p = record_pool().get(cap, &got);
  if (!p) {
    p = std::aligned_alloc(64, cap);
    if (!p) throw_range("out of memory allocating " + std::to_string(nbytes) + " bytes of side information");
  }
  std::shared_ptr<Storage> st(new Storage, [got](Storage* s) {
    record_pool().put(s->data, got);
    delete s;  // external: ~Storage leaves the memory alone
  });
  st->data = p;
  st->nbytes = nbytes;
  st->device = Device::CPU;
  st->external = true;
  return st;
}

// A growable byte buffer (malloc'd; realloc grows it in place or by remapping).
class ByteBuf {
 public:
  ByteBuf() = default;
  ByteBuf(const ByteBuf&) = delete;
  ByteBuf& operator=(const ByteBuf&) = delete;
  ByteBuf(ByteBuf&& o) noexcept : p_(o.p_), size_(o.size_), cap_(o.cap_) { o.p_ = nullptr, o.size_ = o.cap_ = 0; }
  ~ByteBuf() { std::free(p_); }
  uint8_t* data() { return p_; }
  size_t size() const { return size_; }
  size_t capacity() const { return cap_; }
  void clear() { size_ = 0; }
  // Room for `more` bytes past size(); returns where they go.
  uint8_t* tail(size_t more) {
    if (size_ + more > cap_) {
      const size_t cap = std::max(size_ + more, cap_ + cap_ / 2 + 4096);
      void* q = std::realloc(p_, cap);
      if (!q) throw_range("out of memory growing the exact merge's side information to " + std::to_string(cap) + " bytes");
      p_ = static_cast<uint8_t*>(q);
      cap_ = cap;
    }
    return p_ + size_;
  }
  void grow(size_t n) { size_ += n; }
  void append(const uint8_t* b, size_t n) {
    if (n) std::memcpy(tail(n), b, n);
    size_ += n;
  }

 private:
  uint8_t* p_ = nullptr;
  size_t size_ = 0, cap_ = 0;
};

// Stream buffers kept between calls (their pages stay mapped); a few dozen at most, none huge.
class BufPool {
 public:
  std::unique_ptr<ByteBuf> get() {
    std::lock_guard<std::mutex> lock(mu_);
    if (free_.empty()) return std::unique_ptr<ByteBuf>(new ByteBuf);
    std::unique_ptr<ByteBuf> b = std::move(free_.back());
    free_.pop_back();
    b->clear();
    return b;
  }
  void put(std::unique_ptr<ByteBuf> b) {
    if (!b || b->capacity() > (size_t(64) << 20)) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (free_.size() < 64) free_.push_back(std::move(b));
  }

 private:
  std::mutex mu_;
  std::vector<std::unique_ptr<ByteBuf>> free_;
};

BufPool& buf_pool() {
  static BufPool* p = new BufPool;  // never destroyed: pool tasks may outlive static destruction order
  return *p;
}

// Segment lengths of `steps` merge steps, reused by the calling thread across calls: a fresh
// array of this size for every merge costs a page fault per 4 KiB.
std::vector<std::vector<uint32_t>>& length_scratch(size_t steps, size_t n) {
  static thread_local std::vector<std::vector<uint32_t>> pool;
  if (pool.size() < steps) pool.resize(steps);
  for (size_t m = 0; m < steps; m++)
    if (pool[m].size() < n) pool[m].resize(n);
  return pool;
}

// A task's working set, per pool thread, reused across tasks and calls: for each step the
// corrections, the bit patterns and the flags of a group (8 rows × 256), and per merge step
// and row a stream buffer for the group's segments.
struct TaskScratch {
  std::vector<int8_t> c;
  std::vector<uint32_t> aux;  // as bytes: 16-bit dtypes use half
  std::vector<uint64_t> nz;
  std::vector<ExactRowStep> steps;
  std::vector<ByteBuf> rows;
};

TaskScratch& task_scratch(size_t ns, size_t nm, int64_t group_rows) {
  static thread_local TaskScratch t;
  const size_t block = static_cast<size_t>(group_rows * kSeg);
  if (t.c.size() < ns * block) {
    t.c.resize(ns * block);
    t.aux.resize(ns * block);
    t.nz.resize(ns * group_rows * 4);
  }
  t.steps.resize(ns);
  if (t.rows.size() < nm * group_rows) t.rows.resize(nm * group_rows);
  return t;
}

// The segment codec: the vector one where the CPU has it and the kernel path is an AVX-512 one
// (LORAKIT_CPU_PATH=avx2 or portable keeps the scalar codec, so that it stays tested), else
// core/exact_format.h's. Both write the same bytes.
struct Codec {
  bool vec = exact_codec_vbmi2_supported() && (std::strncmp(kernel_table().name, "avx512", 6) == 0 ||
                                               std::strncmp(kernel_table().name, "amx", 3) == 0);
  // The stream of corrections c (raw bits from orig) at the flagged elements (nz) into out (room for
  // kMaxSegmentBytes + kEncodeSlack).
  template <class U>
  int encode(const int8_t* c, const U* orig, int len, DType t, const uint64_t (&nz)[4], uint8_t* out) const {
    return vec ? exact_encode_vbmi2(c, orig, len, t, nz, out) : exact::encode_segment_masked(c, orig, len, t, nz, out);
  }
  // c for all 256 elements (0 where none), the raw bits where c is kRaw, nz.
  template <class U>
  bool decode(const uint8_t* s, int bytes, int len, DType t, int8_t* c, U* raw, uint64_t (&nz)[4]) const {
    if (vec) return exact_decode_vbmi2(s, bytes, len, t, c, raw, nz);
    std::memset(c, 0, kSeg);
    return exact::decode_segment(s, bytes, len, t, c, raw, nz);
  }
};

const Codec& codec() {
  static const Codec c;
  return c;
}

template <DType T>
class ExactPass {
  using U = typename std::conditional<T == DType::F32, uint32_t, uint16_t>::type;

  // One task's streams (one per merge step) and the first row group they cover.
  struct TaskOut {
    int64_t g0;
    std::vector<std::unique_ptr<ByteBuf>> streams;
  };

 public:
  ExactPass(const TensorRef& W, bool fifo, std::vector<StepPlan>& undo, std::vector<StepPlan>& merge)
      : kt_(kernel_table()), W_(W), fifo_(fifo), undo_(undo), merge_(merge) {
    rows_ = W.dim(0);
    cols_ = W.dim(1);
    spr_ = exact::segments_per_row(cols_);
    auto& pool = length_scratch(merge_.size(), static_cast<size_t>(rows_ * spr_));
    for (size_t m = 0; m < merge_.size(); m++) lens_.push_back(pool[m].data());
  }

  ~ExactPass() {
    for (TaskOut& t : outs_)
      for (auto& b : t.streams) buf_pool().put(std::move(b));
  }

  void run() {
    const int64_t groups = (rows_ + kGroupRows - 1) / kGroupRows;
    const int64_t per_group = kGroupRows * cols_ * static_cast<int64_t>(1 + undo_.size() + merge_.size());
    parallel_for(groups, [&](int64_t g0, int64_t g1) { task(g0, g1); }, std::max<int64_t>(1, 65536 / per_group));
    std::sort(outs_.begin(), outs_.end(), [](const TaskOut& a, const TaskOut& b) { return a.g0 < b.g0; });
  }

  // Merge step m's record (header, offsets, stream) in host memory.
  std::shared_ptr<Storage> record(size_t m) const {
    const uint32_t* lens = lens_[m];
    const int64_t S = rows_ * spr_;
    uint64_t total = 0;
    for (const TaskOut& t : outs_) total += t.streams[m]->size();
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
      at += lens[s];
    }
    off[S] = at;
    if (at != total) throw_range("exact merge: internal error assembling the side information");
    std::memset(out + head + total, 0, rec->nbytes - head - total);  // the padding to 4 bytes
    uint8_t* stream = out + head;
    for (const TaskOut& t : outs_) {  // in row order: each task's stream is its rows' part of the record
      std::memcpy(stream, t.streams[m]->data(), t.streams[m]->size());
      stream += t.streams[m]->size();
    }
    return rec;
  }

 private:
  void task(int64_t g0, int64_t g1) {
    const size_t nu = undo_.size(), nm = merge_.size(), ns = nu + nm;
    TaskOut mine{g0, {}};
    for (size_t m = 0; m < nm; m++) mine.streams.push_back(buf_pool().get());
    TaskScratch& sc = task_scratch(ns, nm, kGroupRows);
    constexpr DType t = T;
    constexpr int64_t kBlock = kGroupRows * kSeg;
    U* const aux = reinterpret_cast<U*>(sc.aux.data());
    const Codec& cd = codec();
    U* W = W_.as<U>();
    for (int64_t g = g0; g < g1; g++) {
      const int64_t i0 = g * kGroupRows, nr = std::min(kGroupRows, rows_ - i0);
      for (size_t s = 0; s < nu && i0 + kGroupRows < rows_; s++) prefetch_group(undo_[s], i0 + kGroupRows);
      for (size_t r = 0; r < nm * kGroupRows; r++) sc.rows[r].clear();
      for (int64_t jc = 0; jc < spr_; jc++) {
        const int64_t j0 = jc * kSeg;
        const int n = static_cast<int>(std::min<int64_t>(kSeg, cols_ - j0));
        for (size_t s = 0; s < ns; s++) {
          const StepPlan& p = s < nu ? undo_[s] : merge_[s - nu];
          const float* k = p.k ? p.k.get() + (fifo_ ? j0 : i0) : nullptr;
          sc.steps[s] = {p.P.get() + i0 * p.r, p.Q.get() + j0 * p.r, p.r, k, fifo_, s < nu, !p.finite,
                         sc.c.data() + s * kBlock, aux + s * kBlock, sc.nz.data() + s * kGroupRows * 4};
          std::fill(sc.steps[s].nz, sc.steps[s].nz + kGroupRows * 4, uint64_t(0));  // padding rows too
          LK_PROF_T0
          for (int64_t ii = 0; ii < nr && s < nu; ii++) {
            uint64_t(&z)[4] = *reinterpret_cast<uint64_t(*)[4]>(sc.steps[s].nz + ii * 4);
            const int64_t seg = (i0 + ii) * spr_ + jc;
            const uint32_t at = p.offsets[seg];
            if (!cd.decode(p.stream + at, static_cast<int>(p.offsets[seg + 1] - at), n, t, sc.steps[s].c + ii * kSeg,
                           aux + s * kBlock + ii * kSeg, z))
              throw_range("exact unmerge: a record's segment is corrupt");
          }
          LK_PROF_ADD(0)
        }
        {
          LK_PROF_T0
          kt_.exact_rows(t, W + i0 * cols_ + j0, cols_, nr, n, sc.steps.data(), static_cast<int>(ns));
          LK_PROF_ADD(1)
        }
        LK_PROF_T0
        for (size_t m = 0; m < nm; m++) {
          const ExactRowStep& st = sc.steps[nu + m];
          for (int64_t ii = 0; ii < nr; ii++) {
            const uint64_t(&z)[4] = *reinterpret_cast<const uint64_t(*)[4]>(st.nz + ii * 4);
            ByteBuf& row = sc.rows[m * kGroupRows + ii];
            uint8_t* out = row.tail(exact::kMaxSegmentBytes + kEncodeSlack);
            const int len = (z[0] | z[1] | z[2] | z[3])
                                ? cd.encode(st.c + ii * kSeg, static_cast<const U*>(st.aux) + ii * kSeg, n, t, z, out)
                                : 0;
            row.grow(static_cast<size_t>(len));
            lens_[m][(i0 + ii) * spr_ + jc] = static_cast<uint32_t>(len);
          }
        }
        LK_PROF_ADD(2)
      }
      for (size_t m = 0; m < nm; m++)
        for (int64_t ii = 0; ii < nr; ii++) {
          ByteBuf& row = sc.rows[m * kGroupRows + ii];
          mine.streams[m]->append(row.data(), row.size());
        }
    }
    std::lock_guard<std::mutex> lock(mu_);
    outs_.push_back(std::move(mine));
  }

  // The record bytes of the group from row i0 on, towards L2: records are read once, long after
  // they were written, and each segment's decode starts with a dependent load of its first byte.
  void prefetch_group(const StepPlan& p, int64_t i0) const {
    const int64_t s0 = i0 * spr_, s1 = std::min(rows_, i0 + kGroupRows) * spr_;
    const uint8_t* b = p.stream + p.offsets[s0];
    const uint8_t* e = p.stream + p.offsets[s1];
    for (; b < e; b += 64) __builtin_prefetch(b, 0, 2);
    for (int64_t s = s0; s <= s1; s += 16) __builtin_prefetch(p.offsets + s, 0, 2);
  }

  const KernelTable& kt_;
  const TensorRef& W_;
  bool fifo_;
  std::vector<StepPlan>& undo_;
  std::vector<StepPlan>& merge_;
  int64_t rows_ = 0, cols_ = 0, spr_ = 0;
  std::vector<uint32_t*> lens_;
  std::vector<TaskOut> outs_;
  std::mutex mu_;
};

template <DType T>
void run_pass(const TensorRef& W, bool fifo, std::vector<StepPlan>& undo, std::vector<StepPlan>& merge,
              std::vector<std::shared_ptr<Storage>>* records) {
  ExactPass<T> pass(W, fifo, undo, merge);
  {
    LK_PROF_T0
    pass.run();
    LK_PROF_ADD(3)
  }
  LK_PROF_T0
  records->clear();
  for (size_t m = 0; m < merge.size(); m++) records->push_back(pass.record(m));
  LK_PROF_ADD(4)
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
