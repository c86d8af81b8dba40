// ggml's block formats as GGUF stores them (ggml-common.h): the type ids, the block structs and
// their sizes. Shared by every kernel that reads or writes ggml-typed data (the GGUF codecs now,
// quantized bases later). Little-endian hosts only, as GGUF v3 files are little-endian.
#pragma once
#include <cstdint>
#include <cstring>
#include "dtype.h"

namespace lorakit {

// ggml_type ids (ggml.h). Only the ones lorakit decodes or encodes are named.
enum class GgmlType : int32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8,
  Q4_K = 12, Q5_K = 13, Q6_K = 14, F64 = 28, BF16 = 30,
};

constexpr int kQK = 32;    // values per block of the *_0 / *_1 formats
constexpr int kQK_K = 256;  // values per super-block of the K formats

#pragma pack(push, 1)
struct BlockQ4_0 { uint16_t d; uint8_t qs[kQK / 2]; };             // x = d·(q − 8)
struct BlockQ4_1 { uint16_t d, m; uint8_t qs[kQK / 2]; };          // x = d·q + m
struct BlockQ5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[kQK / 2]; };  // x = d·(q5 − 16)
struct BlockQ5_1 { uint16_t d, m; uint8_t qh[4]; uint8_t qs[kQK / 2]; };  // x = d·q5 + m
struct BlockQ8_0 { uint16_t d; int8_t qs[kQK]; };                  // x = d·q
// 8 sub-blocks of 32: x = d·sc_j·q − dmin·m_j, 6-bit sc/m packed in 12 bytes (get_scale_min_k4)
struct BlockQ4_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[kQK_K / 2]; };
struct BlockQ5_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[kQK_K / 8]; uint8_t qs[kQK_K / 2]; };
// 16 sub-blocks of 16: x = d·sc_j·(q6 − 32), int8 scales
struct BlockQ6_K { uint8_t ql[kQK_K / 2]; uint8_t qh[kQK_K / 4]; int8_t scales[kQK_K / 16]; uint16_t d; };
#pragma pack(pop)

static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ5_0) == 22 && sizeof(BlockQ5_1) == 24, "block sizes");
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_K) == 144 && sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210, "block sizes");

// Values per block and bytes per block of a type lorakit handles; {0, 0} for others.
struct GgmlTypeSize {
  int block;
  int bytes;
};

inline GgmlTypeSize ggml_type_size(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return {1, 4};
    case GgmlType::F16: return {1, 2};
    case GgmlType::BF16: return {1, 2};
    case GgmlType::F64: return {1, 8};
    case GgmlType::Q4_0: return {kQK, 18};
    case GgmlType::Q4_1: return {kQK, 20};
    case GgmlType::Q5_0: return {kQK, 22};
    case GgmlType::Q5_1: return {kQK, 24};
    case GgmlType::Q8_0: return {kQK, 34};
    case GgmlType::Q4_K: return {kQK_K, 144};
    case GgmlType::Q5_K: return {kQK_K, 176};
    case GgmlType::Q6_K: return {kQK_K, 210};
  }
  return {0, 0};
}

inline bool ggml_can_dequantize(GgmlType t) { return ggml_type_size(t).block != 0; }
inline bool ggml_can_quantize(GgmlType t) {
  return t != GgmlType::F64 && ggml_can_dequantize(t);
}

// The 16-bit float scales use dtype.h's exact conversions (round to nearest even, quiet NaN):
// f16_to_f32 / f32_to_f16 and bf16_to_f32 / f32_to_bf16, as ggml's GGML_FP16/BF16 macros.

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K super-block's 12 scale bytes q (ggml's
// get_scale_min_k4): the CPU codec (cpu/ggml_blocks.cc) and the decode GEMV (cpu/quant_gemv_kquant.h).
// All 8 of them at once, four per 32-bit word as ggml's own kernels unpack them: sm[0..7] the
// scales, sm[8..15] the mins (ggml_scale_min_k4(j) for j = 0..7). q: the block's 12 scale bytes.
inline void ggml_scales_mins_k4(const uint8_t* q, uint8_t (&sm)[16]) {
  uint32_t u[4];
  std::memcpy(u, q, 12);
  constexpr uint32_t k6 = 0x3f3f3f3fu, k4 = 0x0f0f0f0fu, k2 = 0x03030303u;
  u[3] = ((u[2] >> 4) & k4) | (((u[1] >> 6) & k2) << 4);  // m 4..7
  const uint32_t m03 = u[1] & k6;                          // m 0..3
  u[1] = (u[2] & k4) | (((u[0] >> 6) & k2) << 4);          // sc 4..7
  u[2] = m03;
  u[0] &= k6;                                              // sc 0..3
  std::memcpy(sm, u, 16);
}

// The scales of the q4_k super-block a decoder walking a row is in: sm (8 scales, then 8 mins), d and
// dmin of super-block `have`, reloaded by at() when the block changes.
struct Q4KScales {
  alignas(16) uint8_t sm[16];
  float d = 0.f, dmin = 0.f;
  int64_t have = -1;
  // Super-block b of a row starting at row_data; its bytes.
  const uint8_t* at(const uint8_t* row_data, int64_t b) {
    const uint8_t* p = row_data + b * static_cast<int64_t>(sizeof(BlockQ4_K));
    if (b != have) {
      ggml_scales_mins_k4(p + 4, sm);
      uint16_t h[2];
      std::memcpy(h, p, 4);
      d = f16_to_f32(h[0]);
      dmin = f16_to_f32(h[1]);
      have = b;
    }
    return p;
  }
};

inline void ggml_scale_min_k4(int j, const uint8_t* q, uint8_t& sc, uint8_t& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

}  // namespace lorakit
