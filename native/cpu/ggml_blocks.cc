// ggml's block formats on the CPU (block structs in core/ggml_blocks.h): dequantize F16, BF16,
// F64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K to f32, and quantize f32 to F16, BF16, Q8_0,
// Q4_0 with round to nearest as ggml's quantize_row_*_ref. The arithmetic is ggml's scalar code, one
// f32 rounding per operation in its order (no FMA contraction), so results are bit-identical to
// ggml's reference functions and to lib/gguf/blocks.ts. Blocks are split over the thread pool.
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

// The 6-bit scale and min of sub-block j of a Q4_K/Q5_K super-block (ggml's get_scale_min_k4).
inline void scale_min_k4(int j, const uint8_t* q, uint8_t& sc, uint8_t& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

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
    scale_min_k4(is, b.scales, sc, m);
    const float d1 = d * sc, m1 = dmin * m;
    scale_min_k4(is + 1, b.scales, sc, m);
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
    case GgmlType::Q8_0:
      for_blocks(n / kQK, [&](int64_t i) {
        BlockQ8_0 b;
        quant_q8_0(src + i * kQK, b);
        std::memcpy(dst + i * sizeof(b), &b, sizeof(b));
      });
      return;
    case GgmlType::Q4_0:
      for_blocks(n / kQK, [&](int64_t i) {
        BlockQ4_0 b;
        quant_q4_0(src + i * kQK, b);
        std::memcpy(dst + i * sizeof(b), &b, sizeof(b));
      });
      return;
    default: return;  // the binding admits only the types above
  }
}

}  // namespace cpu
}  // namespace lorakit
