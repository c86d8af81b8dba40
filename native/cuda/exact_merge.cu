// Exact merge on the GPU (format and rationale: core/exact_format.h; the pass over W:
// exact_chain.cuh; the cpu's: cpu/exact_merge.cc). peft's merge/unmerge compute W ± ΔW and drift;
// these records undo the rounding bit for bit. A call runs, on the stream:
//   1. one kernel turning every step's factors into f32 P and Q (the cpu's prepare_factors);
//   2. the chain pass; with merge steps it fills the slots, segment lengths and row totals, and its
//      last block publishes the stream totals to mapped host memory;
//   3. (merge steps) an exclusive scan of the row totals, queued behind the pass while the host
//      waits for the totals: the call's one host wait, as each record is allocated at its exact
//      size (what mergeSideInfoBytes reports);
//   4. one kernel writing every record's header, offsets and streams (from the slots), then, rarely,
//      the deferred pass for the segments whose streams did not fit a slot.
// An unmerge (undo steps only) does not wait: a record that does not match its weight (W left
// unchanged) or a corrupt segment (values undefined) sets a mapped flag that the next exact call
// on cuda reports. Records come only from this layer's own merges, so that flag means a bug.
// Chains of more than kMaxSteps steps run as several passes (the per-element chain is the same).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>
#include "../core/exact_format.h"
#include "common.cuh"
#include "device_buffer.h"
#include "dora_norm.cuh"
#include "exact_chain.cuh"
#include "ops.h"
#include "runtime.h"

namespace lorakit {
namespace cuda {
namespace {

using exactk::Chain;
using exactk::Ctl;
using exactk::DevStep;
using exactk::kMaxSteps;
using exactk::kSlot;
using exactk::Report;

// ---- Mapped host memory: reports of first passes (one per call in flight) and the sticky flag of
// unmerges. Pages of 64 slots, kept for the process.
struct Mapped {
  std::mutex mu;
  std::vector<int> free;
  std::vector<unsigned> uses;
  std::vector<Report*> host, dev;
  volatile unsigned* sticky_h = nullptr;
  unsigned* sticky_d = nullptr;
};

Mapped& mapped() {
  static Mapped* m = new Mapped();  // leaked: may be used until the process ends
  return *m;
}

void grow_locked(Mapped& m) {
  void* h = nullptr;
  void* d = nullptr;
  LK_CUDA(cudaHostAlloc(&h, 64 * sizeof(Report), cudaHostAllocMapped), "exact merge: mapped memory");
  std::memset(h, 0, 64 * sizeof(Report));
  LK_CUDA(cudaHostGetDevicePointer(&d, h, 0), "exact merge: mapped memory");
  Report* hr = static_cast<Report*>(h);
  Report* dr = static_cast<Report*>(d);
  int k = 0;
  if (!m.sticky_h) {  // the first page's first slot holds the sticky flag
    m.sticky_h = reinterpret_cast<volatile unsigned*>(hr);
    m.sticky_d = reinterpret_cast<unsigned*>(dr);
    k = 1;
  }
  for (; k < 64; k++) {
    m.free.push_back(static_cast<int>(m.host.size()));
    m.host.push_back(hr + k);
    m.dev.push_back(dr + k);
    m.uses.push_back(0);
  }
}

unsigned* sticky_device() {
  Mapped& m = mapped();
  std::lock_guard<std::mutex> lock(m.mu);
  if (!m.sticky_h) grow_locked(m);
  return m.sticky_d;
}

// Reports (and clears) a bad record seen by an earlier unmerge.
void check_sticky() {
  Mapped& m = mapped();
  volatile unsigned* f;
  {
    std::lock_guard<std::mutex> lock(m.mu);
    f = m.sticky_h;
  }
  if (f && *f) {
    *f = 0;
    throw_range("exact unmerge: an earlier exact unmerge on cuda was given a record that does not match its weight (left unchanged) or has a corrupt segment (values undefined)");
  }
}

// One report slot for one call; given back only once the pass that writes it is known finished.
class ReportLease {
 public:
  ReportLease() {
    Mapped& m = mapped();
    std::lock_guard<std::mutex> lock(m.mu);
    if (m.free.empty()) grow_locked(m);
    id_ = m.free.back();
    m.free.pop_back();
    host_ = m.host[id_];
    dev_ = m.dev[id_];
    seq_ = ++m.uses[id_];
  }
  ~ReportLease() {
    if (!finished_) return;  // a failed pass may still write it: never reuse it
    Mapped& m = mapped();
    std::lock_guard<std::mutex> lock(m.mu);
    m.free.push_back(id_);
  }
  ReportLease(const ReportLease&) = delete;
  ReportLease& operator=(const ReportLease&) = delete;
  Report* dev() const { return dev_; }
  unsigned seq() const { return seq_; }

  // Spins until the pass has published (or the stream reports an error); returns the report.
  const volatile Report& wait() {
    const volatile Report* r = host_;
    for (unsigned spin = 1;; spin++) {
      if (r->seq == seq_) break;
      if (spin % 256 == 0) {
        const cudaError_t e = cudaStreamQuery(stream());
        if (e == cudaErrorNotReady) {
          if (spin > (1u << 16)) std::this_thread::yield();  // a long pass: leave the core to others
          continue;
        }
        if (r->seq == seq_) break;
        LK_CUDA(e, "exact merge: chain");
        finished_ = true;
        throw_state("exact merge: the chain pass finished without publishing its totals");
      }
    }
    std::atomic_thread_fence(std::memory_order_acquire);
    finished_ = true;
    return *r;
  }

 private:
  int id_ = -1;
  Report* host_ = nullptr;
  Report* dev_ = nullptr;
  unsigned seq_ = 0;
  bool finished_ = false;
};

// ---- Small kernels.

struct PrepStep {
  const void* A;
  const void* B;
  float* P;
  float* Q;
  float scale;
  int r;
  DType at, bt;
};
struct PrepBatch {
  PrepStep s[kMaxSteps];
};

// P [rows, r] = scale·(B, or Aᵀ) and Q [r, cols] = A, or Bᵀ, in f32 (the cpu's prepare_factors);
// blockIdx.y picks the step.
__global__ void prep_factors_kernel(PrepBatch b, bool fifo, int64_t rows, int64_t cols) {
  const PrepStep& p = b.s[blockIdx.y];
  const int r = p.r;
  const int64_t np = rows * r, total = np + int64_t(r) * cols;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    if (t < np) {  // P's rows in groups of 4, interleaved (exact_chain.cuh DevStep)
      const int64_t i = t / r, q = t % r;
      p.P[((i >> 2) * r + q) * 4 + (i & 3)] =
          __fmul_rn(p.scale, fifo ? load_as_f32(p.A, p.at, q * rows + i) : load_as_f32(p.B, p.bt, i * r + q));
    } else {
      const int64_t u = t - np, q = u / cols, c = u % cols;
      p.Q[u] = fifo ? load_as_f32(p.B, p.bt, c * r + q) : load_as_f32(p.A, p.at, q * cols + c);
    }
  }
}

__global__ void dora_scale_kernel(const void* mag, DType mt, const float* norm, int64_t n, float* k) {
  for (int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; o < n; o += int64_t(gridDim.x) * blockDim.x)
    k[o] = dora_k(mag, mt, o, norm[o]);
}

struct ScanBatch {
  const uint32_t* in[kMaxSteps];
  uint32_t* out[kMaxSteps];
};

// Exclusive prefix sums of the row totals (one block per merge step): where each row's streams
// start.
__global__ void __launch_bounds__(1024) row_scan_kernel(ScanBatch b, int64_t rows) {
  const uint32_t* in = b.in[blockIdx.x];
  uint32_t* out = b.out[blockIdx.x];
  __shared__ uint32_t wsum[32];
  const int t = threadIdx.x, lane = t % 32, warp = t / 32;
  const int64_t per = (rows + 1023) / 1024, lo = std::min<int64_t>(rows, t * per), hi = std::min<int64_t>(rows, lo + per);
  uint32_t sum = 0;
  for (int64_t k = lo; k < hi; k++) sum += in[k];
  uint32_t incl = sum;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t v = __shfl_up_sync(exactc::kFull, incl, o);
    if (lane >= o) incl += v;
  }
  if (lane == 31) wsum[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    const uint32_t w = wsum[lane];
    uint32_t wi = w;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t v = __shfl_up_sync(exactc::kFull, wi, o);
      if (lane >= o) wi += v;
    }
    wsum[lane] = wi - w;
  }
  __syncthreads();
  uint32_t run = wsum[warp] + incl - sum;
  for (int64_t k = lo; k < hi; k++) {
    out[k] = run;
    run += in[k];
  }
}

struct AsmStep {
  const uint8_t* slots;
  const uint16_t* lens;
  const uint32_t* rowoff;
  uint8_t* rec;
  uint64_t rec_bytes;
  uint32_t total;
};
struct AsmBatch {
  AsmStep s[kMaxSteps];
};

// The records (blockIdx.y: merge step): header, offsets (row start + prefix of the row's segment
// lengths) and the streams copied from the slots, a warp per row; deferred segments are left to
// the deferred pass.
__global__ void assemble_kernel(AsmBatch b, const uint8_t* deferred, int64_t rows, int64_t cols, uint32_t dtype) {
  const AsmStep& a = b.s[blockIdx.y];
  const int64_t spr = exact::segments_per_row(cols), S = rows * spr;
  const uint64_t head = sizeof(exact::ExactHeader) + static_cast<uint64_t>(exact::offsets_bytes(rows, cols));
  uint32_t* offs = reinterpret_cast<uint32_t*>(a.rec + sizeof(exact::ExactHeader));
  uint8_t* stream = a.rec + head;
  if (blockIdx.x == 0) {
    if (threadIdx.x == 0) {
      const exact::ExactHeader h{exact::kMagic, dtype, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols), a.total};
      memcpy(a.rec, &h, sizeof h);
      offs[S] = a.total;
    }
    if (head + a.total + threadIdx.x < a.rec_bytes) stream[a.total + threadIdx.x] = 0;  // padding to 4 bytes
  }
  const int64_t i = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (i >= rows) return;
  uint32_t carry = a.rowoff[i];
  for (int64_t g0 = 0; g0 < spr; g0 += 32) {
    const int64_t seg = i * spr + g0 + lane;
    const bool mine = g0 + lane < spr;
    const uint32_t l = mine ? a.lens[seg] : 0u;
    uint32_t incl = l;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t v = __shfl_up_sync(exactc::kFull, incl, o);
      if (lane >= o) incl += v;
    }
    const uint32_t off = carry + incl - l;
    if (mine) offs[seg] = off;
    const uint32_t skip = mine && deferred[seg] ? 1u : 0u;
    const int cnt = static_cast<int>(std::min<int64_t>(32, spr - g0));
    for (int t = 0; t < cnt; t++) {
      const uint32_t lt = __shfl_sync(exactc::kFull, l, t), ot = __shfl_sync(exactc::kFull, off, t);
      if (__shfl_sync(exactc::kFull, skip, t) || !lt) continue;
      const uint8_t* src = a.slots + (i * spr + g0 + t) * kSlot;
      for (uint32_t k = lane; k < lt; k += 32) stream[ot + k] = src[k];
    }
    carry += __shfl_sync(exactc::kFull, incl, 31);
  }
}

// Device and host times of a call's phases on stderr when LORAKIT_EXACT_TRACE is set: the chain
// pass, the wait for its totals, the assembly (merge calls only).
struct Trace {
  bool on = std::getenv("LORAKIT_EXACT_TRACE") != nullptr;
  cudaEvent_t ev[4] = {};
  std::chrono::steady_clock::time_point host[4];
  int n = 0;
  void mark() {
    if (!on || n >= 4) return;
    if (!ev[n]) cudaEventCreate(&ev[n]);
    cudaEventRecord(ev[n], stream());
    host[n++] = std::chrono::steady_clock::now();
  }
  ~Trace() {
    if (!on || n < 2) return;
    cudaEventSynchronize(ev[n - 1]);
    std::fprintf(stderr, "exact merge trace (device µs / host µs):");
    for (int k = 1; k < n; k++) {
      float ms = 0.f;
      cudaEventElapsedTime(&ms, ev[k - 1], ev[k]);
      std::fprintf(stderr, " %.1f/%.1f", ms * 1e3, std::chrono::duration<double, std::micro>(host[k] - host[k - 1]).count());
    }
    std::fprintf(stderr, "\n");
    for (auto e : ev)
      if (e) cudaEventDestroy(e);
  }
};

// Unmerges run the staged kernel (exact_chain.cuh): 2.5-5% faster than the unstaged one on an H100
// (bench/results/gpu-exact-stage-2026-12-07-h100.txt). LORAKIT_EXACT_STAGE=0 runs the unstaged one (A/B).
bool staged_unmerge() {
  static const bool v = [] {
    const char* e = std::getenv("LORAKIT_EXACT_STAGE");
    return !(e && std::string(e) == "0");
  }();
  return v;
}

int first_pass_min_blocks() {
  static const int v = [] {
    const char* e = std::getenv("LORAKIT_EXACT_MIN_BLOCKS");
    return e && std::string(e) == "1" ? 1 : 2;
  }();
  return v;
}

template <DType D>
void launch_chain(bool final_pass, void* W, int64_t rows, int64_t cols, const Chain& ch, uint8_t* deferred, Ctl* ctl, Report* rep,
                  unsigned seq, unsigned* sticky) {
  using U = typename exactk::Lane<D>::U;
  const dim3 grid(static_cast<unsigned>((rows + exactk::kBand - 1) / exactk::kBand), static_cast<unsigned>(exact::segments_per_row(cols)));
  U* w = static_cast<U*>(W);
  constexpr int T = exactk::kThreads;
  if (!final_pass && ch.merges == 0 && staged_unmerge())
    exactk::chain_kernel<D, false, 2, true><<<grid, T, 0, stream()>>>(w, rows, cols, ch, deferred, ctl, rep, seq, sticky);
  else if (final_pass)
    exactk::chain_kernel<D, true, 2><<<grid, T, 0, stream()>>>(w, rows, cols, ch, deferred, nullptr, nullptr, 0, sticky);
  else if (first_pass_min_blocks() == 1)
    exactk::chain_kernel<D, false, 1><<<grid, T, 0, stream()>>>(w, rows, cols, ch, deferred, ctl, rep, seq, sticky);
  else
    exactk::chain_kernel<D, false, 2><<<grid, T, 0, stream()>>>(w, rows, cols, ch, deferred, ctl, rep, seq, sticky);
  LK_LAUNCHED("exact merge: chain");
}

void launch(DType t, bool final_pass, void* W, int64_t rows, int64_t cols, const Chain& ch, uint8_t* deferred, Ctl* ctl, Report* rep,
            unsigned seq, unsigned* sticky) {
  switch (t) {
    case DType::F32: return launch_chain<DType::F32>(final_pass, W, rows, cols, ch, deferred, ctl, rep, seq, sticky);
    case DType::BF16: return launch_chain<DType::BF16>(final_pass, W, rows, cols, ch, deferred, ctl, rep, seq, sticky);
    case DType::F16: return launch_chain<DType::F16>(final_pass, W, rows, cols, ch, deferred, ctl, rep, seq, sticky);
    default: throw_type("weight: expected a float dtype");
  }
}

size_t up256(size_t v) { return (v + 255) / 256 * 256; }

// One pass over W for steps [first, first + count) of the chain (undo steps first); the merge
// steps among them append their records.
void run_group(const TensorRef& W, const std::vector<DevStep>& all, size_t first, size_t count, unsigned* sticky,
               std::vector<std::shared_ptr<Storage>>* records) {
  const int64_t rows = W.dim(0), cols = W.dim(1), S = exact::segment_count(rows, cols);
  Chain ch{};
  ch.n = static_cast<int>(count);
  std::vector<int> merges;  // indices into ch.s
  for (size_t s = 0; s < count; s++) {
    ch.s[s] = all[first + s];
    if (!ch.s[s].undo) merges.push_back(static_cast<int>(s));
  }
  const size_t nm = merges.size();
  ch.merges = static_cast<int>(nm);
  // Scratch (merge steps only), one block: [Ctl | row totals] (zeroed), row starts, segment
  // lengths, deferred flags, slots.
  const size_t o_rowlen = 256, zero_end = o_rowlen + nm * rows * 4;
  const size_t o_rowoff = up256(zero_end), o_lens = up256(o_rowoff + nm * rows * 4), o_def = up256(o_lens + nm * S * 2);
  const size_t o_slots = up256(o_def + S), end = o_slots + nm * S * kSlot;
  Buf scratch(nm ? end : 0);
  uint8_t* base = static_cast<uint8_t*>(scratch.p);
  Ctl* ctl = nullptr;
  uint8_t* deferred = nullptr;
  ScanBatch sb{};
  if (nm) {
    LK_CUDA(cudaMemsetAsync(base, 0, zero_end, stream()), "exact merge: counters");
    ctl = reinterpret_cast<Ctl*>(base);
    deferred = base + o_def;
    for (size_t m = 0; m < nm; m++) {
      DevStep& st = ch.s[merges[m]];
      st.rowlen = reinterpret_cast<uint32_t*>(base + o_rowlen) + m * rows;
      st.lens = reinterpret_cast<uint16_t*>(base + o_lens) + m * S;
      st.slots = base + o_slots + m * S * kSlot;
      sb.in[m] = st.rowlen;
      sb.out[m] = reinterpret_cast<uint32_t*>(base + o_rowoff) + m * rows;
    }
  }
  std::unique_ptr<ReportLease> lease(nm ? new ReportLease() : nullptr);
  Trace trace;
  trace.mark();
  launch(W.dtype, false, W.data, rows, cols, ch, deferred, ctl, lease ? lease->dev() : nullptr, lease ? lease->seq() : 0, sticky);
  trace.mark();
  if (!nm) return;
  row_scan_kernel<<<static_cast<unsigned>(nm), 1024, 0, stream()>>>(sb, rows);
  LK_LAUNCHED("exact merge: row scan");
  const volatile Report& rep = lease->wait();
  trace.mark();
  if (rep.bad)
    throw_range("exact unmerge: a record does not match this weight (left unchanged), or a segment of it is corrupt (values undefined)");
  const size_t head = sizeof(exact::ExactHeader) + static_cast<size_t>(exact::offsets_bytes(rows, cols));
  AsmBatch ab{};
  std::vector<std::shared_ptr<Storage>> made;
  for (size_t m = 0; m < nm; m++) {
    const uint32_t total = rep.total[merges[m]];
    const size_t bytes = (head + total + 3) / 4 * 4;
    auto rec = Storage::allocate(bytes, Device::CUDA, false);
    uint8_t* rb = static_cast<uint8_t*>(rec->data);
    order_use(rb, true);
    const DevStep& st = ch.s[merges[m]];
    ab.s[m] = {st.slots, st.lens, sb.out[m], rb, bytes, total};
    ch.s[merges[m]].out = rb + head;
    ch.s[merges[m]].out_off = reinterpret_cast<const uint32_t*>(rb + sizeof(exact::ExactHeader));
    made.push_back(rec);
  }
  const unsigned deferred_segments = rep.deferred;
  assemble_kernel<<<dim3(static_cast<unsigned>((rows + 7) / 8), static_cast<unsigned>(nm)), 256, 0, stream()>>>(
      ab, deferred, rows, cols, static_cast<uint32_t>(W.dtype));
  LK_LAUNCHED("exact merge: assemble");
  if (deferred_segments) launch(W.dtype, true, W.data, rows, cols, ch, deferred, nullptr, nullptr, 0, sticky);
  trace.mark();
  for (auto& r : made) records->push_back(r);
}

}  // namespace

void exact_merge(const TensorRef& W, bool fan_in_fan_out, const std::vector<ExactStep>& undo, const std::vector<ExactStep>& merge,
                 std::vector<std::shared_ptr<Storage>>* records) {
  const int64_t rows = W.dim(0), cols = W.dim(1);
  records->clear();
  check_sticky();
  if (exact::segments_per_row(cols) > 65535 || (rows + exactk::kBand - 1) / exactk::kBand > 0x7fffffff)
    throw_range("weight: too large for the exact merge on cuda ([" + std::to_string(rows) + ", " + std::to_string(cols) + "])");
  unsigned* sticky = sticky_device();
  const size_t n = undo.size() + merge.size();
  // P, Q (and DoRA's k) of every step in one buffer, each 256-byte aligned.
  std::vector<size_t> at(n);
  size_t bytes = 0;
  for (size_t s = 0; s < n; s++) {
    const ExactStep& e = s < undo.size() ? undo[s] : merge[s - undo.size()];
    const int64_t r = e.A.dim(0), outf = fan_in_fan_out ? cols : rows;
    at[s] = bytes;
    bytes += up256((rows + exactk::kRowsPerWarp) * r * 4) + up256(r * cols * 4) + (e.magnitude ? up256(outf * 4) : 0);
  }
  Buf hold(bytes);
  std::vector<DevStep> steps;
  PrepBatch pb{};
  for (size_t s = 0; s < n; s++) {
    const bool is_undo = s < undo.size();
    const ExactStep& e = is_undo ? undo[s] : merge[s - undo.size()];
    const int r = static_cast<int>(e.A.dim(0));
    uint8_t* p = static_cast<uint8_t*>(hold.p) + at[s];
    float* P = reinterpret_cast<float*>(p);
    float* Q = reinterpret_cast<float*>(p + up256((rows + exactk::kRowsPerWarp) * r * 4));
    pb.s[s % kMaxSteps] = {e.A.data, e.B.data, P, Q, e.scale, r, e.A.dtype, e.B.dtype};
    if (s % kMaxSteps == kMaxSteps - 1 || s == n - 1) {
      int64_t most = 0;
      for (size_t k = s - s % kMaxSteps; k <= s; k++) most = std::max<int64_t>(most, (rows + cols) * pb.s[k % kMaxSteps].r);
      const dim3 grid(blocks_for(most, 256), static_cast<unsigned>(s % kMaxSteps + 1));
      prep_factors_kernel<<<grid, 256, 0, stream()>>>(pb, fan_in_fan_out, rows, cols);
      LK_LAUNCHED("exact merge: factors");
    }
    DevStep d{};
    d.P = P;
    d.Q = Q;
    d.r = r;
    d.undo = is_undo;
    if (e.magnitude) {
      const int64_t outf = fan_in_fan_out ? cols : rows;
      float* k = reinterpret_cast<float*>(p + up256((rows + exactk::kRowsPerWarp) * r * 4) + up256(r * cols * 4));
      dora_scale_kernel<<<blocks_for(outf, 256), 256, 0, stream()>>>(e.magnitude->data, e.magnitude->dtype, e.norm, outf, k);
      LK_LAUNCHED("exact merge: dora scale");
      d.k = k;
      d.k_per_col = fan_in_fan_out;
    }
    if (is_undo) {  // the builder checked the size; the chain kernel checks the header
      d.record = static_cast<const uint8_t*>(e.record);
      d.record_bytes = e.record_bytes;
      d.offsets = reinterpret_cast<const uint32_t*>(d.record + sizeof(exact::ExactHeader));
      d.stream = reinterpret_cast<const uint8_t*>(d.offsets) + exact::offsets_bytes(rows, cols);
    }
    steps.push_back(d);
  }
  for (size_t first = 0; first < steps.size(); first += kMaxSteps)
    run_group(W, steps, first, std::min<size_t>(kMaxSteps, steps.size() - first), sticky, records);
}

}  // namespace cuda
}  // namespace lorakit
