// DoRA's k, and the weight norm of one output feature by the low-rank identity (dora.cu's header):
//   ‖W_o + s·B_o·A‖² = ‖W_o‖² + 2s·Σ_k M[o,k]·B[o,k] + s²·Σ_k (B_o·G)_k·B[o,k],  M = W·Aᵀ, G = A·Aᵀ,
// summed in f64 in one fixed order, shared by dora.cu's norm_combine_kernel and the decode kernel
// that computes M in its own pass over W (decode_tc.cu), so both give the same bits from the same
// M, G and B.
#pragma once
#include "common.cuh"

namespace lorakit {
namespace cuda {

// k[o] = magnitude[o] / norm[o], DoRA's per-feature scale: one correctly rounded division, the same
// bits wherever k is made (the k and norm kernels, the decode epilogues, merges).
__device__ __forceinline__ float dora_k(const void* mag, DType mt, int64_t o, float norm) {
  return __fdiv_rn(load_as_f32(mag, mt, o), norm);
}

// (B_o·G)_k = Σ_j B[o,j]·G[j,k] in f64, j in order: the rank term's inner sum for one k. b(j) =
// B[o, j], g(i) = G's i-th value (row-major [r, r]). Separate so that the decode epilogue can spread
// a block's features × r of them over all its threads (dora_norm_from_bg sums them in k order).
template <class BAt, class GAt>
__device__ __forceinline__ double dora_bg(BAt b, GAt g, int r, int k) {
  double bg = 0;
  for (int j = 0; j < r; j++) bg += double(b(j)) * double(g(j * r + k));
  return bg;
}

// The norm from m(k) = M[o, k], b(k) = B[o, k] and bg(k) = dora_bg(b, G, r, k), each sum over k in order.
template <class MAt, class BAt, class BgAt>
__device__ __forceinline__ float dora_norm_from_bg(float wsq, MAt m, BAt b, BgAt bg, int r, float scale) {
  double cross = 0, quad = 0;
  for (int k = 0; k < r; k++) {
    const double bk = b(k);
    cross += double(m(k)) * bk;
    quad += bg(k) * bk;
  }
  const double n2 = double(wsq) + 2.0 * scale * cross + double(scale) * scale * quad;
  return static_cast<float>(sqrt(n2 > 0 ? n2 : 0.0));
}

// One thread's whole norm: m(k) = M[o, k], b(k) = B[o, k] as f32; G [r, r] f32.
template <class MAt, class BAt>
__device__ __forceinline__ float dora_row_norm(float wsq, MAt m, BAt b, const float* __restrict__ G, int r, float scale) {
  return dora_norm_from_bg(wsq, m, b, [&](int k) { return dora_bg(b, [&](int i) { return G[i]; }, r, k); }, r, scale);
}

}  // namespace cuda
}  // namespace lorakit
