// The exact-merge segment codec (core/exact_format.h) in AVX-512 VBMI/VBMI2 vector form: the same
// bytes as encode_segment_masked / decode_segment, at a cost that hardly grows with the number of
// corrections. Encode: the positions and corrections of the flagged elements are compressed
// (vpcompressb) into dense arrays, the 2-bit classes packed 4 to a byte by two multiply-adds, and
// only the rare class-2/3 payloads go through a scalar bit writer. Decode mirrors it: classes
// unpacked by vpmultishiftqb, turned into corrections by a table lookup, then expanded (vpexpandb)
// or, for a position list (checked in one compare), stored at their positions over zeros.
// exact_merge.cc picks these when the CPU has the instructions.
#include "exact_codec.h"
#include <algorithm>
#include <cstring>
#include "../core/exact_format.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wuninitialized"  // gcc 12's own intrinsics headers (as exact_rows_avx512.cc)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#define LK_VBMI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vbmi2,bmi2,popcnt")))

namespace lorakit {
namespace {

using exact::kRaw;
using exact::kSeg;

LK_VBMI inline __m512i iota64() {
  alignas(64) static const uint8_t k[64] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15,
                                            16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31,
                                            32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47,
                                            48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63};
  return _mm512_load_si512(k);
}

// Positions (and, when c is given, corrections) of the flagged elements in increasing order into
// pos / cc (room for 256 + 64 bytes each); returns their count.
LK_VBMI inline int compress_flags(const uint64_t (&nz)[4], const int8_t* c, uint8_t* pos, int8_t* cc) {
  const __m512i io = iota64();
  int k = 0;
  for (int w = 0; w < 4; w++) {
    if (!nz[w]) continue;
    _mm512_storeu_si512(pos + k, _mm512_maskz_compress_epi8(nz[w], _mm512_add_epi8(io, _mm512_set1_epi8(static_cast<char>(64 * w)))));
    if (c) _mm512_storeu_si512(cc + k, _mm512_maskz_compress_epi8(nz[w], _mm512_loadu_si512(c + 64 * w)));
    k += static_cast<int>(_mm_popcnt_u64(nz[w]));
  }
  return k;
}

// Appends a field of w ≤ 32 bits, LSB first.
struct BitWriter {
  uint8_t* p;
  uint64_t acc = 0;
  int bits = 0, n = 0;
  void put(uint64_t field, int w) {
    acc |= field << bits;
    bits += w;
    while (bits >= 8) {
      p[n++] = static_cast<uint8_t>(acc);
      acc >>= 8;
      bits -= 8;
    }
  }
  int finish() {
    if (bits > 0) p[n++] = static_cast<uint8_t>(acc);
    return n;
  }
};

// Classes of the dense corrections v (lanes live) packed 4 to a byte into 16 bytes at cls (room for
// them all); the classes-2/3 lanes returned.
LK_VBMI inline __mmask64 put_classes(__m512i v, __mmask64 live, uint8_t* cls) {
  const __mmask64 plus = _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(1));
  const __mmask64 minus = _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(-1));
  const __mmask64 raw = _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(kRaw));
  __m512i cl = _mm512_maskz_mov_epi8(live & ~plus, _mm512_set1_epi8(2));
  cl = _mm512_mask_mov_epi8(cl, minus & live, _mm512_set1_epi8(1));
  cl = _mm512_mask_mov_epi8(cl, raw & live, _mm512_set1_epi8(3));
  // 4 classes to a byte: c0 + 4·c1 per 16 bits, then (c0 + 4·c1) + 16·(c2 + 4·c3) per 32 bits.
  const __m512i pairs = _mm512_maddubs_epi16(cl, _mm512_set1_epi16(0x0401));
  const __m512i quads = _mm512_madd_epi16(pairs, _mm512_set1_epi32(0x00100001));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(cls), _mm512_cvtepi32_epi8(quads));
  return live & ~plus & ~minus;
}

// Up to 64 corrections (every position list, most bitmaps): positions and corrections compressed
// word by word and placed side by side in registers (vpermb by an offset iota), without the
// store-and-reload of dense arrays whose partial overlaps stall store forwarding.
template <class U>
LK_VBMI int encode_narrow(const int8_t* c, const U* orig, int len, const uint64_t (&nz)[4], int n, uint8_t* out) {
  const __m512i io = iota64();
  __m512i pv = _mm512_setzero_si512(), cv = _mm512_setzero_si512();
  int k = 0;
  for (int w = 0; w < 4; w++) {
    const uint64_t m = nz[w];
    const int cnt = static_cast<int>(_mm_popcnt_u64(m));
    const __mmask64 lanes = cnt == 64 ? ~__mmask64(0) : ((__mmask64(1) << cnt) - 1) << k;
    const __m512i idx = _mm512_sub_epi8(io, _mm512_set1_epi8(static_cast<char>(k)));
    pv = _mm512_mask_permutexvar_epi8(pv, lanes, idx,
                                      _mm512_maskz_compress_epi8(m, _mm512_add_epi8(io, _mm512_set1_epi8(static_cast<char>(64 * w)))));
    cv = _mm512_mask_permutexvar_epi8(cv, lanes, idx, _mm512_maskz_compress_epi8(m, _mm512_loadu_si512(c + 64 * w)));
    k += cnt;
  }
  out[0] = static_cast<uint8_t>(n - 1);
  const bool list = exact::uses_list(n, len);
  const int where = list ? n : exact::bitmap_bytes(len);
  if (list) _mm512_storeu_si512(out + 1, pv);  // bytes past n: overwritten below, or slack
  else std::memcpy(out + 1, nz, where);        // little-endian: byte b of the bitmap is byte b of nz
  uint8_t* cls = out + 1 + where;
  const int cls_bytes = (n + 3) / 4;
  const __mmask64 live = n == 64 ? ~__mmask64(0) : (__mmask64(1) << n) - 1;
  const __mmask64 big = put_classes(cv, live, cls);
  BitWriter pay{cls + cls_bytes};
  if (big) {  // classes 2 and 3 (about one a segment): their payloads, in order
    alignas(64) uint8_t pos[64];
    alignas(64) int8_t cc[64];
    _mm512_store_si512(pos, pv);
    _mm512_store_si512(cc, cv);
    for (uint64_t m = big; m; m &= m - 1) {
      const int q = __builtin_ctzll(m);
      const int8_t v = cc[q];
      if (v == kRaw) pay.put(orig[pos[q]], sizeof(U) * 8);
      else pay.put((v < 0 ? 1u : 0u) | (static_cast<uint32_t>((v < 0 ? -v : v) - 2) << 1), 4);
    }
  }
  return 1 + where + cls_bytes + pay.finish();
}

template <class U>
LK_VBMI int encode_t(const int8_t* c, const U* orig, int len, const uint64_t (&nz)[4], uint8_t* out) {
  const int total = static_cast<int>(_mm_popcnt_u64(nz[0]) + _mm_popcnt_u64(nz[1]) + _mm_popcnt_u64(nz[2]) + _mm_popcnt_u64(nz[3]));
  if (total == 0) return 0;
  if (total <= 64) return encode_narrow(c, orig, len, nz, total, out);
  alignas(64) uint8_t pos[kSeg + 64];
  alignas(64) int8_t cc[kSeg + 64];
  const int n = compress_flags(nz, c, pos, cc);
  out[0] = static_cast<uint8_t>(n - 1);
  const bool list = exact::uses_list(n, len);
  const int where = list ? n : exact::bitmap_bytes(len);
  if (list) std::memcpy(out + 1, pos, n);
  else std::memcpy(out + 1, nz, where);  // little-endian: byte b of the bitmap is byte b of nz
  uint8_t* cls = out + 1 + where;
  const int cls_bytes = (n + 3) / 4;
  BitWriter pay{cls + cls_bytes};
  const int t_bits = sizeof(U) * 8;
  for (int b = 0; b * 64 < n; b++) {
    const int left = n - 64 * b;
    const __mmask64 live = left >= 64 ? ~__mmask64(0) : (__mmask64(1) << left) - 1;
    alignas(16) uint8_t packed[16];  // cls may end before 16 more bytes
    const __mmask64 wide = put_classes(_mm512_loadu_si512(cc + 64 * b), live, packed);
    std::memcpy(cls + 16 * b, packed, static_cast<size_t>(std::min(16, cls_bytes - 16 * b)));
    for (uint64_t m = wide; m; m &= m - 1) {  // classes 2 and 3: their payloads, in order
      const int k = 64 * b + __builtin_ctzll(m);
      const int8_t cv = cc[k];
      if (cv == kRaw) pay.put(orig[pos[k]], t_bits);
      else pay.put((cv < 0 ? 1u : 0u) | (static_cast<uint32_t>((cv < 0 ? -cv : cv) - 2) << 1), 4);
    }
  }
  return 1 + where + cls_bytes + pay.finish();
}

template <class U>
LK_VBMI bool decode_t(const uint8_t* s, int bytes, int len, int8_t* c, U* raw, uint64_t (&nz)[4]) {
  nz[0] = nz[1] = nz[2] = nz[3] = 0;
  if (bytes == 0) {
    for (int w = 0; w < 4; w++) _mm512_storeu_si512(c + 64 * w, _mm512_setzero_si512());
    return true;
  }
  const int n = s[0] + 1;
  if (n > len) return false;
  const bool list = exact::uses_list(n, len);
  const int where = list ? n : exact::bitmap_bytes(len);
  const int cls_off = 1 + where, cls_bytes = (n + 3) / 4, pay_off = cls_off + cls_bytes;
  if (pay_off > bytes) return false;
  alignas(64) uint8_t pos[kSeg + 64];
  if (list) {  // n < ⌈len/8⌉ ≤ 32 positions, strictly increasing, below len
    const __mmask32 all = (1u << n) - 1, pairs = all >> 1;
    const __m256i p = _mm256_maskz_loadu_epi8(all, s + 1);
    const __m256i next = _mm256_maskz_loadu_epi8(pairs, s + 2);
    if (_mm256_mask_cmplt_epu8_mask(pairs, p, next) != pairs || s[n] >= len) return false;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(pos), p);
  } else {
    std::memcpy(nz, s + 1, where);
    if (len < kSeg && (nz[len >> 6] >> (len & 63)) != 0) return false;  // bits past the segment
    for (int w = (len + 63) / 64; w < 4; w++)
      if (nz[w]) return false;
    if (compress_flags(nz, nullptr, pos, nullptr) != n) return false;
  }
  // Dense corrections: class 0 → +1, 1 → −1, 3 → kRaw; class 2 gets its value from the payload.
  alignas(64) int8_t cv[kSeg + 64];
  const __m512i lut = _mm512_broadcast_i32x4(_mm_setr_epi8(1, -1, 0, kRaw, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0));
  const __m512i shifts = _mm512_set1_epi64(0x0e0c0a0806040200ll);  // bit offsets of the 8 classes of 16 bits
  int bit = pay_off * 8;
  const int t_bits = sizeof(U) * 8;
  for (int b = 0; b * 64 < n; b++) {
    const int left = n - 64 * b;
    const __mmask64 live = left >= 64 ? ~__mmask64(0) : (__mmask64(1) << left) - 1;
    const int nb = std::min(16, cls_bytes - 16 * b);
    const __m128i packed = _mm_maskz_loadu_epi8(static_cast<__mmask16>((1u << nb) - 1), s + cls_off + 16 * b);
    const __m512i cl = _mm512_and_si512(_mm512_multishift_epi64_epi8(shifts, _mm512_cvtepu16_epi64(packed)), _mm512_set1_epi8(3));
    const __m512i clm = _mm512_maskz_mov_epi8(live, cl);
    _mm512_store_si512(cv + 64 * b, _mm512_shuffle_epi8(lut, clm));
    for (uint64_t m = _mm512_mask_cmpge_epu8_mask(live, clm, _mm512_set1_epi8(2)); m; m &= m - 1) {
      const int k = 64 * b + __builtin_ctzll(m);
      const bool is_raw = cv[k] == kRaw;
      const int w = is_raw ? t_bits : 4;
      uint64_t acc = 0;
      const int b0 = bit >> 3, nbytes = ((bit & 7) + w + 7) >> 3;
      if (b0 + nbytes > bytes) return false;
      for (int q = 0; q < nbytes; q++) acc |= static_cast<uint64_t>(s[b0 + q]) << (8 * q);
      const uint32_t field = static_cast<uint32_t>((acc >> (bit & 7)) & ((uint64_t(1) << w) - 1));
      bit += w;
      if (is_raw) {
        raw[pos[k]] = static_cast<U>(field);
      } else {
        const int mag = static_cast<int>(field >> 1) + 2;
        cv[k] = static_cast<int8_t>((field & 1u) ? -mag : mag);
      }
    }
  }
  if ((bit + 7) / 8 != bytes) return false;
  if (list) {  // a few corrections: stored at their positions over zeros
    for (int w = 0; w < 4; w++) _mm512_storeu_si512(c + 64 * w, _mm512_setzero_si512());
    for (int k = 0; k < n; k++) c[pos[k]] = cv[k];
    for (int w = 0; w < 4; w++) {  // every correction is nonzero
      const __m512i v = _mm512_loadu_si512(c + 64 * w);
      nz[w] = _mm512_test_epi8_mask(v, v);
    }
    return true;
  }
  int k = 0;
  for (int w = 0; w < 4; w++) {
    _mm512_storeu_si512(c + 64 * w, _mm512_maskz_expand_epi8(nz[w], _mm512_loadu_si512(cv + k)));
    k += static_cast<int>(_mm_popcnt_u64(nz[w]));
  }
  return true;
}

}  // namespace

bool exact_codec_vbmi2_supported() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vbmi2") && __builtin_cpu_supports("bmi2");
}

LK_VBMI int exact_encode_vbmi2(const int8_t* c, const void* orig, int len, DType t, const uint64_t (&nz)[4], uint8_t* out) {
  return t == DType::F32 ? encode_t(c, static_cast<const uint32_t*>(orig), len, nz, out)
                         : encode_t(c, static_cast<const uint16_t*>(orig), len, nz, out);
}

LK_VBMI bool exact_decode_vbmi2(const uint8_t* s, int bytes, int len, DType t, int8_t* c, void* raw, uint64_t (&nz)[4]) {
  return t == DType::F32 ? decode_t(s, bytes, len, c, static_cast<uint32_t*>(raw), nz)
                         : decode_t(s, bytes, len, c, static_cast<uint16_t*>(raw), nz);
}

}  // namespace lorakit

#else
namespace lorakit {
bool exact_codec_vbmi2_supported() { return false; }
int exact_encode_vbmi2(const int8_t*, const void*, int, DType, const uint64_t (&)[4], uint8_t*) { return -1; }
bool exact_decode_vbmi2(const uint8_t*, int, int, DType, int8_t*, void*, uint64_t (&)[4]) { return false; }
}  // namespace lorakit
#endif
