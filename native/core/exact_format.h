// The side information of an exact merge (core/backend.h exact_merge): what lets unmerge give W back
// bit for bit. Shared by the cpu and cuda backends (LK_HD functions compile for both), so both write
// and read one format.
//
// A merge step computes, per weight x (storage type T, bits b(x)) and its f32 delta d:
//   x' = round_T(x + d)              (DoRA: round_T(k·(x + d)), k per output feature)
//   R  = round_T(x' − d)             (DoRA: round_T(x'/k − d)) — the reconstruction unmerge can make
//   c  = key(x) − key(R)             key: the monotone integer order of T's bit patterns
// and records c; unmerge recomputes R from x' with the same d and sets key(x) = key(R) + c. d is
// computed by one function on both sides, so R is the same bits. c is mostly 0, sometimes ±1;
// larger where |d| ≫ |x| (then x' lost x's low bits). R NaN, or |c| > 9: the original bits are kept.
//
// Record (little-endian bytes, held in an i32 tensor; total padded to a multiple of 4):
//   header   ExactHeader (32 bytes)
//   offsets  u32 × (S + 1): segment s is stream bytes [off[s], off[s+1]); S = rows · ⌈cols/256⌉,
//            segment (i, g) = row i, columns [256·g, min(cols, 256·g + 256)), s = i·⌈cols/256⌉ + g
//   stream   the segments' bytes
// Segment of len elements with n nonzero corrections (n = 0: no bytes at all):
//   byte     n − 1
//   where    n < ⌈len/8⌉: n bytes, the positions (increasing); else ⌈len/8⌉ bytes, a bitmap (bit j
//            of byte j/8 = element j nonzero)
//   classes  ⌈n/4⌉ bytes, 2 bits per nonzero in order (bits 2·(k%4) of byte k/4):
//            0: c = +1; 1: c = −1; 2: |c| in 2..9 (4-bit payload: sign, then |c| − 2 in 3 bits);
//            3: raw (payload: the original bits, 16 or 32 of them)
//   payload  the class-2/3 payloads in order, packed LSB first, ⌈bits/8⌉ bytes
// Cost: 32 bits per 256 weights for the offset, plus ~1 byte and ~2 bits per nonzero correction.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include "dtype.h"
#include "errors.h"

#if defined(__CUDACC__)
#define LK_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define LK_HD inline __attribute__((always_inline))  // also into the cpu's per-ISA clones (cpu/exact_lanes.cc)
#else
#define LK_HD inline
#endif

namespace lorakit {
namespace exact {

constexpr int kSeg = 256;               // weights per segment
constexpr uint32_t kMagic = 0x3158454cu;  // "LEX1"
constexpr int kSmallMax = 9;            // |c| of class 2
constexpr int8_t kRaw = -128;           // a correction that keeps the original bits
// The largest stream one segment can need: n byte, bitmap, classes, 256 raw 32-bit payloads.
constexpr int kMaxSegmentBytes = 1 + kSeg / 8 + kSeg / 4 + kSeg * 4;

struct ExactHeader {
  uint32_t magic;
  uint32_t dtype;  // DType of the weight
  uint64_t rows, cols;
  uint64_t stream_bytes;
};
static_assert(sizeof(ExactHeader) == 32, "header layout");

LK_HD int64_t segments_per_row(int64_t cols) { return (cols + kSeg - 1) / kSeg; }
LK_HD int64_t segment_count(int64_t rows, int64_t cols) { return rows * segments_per_row(cols); }
LK_HD int64_t offsets_bytes(int64_t rows, int64_t cols) { return (segment_count(rows, cols) + 1) * 4; }
LK_HD int bitmap_bytes(int len) { return (len + 7) / 8; }
LK_HD bool uses_list(int n, int len) { return n < bitmap_bytes(len); }

// The monotone order of bit patterns: −NaN < −inf < … < −0 < +0 < … < +inf < +NaN, consecutive
// floats one apart. key(b) = b with the sign bit flipped (positive) or every bit flipped (negative).
LK_HD uint32_t key16(uint32_t b) { return b ^ ((b & 0x8000u) ? 0xffffu : 0x8000u); }
LK_HD uint32_t unkey16(uint32_t k) { return (k ^ ((k & 0x8000u) ? 0x8000u : 0xffffu)) & 0xffffu; }
LK_HD uint32_t key32(uint32_t b) { return b ^ ((b & 0x80000000u) ? 0xffffffffu : 0x80000000u); }
LK_HD uint32_t unkey32(uint32_t k) { return k ^ ((k & 0x80000000u) ? 0x80000000u : 0xffffffffu); }

template <DType T>
LK_HD bool is_nan_bits(uint32_t b) {
  if (T == DType::F32) return (b & 0x7fffffffu) > 0x7f800000u;
  if (T == DType::BF16) return (b & 0x7fffu) > 0x7f80u;
  return (b & 0x7fffu) > 0x7c00u;  // f16
}

// The correction of x against R (both bit patterns of T): −9..9, or kRaw. The key difference is
// taken modulo 2^16 (2^32 for f32), as corrected() adds it back, so both stay in the lane width.
template <DType T>
LK_HD int8_t correction(uint32_t x, uint32_t R) {
  const int32_t c = T == DType::F32 ? static_cast<int32_t>(key32(x) - key32(R))
                                    : static_cast<int16_t>(static_cast<uint16_t>(key16(x) - key16(R)));
  return !is_nan_bits<T>(R) && c >= -kSmallMax && c <= kSmallMax ? static_cast<int8_t>(c) : kRaw;
}

// x from R and its correction c (not kRaw).
template <DType T>
LK_HD uint32_t corrected(uint32_t R, int c) {
  return T == DType::F32 ? unkey32(key32(R) + static_cast<uint32_t>(c)) : unkey16(key16(R) + static_cast<uint32_t>(c));
}

LK_HD int raw_bits(DType t) { return t == DType::F32 ? 32 : 16; }
LK_HD int payload_bits(int8_t c, DType t) { return c == kRaw ? raw_bits(t) : (c > 1 || c < -1) ? 4 : 0; }
LK_HD uint32_t class_of(int8_t c) { return c == 1 ? 0u : c == -1 ? 1u : c == kRaw ? 3u : 2u; }

// ---- Serial encoder and decoder of one segment (the cpu's; the cuda backend uses them for the rare
// segments its warp-parallel path does not take).

LK_HD int ctz64(uint64_t v) {
#if defined(__CUDA_ARCH__)
  return __ffsll(static_cast<long long>(v)) - 1;
#else
  return __builtin_ctzll(v);
#endif
}
LK_HD int popc64(uint64_t v) {
#if defined(__CUDA_ARCH__)
  return __popcll(v);
#else
  return __builtin_popcountll(v);
#endif
}

// Writes the segment's stream for corrections c[0..len) (raw ones take the bit pattern orig[j], U
// uint16_t or uint32_t) into out (room for kMaxSegmentBytes); nz[w] bit b says c[64w + b] != 0. Returns the byte count (0 when every c is 0).
template <class U>
LK_HD int encode_segment_masked(const int8_t* c, const U* orig, int len, DType t, const uint64_t (&nz)[4],
                                uint8_t* out) {
  const int n = popc64(nz[0]) + popc64(nz[1]) + popc64(nz[2]) + popc64(nz[3]);
  if (n == 0) return 0;
  out[0] = static_cast<uint8_t>(n - 1);
  const bool list = uses_list(n, len);
  const int where = list ? n : bitmap_bytes(len);
  if (!list)
    for (int b = 0; b < where; b++) out[1 + b] = static_cast<uint8_t>(nz[b / 8] >> (8 * (b % 8)));
  uint8_t* cls = out + 1 + where;
  const int cls_bytes = (n + 3) / 4;
  for (int b = 0; b < cls_bytes; b++) cls[b] = 0;
  uint8_t* pay = cls + cls_bytes;
  uint64_t acc = 0;
  int bits = 0, pb = 0, k = 0;
  for (int wd = 0; wd < 4; wd++)
    for (uint64_t m = nz[wd]; m; m &= m - 1) {
      const int j = wd * 64 + ctz64(m);
      const int8_t v = c[j];
      if (list) out[1 + k] = static_cast<uint8_t>(j);
      cls[k / 4] |= static_cast<uint8_t>(class_of(v) << (2 * (k % 4)));
      k++;
      const int w = payload_bits(v, t);
      if (w == 0) continue;
      const uint64_t field = v == kRaw ? static_cast<uint64_t>(orig[j]) : (v < 0 ? 1u : 0u) | (static_cast<uint32_t>((v < 0 ? -v : v) - 2) << 1);
      acc |= field << bits;
      bits += w;
      while (bits >= 8) {
        pay[pb++] = static_cast<uint8_t>(acc);
        acc >>= 8;
        bits -= 8;
      }
    }
  if (bits > 0) pay[pb++] = static_cast<uint8_t>(acc);
  return static_cast<int>(pay - out) + pb;
}

template <class U>
LK_HD int encode_segment(const int8_t* c, const U* orig, int len, DType t, uint8_t* out) {
  uint64_t nz[4] = {0, 0, 0, 0};
  for (int j = 0; j < len; j++) nz[j >> 6] |= static_cast<uint64_t>(c[j] != 0) << (j & 63);
  return encode_segment_masked(c, orig, len, t, nz, out);
}

// Reads a segment's stream of `bytes` bytes: nz[w] bit b says element 64w + b has a nonzero
// correction, which goes to c[j] (and its original bits to raw[j] where c[j] is kRaw); other
// entries of c and raw are left alone. False when the stream is malformed (reads never pass
// `bytes`, writes never pass len).
template <class U>
LK_HD bool decode_segment(const uint8_t* s, int bytes, int len, DType t, int8_t* c, U* raw, uint64_t (&nz)[4]) {
  nz[0] = nz[1] = nz[2] = nz[3] = 0;
  if (bytes == 0) return true;
  const int n = s[0] + 1;
  if (n > len) return false;
  const bool list = uses_list(n, len);
  const int where = list ? n : bitmap_bytes(len);
  const int cls_off = 1 + where, pay_off = cls_off + (n + 3) / 4;
  if (pay_off > bytes) return false;
  if (list) {
    int last = -1;
    for (int k = 0; k < n; k++) {
      const int j = s[1 + k];
      if (j <= last || j >= len) return false;
      nz[j >> 6] |= uint64_t(1) << (j & 63);
      last = j;
    }
  } else {
    for (int b = 0; b < where; b++) nz[b / 8] |= static_cast<uint64_t>(s[1 + b]) << (8 * (b % 8));
    if (len < kSeg && (nz[len >> 6] >> (len & 63)) != 0) return false;  // bits past the segment
    if (popc64(nz[0]) + popc64(nz[1]) + popc64(nz[2]) + popc64(nz[3]) != n) return false;
  }
  uint64_t acc = 0;
  int bits = 0, pb = pay_off, k = 0;
  for (int wd = 0; wd < 4; wd++)
    for (uint64_t m = nz[wd]; m; m &= m - 1) {
      const int j = wd * 64 + ctz64(m);
      const uint32_t cl = (s[cls_off + k / 4] >> (2 * (k % 4))) & 3u;
      k++;
      if (cl < 2) {
        c[j] = cl == 0 ? 1 : -1;
        continue;
      }
      const int w = cl == 2 ? 4 : raw_bits(t);
      while (bits < w) {
        if (pb >= bytes) return false;
        acc |= static_cast<uint64_t>(s[pb++]) << bits;
        bits += 8;
      }
      const uint32_t field = static_cast<uint32_t>(acc & ((uint64_t(1) << w) - 1));
      acc >>= w;
      bits -= w;
      if (cl == 2) {
        const int mag = static_cast<int>(field >> 1) + 2;
        c[j] = static_cast<int8_t>((field & 1u) ? -mag : mag);
      } else {
        c[j] = kRaw;
        raw[j] = static_cast<U>(field);
      }
    }
  return pb == bytes;
}

// A record's header against the weight it undoes (host); RangeError naming the argument otherwise.
inline void check_header(const ExactHeader& h, DType t, int64_t rows, int64_t cols, size_t record_bytes,
                         const std::string& name) {
  if (h.magic != kMagic) throw_range(name + ": not an exact-merge record");
  if (h.dtype != static_cast<uint32_t>(t) || h.rows != static_cast<uint64_t>(rows) || h.cols != static_cast<uint64_t>(cols))
    throw_range(name + ": the record is for a " + dtype_name(static_cast<DType>(h.dtype)) + " weight [" +
                std::to_string(h.rows) + ", " + std::to_string(h.cols) + "], not this " + dtype_name(t) + " [" +
                std::to_string(rows) + ", " + std::to_string(cols) + "]");
  if (sizeof(ExactHeader) + static_cast<uint64_t>(offsets_bytes(rows, cols)) + h.stream_bytes > record_bytes)
    throw_range(name + ": the record is truncated");
}

}  // namespace exact
}  // namespace lorakit
