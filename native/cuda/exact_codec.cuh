// Warp-cooperative encoder and decoder of one exact-merge segment (format: core/exact_format.h).
// A warp owns one segment of up to 256 weights; lane L holds elements 8L..8L+7. Ranks and bit
// offsets come from warp scans; the stream is assembled in shared memory with atomicOr on 32-bit
// words (little-endian: byte b is bits 8·(b%4) of word b/4), then copied out by the lanes.
#pragma once
#include <cstdint>
#include "../core/exact_format.h"

namespace lorakit {
namespace cuda {
namespace exactc {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kSegWords = (exact::kMaxSegmentBytes + 3) / 4 + 1;  // + 1: a field may spill past the last byte

__device__ __forceinline__ int warp_sum(int v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

// Exclusive prefix sum over the lanes.
__device__ __forceinline__ int warp_exclusive(int v, int lane) {
  int s = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int t = __shfl_up_sync(kFull, s, o);
    if (lane >= o) s += t;
  }
  return s - v;
}

__device__ __forceinline__ void or_byte(uint32_t* buf, int b, uint32_t v) { atomicOr(&buf[b >> 2], (v & 0xffu) << (8 * (b & 3))); }

// A field of w ≤ 32 bits at absolute bit offset o.
__device__ __forceinline__ void or_bits(uint32_t* buf, int o, uint32_t v, int w) {
  if (w < 32) v &= (1u << w) - 1;
  const int sh = o & 31;
  atomicOr(&buf[o >> 5], v << sh);
  if (sh + w > 32) atomicOr(&buf[(o >> 5) + 1], v >> (32 - sh));
}

__device__ __forceinline__ uint32_t byte_at(const uint32_t* buf, int b) { return (buf[b >> 2] >> (8 * (b & 3))) & 0xffu; }

template <DType T>
__device__ __forceinline__ int payload_bits_of(int8_t c) {
  return c == exact::kRaw ? (T == DType::F32 ? 32 : 16) : (c > 1 || c < -1) ? 4 : 0;
}

// Builds the stream of a segment of len elements in buf (kSegWords words of shared memory, this
// warp's own) from each lane's corrections c[8] and original bits x[8]; returns its byte count
// (0: every correction is zero), the same in every lane.
template <DType T>
__device__ int warp_encode(const int8_t (&c)[8], const uint32_t (&x)[8], int len, int lane, uint32_t* buf) {
  uint32_t m8 = 0;
  int pb = 0;
#pragma unroll
  for (int e = 0; e < 8; e++)
    if (c[e] != 0 && lane * 8 + e < len) {
      m8 |= 1u << e;
      pb += payload_bits_of<T>(c[e]);
    }
  const int cnt = __popc(m8);
  const int n = warp_sum(cnt);
  if (n == 0) return 0;
  const int rank0 = warp_exclusive(cnt, lane);
  const int pbase = warp_exclusive(pb, lane);
  const int total_pb = warp_sum(pb);
  const bool list = exact::uses_list(n, len);
  const int where = list ? n : exact::bitmap_bytes(len);
  const int cls_off = 1 + where, pay_off = cls_off + (n + 3) / 4;
  const int bytes = pay_off + (total_pb + 7) / 8;
  for (int w = lane; w < (bytes + 3) / 4 + 1; w += 32) buf[w] = 0;
  __syncwarp();
  if (lane == 0) or_byte(buf, 0, static_cast<uint32_t>(n - 1));
  if (!list && lane < where) or_byte(buf, 1 + lane, m8);
  int k = rank0, bit = pay_off * 8 + pbase;
#pragma unroll
  for (int e = 0; e < 8; e++) {
    if (!((m8 >> e) & 1)) continue;
    if (list) or_byte(buf, 1 + k, static_cast<uint32_t>(lane * 8 + e));
    or_byte(buf, cls_off + k / 4, exact::class_of(c[e]) << (2 * (k % 4)));
    const int w = payload_bits_of<T>(c[e]);
    if (w == 32 || w == 16) {
      or_bits(buf, bit, x[e], w);
    } else if (w == 4) {
      const int mag = (c[e] < 0 ? -c[e] : c[e]) - 2;
      or_bits(buf, bit, (c[e] < 0 ? 1u : 0u) | (static_cast<uint32_t>(mag) << 1), 4);
    }
    bit += w;
    k++;
  }
  __syncwarp();
  return bytes;
}

// Copies a built stream to global memory.
__device__ __forceinline__ void warp_copy_out(const uint32_t* buf, int bytes, uint8_t* dst, int lane) {
  for (int b = lane; b < bytes; b += 32) dst[b] = static_cast<uint8_t>(byte_at(buf, b));
}

// Reads bits [o, o + w) (w ≤ 32) of a stream of `bytes` bytes; sets *bad past its end.
__device__ __forceinline__ uint32_t read_bits(const uint8_t* s, int bytes, int o, int w, bool* bad) {
  uint64_t v = 0;
  const int b0 = o >> 3, nb = ((o & 7) + w + 7) >> 3;
  for (int b = 0; b < nb; b++) {
    if (b0 + b >= bytes) {
      *bad = true;
      break;
    }
    v |= static_cast<uint64_t>(s[b0 + b]) << (8 * b);
  }
  v >>= (o & 7);
  return static_cast<uint32_t>(w == 32 ? v : v & ((uint64_t(1) << w) - 1));
}

__device__ __forceinline__ void decode_field(uint32_t cl, uint32_t field, int8_t* c, uint32_t* raw) {
  if (cl == 0) *c = 1;
  else if (cl == 1) *c = -1;
  else if (cl == 2) {
    const int mag = static_cast<int>(field >> 1) + 2;
    *c = static_cast<int8_t>((field & 1u) ? -mag : mag);
  } else {
    *c = exact::kRaw;
    *raw = field;
  }
}

// Fills each lane's c[8] (0 where no correction) and raw[8] (where c is kRaw) from a segment's
// stream of `bytes` bytes (global memory). cs and rs are this warp's shared scratch (256 entries
// each) for the position-list form. Sets *bad on a malformed stream (reads stay inside it).
template <DType T>
__device__ void warp_decode(const uint8_t* s, int bytes, int len, int lane, int8_t (&c)[8], uint32_t (&raw)[8], int8_t* cs,
                            uint32_t* rs, bool* bad) {
#pragma unroll
  for (int e = 0; e < 8; e++) c[e] = 0;
  if (bytes == 0) return;
  const int n = s[0] + 1;
  if (n > len) {
    *bad = true;
    return;
  }
  const bool list = exact::uses_list(n, len);
  const int where = list ? n : exact::bitmap_bytes(len);
  const int cls_off = 1 + where, pay_off = cls_off + (n + 3) / 4;
  if (pay_off > bytes) {
    *bad = true;
    return;
  }
  if (list) {  // n ≤ 31: lane k decodes the k-th correction, then scatters it to its element's lane
#pragma unroll
    for (int e = 0; e < 8; e++) cs[lane * 8 + e] = 0;
    const bool mine = lane < n;
    const int j = mine ? s[1 + lane] : 0;
    const uint32_t cl = mine ? (s[cls_off + lane / 4] >> (2 * (lane % 4))) & 3u : 0u;
    const int w = cl == 2 ? 4 : cl == 3 ? (T == DType::F32 ? 32 : 16) : 0;
    const int base = warp_exclusive(w, lane);
    if (mine && j >= len) *bad = true;
    const uint32_t field = w ? read_bits(s, bytes, pay_off * 8 + base, w, bad) : 0u;
    __syncwarp();
    if (mine && j < len) {
      int8_t cv = 0;
      uint32_t rv = 0;
      decode_field(cl, field, &cv, &rv);
      cs[j] = cv;
      rs[j] = rv;
    }
    __syncwarp();
#pragma unroll
    for (int e = 0; e < 8; e++) {
      c[e] = cs[lane * 8 + e];
      if (c[e] == exact::kRaw) raw[e] = rs[lane * 8 + e];
    }
    __syncwarp();
    return;
  }
  uint32_t m8 = lane < where ? s[1 + lane] : 0u;  // the bitmap: lane L's byte is its 8 elements
  if (warp_sum(__popc(m8)) != n) {
    *bad = true;
    return;
  }
  const int rank0 = warp_exclusive(__popc(m8), lane);
  int w_lane = 0;
  uint32_t cls8 = 0;  // 2 bits per element of this lane
#pragma unroll
  for (int e = 0, k = rank0; e < 8; e++) {
    if (!((m8 >> e) & 1)) continue;
    if (lane * 8 + e >= len) *bad = true;
    const uint32_t cl = (s[cls_off + k / 4] >> (2 * (k % 4))) & 3u;
    cls8 |= cl << (2 * e);
    w_lane += cl == 2 ? 4 : cl == 3 ? (T == DType::F32 ? 32 : 16) : 0;
    k++;
  }
  int bit = pay_off * 8 + warp_exclusive(w_lane, lane);
#pragma unroll
  for (int e = 0; e < 8; e++) {
    if (!((m8 >> e) & 1)) continue;
    const uint32_t cl = (cls8 >> (2 * e)) & 3u;
    const int w = cl == 2 ? 4 : cl == 3 ? (T == DType::F32 ? 32 : 16) : 0;
    const uint32_t field = w ? read_bits(s, bytes, bit, w, bad) : 0u;
    bit += w;
    decode_field(cl, field, &c[e], &raw[e]);
  }
}

}  // namespace exactc
}  // namespace cuda
}  // namespace lorakit
