// ggml's block formats on the CPU (block structs in core/ggml_blocks.h): dequantize F16, BF16,
// F64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K to f32, and quantize f32 to all of them but F64.
// F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 round to nearest as ggml's quantize_row_*_ref: ggml's scalar
// arithmetic, one f32 rounding per operation in its order (no FMA contraction), so bit-identical to
// ggml's reference functions and to test/helpers/ggml_blocks_ref.ts. Q4_K, Q5_K, Q6_K use a simpler
// one-pass quantizer than ggml's searches (same block layout; see quant_k). Blocks go over the pool.
#include <algorithm>
#include <cmath>
#include <cstring>
#include "../core/ggml_blocks.h"
#include "../core/thread_pool.h"
#include "ops.h"

// Keep a·b + c as two roundings, as ggml's reference code (and the TS codecs) compute it.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace lorakit {
namespace cpu {
namespace {

constexpr int64_t kMinBlocksPerTask = 2048;

void deq_q8_0(const BlockQ8_0& b, float* y) {
  const float d = f16_to_f32(b.d);
  for (int j = 0; j < kQK; ++j) y[j] = b.qs[j] * d;
}

void deq_q4_0(const BlockQ4_0& b, float* y) {
  const float d = f16_to_f32(b.d);
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = ((b.qs[j] & 0x0F) - 8) * d;
    y[j + kQK / 2] = ((b.qs[j] >> 4) - 8) * d;
  }
}

void deq_q4_1(const BlockQ4_1& b, float* y) {
  const float d = f16_to_f32(b.d), m = f16_to_f32(b.m);
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = (b.qs[j] & 0x0F) * d + m;
    y[j + kQK / 2] = (b.qs[j] >> 4) * d + m;
  }
}

template <class Block, bool kMin>
void deq_q5(const Block& b, float* y) {
  const float d = f16_to_f32(b.d);
  float m = 0.0f;
  if constexpr (kMin) m = f16_to_f32(b.m);
  uint32_t qh;
  std::memcpy(&qh, b.qh, 4);
  for (int j = 0; j < kQK / 2; ++j) {
    const int x0 = (b.qs[j] & 0x0F) | (((qh >> j) << 4) & 0x10);
    const int x1 = (b.qs[j] >> 4) | ((qh >> (j + 12)) & 0x10);
    if constexpr (kMin) {
      y[j] = x0 * d + m;
      y[j + kQK / 2] = x1 * d + m;
    } else {
      y[j] = (x0 - 16) * d;
      y[j + kQK / 2] = (x1 - 16) * d;
    }
  }
}

template <class Block, bool kFive>
void deq_k(const Block& b, float* y) {
  const float d = f16_to_f32(b.d), dmin = f16_to_f32(b.dmin);
  const uint8_t* ql = b.qs;
  uint8_t u1 = 1, u2 = 2;
  for (int j = 0, is = 0; j < kQK_K; j += 64, is += 2) {
    uint8_t sc, m;
    ggml_scale_min_k4(is, b.scales, sc, m);
    const float d1 = d * sc, m1 = dmin * m;
    ggml_scale_min_k4(is + 1, b.scales, sc, m);
    const float d2 = d * sc, m2 = dmin * m;
    for (int l = 0; l < 32; ++l) {
      int q = ql[l] & 0xF;
      if constexpr (kFive) q += (b.qh[l] & u1) ? 16 : 0;
      *y++ = d1 * q - m1;
    }
    for (int l = 0; l < 32; ++l) {
      int q = ql[l] >> 4;
      if constexpr (kFive) q += (b.qh[l] & u2) ? 16 : 0;
      *y++ = d2 * q - m2;
    }
    ql += 32;
    u1 <<= 2;
    u2 <<= 2;
  }
}

void deq_q6_k(const BlockQ6_K& b, float* y) {
  const float d = f16_to_f32(b.d);
  const uint8_t* ql = b.ql;
  const uint8_t* qh = b.qh;
  const int8_t* sc = b.scales;
  for (int n = 0; n < kQK_K; n += 128) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * sc[is] * q1;
      y[l + 32] = d * sc[is + 2] * q2;
      y[l + 64] = d * sc[is + 4] * q3;
      y[l + 96] = d * sc[is + 6] * q4;
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

// quantize_row_q8_0_ref: d = amax/127, q = roundf(x·(1/d)).
void quant_q8_0(const float* x, BlockQ8_0& b) {
  float amax = 0.0f;
  for (int j = 0; j < kQK; ++j) {
    const float v = std::fabs(x[j]);
    amax = amax > v ? amax : v;
  }
  const float d = amax / 127;
  const float id = d ? 1.0f / d : 0.0f;
  b.d = f32_to_f16(d);
  for (int j = 0; j < kQK; ++j) b.qs[j] = static_cast<int8_t>(std::roundf(x[j] * id));
}

// quantize_row_q4_0_ref: d = max/−8 (max: the value of largest magnitude), q = min(15, trunc(x/d + 8.5)).
void quant_q4_0(const float* x, BlockQ4_0& b) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < kQK; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  const float d = max / -8;
  const float id = d ? 1.0f / d : 0.0f;
  b.d = f32_to_f16(d);
  for (int j = 0; j < kQK / 2; ++j) {
    const float x0 = x[j] * id;
    const float x1 = x[kQK / 2 + j] * id;
    const uint8_t q0 = static_cast<uint8_t>(std::min<int>(15, static_cast<int8_t>(x0 + 8.5f)));
    const uint8_t q1 = static_cast<uint8_t>(std::min<int>(15, static_cast<int8_t>(x1 + 8.5f)));
    b.qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
  }
}

// quantize_row_q4_1_ref / q5_1_ref: d = (max − min)/(2^bits − 1), m = min, q = trunc((x − min)/d + 0.5)
// (Q4_1 clamps to 15; Q5_1 does not, as ggml).
template <class Block, bool kFive>
void quant_min(const float* x, Block& b) {
  float min = x[0], max = x[0];
  for (int j = 1; j < kQK; ++j) {
    if (x[j] < min) min = x[j];
    if (x[j] > max) max = x[j];
  }
  const float d = (max - min) / (kFive ? 31 : 15);
  const float id = d ? 1.0f / d : 0.0f;
  b.d = f32_to_f16(d);
  b.m = f32_to_f16(min);
  uint32_t qh = 0;
  for (int j = 0; j < kQK / 2; ++j) {
    const float x0 = (x[j] - min) * id;
    const float x1 = (x[kQK / 2 + j] - min) * id;
    uint8_t q0, q1;
    if constexpr (kFive) {
      q0 = static_cast<uint8_t>(x0 + 0.5f);
      q1 = static_cast<uint8_t>(x1 + 0.5f);
      qh |= ((q0 & 0x10u) >> 4) << j;
      qh |= ((q1 & 0x10u) >> 4) << (j + kQK / 2);
    } else {
      q0 = static_cast<uint8_t>(std::min<int>(15, static_cast<int8_t>(x0 + 0.5f)));
      q1 = static_cast<uint8_t>(std::min<int>(15, static_cast<int8_t>(x1 + 0.5f)));
    }
    b.qs[j] = static_cast<uint8_t>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
  }
  if constexpr (kFive) std::memcpy(b.qh, &qh, 4);
}

// quantize_row_q5_0_ref: d = max/−16 (max: the value of largest magnitude), q = min(31, trunc(x/d + 16.5)).
void quant_q5_0(const float* x, BlockQ5_0& b) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < kQK; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  const float d = max / -16;
  const float id = d ? 1.0f / d : 0.0f;
  b.d = f32_to_f16(d);
  uint32_t qh = 0;
  for (int j = 0; j < kQK / 2; ++j) {
    const uint8_t q0 = static_cast<uint8_t>(std::min<int>(31, static_cast<int8_t>(x[j] * id + 16.5f)));
    const uint8_t q1 = static_cast<uint8_t>(std::min<int>(31, static_cast<int8_t>(x[kQK / 2 + j] * id + 16.5f)));
    b.qs[j] = static_cast<uint8_t>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
    qh |= ((q0 & 0x10u) >> 4) << j;
    qh |= ((q1 & 0x10u) >> 4) << (j + kQK / 2);
  }
  std::memcpy(b.qh, &qh, 4);
}

inline int clamp_int(float v, int lo, int hi) {
  const int i = static_cast<int>(std::lround(v));
  return i < lo ? lo : (i > hi ? hi : i);
}

// Q4_K / Q5_K, a one-pass quantizer instead of ggml's iterative make_qkx2_quants: each sub-block of 32
// gets min m_j = max(0, −min x) and scale (max x + m_j)/nmax; both are stored as 6-bit multiples of the
// super-block's dmin = max m/63 and d = max scale/63 (rounded UP, so the decoded range still covers the
// sub-block: no clipping), and the values are rounded to nearest against the DECODED d·sc and dmin·m.
template <class Block, bool kFive>
void quant_k(const float* x, Block& b) {
  constexpr int nmax = kFive ? 31 : 15;
  float mins[8], maxs[8], max_min = 0.0f;
  for (int j = 0; j < 8; ++j) {
    float lo = x[32 * j], hi = x[32 * j];
    for (int l = 1; l < 32; ++l) {
      lo = std::min(lo, x[32 * j + l]);
      hi = std::max(hi, x[32 * j + l]);
    }
    mins[j] = lo < 0.0f ? -lo : 0.0f;  // the format subtracts dmin·m ≥ 0
    maxs[j] = hi;
    max_min = std::max(max_min, mins[j]);
  }
  b.dmin = f32_to_f16(max_min / 63);
  const float dmin = f16_to_f32(b.dmin);
  uint8_t ls[8], lm[8];
  float scales[8], max_scale = 0.0f;
  for (int j = 0; j < 8; ++j) {
    lm[j] = dmin > 0.0f ? static_cast<uint8_t>(std::min(63.0f, std::ceil(mins[j] / dmin))) : 0;
    scales[j] = std::max(0.0f, maxs[j] + dmin * lm[j]) / nmax;
    max_scale = std::max(max_scale, scales[j]);
  }
  b.d = f32_to_f16(max_scale / 63);
  const float d = f16_to_f32(b.d);
  for (int j = 0; j < 8; ++j) ls[j] = d > 0.0f ? static_cast<uint8_t>(std::min(63.0f, std::ceil(scales[j] / d))) : 0;
  std::memset(b.scales, 0, sizeof(b.scales));
  for (int j = 0; j < 8; ++j) {  // the packing ggml_scale_min_k4 reads
    if (j < 4) {
      b.scales[j] = ls[j];
      b.scales[j + 4] = lm[j];
    } else {
      b.scales[j + 4] = static_cast<uint8_t>((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
      b.scales[j - 4] |= static_cast<uint8_t>((ls[j] >> 4) << 6);
      b.scales[j] |= static_cast<uint8_t>((lm[j] >> 4) << 6);
    }
  }
  uint8_t L[kQK_K];
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, m;
    ggml_scale_min_k4(j, b.scales, sc, m);  // decode what was stored, as the dequantizer will
    const float dj = d * sc, mj = dmin * m;
    for (int l = 0; l < 32; ++l) L[32 * j + l] = static_cast<uint8_t>(dj > 0.0f ? clamp_int((x[32 * j + l] + mj) / dj, 0, nmax) : 0);
  }
  if constexpr (kFive) std::memset(b.qh, 0, sizeof(b.qh));
  uint8_t* ql = b.qs;
  uint8_t u1 = 1, u2 = 2;
  for (int n = 0; n < kQK_K; n += 64) {
    for (int l = 0; l < 32; ++l) {
      int q1 = L[n + l], q2 = L[n + l + 32];
      if constexpr (kFive) {
        if (q1 > 15) { q1 -= 16; b.qh[l] |= u1; }
        if (q2 > 15) { q2 -= 16; b.qh[l] |= u2; }
      }
      ql[l] = static_cast<uint8_t>(q1 | (q2 << 4));
    }
    ql += 32;
    u1 <<= 2;
    u2 <<= 2;
  }
}

// Q6_K, one pass instead of ggml's make_qx_quants search: sub-block j of 16 gets scale s_j = max/−32
// (max: its value of largest magnitude, mapped to q = −32 as Q4_0 does), stored as int8 multiples of
// d = max|s|/127; the values are rounded to nearest against the decoded d·sc, clamped to −32..31.
void quant_q6_k(const float* x, BlockQ6_K& b) {
  float s[16], max_scale = 0.0f, amax_scale = 0.0f;
  for (int j = 0; j < 16; ++j) {
    float amax = 0.0f, max = 0.0f;
    for (int l = 0; l < 16; ++l) {
      if (amax < std::fabs(x[16 * j + l])) {
        amax = std::fabs(x[16 * j + l]);
        max = x[16 * j + l];
      }
    }
    s[j] = max / -32;
    if (std::fabs(s[j]) > amax_scale) {
      amax_scale = std::fabs(s[j]);
      max_scale = s[j];
    }
  }
  b.d = f32_to_f16(max_scale / -127);  // negative d: the largest scale is stored as −127
  const float d = f16_to_f32(b.d);
  for (int j = 0; j < 16; ++j) b.scales[j] = static_cast<int8_t>(d != 0.0f ? clamp_int(s[j] / d, -128, 127) : 0);
  uint8_t L[kQK_K];
  for (int j = 0; j < 16; ++j) {
    const float dj = d * b.scales[j];
    for (int l = 0; l < 16; ++l) L[16 * j + l] = static_cast<uint8_t>((dj != 0.0f ? clamp_int(x[16 * j + l] / dj, -32, 31) : 0) + 32);
  }
  uint8_t* ql = b.ql;
  uint8_t* qh = b.qh;
  for (int n = 0; n < kQK_K; n += 128) {
    for (int l = 0; l < 32; ++l) {
      const uint8_t* q = L + n + l;
      ql[l] = static_cast<uint8_t>((q[0] & 0xF) | ((q[64] & 0xF) << 4));
      ql[l + 32] = static_cast<uint8_t>((q[32] & 0xF) | ((q[96] & 0xF) << 4));
      qh[l] = static_cast<uint8_t>((q[0] >> 4) | ((q[32] >> 4) << 2) | ((q[64] >> 4) << 4) | ((q[96] >> 4) << 6));
    }
    ql += 64;
    qh += 32;
  }
}

// Runs fn(block) for each of nb blocks on the pool.
template <class F>
void for_blocks(int64_t nb, F fn) {
  parallel_for(nb, [&](int64_t b0, int64_t b1) {
    for (int64_t i = b0; i < b1; ++i) fn(i);
  }, kMinBlocksPerTask);
}

template <class Block, class F>
void deq_blocks(const uint8_t* src, float* dst, int64_t n, int qk, F deq) {
  for_blocks(n / qk, [&](int64_t i) {
    Block b;
    std::memcpy(&b, src + i * sizeof(Block), sizeof(Block));
    deq(b, dst + i * qk);
  });
}

template <class Block, class F>
void quant_blocks(const float* src, uint8_t* dst, int64_t n, int qk, F quant) {
  for_blocks(n / qk, [&](int64_t i) {
    Block b;
    quant(src + i * qk, b);
    std::memcpy(dst + i * sizeof(Block), &b, sizeof(Block));
  });
}

}  // namespace

void ggml_dequantize(GgmlType t, const uint8_t* src, float* dst, int64_t n) {
  switch (t) {
    case GgmlType::F32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
    case GgmlType::F16:
      for_blocks(n, [&](int64_t i) { uint16_t h; std::memcpy(&h, src + 2 * i, 2); dst[i] = f16_to_f32(h); });
      return;
    case GgmlType::BF16:
      for_blocks(n, [&](int64_t i) { uint16_t h; std::memcpy(&h, src + 2 * i, 2); dst[i] = bf16_to_f32(h); });
      return;
    case GgmlType::F64:
      for_blocks(n, [&](int64_t i) { double v; std::memcpy(&v, src + 8 * i, 8); dst[i] = static_cast<float>(v); });
      return;
    case GgmlType::Q8_0: deq_blocks<BlockQ8_0>(src, dst, n, kQK, deq_q8_0); return;
    case GgmlType::Q4_0: deq_blocks<BlockQ4_0>(src, dst, n, kQK, deq_q4_0); return;
    case GgmlType::Q4_1: deq_blocks<BlockQ4_1>(src, dst, n, kQK, deq_q4_1); return;
    case GgmlType::Q5_0: deq_blocks<BlockQ5_0>(src, dst, n, kQK, deq_q5<BlockQ5_0, false>); return;
    case GgmlType::Q5_1: deq_blocks<BlockQ5_1>(src, dst, n, kQK, deq_q5<BlockQ5_1, true>); return;
    case GgmlType::Q4_K: deq_blocks<BlockQ4_K>(src, dst, n, kQK_K, deq_k<BlockQ4_K, false>); return;
    case GgmlType::Q5_K: deq_blocks<BlockQ5_K>(src, dst, n, kQK_K, deq_k<BlockQ5_K, true>); return;
    case GgmlType::Q6_K: deq_blocks<BlockQ6_K>(src, dst, n, kQK_K, deq_q6_k); return;
  }
}

void ggml_quantize(GgmlType t, const float* src, uint8_t* dst, int64_t n) {
  switch (t) {
    case GgmlType::F32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
    case GgmlType::F16:
      for_blocks(n, [&](int64_t i) { const uint16_t h = f32_to_f16(src[i]); std::memcpy(dst + 2 * i, &h, 2); });
      return;
    case GgmlType::BF16:
      for_blocks(n, [&](int64_t i) { const uint16_t h = f32_to_bf16(src[i]); std::memcpy(dst + 2 * i, &h, 2); });
      return;
    case GgmlType::Q8_0: quant_blocks<BlockQ8_0>(src, dst, n, kQK, quant_q8_0); return;
    case GgmlType::Q4_0: quant_blocks<BlockQ4_0>(src, dst, n, kQK, quant_q4_0); return;
    case GgmlType::Q4_1: quant_blocks<BlockQ4_1>(src, dst, n, kQK, quant_min<BlockQ4_1, false>); return;
    case GgmlType::Q5_0: quant_blocks<BlockQ5_0>(src, dst, n, kQK, quant_q5_0); return;
    case GgmlType::Q5_1: quant_blocks<BlockQ5_1>(src, dst, n, kQK, quant_min<BlockQ5_1, true>); return;
    case GgmlType::Q4_K: quant_blocks<BlockQ4_K>(src, dst, n, kQK_K, quant_k<BlockQ4_K, false>); return;
    case GgmlType::Q5_K: quant_blocks<BlockQ5_K>(src, dst, n, kQK_K, quant_k<BlockQ5_K, true>); return;
    case GgmlType::Q6_K: quant_blocks<BlockQ6_K>(src, dst, n, kQK_K, quant_q6_k); return;
    default: return;  // the binding admits only the types above
  }
}

}  // namespace cpu
}  // namespace lorakit
