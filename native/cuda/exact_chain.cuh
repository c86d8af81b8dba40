// The exact merge's pass over W on the GPU (phases and host side: exact_merge.cu; record format:
// core/exact_format.h; the cpu's: cpu/exact_merge.cc).
//
// A block owns a band of 32 rows of one 256-column strip (one segment per row); blocks of a strip
// are consecutive in launch order, so the strip's Q slice stays in L1. Each warp runs 4 rows, lane
// L on columns 8L..8L+7: the rank-r delta of the 4 rows is computed together, each Q load feeding
// 4 rows (as the plain merge's merge_kernel), each row's delta the fmas in order of q from zero
// with explicit __fmaf_rn (the cpu's order, so both devices get the same bits). Then, per row,
// the chain runs in registers: undo steps decode their record and correct R = round(x' − d);
// merge steps round x' = round(x + d), compare R with x and encode the corrections (the warp's
// stream, exact_codec.cuh). In the first pass (Final false) a merge step's stream goes to a fixed
// kSlot-byte slot, its length to lens and its row's total (rowlen); a segment whose stream does not
// fit is left unwritten and marked deferred, and the pass that reruns it (Final true) writes its
// streams straight into the records. The first pass's last block publishes the totals to mapped
// host memory (the host's one wait: it sizes the records).
// Staged unmerge (UndoOnly, the default; LORAKIT_EXACT_STAGE=0 runs the unstaged one): an unmerge's
// segment streams (their first kStageBytes, which hold nearly all of them) are copied into shared
// memory by cp.async as soon as their offsets arrive, while the delta is computed, so the decode
// reads no global memory. Measured 2.5-5% faster on an H100, not more: the pass is bound by its
// instruction issue (ncu: 0.49 issued warps per scheduler at 4 warps, register-limited), not by
// those loads (bench/results/gpu-exact-stage-2026-12-07-h100.txt). Fewer instructions per weight
// made it 27% faster (bf16 4096²: 132-138 → 97-99 µs; gpu-exact-undo*-2026-12-07-h100.txt): P
// interleaved by 4 rows, the DoRA test and the correction select out of branches, 16-bit rows
// unrolled (no register rotation) and undone two per word (undo_pairs16). The merge pass rounds and
// compares two per word too (merge_pairs16: bf16 14336×4096 529-538 → 465-468 µs); unrolling its
// rows spilled and was slower, and 2 rows per warp (for 3 blocks per SM) was tried and dropped
// (gpu-exact-merge-pairs-*, gpu-exact-final-2026-12-07-h100.txt).
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>
#include "../core/exact_format.h"
#include "common.cuh"
#include "exact_codec.cuh"
#include "mma.cuh"

namespace lorakit {
namespace cuda {
namespace exactk {

constexpr int kMaxSteps = 8;
constexpr int kSlot = 96;  // bytes of staging per segment and merge step (3 bits per weight)
constexpr int kWarps = 8, kThreads = kWarps * 32;
constexpr int kRowsPerWarp = 4;
constexpr int kBand = kWarps * kRowsPerWarp;  // rows per block
constexpr int kStageBytes = 128;  // staged bytes of an unmerge segment's stream (longer ones are read in place)

struct DevStep {
  const float* P;  // scale·(B, or Aᵀ with fan_in_fan_out) [rows + 4, r], stored as [rows/4 + 1][r][4]: row
                   // i's q at ((i/4)·r + q)·4 + i%4, so a warp's 4 rows take one 16-byte load per q
  const float* Q;  // [r, cols] = A, or Bᵀ
  const float* k;  // DoRA: magnitude / norm per output feature, or null
  const uint8_t* record;  // undo: the record (header, [S + 1] offsets, stream) of record_bytes
  const uint32_t* offsets;
  const uint8_t* stream;
  uint64_t record_bytes;
  uint8_t* slots;    // merge, first pass: [S][kSlot]
  uint16_t* lens;    // merge, first pass: [S] stream bytes per segment
  uint32_t* rowlen;  // merge, first pass: [rows] stream bytes per row (zeroed before)
  uint8_t* out;      // merge, deferred pass: the record's stream and offsets
  const uint32_t* out_off;
  int r;
  int k_per_col;
  int undo;
};

struct Chain {
  DevStep s[kMaxSteps];
  int n;
  int merges;
};

// Device counters of the first pass (zeroed before it) and what its last block publishes to the
// host (mapped pinned memory; seq is written last, after a system fence).
struct Ctl {
  unsigned done, deferred, bad, pad;
  unsigned total[kMaxSteps];  // stream bytes of each merge step (by step index)
};
struct Report {
  unsigned deferred, bad;
  unsigned total[kMaxSteps];
  unsigned seq;
  unsigned pad[5];
};
static_assert(sizeof(Report) == 64, "one report per 64 bytes");

// A lane's 8 weights as bit patterns: f32 one per register, 16-bit two per register.
template <DType D> struct Lane;
template <> struct Lane<DType::F32> {
  using U = uint32_t;
  static constexpr int XW = 8;
  static __device__ __forceinline__ float widen(uint32_t b) { return __uint_as_float(b); }
  static __device__ __forceinline__ uint32_t narrow(float v) { return __float_as_uint(v); }
  static __device__ __forceinline__ uint32_t get(const uint32_t (&w)[XW], int e) { return w[e]; }
  static __device__ __forceinline__ void set(uint32_t (&w)[XW], int e, uint32_t v) { w[e] = v; }
};
struct Lane16 {
  using U = uint16_t;
  static constexpr int XW = 4;
  static __device__ __forceinline__ uint32_t get(const uint32_t (&w)[XW], int e) { return (w[e / 2] >> (16 * (e % 2))) & 0xffffu; }
  static __device__ __forceinline__ void set(uint32_t (&w)[XW], int e, uint32_t v) {
    w[e / 2] = e % 2 ? (w[e / 2] & 0xffffu) | (v << 16) : (w[e / 2] & 0xffff0000u) | v;
  }
};
template <> struct Lane<DType::BF16> : Lane16 {
  static __device__ __forceinline__ float widen(uint32_t b) { return __uint_as_float(b << 16); }
  static __device__ __forceinline__ uint32_t narrow(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }
};
template <> struct Lane<DType::F16> : Lane16 {
  static __device__ __forceinline__ float widen(uint32_t b) { return __half2float(__ushort_as_half(static_cast<unsigned short>(b))); }
  static __device__ __forceinline__ uint32_t narrow(float v) { return __half_as_ushort(__float2half_rn(v)); }
};

// The step's delta for the lane's 8 columns of rows i0..i0+3 (i0 a multiple of 4): each Q row
// slice is loaded once for the 4 rows, the 4 rows' P values in one load. P has a group of padding
// past `rows`, so the last band reads no further than that. VecQ: Q's 8 values in two 16-byte loads.
template <bool VecQ>
__device__ __forceinline__ void delta_rows(const DevStep& st, int64_t i0, int64_t cols, int64_t j, float (&d)[kRowsPerWarp][8]) {
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; rr++)
#pragma unroll
    for (int e = 0; e < 8; e++) d[rr][e] = 0.f;
  const int r = st.r;
  const float4* p = reinterpret_cast<const float4*>(st.P) + (i0 >> 2) * r;
  const float* qr = st.Q + j;
#pragma unroll 2
  for (int q = 0; q < r; q++, qr += cols) {
    const float4 p4 = __ldg(p + q);
    const float pq[kRowsPerWarp] = {p4.x, p4.y, p4.z, p4.w};
    float v[8];
    if (VecQ) {
      const float4 a = __ldg(reinterpret_cast<const float4*>(qr)), b = __ldg(reinterpret_cast<const float4*>(qr) + 1);
      v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    } else {
#pragma unroll
      for (int e = 0; e < 8; e++) v[e] = j + e < cols ? __ldg(qr + e) : 0.f;
    }
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; rr++)
#pragma unroll
      for (int e = 0; e < 8; e++) d[rr][e] = __fmaf_rn(pq[rr], v[e], d[rr][e]);
  }
}

// Undo of a lane's 8 16-bit weights (no DoRA), two per 32-bit word: R = round(x' − d) for both
// halves in one packing conversion, then key(R) + c and its inverse as SIMD-within-a-register on
// the 16-bit halves (exact_format.h key16/unkey16, the same bits; a raw correction's half is
// garbage here and replaced by the caller). c's bytes are sign-extended to halves by one prmt.
template <DType D>
__device__ __forceinline__ void undo_pairs16(uint32_t (&xr)[4], const float (&dr)[8], const uint2& cpk) {
  constexpr uint32_t kHi = 0x80008000u, kLo = 0x7fff7fffu;
#pragma unroll
  for (int w = 0; w < 4; w++) {
    const uint32_t xw2 = xr[w];
    uint32_t R;
    if constexpr (D == DType::BF16) {
      const float v0 = __uint_as_float(xw2 << 16), v1 = __uint_as_float(xw2 & 0xffff0000u);
      const __nv_bfloat162 p = __floats2bfloat162_rn(__fsub_rn(v0, dr[2 * w]), __fsub_rn(v1, dr[2 * w + 1]));
      R = *reinterpret_cast<const uint32_t*>(&p);
    } else {
      const float2 v = __half22float2(*reinterpret_cast<const __half2*>(&xw2));
      const __half2 p = __floats2half2_rn(__fsub_rn(v.x, dr[2 * w]), __fsub_rn(v.y, dr[2 * w + 1]));
      R = *reinterpret_cast<const uint32_t*>(&p);
    }
    // key16 per half: negative (sign set) → every bit flipped, else the sign bit flipped
    const uint32_t neg = (R >> 15) & 0x00010001u;
    const uint32_t K = R ^ (kHi | (neg * 0x7fffu));
    // c of elements 2w, 2w + 1 as sign-extended halves
    const uint32_t src = w < 2 ? cpk.x : cpk.y;
    uint32_t C;  // prmt's selector nibbles with bit 3 set replicate the byte's sign (__byte_perm cannot)
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(C) : "r"(src), "r"(0u), "r"((w & 1) ? 0xB3A2u : 0x9180u));
    // K + C per half, modulo 2^16
    const uint32_t S = ((K & kLo) + (C & kLo)) ^ ((K ^ C) & kHi);
    // unkey16 per half: sign set → the sign bit flipped, else every bit flipped
    const uint32_t pos = ((~S) >> 15) & 0x00010001u;
    xr[w] = S ^ (kHi | (pos * 0x7fffu));
  }
}

// Records weight e's correction c (exact::correction's value, 0 for none) in a lane's encoder
// inputs: its byte in cw0 (e < 4) or cw1, its bit in the nonzero mask m8 and, when it carries a
// payload (|c| ≥ 2 or raw), in bm8, with the payload's bits added to pb.
template <DType D>
__device__ __forceinline__ void note_correction(int c, int e, uint32_t& cw0, uint32_t& cw1, uint32_t& m8, uint32_t& bm8, int& pb) {
  const uint32_t cb = static_cast<uint32_t>(c) & 0xffu;
  if (e < 4) cw0 |= cb << (8 * e);
  else cw1 |= cb << (8 * (e - 4));
  m8 |= static_cast<uint32_t>(c != 0) << e;
  const bool big = c > 1 || c < -1;
  bm8 |= static_cast<uint32_t>(big) << e;
  pb += big ? (c == exact::kRaw ? (D == DType::F32 ? 32 : 16) : 4) : 0;
}

// Merge of a lane's 8 16-bit weights (no DoRA, all 8 inside the weight), two per 32-bit word: the
// merged pair a = round(x + d) and R = round(a − d) each in one packing conversion, key(x) − key(R)
// per half as SIMD within a register; then per weight what merge_scalar computes: c = 0 where R is x,
// else the difference, or kRaw where R is NaN or |c| > 9 (exact::correction), noted as it does.
template <DType D>
__device__ __forceinline__ void merge_pairs16(const uint32_t (&xr)[4], const float (&dr)[8], uint32_t (&aw)[4], uint32_t& cw0,
                                              uint32_t& cw1, uint32_t& m8, uint32_t& bm8, int& pb) {
  constexpr uint32_t kHi = 0x80008000u, kLo = 0x7fff7fffu;
  auto key2 = [](uint32_t b) { return b ^ (kHi | (((b >> 15) & 0x00010001u) * 0x7fffu)); };
#pragma unroll
  for (int w = 0; w < 4; w++) {
    const uint32_t X = xr[w];
    uint32_t A, Rp;
    if constexpr (D == DType::BF16) {
      const __nv_bfloat162 a = __floats2bfloat162_rn(__fadd_rn(__uint_as_float(X << 16), dr[2 * w]),
                                                     __fadd_rn(__uint_as_float(X & 0xffff0000u), dr[2 * w + 1]));
      A = *reinterpret_cast<const uint32_t*>(&a);
      const __nv_bfloat162 r = __floats2bfloat162_rn(__fsub_rn(__uint_as_float(A << 16), dr[2 * w]),
                                                     __fsub_rn(__uint_as_float(A & 0xffff0000u), dr[2 * w + 1]));
      Rp = *reinterpret_cast<const uint32_t*>(&r);
    } else {
      const float2 v = __half22float2(*reinterpret_cast<const __half2*>(&X));
      const __half2 a = __floats2half2_rn(__fadd_rn(v.x, dr[2 * w]), __fadd_rn(v.y, dr[2 * w + 1]));
      A = *reinterpret_cast<const uint32_t*>(&a);
      const float2 va = __half22float2(a);
      const __half2 r = __floats2half2_rn(__fsub_rn(va.x, dr[2 * w]), __fsub_rn(va.y, dr[2 * w + 1]));
      Rp = *reinterpret_cast<const uint32_t*>(&r);
    }
    aw[w] = A;
    const uint32_t KX = key2(X), KR = key2(Rp);
    const uint32_t Dd = ((KX | kHi) - (KR & kLo)) ^ ((KX ^ ~KR) & kHi);  // KX − KR per half, modulo 2^16
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const int e = 2 * w + h;
      const int c16 = static_cast<int16_t>(static_cast<uint16_t>(Dd >> (16 * h)));
      const uint32_t rh = (Rp >> (16 * h)) & 0xffffu;
      const int c = c16 == 0 ? 0 : exact::is_nan_bits<D>(rh) || c16 < -exact::kSmallMax || c16 > exact::kSmallMax ? exact::kRaw : c16;
      note_correction<D>(c, e, cw0, cw1, m8, bm8, pb);
    }
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

// grid (row bands, strips). First pass (Final false): every segment; ctl and rep null when the
// chain has no merge step (nothing to publish), where a bad record sets *sticky instead. Deferred
// pass (Final true): the segments marked in `deferred`.
// MinBlocks: resident blocks per SM the registers are capped for (2: 128 registers, some spills;
// 1: ~170 registers, none; LORAKIT_EXACT_MIN_BLOCKS picks the first pass's, for measurements).
// UndoOnly: the staged unmerge (a chain of undo steps only, first pass; no merge code compiled).
template <DType D, bool Final, int MinBlocks, bool UndoOnly = false>
__global__ void __launch_bounds__(kThreads, MinBlocks)
    chain_kernel(typename Lane<D>::U* W, int64_t rows, int64_t cols, Chain ch, uint8_t* deferred, Ctl* ctl, Report* rep,
                 unsigned seq, unsigned* sticky) {
  using L = Lane<D>;
  using U = typename L::U;
  constexpr int XW = L::XW, R = kRowsPerWarp;
  constexpr int kStage = Final ? exactc::kSegWords : kSlot / 4 + 2;  // the first pass builds only streams that fit a slot
  __shared__ uint32_t enc[kWarps][kStage];
  __shared__ __align__(16) int8_t cs[kWarps][exact::kSeg];
  __shared__ uint32_t rs[kWarps][exact::kSeg];
  __shared__ __align__(16) uint32_t stg[UndoOnly ? kWarps : 1][kRowsPerWarp][kStageBytes / 4];
  __shared__ unsigned sh_total[kMaxSteps], sh_def, sh_bad;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (threadIdx.x < kMaxSteps) sh_total[threadIdx.x] = 0;
  if (threadIdx.x == 0) sh_def = sh_bad = 0;
  const int64_t spr = exact::segments_per_row(cols);
  const int64_t g = blockIdx.y, j0 = g * exact::kSeg;
  const int len = static_cast<int>(cols - j0 < exact::kSeg ? cols - j0 : exact::kSeg);
  const int64_t j = j0 + lane * 8;
  const bool full = j + 8 <= cols;
  const bool vec_q = full && cols % 4 == 0;
  const bool vec_w = full && cols % (16 / sizeof(U)) == 0;
  bool header_bad = false;  // a record for another weight: touch nothing
  for (int s = 0; s < ch.n; s++)
    if (ch.s[s].undo && !header_ok(ch.s[s], rows, cols, D)) header_bad = true;
  __syncthreads();
  const int64_t i0 = int64_t(blockIdx.x) * kBand + warp * R;
  unsigned act = 0;  // this warp's rows to run (warp-uniform)
  if (!header_bad)
#pragma unroll
    for (int rr = 0; rr < R; rr++)
      if (i0 + rr < rows && (!Final || deferred[(i0 + rr) * spr + g])) act |= 1u << rr;
  bool bad = false;
  if (act) {
    uint32_t xw[R][XW];
#pragma unroll
    for (int rr = 0; rr < R; rr++) {
#pragma unroll
      for (int w = 0; w < XW; w++) xw[rr][w] = 0;
      if (!((act >> rr) & 1)) continue;
      const U* wp = W + (i0 + rr) * cols + j;
      if (vec_w) {
        const uint4 v = *reinterpret_cast<const uint4*>(wp);
        xw[rr][0] = v.x, xw[rr][1] = v.y, xw[rr][2] = v.z, xw[rr][3] = v.w;
        if (XW == 8) {
          const uint4 v2 = *(reinterpret_cast<const uint4*>(wp) + 1);
          xw[rr][4 % XW] = v2.x, xw[rr][5 % XW] = v2.y, xw[rr][6 % XW] = v2.z, xw[rr][7 % XW] = v2.w;
        }
      } else {
#pragma unroll
        for (int e = 0; e < 8; e++) L::set(xw[rr], e, j + e < cols ? static_cast<uint32_t>(wp[e]) : 0u);
      }
    }
    unsigned nofit = 0;  // rows whose streams did not all fit their slots
    for (int s = 0; s < ch.n; s++) {
      const DevStep& st = ch.s[s];
      // An undo step's segment offsets for the 4 rows (lane 2·rr: the start, 2·rr + 1: the end),
      // loaded before the delta so their latency hides behind it.
      const bool undo = UndoOnly || st.undo;
      uint32_t offv = 0;
      if (undo && lane < 2 * R && i0 + lane / 2 < rows) offv = st.offsets[(i0 + lane / 2) * spr + g + (lane & 1)];
      uint32_t(&stg_w)[kRowsPerWarp][kStageBytes / 4] = stg[UndoOnly ? warp : 0];  // this warp's staging
      unsigned staged = 0;  // rows whose stream is in stg_w (warp-uniform)
      if (UndoOnly) {
        // (the row loop computes it again: held across the delta, it cost the merge pass spills)
        const uint64_t stream_bytes = st.record_bytes - (st.stream - st.record);
        const bool aligned = (reinterpret_cast<uintptr_t>(st.stream) & 3u) == 0;
        __syncwarp();  // the previous step's decodes are done with stg
#pragma unroll
        for (int rr = 0; rr < R; rr++) {
          const uint32_t at = __shfl_sync(exactc::kFull, offv, 2 * rr), end = __shfl_sync(exactc::kFull, offv, 2 * rr + 1);
          const uint32_t w0 = at / 4, w1 = static_cast<uint32_t>((uint64_t(end) + 3) / 4);
          if (((act >> rr) & 1) && aligned && at < end && uint64_t(w1) * 4 <= stream_bytes && w1 - w0 <= uint32_t(kStageBytes / 4)) {
            staged |= 1u << rr;
            if (uint32_t(lane) < w1 - w0) cp_async4(&stg_w[rr][lane], st.stream + 4 * (uint64_t(w0) + lane));
          }
        }
      }
      float d[R][8];
      if (vec_q) delta_rows<true>(st, i0, cols, j, d);
      else delta_rows<false>(st, i0, cols, j, d);
      if (staged) {
        cp_async_wait_all();
        __syncwarp();  // every lane's words have landed
      }
      const bool dora = st.k != nullptr;
      // Undoes row rr (its delta dr, its weights xr): decode the segment's corrections, then
      // x = key⁻¹(key(R) + c) with R = round(x' − d), branch-free (a zero correction gives R).
      auto undo_body = [&](int rr, const float (&dr)[8], uint32_t (&xr)[XW]) {
        const int64_t i = i0 + rr;
        // DoRA's k of element e (loaded where used: no registers held for plain LoRA)
        auto kk = [&](int e) { return st.k_per_col ? (j + e < cols ? __ldg(st.k + j + e) : 1.f) : __ldg(st.k + i); };
        uint2 cpk;
        uint32_t raw[8];
        const uint32_t at = __shfl_sync(exactc::kFull, offv, 2 * rr), end = __shfl_sync(exactc::kFull, offv, 2 * rr + 1);
        const uint64_t stream_bytes = st.record_bytes - (st.stream - st.record);
        const bool ok = at <= end && end <= stream_bytes && end - at <= uint32_t(exact::kMaxSegmentBytes);
        if (!ok) bad = true;
        const uint8_t* src = (staged >> rr) & 1 ? reinterpret_cast<const uint8_t*>(stg_w[rr]) + (at & 3u) : st.stream + at;
        const unsigned has_raw =
            exactc::warp_decode<D>(src, ok ? static_cast<int>(end - at) : 0, len, lane, cpk, raw, cs[warp], rs[warp], &bad);
        if constexpr (D != DType::F32) {
          if (!dora) {  // two weights per 32-bit word (undo_pairs16)
            undo_pairs16<D>(xr, dr, cpk);
            if (has_raw) {
#pragma unroll
              for (int e = 0; e < 8; e++)
                if (exactc::correction_at(cpk, e) == exact::kRaw) L::set(xr, e, raw[e]);
            }
            return;
          }
        }
        auto undo_row = [&](auto dora_tag) {
          constexpr bool Dora = decltype(dora_tag)::value;
#pragma unroll
          for (int e = 0; e < 8; e++) {
            const float v = L::widen(L::get(xr, e)), de = dr[e];
            const uint32_t Rb = L::narrow(Dora ? __fsub_rn(__fdiv_rn(v, kk(e)), de) : __fsub_rn(v, de));
            const int8_t c = exactc::correction_at(cpk, e);
            const bool is_raw = c == exact::kRaw;
            const uint32_t x = exact::corrected<D>(Rb, is_raw ? 0 : c);
            L::set(xr, e, is_raw ? raw[e] : x);
          }
        };
        if (dora) undo_row(std::true_type{});
        else undo_row(std::false_type{});
      };
      if constexpr (UndoOnly && D != DType::F32) {
        // Unrolled (the bitmap decode is out of line, so the body is small): rows stay in place,
        // no register rotation. (f32's 4 rows of weights take twice the registers: it spilled.)
#pragma unroll
        for (int rr = 0; rr < R; rr++)
          if ((act >> rr) & 1) undo_body(rr, d[rr], xw[rr]);
      } else {
      // One copy of the row body (not unrolled: the kernel's code stays small enough for the
      // instruction cache); row rr is in slot 0 of d and xw, which rotate after each row.
#pragma unroll 1
      for (int rr = 0; rr < R; rr++) {
        if ((act >> rr) & 1) {
          const int64_t i = i0 + rr, seg = i * spr + g;
          // DoRA's k of element e (loaded where used: no registers held for plain LoRA)
          auto kk = [&](int e) { return !dora ? 1.f : st.k_per_col ? (j + e < cols ? __ldg(st.k + j + e) : 1.f) : __ldg(st.k + i); };
          if (undo) {
            undo_body(rr, d[0], xw[0]);
          } else if constexpr (!UndoOnly) {
            uint32_t aw[XW];
#pragma unroll
            for (int w = 0; w < XW; w++) aw[w] = 0;
            uint32_t cw0 = 0, cw1 = 0, m8 = 0, bm8 = 0;
            int pb = 0;
            auto merge_scalar = [&]() {
#pragma unroll
              for (int e = 0; e < 8; e++) {
                const uint32_t xe = L::get(xw[0], e);
                const float v = L::widen(xe), de = d[0][e];
                const uint32_t a = L::narrow(dora ? __fmul_rn(kk(e), __fadd_rn(v, de)) : __fadd_rn(v, de));
                const float va = L::widen(a);
                const uint32_t Rb = L::narrow(dora ? __fsub_rn(__fdiv_rn(va, kk(e)), de) : __fsub_rn(va, de));
                L::set(aw, e, a);
                const int c = Rb == xe || j + e >= cols ? 0 : exact::correction<D>(xe, Rb);
                note_correction<D>(c, e, cw0, cw1, m8, bm8, pb);
              }
            };
            if constexpr (D != DType::F32) {
              if (!dora && full) merge_pairs16<D>(xw[0], d[0], aw, cw0, cw1, m8, bm8, pb);
              else merge_scalar();
            } else {
              merge_scalar();
            }
            const int bytes = exactc::warp_encode<D, XW>(cw0, cw1, m8, bm8, pb, xw[0], len, lane, enc[warp],
                                                         reinterpret_cast<uint8_t*>(cs[warp]), Final ? exact::kMaxSegmentBytes : kSlot);
            if (Final) {
              if (bytes) exactc::warp_copy_out(enc[warp], bytes, st.out + st.out_off[seg], lane);
            } else {
              if (lane == 0) {
                st.lens[seg] = static_cast<uint16_t>(bytes);
                if (bytes) {
                  atomicAdd(&st.rowlen[i], static_cast<unsigned>(bytes));
                  atomicAdd(&sh_total[s], static_cast<unsigned>(bytes));
                }
              }
              if (bytes <= kSlot) {
                uint32_t* dst = reinterpret_cast<uint32_t*>(st.slots + seg * kSlot);
                for (int w = lane; w < (bytes + 3) / 4; w += 32) dst[w] = enc[warp][w];
              } else {
                nofit |= 1u << rr;
              }
            }
            __syncwarp();  // enc is rebuilt for the next row
#pragma unroll
            for (int w = 0; w < XW; w++) xw[0][w] = aw[w];
          }
        }
#pragma unroll
        for (int e = 0; e < 8; e++) {
          const float t = d[0][e];
          d[0][e] = d[1][e], d[1][e] = d[2][e], d[2][e] = d[3][e], d[3][e] = t;
        }
#pragma unroll
        for (int w = 0; w < XW; w++) {
          const uint32_t t = xw[0][w];
          xw[0][w] = xw[1][w], xw[1][w] = xw[2][w], xw[2][w] = xw[3][w], xw[3][w] = t;
        }
      }
      }
    }
#pragma unroll
    for (int rr = 0; rr < R; rr++) {
      if (!((act >> rr) & 1)) continue;
      if (!Final && ch.merges) {
        if (lane == 0) {
          deferred[(i0 + rr) * spr + g] = (nofit >> rr) & 1;
          if ((nofit >> rr) & 1) atomicAdd(&sh_def, 1u);
        }
        if ((nofit >> rr) & 1) continue;  // left as it was: the deferred pass reruns this segment
      }
      U* wp = W + (i0 + rr) * cols + j;
      if (vec_w) {
        *reinterpret_cast<uint4*>(wp) = make_uint4(xw[rr][0], xw[rr][1], xw[rr][2], xw[rr][3]);
        if (XW == 8) *(reinterpret_cast<uint4*>(wp) + 1) = make_uint4(xw[rr][4 % XW], xw[rr][5 % XW], xw[rr][6 % XW], xw[rr][7 % XW]);
      } else {
#pragma unroll
        for (int e = 0; e < 8; e++)
          if (j + e < cols) wp[e] = static_cast<U>(L::get(xw[rr], e));
      }
    }
  }
  if (__any_sync(exactc::kFull, bad) && lane == 0) atomicOr(&sh_bad, 1u);
  if (header_bad && threadIdx.x == 0) sh_bad = 1;
  if (Final) return;
  __syncthreads();
  if (!ctl) {
    if (threadIdx.x == 0 && sh_bad) *reinterpret_cast<volatile unsigned*>(sticky) = 1u;
    return;
  }
  if (threadIdx.x != 0) return;
  // Thread 0 alone adds the block's counts, so only it waits on a fence before counting the block.
  for (int s = 0; s < ch.n; s++)
    if (!ch.s[s].undo && sh_total[s]) atomicAdd(&ctl->total[s], sh_total[s]);
  if (sh_def) atomicAdd(&ctl->deferred, sh_def);
  if (sh_bad) atomicOr(&ctl->bad, 1u);
  __threadfence();
  if (atomicAdd(&ctl->done, 1u) == gridDim.x * gridDim.y - 1) {  // the last block
    __threadfence();
    const volatile Ctl* c = ctl;
    volatile Report* r = rep;
    r->deferred = c->deferred;
    r->bad = c->bad;
    for (int m = 0; m < kMaxSteps; m++) r->total[m] = c->total[m];
    __threadfence_system();
    r->seq = seq;
  }
}

}  // namespace exactk
}  // namespace cuda
}  // namespace lorakit
