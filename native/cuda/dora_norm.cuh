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

// m(k) = M[o, k], b(k) = B[o, k] as f32; G [r, r] f32.
template <class MAt, class BAt>
__device__ __forceinline__ float dora_row_norm(float wsq, MAt m, BAt b, const float* __restrict__ G, int r, float scale) {
  double cross = 0, quad = 0;
  for (int k = 0; k < r; k++) {
    const double bk = b(k);
    cross += double(m(k)) * bk;
    double bg = 0;
    for (int j = 0; j < r; j++) bg += double(b(j)) * G[j * r + k];
    quad += bg * bk;
  }
  const double n2 = double(wsq) + 2.0 * scale * cross + double(scale) * scale * quad;
  return static_cast<float>(sqrt(n2 > 0 ? n2 : 0.0));
}

}  // namespace cuda
}  // namespace lorakit
