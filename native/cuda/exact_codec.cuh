// Warp-cooperative encoder and decoder of one exact-merge segment (format: core/exact_format.h).
// A warp owns one segment of up to 256 weights; lane L holds elements 8L..8L+7. Ranks and bit
// offsets come from warp scans; the stream is assembled in shared memory (32-bit words,
// little-endian: byte b is bits 8·(b%4) of word b/4), then copied out by the lanes.
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

// A field of w ≤ 32 bits at absolute bit offset o.
__device__ __forceinline__ void or_bits(uint32_t* buf, int o, uint32_t v, int w) {
  if (w < 32) v &= (1u << w) - 1;
  const int sh = o & 31;
  atomicOr(&buf[o >> 5], v << sh);
  if (sh + w > 32) atomicOr(&buf[(o >> 5) + 1], v >> (32 - sh));
}

__device__ __forceinline__ uint32_t byte_at(const uint32_t* buf, int b) { return (buf[b >> 2] >> (8 * (b & 3))) & 0xffu; }

// Builds the stream of a segment of len elements in buf (this warp's staging words) and returns
// its byte count, the same in every lane (0: every correction is zero). Per lane: cw0 and cw1 hold
// the corrections of elements 0-3 and 4-7 as bytes (two's complement, kRaw = 0x80), m8 marks the
// nonzero ones, bm8 those with a payload (|c| ≥ 2 or raw) and pb their payload bits; xw the
// original bits (XW = 4: 16-bit pairs, 8: f32), for raw payloads. A stream longer than `limit`
// bytes is only measured. tmp: 256 bytes of this warp's scratch, 4-byte aligned. Cost: one packed
// warp scan (count | payload bits << 16); positions are plain byte stores, the class bytes are
// packed from tmp by one lane each, and only payload fields (rare) take shared atomics.
template <DType T, int XW>
__device__ int warp_encode(uint32_t cw0, uint32_t cw1, uint32_t m8, uint32_t bm8, int pb, const uint32_t (&xw)[XW],
                           int len, int lane, uint32_t* buf, uint8_t* tmp, int limit) {
  const uint32_t v = static_cast<uint32_t>(__popc(m8)) | (static_cast<uint32_t>(pb) << 16);
  uint32_t s = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t t = __shfl_up_sync(kFull, s, o);
    if (lane >= o) s += t;
  }
  const uint32_t tot = __shfl_sync(kFull, s, 31), ex = s - v;
  const int n = static_cast<int>(tot & 0xffffu), total_pb = static_cast<int>(tot >> 16);
  if (n == 0) return 0;
  const bool list = exact::uses_list(n, len);
  const int where = list ? n : exact::bitmap_bytes(len);
  const int cls_off = 1 + where, pay_off = cls_off + (n + 3) / 4;
  const int bytes = pay_off + (total_pb + 7) / 8;
  if (bytes > limit) return bytes;
  uint8_t* b8 = reinterpret_cast<uint8_t*>(buf);
  if (total_pb) {  // the payload words are OR-ed into: zero them before any byte lands there
    for (int w = pay_off / 4 + lane; w < (bytes + 3) / 4 + 1; w += 32) buf[w] = 0;
    __syncwarp();
  }
  if (lane == 0) b8[0] = static_cast<uint8_t>(n - 1);
  if (!list && lane < where) b8[1 + lane] = static_cast<uint8_t>(m8);
  int k = static_cast<int>(ex & 0xffffu);
  for (uint32_t m = m8; m; m &= m - 1) {  // this lane's nonzeros, in order (rarely more than one)
    const int e = __ffs(m) - 1;
    const int8_t cv = static_cast<int8_t>((e < 4 ? cw0 : cw1) >> (8 * (e & 3)));
    if (list) b8[1 + k] = static_cast<uint8_t>(lane * 8 + e);
    tmp[k] = static_cast<uint8_t>(exact::class_of(cv));
    k++;
  }
  __syncwarp();
  for (int t = lane; t < (n + 3) / 4; t += 32) {
    const uint32_t q = reinterpret_cast<const uint32_t*>(tmp)[t];
    uint32_t byte = (q & 3u) | ((q >> 6) & 0xcu) | ((q >> 12) & 0x30u) | ((q >> 18) & 0xc0u);
    const int valid = n - 4 * t;  // classes past the last nonzero are left over from earlier segments
    if (valid < 4) byte &= (1u << (2 * valid)) - 1;
    b8[cls_off + t] = static_cast<uint8_t>(byte);
  }
  if (total_pb) {
    __syncwarp();
    int bit = pay_off * 8 + static_cast<int>(ex >> 16);
#pragma unroll
    for (int e = 0; e < 8; e++) {
      if (!((bm8 >> e) & 1)) continue;
      const int8_t cv = static_cast<int8_t>((e < 4 ? cw0 : cw1) >> (8 * (e & 3)));
      if (cv == exact::kRaw) {
        const uint32_t x = XW == 8 ? xw[e % XW] : (xw[(e / 2) % XW] >> (16 * (e % 2))) & 0xffffu;
        const int w = T == DType::F32 ? 32 : 16;
        or_bits(buf, bit, x, w);
        bit += w;
      } else {
        const int mag = (cv < 0 ? -cv : cv) - 2;
        or_bits(buf, bit, (cv < 0 ? 1u : 0u) | (static_cast<uint32_t>(mag) << 1), 4);
        bit += 4;
      }
    }
  }
  __syncwarp();
  return bytes;
}

// Copies a built stream to global memory at any byte offset.
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

// The bitmap form (n ≥ 32 nonzero corrections, rare at realistic deltas): lane L reads its byte of
// the bitmap, ranks from warp scans. Writes this lane's 8 corrections to cs[8L..8L+7] (0: none) and
// raw bits to rs where kRaw; returns whether any lane has a raw one (the same in every lane). Out of
// line, so the list form's callers stay small enough to unroll.
template <DType T>
__device__ __noinline__ unsigned bitmap_decode(const uint8_t* s, int bytes, int len, int lane, int n, int where, int cls_off,
                                               int pay_off, int8_t* cs, uint32_t* rs, bool* bad) {
  int8_t c[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  uint32_t m8 = lane < where ? s[1 + lane] : 0u;  // the bitmap: lane L's byte is its 8 elements
  unsigned any_raw = 0;
  if (warp_sum(__popc(m8)) != n) {
    *bad = true;
    m8 = 0;
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
    uint32_t rv = 0;
    decode_field(cl, field, &c[e], &rv);
    if (cl == 3) {
      rs[lane * 8 + e] = rv;
      any_raw = 1;
    }
  }
  uint32_t lo = 0, hi = 0;
#pragma unroll
  for (int e = 0; e < 4; e++) {
    lo |= static_cast<uint32_t>(static_cast<uint8_t>(c[e])) << (8 * e);
    hi |= static_cast<uint32_t>(static_cast<uint8_t>(c[e + 4])) << (8 * e);
  }
  reinterpret_cast<uint2*>(cs)[lane] = make_uint2(lo, hi);
  return __any_sync(kFull, any_raw);
}

// Correction e (0..7) of a lane's packed bytes.
__device__ __forceinline__ int8_t correction_at(const uint2& cpk, int e) {
  return static_cast<int8_t>((e < 4 ? cpk.x : cpk.y) >> (8 * (e & 3)));
}

// Fills each lane's 8 corrections, packed as bytes (cpk.x: elements 0-3, cpk.y: 4-7, byte e%4 of
// each; 0 where none, kRaw for raw ones), and raw[8] (where kRaw) from a segment's stream of
// `bytes` bytes (global or shared memory); returns whether any lane has a raw one (warp-uniform).
// cs and rs are this warp's shared scratch (256 entries each): corrections are scattered there,
// then each lane reads its 8. Sets *bad on a malformed stream (reads stay inside it).
template <DType T>
__device__ __forceinline__ unsigned warp_decode(const uint8_t* s, int bytes, int len, int lane, uint2& cpk, uint32_t (&raw)[8],
                                                int8_t* cs, uint32_t* rs, bool* bad) {
  cpk = make_uint2(0u, 0u);
  if (bytes == 0) return 0;
  const int n = s[0] + 1;
  if (n > len) {
    *bad = true;
    return 0;
  }
  const bool list = exact::uses_list(n, len);
  const int where = list ? n : exact::bitmap_bytes(len);
  const int cls_off = 1 + where, pay_off = cls_off + (n + 3) / 4;
  if (pay_off > bytes) {
    *bad = true;
    return 0;
  }
  unsigned has_raw;
  if (list) {  // n ≤ 31: lane k decodes the k-th correction, then scatters it to its element's lane
    reinterpret_cast<uint2*>(cs)[lane] = make_uint2(0u, 0u);  // this lane's 8 entries
    const bool mine = lane < n;
    const int j = mine ? s[1 + lane] : 0;
    const uint32_t cl = mine ? (s[cls_off + lane / 4] >> (2 * (lane % 4))) & 3u : 0u;
    // Payload offsets from two ballots (warp-uniform; most segments have no payload at all).
    const unsigned m2 = __ballot_sync(kFull, cl == 2), m3 = __ballot_sync(kFull, cl == 3);
    constexpr int kRawBits = T == DType::F32 ? 32 : 16;
    uint32_t field = 0;
    if (m2 | m3) {
      const unsigned below = (1u << lane) - 1u;
      const int base = 4 * __popc(m2 & below) + kRawBits * __popc(m3 & below);
      const int w = cl == 2 ? 4 : cl == 3 ? kRawBits : 0;
      if (w) field = read_bits(s, bytes, pay_off * 8 + base, w, bad);
    }
    if (mine && j >= len) *bad = true;
    __syncwarp();
    if (mine && j < len) {
      int8_t cv = 0;
      uint32_t rv = 0;
      decode_field(cl, field, &cv, &rv);
      cs[j] = cv;
      if (cl == 3) rs[j] = rv;
    }
    has_raw = m3;
  } else {
    has_raw = bitmap_decode<T>(s, bytes, len, lane, n, where, cls_off, pay_off, cs, rs, bad);
  }
  __syncwarp();
  cpk = reinterpret_cast<const uint2*>(cs)[lane];
  if (has_raw) {
#pragma unroll
    for (int e = 0; e < 8; e++)
      if (correction_at(cpk, e) == exact::kRaw) raw[e] = rs[lane * 8 + e];
  }
  __syncwarp();
  return has_raw;
}

}  // namespace exactc
}  // namespace cuda
}  // namespace lorakit
