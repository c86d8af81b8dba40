// Exact merge on the GPU (format and rationale: core/exact_format.h; the cpu's: cpu/exact_merge.cc).
// peft's merge/unmerge compute W ± ΔW and drift; these records undo the rounding bit for bit.
//
// One warp per 256-weight row segment, lane L on columns 8L..8L+7: each step's delta is r fused
// multiply-adds in order of q from zero (as the cpu, so both devices agree on it), then the chain
// runs in registers: undo steps decode their record and correct R = round(x' − d); merge steps
// round x' = round(x + d), compare R with x and encode the corrections in shared memory. The record
// sizes are only known after the pass, so a merge runs in phases:
//   1. the pass: each segment's stream goes to a fixed 96-byte slot and its length to lens; a
//      segment whose stream does not fit (rare: large deltas) is left unwritten and marked deferred;
//   2. exclusive scans of the lengths give the offsets; the totals come back to the host, which
//      allocates each record (header, offsets, streams) at its exact size;
//   3. the deferred segments rerun the whole chain, writing their streams in place, and the slots
//      of the others are copied into the records.
// Chains of more than kMaxSteps steps run as several passes (the per-element chain is the same).
#include <cub/device/device_scan.cuh>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>
#include "../core/exact_format.h"
#include "common.cuh"
#include "device_buffer.h"
#include "exact_codec.cuh"
#include "ops.h"
#include "runtime.h"

namespace lorakit {
namespace cuda {
namespace {

constexpr int kMaxSteps = 8;
constexpr int kSlot = 96;  // bytes of staging per segment and merge step (3 bits per weight)
constexpr int kWarps = 8;
constexpr int kRowsPerBlock = kWarps;  // one row per warp: more independent loads in flight
// Resident blocks per SM the chain kernel is built for (registers capped to fit). 2 (93 registers,
// no spills) is what was measured on an H100; 4 (64 registers, some spills) is untested for speed.
#ifndef LK_EXACT_MIN_BLOCKS
#define LK_EXACT_MIN_BLOCKS 2
#endif

struct DevStep {
  const float* P;  // [rows, r] = scale·(B, or Aᵀ with fan_in_fan_out)
  const float* Q;  // [r, cols] = A, or Bᵀ
  const float* k;  // DoRA: magnitude / norm per output feature, or null
  const uint8_t* record;    // undo: the record (header, [S + 1] offsets, stream) of record_bytes
  const uint32_t* offsets;
  const uint8_t* stream;
  uint64_t record_bytes;
  uint8_t* slots;  // merge, phase 1: [S][kSlot]
  uint32_t* lens;  // merge, phase 1: [S + 1]
  uint8_t* out;    // merge, phase 3: the record's stream and offsets
  const uint32_t* out_off;
  int r;
  int k_per_col;
  int undo;
};

struct Chain {
  DevStep s[kMaxSteps];
  int n;
};

template <DType D> struct Lane;
template <> struct Lane<DType::F32> {
  using U = uint32_t;
  static __device__ __forceinline__ float widen(uint32_t b) { return __uint_as_float(b); }
  static __device__ __forceinline__ uint32_t narrow(float v) { return __float_as_uint(v); }
};
template <> struct Lane<DType::BF16> {
  using U = uint16_t;
  static __device__ __forceinline__ float widen(uint32_t b) { return __uint_as_float(b << 16); }
  static __device__ __forceinline__ uint32_t narrow(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }
};
template <> struct Lane<DType::F16> {
  using U = uint16_t;
  static __device__ __forceinline__ float widen(uint32_t b) { return __half2float(__ushort_as_half(static_cast<unsigned short>(b))); }
  static __device__ __forceinline__ uint32_t narrow(float v) { return __half_as_ushort(__float2half_rn(v)); }
};

// The step's delta for the lane's 8 columns of row i; explicit fma intrinsics, so no contraction
// choice of the compiler can differ between the passes that compute it.
__device__ __forceinline__ void delta8(const DevStep& st, int64_t i, int64_t cols, int64_t j, bool vec, float (&d)[8]) {
#pragma unroll
  for (int e = 0; e < 8; e++) d[e] = 0.f;
  const float* p = st.P + i * st.r;
#pragma unroll 4
  for (int q = 0; q < st.r; q++) {  // unrolled: four q's loads in flight before their fmas
    const float pq = __ldg(p + q);
    const float* qr = st.Q + int64_t(q) * cols + j;
    float v[8];
    if (vec) {
      const float4 a = __ldg(reinterpret_cast<const float4*>(qr)), b = __ldg(reinterpret_cast<const float4*>(qr) + 1);
      v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    } else {
#pragma unroll
      for (int e = 0; e < 8; e++) v[e] = j + e < cols ? __ldg(qr + e) : 0.f;
    }
#pragma unroll
    for (int e = 0; e < 8; e++) d[e] = __fmaf_rn(pq, v[e], d[e]);
  }
}

// An undo step's record header against this weight (checked on the device: no host round trip).
__device__ __forceinline__ bool header_ok(const DevStep& st, int64_t rows, int64_t cols, DType t) {
  exact::ExactHeader h;
  memcpy(&h, st.record, sizeof h);
  return h.magic == exact::kMagic && h.dtype == static_cast<uint32_t>(t) && h.rows == static_cast<uint64_t>(rows) &&
         h.cols == static_cast<uint64_t>(cols) &&
         sizeof(exact::ExactHeader) + static_cast<uint64_t>(exact::offsets_bytes(rows, cols)) + h.stream_bytes <= st.record_bytes;
}

// Phase 1 (Final false) over every segment, or phase 3 (Final true) over the deferred ones.
template <DType D, bool Final>
__global__ void __launch_bounds__(kWarps * 32, LK_EXACT_MIN_BLOCKS) exact_chain_kernel(typename Lane<D>::U* W, int64_t rows, int64_t cols, Chain ch,
                                                                  uint8_t* deferred, unsigned* counters) {
  using L = Lane<D>;
  using U = typename L::U;
  __shared__ uint32_t enc[kWarps][exactc::kSegWords];
  __shared__ int8_t cs[kWarps][exact::kSeg];
  __shared__ uint32_t rs[kWarps][exact::kSeg];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t spr = (cols + exact::kSeg - 1) / exact::kSeg;
  const int64_t g = blockIdx.x, j0 = g * exact::kSeg;
  const int len = static_cast<int>(cols - j0 < exact::kSeg ? cols - j0 : exact::kSeg);
  const int64_t j = j0 + lane * 8;
  const bool full = j + 8 <= cols;
  const bool vec_q = full && cols % 4 == 0;
  const bool vec_w = full && cols % (16 / sizeof(U)) == 0;
  bool bad = false;
  for (int s = 0; s < ch.n; s++)
    if (ch.s[s].undo && !header_ok(ch.s[s], rows, cols, D)) {  // a record for another weight: touch nothing
      if (threadIdx.x == 0) atomicOr(&counters[1], 1u);
      return;
    }
  for (int64_t i = int64_t(blockIdx.y) * kRowsPerBlock + warp; i < rows && i < int64_t(blockIdx.y + 1) * kRowsPerBlock; i += kWarps) {
    const int64_t seg = i * spr + g;
    if (Final && !deferred[seg]) continue;
    U* wp = W + i * cols + j;
    uint32_t x[8];
    if (vec_w) {
      const uint4 v = *reinterpret_cast<const uint4*>(wp);
      const uint32_t w4[4] = {v.x, v.y, v.z, v.w};
      if (sizeof(U) == 2) {
#pragma unroll
        for (int e = 0; e < 8; e++) x[e] = (w4[e / 2] >> (16 * (e % 2))) & 0xffffu;
      } else {
#pragma unroll
        for (int e = 0; e < 4; e++) x[e] = w4[e];
        const uint4 v2 = *(reinterpret_cast<const uint4*>(wp) + 1);
        x[4] = v2.x, x[5] = v2.y, x[6] = v2.z, x[7] = v2.w;
      }
    } else {
#pragma unroll
      for (int e = 0; e < 8; e++) x[e] = j + e < cols ? static_cast<uint32_t>(wp[e]) : 0u;
    }
    bool fits = true;
    for (int s = 0; s < ch.n; s++) {
      const DevStep& st = ch.s[s];
      float d[8];
      delta8(st, i, cols, j, vec_q, d);
      float k[8];
#pragma unroll
      for (int e = 0; e < 8; e++) k[e] = !st.k ? 1.f : st.k_per_col ? (j + e < cols ? st.k[j + e] : 1.f) : st.k[i];
      if (st.undo) {
        int8_t c[8];
        uint32_t raw[8];
        const uint32_t at = st.offsets[seg], end = st.offsets[seg + 1];
        const uint64_t stream_bytes = st.record_bytes - (st.stream - st.record);
        const bool ok = at <= end && end <= stream_bytes && end - at <= uint32_t(exact::kMaxSegmentBytes);
        if (!ok) bad = true;
        exactc::warp_decode<D>(st.stream + at, ok ? static_cast<int>(end - at) : 0, len, lane, c, raw, cs[warp], rs[warp], &bad);
#pragma unroll
        for (int e = 0; e < 8; e++) {
          const float v = L::widen(x[e]);
          const uint32_t R = L::narrow(st.k ? __fsub_rn(__fdiv_rn(v, k[e]), d[e]) : __fsub_rn(v, d[e]));
          x[e] = c[e] == exact::kRaw ? raw[e] : c[e] ? exact::corrected<D>(R, c[e]) : R;
        }
      } else {
        int8_t c[8];
        uint32_t a[8];
#pragma unroll
        for (int e = 0; e < 8; e++) {
          const float v = L::widen(x[e]);
          a[e] = L::narrow(st.k ? __fmul_rn(k[e], __fadd_rn(v, d[e])) : __fadd_rn(v, d[e]));
          const float va = L::widen(a[e]);
          const uint32_t R = L::narrow(st.k ? __fsub_rn(__fdiv_rn(va, k[e]), d[e]) : __fsub_rn(va, d[e]));
          c[e] = R == x[e] || j + e >= cols ? 0 : exact::correction<D>(x[e], R);
        }
        const int bytes = exactc::warp_encode<D>(c, x, len, lane, enc[warp]);
        if (Final) {
          if (bytes) exactc::warp_copy_out(enc[warp], bytes, st.out + st.out_off[seg], lane);
        } else {
          if (lane == 0) st.lens[seg] = static_cast<uint32_t>(bytes);
          if (bytes <= kSlot) exactc::warp_copy_out(enc[warp], bytes, st.slots + seg * kSlot, lane);
          else fits = false;
        }
        __syncwarp();
#pragma unroll
        for (int e = 0; e < 8; e++) x[e] = a[e];
      }
    }
    if (!Final) {
      if (lane == 0) deferred[seg] = fits ? 0 : 1;
      if (!fits) {  // left as it was: phase 3 reruns this segment
        if (lane == 0) atomicAdd(&counters[0], 1u);
        continue;
      }
    }
    if (vec_w) {
      uint32_t w4[4];
      if (sizeof(U) == 2) {
#pragma unroll
        for (int e = 0; e < 4; e++) w4[e] = x[2 * e] | (x[2 * e + 1] << 16);
        *reinterpret_cast<uint4*>(wp) = make_uint4(w4[0], w4[1], w4[2], w4[3]);
      } else {
        *reinterpret_cast<uint4*>(wp) = make_uint4(x[0], x[1], x[2], x[3]);
        *(reinterpret_cast<uint4*>(wp) + 1) = make_uint4(x[4], x[5], x[6], x[7]);
      }
    } else {
#pragma unroll
      for (int e = 0; e < 8; e++)
        if (j + e < cols) wp[e] = static_cast<U>(x[e]);
    }
  }
  if (__any_sync(exactc::kFull, bad) && lane == 0) atomicOr(&counters[1], 1u);
}

// P [rows, r] = scale·(B, or Aᵀ) and Q [r, cols] = A, or Bᵀ, in f32 (the cpu's prepare_factors).
__global__ void prep_factors_kernel(const void* A, DType at, const void* B, DType bt, float scale, bool fifo, int64_t rows,
                                    int64_t cols, int r, float* P, float* Q) {
  const int64_t np = rows * r, total = np + int64_t(r) * cols;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    if (t < np) {
      const int64_t i = t / r, q = t % r;
      P[t] = __fmul_rn(scale, fifo ? load_as_f32(A, at, q * rows + i) : load_as_f32(B, bt, i * r + q));
    } else {
      const int64_t u = t - np, q = u / cols, c = u % cols;
      Q[u] = fifo ? load_as_f32(B, bt, c * r + q) : load_as_f32(A, at, q * cols + c);
    }
  }
}

__global__ void dora_scale_kernel(const void* mag, DType mt, const float* norm, int64_t n, float* k) {
  for (int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; o < n; o += int64_t(gridDim.x) * blockDim.x)
    k[o] = __fdiv_rn(load_as_f32(mag, mt, o), norm[o]);
}

// The record's header, written on the stream (a host copy would wait for the stream).
__global__ void write_header_kernel(exact::ExactHeader h, uint8_t* dst) {
  if (threadIdx.x < sizeof h) dst[threadIdx.x] = reinterpret_cast<const uint8_t*>(&h)[threadIdx.x];
}

// Per-phase device and host times of the exact merge on stderr when LORAKIT_EXACT_TRACE is set:
// the chain pass, the scans and the read-back of the totals, and the record's assembly.
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

// The slots of the segments phase 1 wrote, into the record's stream (a warp per segment).
__global__ void copy_slots_kernel(const uint8_t* slots, const uint32_t* lens, const uint32_t* offs, const uint8_t* deferred,
                                  int64_t S, uint8_t* out) {
  const int64_t seg = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (seg >= S || deferred[seg]) return;
  const uint32_t n = lens[seg];
  for (uint32_t b = lane; b < n; b += 32) out[offs[seg] + b] = slots[seg * kSlot + b];
}

template <DType D>
void launch_chain(bool final_phase, void* W, int64_t rows, int64_t cols, const Chain& ch, uint8_t* deferred, unsigned* counters) {
  using U = typename Lane<D>::U;
  const dim3 grid(static_cast<unsigned>(exact::segments_per_row(cols)), static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock));
  if (final_phase)
    exact_chain_kernel<D, true><<<grid, kWarps * 32, 0, stream()>>>(static_cast<U*>(W), rows, cols, ch, deferred, counters);
  else
    exact_chain_kernel<D, false><<<grid, kWarps * 32, 0, stream()>>>(static_cast<U*>(W), rows, cols, ch, deferred, counters);
  LK_LAUNCHED("exact merge: chain");
}

void launch(DType t, bool final_phase, void* W, int64_t rows, int64_t cols, const Chain& ch, uint8_t* deferred, unsigned* counters) {
  switch (t) {
    case DType::F32: return launch_chain<DType::F32>(final_phase, W, rows, cols, ch, deferred, counters);
    case DType::BF16: return launch_chain<DType::BF16>(final_phase, W, rows, cols, ch, deferred, counters);
    case DType::F16: return launch_chain<DType::F16>(final_phase, W, rows, cols, ch, deferred, counters);
    default: throw_type("weight: expected a float dtype");
  }
}

// One pass over W for steps [first, first + count) of the chain (undo steps first); the merge
// steps among them append their records.
void run_group(const TensorRef& W, const std::vector<DevStep>& all, size_t first, size_t count,
               std::vector<std::shared_ptr<Storage>>* records) {
  const int64_t rows = W.dim(0), cols = W.dim(1), S = exact::segment_count(rows, cols);
  Chain ch{};
  ch.n = static_cast<int>(count);
  std::vector<int> merges;  // indices into ch.s
  for (size_t s = 0; s < count; s++) {
    ch.s[s] = all[first + s];
    if (!ch.s[s].undo) merges.push_back(static_cast<int>(s));
  }
  // counters: [0] deferred segments, [1] a bad record, [2 + m] merge step m's stream bytes
  Buf flags(S), counters((2 + kMaxSteps) * sizeof(unsigned));
  LK_CUDA(cudaMemsetAsync(counters.p, 0, 2 * sizeof(unsigned), stream()), "exact merge: counters");
  std::vector<Buf> slots, lens, offs;
  for (int m : merges) {
    slots.emplace_back(size_t(S) * kSlot);
    lens.emplace_back(size_t(S + 1) * 4);
    offs.emplace_back(size_t(S + 1) * 4);
    LK_CUDA(cudaMemsetAsync(static_cast<uint32_t*>(lens.back().p) + S, 0, 4, stream()), "exact merge: lengths");
    ch.s[m].slots = static_cast<uint8_t*>(slots.back().p);
    ch.s[m].lens = static_cast<uint32_t*>(lens.back().p);
  }
  uint8_t* deferred = static_cast<uint8_t*>(flags.p);
  unsigned* cnt = static_cast<unsigned*>(counters.p);
  Trace trace;
  trace.mark();
  launch(W.dtype, false, W.data, rows, cols, ch, deferred, cnt);
  trace.mark();
  // Offsets: an exclusive scan of S + 1 lengths (the last 0) ends with each stream's total; the
  // totals and the counters come back to the host in one copy (the one wait of the call).
  for (size_t m = 0; m < merges.size(); m++) {
    size_t temp = 0;
    uint32_t* in = static_cast<uint32_t*>(lens[m].p);
    uint32_t* out = static_cast<uint32_t*>(offs[m].p);
    LK_CUDA(cub::DeviceScan::ExclusiveSum(nullptr, temp, in, out, static_cast<int>(S + 1), stream()), "exact merge: scan");
    Buf tmp(temp);
    LK_CUDA(cub::DeviceScan::ExclusiveSum(tmp.p, temp, in, out, static_cast<int>(S + 1), stream()), "exact merge: scan");
    LK_CUDA(cudaMemcpyAsync(cnt + 2 + m, out + S, 4, cudaMemcpyDeviceToDevice, stream()), "exact merge: total");
  }
  unsigned host_counters[2 + kMaxSteps] = {};
  copy_to_host(host_counters, cnt, (2 + merges.size()) * sizeof(unsigned));
  trace.mark();
  if (host_counters[1])
    throw_range("exact unmerge: a record does not match this weight (left unchanged), or a segment of it is corrupt (values undefined)");
  const unsigned* totals = host_counters + 2;
  std::vector<std::shared_ptr<Storage>> made;
  const size_t head = sizeof(exact::ExactHeader) + static_cast<size_t>(exact::offsets_bytes(rows, cols));
  for (size_t m = 0; m < merges.size(); m++) {
    const size_t bytes = (head + totals[m] + 3) / 4 * 4;
    auto rec = Storage::allocate(bytes, Device::CUDA, false);
    exact::ExactHeader h{exact::kMagic, static_cast<uint32_t>(W.dtype), static_cast<uint64_t>(rows), static_cast<uint64_t>(cols),
                         totals[m]};
    uint8_t* base = static_cast<uint8_t*>(rec->data);
    order_use(base, true);
    write_header_kernel<<<1, 32, 0, stream()>>>(h, base);
    LK_LAUNCHED("exact merge: header");
    copy_device(base + sizeof h, offs[m].p, size_t(S + 1) * 4);
    if (bytes > head + totals[m]) LK_CUDA(cudaMemsetAsync(base + head + totals[m], 0, bytes - head - totals[m], stream()), "exact merge: pad");
    ch.s[merges[m]].out = base + head;
    ch.s[merges[m]].out_off = static_cast<const uint32_t*>(offs[m].p);
    made.push_back(rec);
  }
  if (host_counters[0]) launch(W.dtype, true, W.data, rows, cols, ch, deferred, cnt);
  for (size_t m = 0; m < merges.size(); m++) {
    copy_slots_kernel<<<blocks_for(S * 32, 256), 256, 0, stream()>>>(ch.s[merges[m]].slots, ch.s[merges[m]].lens,
                                                                   ch.s[merges[m]].out_off, deferred, S, ch.s[merges[m]].out);
    LK_LAUNCHED("exact merge: copy");
  }
  trace.mark();
  for (auto& r : made) records->push_back(r);
}

}  // namespace

void exact_merge(const TensorRef& W, bool fan_in_fan_out, const std::vector<ExactStep>& undo, const std::vector<ExactStep>& merge,
                 std::vector<std::shared_ptr<Storage>>* records) {
  const int64_t rows = W.dim(0), cols = W.dim(1);
  records->clear();
  const size_t n = undo.size() + merge.size();
  std::vector<Buf> hold;  // P, Q and DoRA's k of every step (the device pointers stay put as it grows)
  hold.reserve(3 * n);
  std::vector<DevStep> steps;
  for (size_t s = 0; s < n; s++) {
    const bool is_undo = s < undo.size();
    const ExactStep& e = is_undo ? undo[s] : merge[s - undo.size()];
    const int r = static_cast<int>(e.A.dim(0));
    hold.emplace_back(size_t(rows) * r * 4);
    float* P = hold.back().f();
    hold.emplace_back(size_t(r) * cols * 4);
    float* Q = hold.back().f();
    prep_factors_kernel<<<blocks_for((rows + cols) * r, 256), 256, 0, stream()>>>(e.A.data, e.A.dtype, e.B.data, e.B.dtype, e.scale,
                                                                                  fan_in_fan_out, rows, cols, r, P, Q);
    LK_LAUNCHED("exact merge: factors");
    DevStep d{};
    d.P = P;
    d.Q = Q;
    d.r = r;
    d.undo = is_undo;
    if (e.magnitude) {
      const int64_t outf = fan_in_fan_out ? cols : rows;
      hold.emplace_back(size_t(outf) * 4);
      float* k = hold.back().f();
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
    run_group(W, steps, first, std::min<size_t>(kMaxSteps, steps.size() - first), records);
}

}  // namespace cuda
}  // namespace lorakit
