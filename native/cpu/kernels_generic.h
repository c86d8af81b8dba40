// Scalar reference bodies shared by the portable path and the vector paths' edge handling.
#pragma once
#include <algorithm>
#include <cstdint>
#include "../core/dtype.h"

namespace lorakit {
namespace generic {

inline void load_row(const void* src, DType st, float alpha, int64_t n, float* dst) {
  if (st == DType::F32) {
    const float* s = static_cast<const float*>(src);
    for (int64_t i = 0; i < n; i++) dst[i] = alpha * s[i];
  } else {
    for (int64_t i = 0; i < n; i++) dst[i] = alpha * load_f32(src, st, i);
  }
}

inline void pack_t(const void* src, DType st, int64_t ld_src, int64_t cols, int64_t kc, float* dst, int64_t ld_dst) {
  for (int64_t c = 0; c < cols; c++)
    for (int64_t k = 0; k < kc; k++) dst[k * ld_dst + c] = load_f32(src, st, c * ld_src + k);
}

inline void store_row(const float* src, void* dst, DType dt, int64_t n) {
  for (int64_t i = 0; i < n; i++) store_f32(dst, dt, i, src[i]);
}

inline void dot_rows(int64_t k, const float* x, const void* w, DType wt, int64_t ldw, int64_t rows, float* out) {
  for (int64_t j = 0; j < rows; j++) {
    float s = 0.f;
    if (wt == DType::F32) {
      const float* row = static_cast<const float*>(w) + j * ldw;
      for (int64_t p = 0; p < k; p++) s += x[p] * row[p];
    } else {
      for (int64_t p = 0; p < k; p++) s += x[p] * load_f32(w, wt, j * ldw + p);
    }
    out[j] += s;
  }
}

inline void axpy_rows(int64_t k, const float* x, const void* w, DType wt, int64_t ldw, int64_t cols, float* out) {
  for (int64_t p = 0; p < k; p++) {
    float xv = x[p];
    if (wt == DType::F32) {
      const float* row = static_cast<const float*>(w) + p * ldw;
      for (int64_t j = 0; j < cols; j++) out[j] += xv * row[j];
    } else {
      for (int64_t j = 0; j < cols; j++) out[j] += xv * load_f32(w, wt, p * ldw + j);
    }
  }
}

inline void rank_update(int64_t r, const float* p, int64_t rows, const float* Q, int64_t n, float* acc,
                        int64_t ldacc) {
  for (int64_t i = 0; i < rows; i++)
    for (int64_t j = 0; j < n; j++) {
      const float* col = Q + (j / 16) * 16 * r + (j % 16);
      float s = 0.f;
      for (int64_t q = 0; q < r; q++) s += p[i * r + q] * col[q * 16];
      acc[i * ldacc + j] += s;
    }
}

// One row and one 16-column panel at a time: acc starts at W, adds the r products in order of q,
// and is rounded once on store (the vector paths do the same per lane, with fused multiply-adds).
inline void merge_rows(int64_t r, const float* p, int64_t rows, const float* Q, int64_t n, const void* w, DType wt,
                       int64_t ldw, void* out, DType ot, int64_t ldo) {
  for (int64_t i = 0; i < rows; i++) {
    const float* pi = p + i * r;
    for (int64_t j0 = 0; j0 < n; j0 += 16) {
      const int64_t nj = std::min<int64_t>(16, n - j0);
      const float* qp = Q + j0 * r;
      float acc[16] = {};
      for (int64_t j = 0; j < nj; j++) acc[j] = load_f32(w, wt, i * ldw + j0 + j);
      for (int64_t q = 0; q < r; q++) {
        const float pq = pi[q];
        for (int j = 0; j < 16; j++) acc[j] += pq * qp[q * 16 + j];
      }
      for (int64_t j = 0; j < nj; j++) store_f32(out, ot, i * ldo + j0 + j, acc[j]);
    }
  }
}

}  // namespace generic
}  // namespace lorakit
