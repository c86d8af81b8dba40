// Merge/unmerge: out = W + scale·ΔW, ΔW = B·A in W's layout, in one pass over W. Each block owns
// a 32×256 tile of W; the rank-r product accumulates in f32 registers, W is added in f32 and
// rounded once. W's loads are issued before the rank loop so their latency hides behind it.
#include <type_traits>
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

// Tensor-core variant for 16-bit factors (mma.sync m16n8k16, f32 accumulators): the rank-r
// product costs a few instructions per 16×8 tile instead of r FMAs per element, so W's stream
// stays the bottleneck even at r = 64. Each warp owns 16 rows × 64 columns of W; the fragments of
// B (row-major, the A operand) and A (the B operand) are read straight from L1/L2.
template <class F> struct MmaType;
template <> struct MmaType<__nv_bfloat16> { static constexpr bool bf16 = true; };
template <> struct MmaType<__half> { static constexpr bool bf16 = false; };

template <class F>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (MmaType<F>::bf16)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Two 16-bit values as one 32-bit register, the first in the low half; zero past r.
template <class F>
__device__ __forceinline__ uint32_t pack2(const F* p0, const F* p1, bool ok0, bool ok1) {
  uint16_t lo = ok0 ? __ldg(reinterpret_cast<const unsigned short*>(p0)) : 0;
  uint16_t hi = ok1 ? __ldg(reinterpret_cast<const unsigned short*>(p1)) : 0;
  return uint32_t(lo) | (uint32_t(hi) << 16);
}

constexpr int kMmaWarps = 8, kMmaCols = 64, kMmaTiles = kMmaCols / 8;

template <class T, class F>
__global__ void __launch_bounds__(kMmaWarps * 32) merge_mma_kernel(const T* W, T* out, const F* __restrict__ A,
                                                                  const F* __restrict__ B, int64_t rows, int64_t cols,
                                                                  int r, float scale) {
  // The accumulators go through shared memory so that W is read and written with coalesced
  // 16-byte accesses (8 lanes cover one 64-column row segment).
  __shared__ __align__(16) float stage[kMmaWarps][16][kMmaCols + 4];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;
  const int64_t r0 = (int64_t(blockIdx.y) * kMmaWarps + warp) * 16;
  const int64_t c0 = int64_t(blockIdx.x) * kMmaCols;
  if (r0 >= rows) return;
  // W first: its latency hides behind the rank loop. Pass q covers rows q*4 + lane/8.
  const int lrow = lane / 8, lcol = (lane % 8) * 8;
  float w[4][8];
#pragma unroll
  for (int q = 0; q < 4; q++) load8(W + (r0 + q * 4 + lrow) * cols + c0 + lcol, w[q]);
  float acc[kMmaTiles][4];
#pragma unroll
  for (int j = 0; j < kMmaTiles; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
  const F* Brow0 = B + (r0 + g) * r;
  const F* Brow1 = B + (r0 + g + 8) * r;
  for (int k0 = 0; k0 < r; k0 += 16) {
    const int ka = k0 + 2 * t, kb = ka + 8;
    uint32_t a[4] = {pack2(Brow0 + ka, Brow0 + ka + 1, ka < r, ka + 1 < r), pack2(Brow1 + ka, Brow1 + ka + 1, ka < r, ka + 1 < r),
                     pack2(Brow0 + kb, Brow0 + kb + 1, kb < r, kb + 1 < r), pack2(Brow1 + kb, Brow1 + kb + 1, kb < r, kb + 1 < r)};
#pragma unroll
    for (int j = 0; j < kMmaTiles; j++) {
      const F* col = A + c0 + j * 8 + g;
      uint32_t b[2] = {pack2(col + int64_t(ka) * cols, col + int64_t(ka + 1) * cols, ka < r, ka + 1 < r),
                       pack2(col + int64_t(kb) * cols, col + int64_t(kb + 1) * cols, kb < r, kb + 1 < r)};
      mma16816<F>(acc[j], a, b);
    }
  }
  float (*st)[kMmaCols + 4] = stage[warp];
#pragma unroll
  for (int j = 0; j < kMmaTiles; j++) {
    *reinterpret_cast<float2*>(&st[g][j * 8 + 2 * t]) = make_float2(acc[j][0], acc[j][1]);
    *reinterpret_cast<float2*>(&st[g + 8][j * 8 + 2 * t]) = make_float2(acc[j][2], acc[j][3]);
  }
  __syncwarp();
#pragma unroll
  for (int q = 0; q < 4; q++) {
    const float* s = &st[q * 4 + lrow][lcol];
    float4 s0 = *reinterpret_cast<const float4*>(s);
    float4 s1 = *reinterpret_cast<const float4*>(s + 4);
    float v[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
#pragma unroll
    for (int e = 0; e < 8; e++) v[e] = fmaf(scale, v[e], w[q][e]);
    store8(out + (r0 + q * 4 + lrow) * cols + c0 + lcol, v);
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
      if constexpr (!std::is_same<F, float>::value) {
        // Measured on the H200: the register-tiled kernel wins up to r = 16, tensor cores at r = 64.
        if (vec && r > 32 && rows % 16 == 0 && cols % kMmaCols == 0) {
          dim3 mgrid(static_cast<unsigned>(cols / kMmaCols), static_cast<unsigned>((rows / 16 + kMmaWarps - 1) / kMmaWarps));
          merge_mma_kernel<T, F><<<mgrid, kMmaWarps * 32, 0, stream()>>>(W.as<T>(), out.as<T>(), A.as<F>(), B.as<F>(), rows,
                                                                        cols, r, scale);
          return;
        }
      }
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
