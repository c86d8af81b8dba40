// Merge/unmerge: out = W + scale·ΔW, ΔW = B·A in W's layout, in one pass over W. Each block owns
// a 32×256 tile of W; the rank-r product accumulates in f32 registers, W is added in f32 and
// rounded once. W's loads are issued before the rank loop so their latency hides behind it.
#include "common.cuh"
#include "ops.h"
#include "vec.cuh"

namespace lorakit {
namespace cuda {
namespace {

constexpr int kTM = 32, kTN = 256, kThreads = 256;
constexpr int kRowsPerThread = kTM / (kThreads / 32);  // 4

// P(i, k) and Q(k, j): for [out, in] W, P = B [rows, r] and Q = A [r, cols]; for fan_in_fan_out
// ([in, out]) P = Aᵀ and Q = Bᵀ. Each thread owns 4 rows × 8 columns; its Q slice for one k is
// one 16-byte load (rows of A are contiguous), its P values are warp-uniform loads. Both factors
// are small and stay in L1/L2; only W streams from HBM.
template <class T, class F>
__global__ void __launch_bounds__(kThreads) merge_kernel(const T* W, T* out, const F* __restrict__ A,
                                                         const F* __restrict__ B, int64_t rows, int64_t cols, int r,
                                                         float scale) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t row0 = int64_t(blockIdx.y) * kTM + warp * kRowsPerThread;
  const int64_t c = int64_t(blockIdx.x) * kTN + lane * 8;
  if (c >= cols) return;
  float w[kRowsPerThread][8], acc[kRowsPerThread][8];
#pragma unroll
  for (int ii = 0; ii < kRowsPerThread; ii++) {
#pragma unroll
    for (int jj = 0; jj < 8; jj++) acc[ii][jj] = 0.f;
    if (row0 + ii < rows) load8(W + (row0 + ii) * cols + c, w[ii]);
  }
  int64_t prow[kRowsPerThread];
#pragma unroll
  for (int ii = 0; ii < kRowsPerThread; ii++) prow[ii] = (row0 + ii < rows ? row0 + ii : rows - 1) * r;
#pragma unroll 4
  for (int k = 0; k < r; k++) {
    float q[8];
    load8(A + int64_t(k) * cols + c, q);
#pragma unroll
    for (int ii = 0; ii < kRowsPerThread; ii++) {
      float p = to_f32<F>(__ldg(B + prow[ii] + k));
#pragma unroll
      for (int jj = 0; jj < 8; jj++) acc[ii][jj] = fmaf(p, q[jj], acc[ii][jj]);
    }
  }
#pragma unroll
  for (int ii = 0; ii < kRowsPerThread; ii++) {
    if (row0 + ii >= rows) continue;
#pragma unroll
    for (int jj = 0; jj < 8; jj++) acc[ii][jj] = fmaf(scale, acc[ii][jj], w[ii][jj]);
    store8(out + (row0 + ii) * cols + c, acc[ii]);
  }
}

// Any layout and shape (fan_in_fan_out, or cols not a multiple of 8): one element per thread.
template <class T, class F>
__global__ void merge_scalar_kernel(const T* W, T* out, const F* __restrict__ A, const F* __restrict__ B,
                                    int64_t rows, int64_t cols, int r, float scale, bool fifo) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < rows * cols; e += int64_t(gridDim.x) * blockDim.x) {
    int64_t i = e / cols, j = e % cols;
    float acc = 0.f;
    for (int k = 0; k < r; k++)
      acc += fifo ? to_f32<F>(A[int64_t(k) * rows + i]) * to_f32<F>(B[j * r + k])
                  : to_f32<F>(B[i * r + k]) * to_f32<F>(A[int64_t(k) * cols + j]);
    out[e] = from_f32<T>(fmaf(scale, acc, to_f32<T>(W[e])));
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
  auto aligned = [](const void* p, int64_t b) { return reinterpret_cast<uintptr_t>(p) % b == 0; };
  bool vec = !fan_in_fan_out && cols % 8 == 0 && aligned(W.data, 32) && aligned(out.data, 32) && aligned(A.data, 32);
  dim3 grid(static_cast<unsigned>((cols + kTN - 1) / kTN), static_cast<unsigned>((rows + kTM - 1) / kTM));
  if (grid.y > 65535) vec = false;
  dispatch_float(W.dtype, "weight", [&](auto wz) {
    dispatch_float(A.dtype, "A", [&](auto fz) {
      using T = decltype(wz);
      using F = decltype(fz);
      if (vec)
        merge_kernel<T, F><<<grid, kThreads, 0, stream()>>>(W.as<T>(), out.as<T>(), A.as<F>(), B.as<F>(), rows, cols, r, scale);
      else
        merge_scalar_kernel<T, F><<<blocks_for(rows * cols, 256), 256, 0, stream()>>>(
            W.as<T>(), out.as<T>(), A.as<F>(), B.as<F>(), rows, cols, r, scale, fan_in_fan_out);
    });
  });
  LK_LAUNCHED("merge");
}

}  // namespace cuda
}  // namespace lorakit
