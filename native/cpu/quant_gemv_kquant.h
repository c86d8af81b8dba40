// The q4_k / q6_k decode GEMV, included once by each ISA's GEMV file inside its target region
// (GCC vector extensions: 16 f32 lanes, one zmm or two ymm). Each 256-value super-block is decoded
// into L1 by vector loops with the scalar decoder's products (ggml_blocks.cc, ggml's
// dequantize_row_q4_K / q6_K: d·sc·q − dmin·m and (d·sc)·(q − 32), without FMA contraction, as
// there), then dotted with every token's row; bf16: the block rounded to bf16 first, as the
// portable path (quant_linear.cc) rounds its decoded rows.
#pragma once
#include <cstring>
#include "../core/dtype.h"
#include "../core/ggml_blocks.h"
#include "quant.h"
#include "quant_gemv.h"

namespace lorakit {
namespace cpu {
namespace {
namespace kq {

typedef float v16f __attribute__((vector_size(64)));
typedef uint8_t v16u8 __attribute__((vector_size(16)));

inline v16u8 ld_u8(const uint8_t* p) {
  v16u8 v;
  std::memcpy(&v, p, 16);
  return v;
}
inline v16f ld_f(const float* p) {
  v16f v;
  std::memcpy(&v, p, 64);
  return v;
}
inline void st_f(float* p, v16f v) { std::memcpy(p, &v, 64); }
inline v16f to_f(v16u8 q) { return __builtin_convertvector(q, v16f); }

// The 6-bit scale and min of sub-block j of a q4_k super-block (ggml's get_scale_min_k4).
inline void scale_min(int j, const uint8_t* q, int& sc, int& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// 256 values: four 64-value halves, low nibbles of 32 bytes then their high nibbles.
inline void deq_q4_k(const uint8_t* blk, float* w) {
  BlockQ4_K b;
  std::memcpy(&b, blk, sizeof b);
  const float d = f16_to_f32(b.d), dmin = f16_to_f32(b.dmin);
  for (int j = 0; j < 4; j++) {
    int sc, m;
    scale_min(2 * j, b.scales, sc, m);
    const float d1 = d * sc, m1 = dmin * m;
    scale_min(2 * j + 1, b.scales, sc, m);
    const float d2 = d * sc, m2 = dmin * m;
    for (int h = 0; h < 2; h++) {
      const v16u8 q = ld_u8(b.qs + 32 * j + 16 * h);
      const v16f lo = d1 * to_f(q & 15), hi = d2 * to_f(q >> 4);
      st_f(w + 64 * j + 16 * h, lo - m1);
      st_f(w + 64 * j + 32 + 16 * h, hi - m2);
    }
  }
}

// 256 values: two 128-value halves; 4 low bits from ql, 2 high bits from qh, 16-value scales.
inline void deq_q6_k(const uint8_t* blk, float* w) {
  BlockQ6_K b;
  std::memcpy(&b, blk, sizeof b);
  const float d = f16_to_f32(b.d);
  for (int n = 0; n < 2; n++) {
    const uint8_t* ql = b.ql + 64 * n;
    const uint8_t* qh = b.qh + 32 * n;
    const int8_t* sc = b.scales + 8 * n;
    float* y = w + 128 * n;
    for (int h = 0; h < 2; h++) {  // l = 16h .. 16h + 15: scale index h (+2, +4, +6)
      const v16u8 a = ld_u8(ql + 16 * h), c = ld_u8(ql + 32 + 16 * h), e = ld_u8(qh + 16 * h);
      const v16u8 q1 = (a & 15) | ((e & 3) << 4), q2 = (c & 15) | (((e >> 2) & 3) << 4);
      const v16u8 q3 = (a >> 4) | (((e >> 4) & 3) << 4), q4 = (c >> 4) | (((e >> 6) & 3) << 4);
      st_f(y + 16 * h, (d * sc[h]) * (to_f(q1) - 32.f));
      st_f(y + 32 + 16 * h, (d * sc[h + 2]) * (to_f(q2) - 32.f));
      st_f(y + 64 + 16 * h, (d * sc[h + 4]) * (to_f(q3) - 32.f));
      st_f(y + 96 + 16 * h, (d * sc[h + 6]) * (to_f(q4) - 32.f));
    }
  }
}

template <int NT>
void gemv_nt(const QuantWeight& W, const float* x, int64_t j0, int64_t j1, float* y, int64_t ldy, bool bf16) {
  const bool q4 = W.spec.format == QuantFormat::Q4_K;
  const int64_t cols = W.spec.cols, nb = cols / kQK_K;
  const size_t bytes = q4 ? sizeof(BlockQ4_K) : sizeof(BlockQ6_K);
  const uint8_t* data = W.data + quant_layout(W.spec).data_off;
  alignas(64) float w[kQK_K];
  for (int64_t j = j0; j < j1; j++) {
    v16f acc[NT][2];
    for (int i = 0; i < NT; i++) acc[i][0] = acc[i][1] = v16f{};
    const uint8_t* row = data + j * nb * bytes;
    for (int64_t b = 0; b < nb; b++) {
      if (q4) deq_q4_k(row + b * bytes, w);
      else deq_q6_k(row + b * bytes, w);
      if (bf16)
        for (int k = 0; k < kQK_K; k++) w[k] = bf16_to_f32(f32_to_bf16(w[k]));
      for (int i = 0; i < NT; i++) {
        const float* xr = x + i * cols + b * kQK_K;
        for (int k = 0; k < kQK_K; k += 32) {
          acc[i][0] += ld_f(w + k) * ld_f(xr + k);
          acc[i][1] += ld_f(w + k + 16) * ld_f(xr + k + 16);
        }
      }
    }
    for (int i = 0; i < NT; i++) {
      const v16f t = acc[i][0] + acc[i][1];
      float s = 0.f;
      for (int l = 0; l < 16; l++) s += t[l];
      y[i * ldy + j] = s;
    }
  }
}

void gemv(const QuantWeight& W, const float* x, int64_t n, int64_t j0, int64_t j1, float* y, int64_t ldy, bool bf16) {
  switch (n) {
    case 1: return gemv_nt<1>(W, x, j0, j1, y, ldy, bf16);
    case 2: return gemv_nt<2>(W, x, j0, j1, y, ldy, bf16);
    case 3: return gemv_nt<3>(W, x, j0, j1, y, ldy, bf16);
    case 4: return gemv_nt<4>(W, x, j0, j1, y, ldy, bf16);
    case 5: return gemv_nt<5>(W, x, j0, j1, y, ldy, bf16);
    case 6: return gemv_nt<6>(W, x, j0, j1, y, ldy, bf16);
    case 7: return gemv_nt<7>(W, x, j0, j1, y, ldy, bf16);
    default: return gemv_nt<8>(W, x, j0, j1, y, ldy, bf16);
  }
}

}  // namespace kq
}  // namespace
}  // namespace cpu
}  // namespace lorakit
