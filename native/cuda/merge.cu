// Merge/unmerge: out = W + scale·ΔW, ΔW = B·A in W's layout, in one pass over W. Each block owns
// a 32×256 tile of W, stages the matching slices of the (small, L2-resident) factors in shared
// memory as f32, accumulates the rank-r product in registers, adds W in f32 and rounds once.
// W's loads are issued before the rank loop so their latency hides behind the arithmetic.
#include "common.cuh"
#include "ops.h"
#include "vec.cuh"

namespace lorakit {
namespace cuda {
namespace {

constexpr int kTM = 32, kTN = 256, kRC = 32, kThreads = 256;
constexpr int kRowsPerThread = kTM / (kThreads / 32);  // 4

// P(i, k) and Q(k, j): for [out, in] W, P = B [rows, r] and Q = A [r, cols]; for fan_in_fan_out
// ([in, out]) P = Aᵀ and Q = Bᵀ.
template <class T, class F>
__global__ void __launch_bounds__(kThreads) merge_kernel(const T* W, T* out, const F* __restrict__ A,
                                                         const F* __restrict__ B, int64_t rows, int64_t cols, int r,
                                                         float scale, bool fifo, bool vec) {
  __shared__ float Ps[kTM][kRC + 1];
  __shared__ __align__(16) float Qs[kRC][kTN];
  const int64_t row0 = int64_t(blockIdx.y) * kTM, col0 = int64_t(blockIdx.x) * kTN;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t c = col0 + lane * 8;
  float w[kRowsPerThread][8], acc[kRowsPerThread][8];
#pragma unroll
  for (int ii = 0; ii < kRowsPerThread; ii++) {
    int64_t i = row0 + warp * kRowsPerThread + ii;
#pragma unroll
    for (int jj = 0; jj < 8; jj++) acc[ii][jj] = 0.f;
    if (i < rows) {
      if (vec && c < cols) {
        load8(W + i * cols + c, w[ii]);
      } else {
#pragma unroll
        for (int jj = 0; jj < 8; jj++) w[ii][jj] = c + jj < cols ? to_f32<T>(W[i * cols + c + jj]) : 0.f;
      }
    }
  }
  for (int k0 = 0; k0 < r; k0 += kRC) {
    for (int e = threadIdx.x; e < kTM * kRC; e += kThreads) {
      int ii = e / kRC, kk = e % kRC;
      int64_t i = row0 + ii;
      int k = k0 + kk;
      float v = 0.f;
      if (i < rows && k < r) v = fifo ? to_f32<F>(A[int64_t(k) * rows + i]) : to_f32<F>(B[i * r + k]);
      Ps[ii][kk] = v * scale;
    }
    for (int e = threadIdx.x; e < kRC * kTN; e += kThreads) {
      int kk = e / kTN, jj = e % kTN;
      int64_t j = col0 + jj;
      int k = k0 + kk;
      float v = 0.f;
      if (j < cols && k < r) v = fifo ? to_f32<F>(B[j * r + k]) : to_f32<F>(A[int64_t(k) * cols + j]);
      Qs[kk][jj] = v;
    }
    __syncthreads();
    int kend = min(kRC, r - k0);
    for (int kk = 0; kk < kend; kk++) {
      float4 q0 = *reinterpret_cast<const float4*>(&Qs[kk][lane * 8]);
      float4 q1 = *reinterpret_cast<const float4*>(&Qs[kk][lane * 8 + 4]);
      float q[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
#pragma unroll
      for (int ii = 0; ii < kRowsPerThread; ii++) {
        float p = Ps[warp * kRowsPerThread + ii][kk];
#pragma unroll
        for (int jj = 0; jj < 8; jj++) acc[ii][jj] = fmaf(p, q[jj], acc[ii][jj]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int ii = 0; ii < kRowsPerThread; ii++) {
    int64_t i = row0 + warp * kRowsPerThread + ii;
    if (i >= rows) continue;
#pragma unroll
    for (int jj = 0; jj < 8; jj++) acc[ii][jj] += w[ii][jj];
    if (vec && c < cols) {
      store8(out + i * cols + c, acc[ii]);
    } else {
#pragma unroll
      for (int jj = 0; jj < 8; jj++)
        if (c + jj < cols) out[i * cols + c + jj] = from_f32<T>(acc[ii][jj]);
    }
  }
}

}  // namespace

void merge_delta(const TensorRef& W, const TensorRef& A, const TensorRef& B, float scale, bool fan_in_fan_out,
                 const TensorRef& out) {
  if (out.dtype != W.dtype) throw_type("out: on cuda, expected the dtype of the weight (" + std::string(dtype_name(W.dtype)) + ")");
  if (A.dtype != B.dtype) throw_type("adapter: on cuda, A and B must have the same dtype");
  int64_t rows = W.dim(0), cols = W.dim(1);
  int r = static_cast<int>(A.dim(0));
  if (rows == 0 || cols == 0) return;
  bool vec = cols % 8 == 0 && reinterpret_cast<uintptr_t>(W.data) % 32 == 0 && reinterpret_cast<uintptr_t>(out.data) % 32 == 0;
  dim3 grid(static_cast<unsigned>((cols + kTN - 1) / kTN), static_cast<unsigned>((rows + kTM - 1) / kTM));
  if (grid.y > 65535) throw_range("weight: too many rows for the cuda merge kernel (" + std::to_string(rows) + ")");
  dispatch_float(W.dtype, "weight", [&](auto wz) {
    dispatch_float(A.dtype, "A", [&](auto fz) {
      using T = decltype(wz);
      using F = decltype(fz);
      merge_kernel<T, F><<<grid, kThreads, 0, stream()>>>(W.as<T>(), out.as<T>(), A.as<F>(), B.as<F>(), rows, cols, r,
                                                          scale, fan_in_fan_out, vec);
    });
  });
  LK_LAUNCHED("merge");
}

}  // namespace cuda
}  // namespace lorakit
