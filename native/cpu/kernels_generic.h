// Scalar reference bodies shared by the portable path and the vector paths' edge handling.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
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

// MR rows × one 16-column panel at a time, with W's dtype fixed at compile time: plain loops the
// compiler vectorises (each Q load serves MR rows). acc starts at W, adds the r products in order
// of q, and is rounded once on store (the vector paths do the same per lane, with fused
// multiply-adds).
template <DType T, int MR>
inline void merge_tile(int64_t r, const float* p, const float* Q, int64_t n, const void* w, int64_t ldw, void* out,
                       int64_t ldo) {
#if defined(__GNUC__)
  typedef float v4 __attribute__((vector_size(16)));  // GCC/Clang generic vectors: SSE2, NEON, ...
#endif
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    const int64_t nj = std::min<int64_t>(16, n - j0);
    const float* qp = Q + j0 * r;
    alignas(16) float acc[MR][16];
    for (int i = 0; i < MR; i++)
      for (int64_t j = 0; j < 16; j++) acc[i][j] = j < nj ? load_f32(w, T, i * ldw + j0 + j) : 0.f;
#if defined(__GNUC__)
    v4 a[MR][4];
    for (int i = 0; i < MR; i++)
      for (int h = 0; h < 4; h++) std::memcpy(&a[i][h], acc[i] + 4 * h, 16);
    for (int64_t q = 0; q < r; q++) {
      v4 qv[4];
      for (int h = 0; h < 4; h++) std::memcpy(&qv[h], qp + q * 16 + 4 * h, 16);
      for (int i = 0; i < MR; i++) {
        const float pq = p[i * r + q];
        for (int h = 0; h < 4; h++) a[i][h] += pq * qv[h];
      }
    }
    for (int i = 0; i < MR; i++)
      for (int h = 0; h < 4; h++) std::memcpy(acc[i] + 4 * h, &a[i][h], 16);
#else
    for (int64_t q = 0; q < r; q++) {
      const float* qq = qp + q * 16;
      for (int i = 0; i < MR; i++) {
        const float pq = p[i * r + q];
        for (int j = 0; j < 16; j++) acc[i][j] += pq * qq[j];
      }
    }
#endif
    for (int i = 0; i < MR; i++)
      for (int64_t j = 0; j < nj; j++) store_f32(out, T, i * ldo + j0 + j, acc[i][j]);
  }
}

template <DType T>
inline void merge_rows_t(int64_t r, const float* p, int64_t rows, const float* Q, int64_t n, const void* w,
                         int64_t ldw, void* out, int64_t ldo) {
  const int64_t es = T == DType::F32 ? 4 : 2;
  const char* wc = static_cast<const char*>(w);
  char* oc = static_cast<char*>(out);
  int64_t i = 0;
  for (; i + 2 <= rows; i += 2) merge_tile<T, 2>(r, p + i * r, Q, n, wc + i * ldw * es, ldw, oc + i * ldo * es, ldo);
  for (; i < rows; i++) merge_tile<T, 1>(r, p + i * r, Q, n, wc + i * ldw * es, ldw, oc + i * ldo * es, ldo);
}

// W and out of one dtype take the typed tiles; mixed dtypes (rare) one element at a time.
inline void merge_rows(int64_t r, const float* p, int64_t rows, const float* Q, int64_t n, const void* w, DType wt,
                       int64_t ldw, void* out, DType ot, int64_t ldo) {
  if (wt == ot) switch (wt) {
      case DType::F32: return merge_rows_t<DType::F32>(r, p, rows, Q, n, w, ldw, out, ldo);
      case DType::BF16: return merge_rows_t<DType::BF16>(r, p, rows, Q, n, w, ldw, out, ldo);
      case DType::F16: return merge_rows_t<DType::F16>(r, p, rows, Q, n, w, ldw, out, ldo);
      default: break;
    }
  for (int64_t i = 0; i < rows; i++) {
    const float* pi = p + i * r;
    for (int64_t j = 0; j < n; j++) {
      float acc = load_f32(w, wt, i * ldw + j);
      for (int64_t q = 0; q < r; q++) acc += pi[q] * Q[(j / 16) * 16 * r + q * 16 + j % 16];
      store_f32(out, ot, i * ldo + j, acc);
    }
  }
}

}  // namespace generic
}  // namespace lorakit
