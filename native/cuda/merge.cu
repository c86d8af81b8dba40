// Merge/unmerge: out = W + scale·ΔW, ΔW = B·A in W's layout, in one pass over W; the rank-r
// product accumulates in f32, W is added in f32 and rounded once. 16-bit factors run on tensor
// cores with W streamed through shared memory (merge_tc_kernel); f32 factors (exact products)
// on the register-tiled CUDA-core kernel; odd shapes on a scalar kernel.
#include <cstdlib>
#include <string>
#include <type_traits>
#include "common.cuh"
#include "mma.cuh"
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

// Tensor-core kernel for 16-bit factors (mma.sync m16n8k16, f32 accumulators), any layout.
// W streams through shared memory: each block owns a 128-column strip and walks down several
// 64-row tiles, fetching two tiles ahead with cp.async while the current one is computed and
// written, so HBM reads stay in flight without tying up registers (the register-tiled kernel
// above held only ~32 KB in flight per SM and reached a third of the copy bandwidth). The strip's
// Q factor is staged once per block, P once per row tile; both come from L2.
template <class F>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  Mma<F>::run(d, a[0], a[1], a[2], a[3], b[0], b[1]);
}

// Tile shapes: TR rows × TC columns with TR·TC = 8192 (8 warps, each 16 rows × 64 columns).
constexpr int kTcThreads = 256, kTcMaxRank = 128;
constexpr int kFPad = 8;  // 16-bit elements of padding per factor row: conflict-free fragment loads
constexpr int kStages = 3;  // W (and P) tiles in flight per block: two ahead of the one computed

template <class T, int TR, int TC>
struct TcLayout {
  static constexpr int kWPad = 16 / sizeof(T);           // keeps rows 16-byte aligned, shifts banks
  static constexpr int kWStride = TC + kWPad;       // elements per staged W row
  static constexpr int kChunks = TC * sizeof(T) / 16;  // 16-byte chunks per W row
  static size_t smem_bytes(int rp) {
    return size_t(TC) * (rp + kFPad) * 2 + kStages * size_t(TR) * (rp + kFPad) * 2 +
           kStages * size_t(TR) * kWStride * sizeof(T);
  }
};

// Up to 8 independent 16-bit loads in flight per thread, then their shared-memory stores: a loop
// that stored each value before loading the next waited one L2 latency per element.
template <class Src, class Dst>
__device__ __forceinline__ void gather16(int total, Src src, Dst dst) {
  for (int e0 = threadIdx.x; e0 < total; e0 += kTcThreads * 8) {
    uint16_t v[8];
#pragma unroll
    for (int q = 0; q < 8; q++) {
      const int e = e0 + q * kTcThreads;
      v[q] = e < total ? src(e) : 0;
    }
#pragma unroll
    for (int q = 0; q < 8; q++) {
      const int e = e0 + q * kTcThreads;
      if (e < total) dst(e, v[q]);
    }
  }
}

// delta(i, j) = Σ_k P(i, k)·Q(k, j) with P(i, k) = P[i·ps_i + k·ps_k], Q(k, j) = Q[k·qs_k + j·qs_j].
// p_async: P's rows are contiguous and 16-byte aligned (ps_k = 1, r % 8 = 0), so each row tile's
// P slice is fetched with cp.async together with its W tile, two tiles ahead.
template <class T, class F, int TR, int TC>
__global__ void __launch_bounds__(kTcThreads) merge_tc_kernel(const T* W, T* out, const F* __restrict__ P, int64_t ps_i,
                                                              int64_t ps_k, const F* __restrict__ Q, int64_t qs_k,
                                                              int64_t qs_j, int64_t rows, int64_t cols, int r, int rp,
                                                              float scale, int tiles_per_block, bool p_async) {
  using L = TcLayout<T, TR, TC>;
  static_assert(TR * TC == 8192 && TR % 16 == 0, "8 warps of 16×64");
  extern __shared__ __align__(16) unsigned char smem[];
  const int fs = rp + kFPad;  // factor row stride (elements)
  F* Qt = reinterpret_cast<F*>(smem);                  // [TC][fs]: Q transposed, k contiguous
  F* Ps = Qt + TC * fs;                                  // [kStages][TR][fs]
  T* Wt = reinterpret_cast<T*>(Ps + kStages * TR * fs);  // [kStages][TR][kWStride]
  uint16_t* Pbits = reinterpret_cast<uint16_t*>(Ps);
  const uint16_t* Pg = reinterpret_cast<const uint16_t*>(P);
  const uint16_t* Qg = reinterpret_cast<const uint16_t*>(Q);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int g = lane / 4, t = lane % 4;
  const int wm = (warp % (TR / 16)) * 16, wn = (warp / (TR / 16)) * 64;  // this warp's 16×64 piece of the tile
  const int64_t c0 = int64_t(blockIdx.x) * TC;
  const int64_t row_tiles = (rows + TR - 1) / TR;
  const int64_t tile0 = int64_t(blockIdx.y) * tiles_per_block;
  const int64_t tile_end = tile0 + tiles_per_block < row_tiles ? tile0 + tiles_per_block : row_tiles;
  if (tile0 >= tile_end) return;

  if (p_async)  // k in [r, rp) is never fetched: zero it once in every buffer
    for (int e = tid; e < kStages * TR * (rp - r); e += kTcThreads)
      Pbits[(e / (rp - r)) * fs + r + e % (rp - r)] = 0;
  auto fetch = [&](int64_t tile, int buf) {
    T* dst = Wt + buf * TR * L::kWStride;
    for (int e = tid; e < TR * L::kChunks; e += kTcThreads) {
      const int i = e / L::kChunks, ch = e % L::kChunks;
      const int64_t gi = tile * TR + i, gj = c0 + ch * (16 / int(sizeof(T)));
      const bool ok = gi < rows && gj < cols;
      cp_async16(dst + i * L::kWStride + ch * (16 / int(sizeof(T))), ok ? W + gi * cols + gj : W, ok);
    }
    if (p_async) {
      const int chunks = r / 8;
      uint16_t* pd = Pbits + buf * TR * fs;
      for (int e = tid; e < TR * chunks; e += kTcThreads) {
        const int i = e / chunks, ch = e % chunks;
        const int64_t gi = tile * TR + i;
        cp_async16(pd + i * fs + ch * 8, gi < rows ? Pg + gi * ps_i + ch * 8 : Pg, gi < rows);
      }
    }
    cp_async_commit();
  };
  fetch(tile0, 0);
  if (tile0 + 1 < tile_end) fetch(tile0 + 1, 1);
  else cp_async_commit();  // empty groups keep the wait count uniform

  // Q for the strip, transposed, zero past r and past the last column.
  if (qs_j == 1)
    gather16(rp * TC, [&](int e) -> uint16_t {
      const int k = e / TC, j = e % TC;
      return k < r && c0 + j < cols ? __ldg(Qg + k * qs_k + c0 + j) : 0;
    }, [&](int e, uint16_t v) { reinterpret_cast<uint16_t*>(Qt)[(e % TC) * fs + e / TC] = v; });
  else
    gather16(rp * TC, [&](int e) -> uint16_t {
      const int k = e % rp, j = e / rp;
      return k < r && c0 + j < cols ? __ldg(Qg + k * qs_k + (c0 + j) * qs_j) : 0;
    }, [&](int e, uint16_t v) { reinterpret_cast<uint16_t*>(Qt)[(e / rp) * fs + e % rp] = v; });

  for (int64_t tile = tile0; tile < tile_end; tile++) {
    const int buf = int(tile - tile0) % kStages;
    if (tile + 2 < tile_end) fetch(tile + 2, (buf + 2) % kStages);
    else cp_async_commit();
    const int64_t i0 = tile * TR;
    F* ps = Ps + buf * TR * fs;
    if (!p_async) {  // P for this row tile, gathered (transposed or unaligned factors)
      uint16_t* pd = Pbits + buf * TR * fs;
      if (ps_k == 1)
        gather16(TR * rp, [&](int e) -> uint16_t {
          const int i = e / rp, k = e % rp;
          return k < r && i0 + i < rows ? __ldg(Pg + (i0 + i) * ps_i + k) : 0;
        }, [&](int e, uint16_t v) { pd[(e / rp) * fs + e % rp] = v; });
      else
        gather16(TR * rp, [&](int e) -> uint16_t {
          const int i = e % TR, k = e / TR;
          return k < r && i0 + i < rows ? __ldg(Pg + (i0 + i) * ps_i + k * ps_k) : 0;
        }, [&](int e, uint16_t v) { pd[(e % TR) * fs + e / TR] = v; });
    }
    cp_async_wait<kStages - 1>();  // this tile's W (and P) have landed; later ones may be in flight
    __syncthreads();
    float acc[8][4];
#pragma unroll
    for (int j = 0; j < 8; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
    for (int k0 = 0; k0 < rp; k0 += 16) {
      const F* pa = ps + (wm + g) * fs + k0 + 2 * t;
      uint32_t a[4] = {*reinterpret_cast<const uint32_t*>(pa), *reinterpret_cast<const uint32_t*>(pa + 8 * fs),
                       *reinterpret_cast<const uint32_t*>(pa + 8), *reinterpret_cast<const uint32_t*>(pa + 8 * fs + 8)};
#pragma unroll
      for (int j = 0; j < 8; j++) {
        const F* qb = Qt + (wn + j * 8 + g) * fs + k0 + 2 * t;
        uint32_t b[2] = {*reinterpret_cast<const uint32_t*>(qb), *reinterpret_cast<const uint32_t*>(qb + 8)};
        mma16816<F>(acc[j], a, b);
      }
    }
    // out = W + scale·delta, rounded once, in place in the staged tile (each thread touches only
    // its own fragment's elements, so no barrier is needed between the mma and this).
    T* wt = Wt + buf * TR * L::kWStride;
#pragma unroll
    for (int j = 0; j < 8; j++)
#pragma unroll
      for (int h = 0; h < 2; h++) {
        T* p = wt + (wm + g + 8 * h) * L::kWStride + wn + j * 8 + 2 * t;
        p[0] = from_f32<T>(fmaf(scale, acc[j][2 * h], to_f32<T>(p[0])));
        p[1] = from_f32<T>(fmaf(scale, acc[j][2 * h + 1], to_f32<T>(p[1])));
      }
    __syncthreads();
    for (int e = tid; e < TR * L::kChunks; e += kTcThreads) {
      const int i = e / L::kChunks, ch = e % L::kChunks;
      const int64_t gi = i0 + i, gj = c0 + ch * (16 / int(sizeof(T)));
      if (gi < rows && gj < cols)
        *reinterpret_cast<uint4*>(out + gi * cols + gj) = *reinterpret_cast<const uint4*>(wt + i * L::kWStride + ch * (16 / int(sizeof(T))));
    }
    __syncthreads();  // the buffers are refilled next iteration
  }
}

// LORAKIT_CUDA_MERGE=simt keeps 16-bit factors on the CUDA-core kernels (for A/B benchmarks).
bool tc_disabled() {
  static const bool off = [] {
    const char* e = std::getenv("LORAKIT_CUDA_MERGE");
    return e != nullptr && std::string(e) == "simt";
  }();
  return off;
}

template <class T, class F, int TR>
void launch_merge_tc(const TensorRef& W, const TensorRef& A, const TensorRef& B, float scale, bool fifo, const TensorRef& out) {
  const int64_t rows = W.dim(0), cols = W.dim(1);
  const int r = static_cast<int>(A.dim(0)), rp = (r + 15) / 16 * 16;
  constexpr int TC = 8192 / TR;
  const size_t smem = TcLayout<T, TR, TC>::smem_bytes(rp);
  static int configured_for = -1;  // the largest rp this instantiation was opened up for
  if (rp > configured_for) {
    LK_CUDA(cudaFuncSetAttribute(merge_tc_kernel<T, F, TR, TC>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)), "merge");
    configured_for = rp;
  }
  int per_sm = 0;
  LK_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, merge_tc_kernel<T, F, TR, TC>, kTcThreads, smem), "merge");
  const int64_t strips = (cols + TC - 1) / TC, row_tiles = (rows + TR - 1) / TR;
  // No more blocks than fit at once (a partial second wave would double the time), each walking
  // an equal share of its strip's row tiles.
  const int64_t resident = int64_t(per_sm < 1 ? 1 : per_sm) * sm_count();
  int64_t chunks = resident / strips;
  if (chunks < 1) chunks = 1;
  if (chunks > row_tiles) chunks = row_tiles;
  if (chunks > 65535) chunks = 65535;
  const int64_t per_block = (row_tiles + chunks - 1) / chunks;
  chunks = (row_tiles + per_block - 1) / per_block;
  // normal: P = B [rows, r], Q = A [r, cols]; fan_in_fan_out: P = Aᵀ (A is [r, rows]), Q = Bᵀ (B is [cols, r]).
  const F* P = fifo ? A.as<F>() : B.as<F>();
  const F* Q = fifo ? B.as<F>() : A.as<F>();
  const int64_t ps_i = fifo ? 1 : r, ps_k = fifo ? rows : 1, qs_k = fifo ? 1 : cols, qs_j = fifo ? r : 1;
  const bool p_async = ps_k == 1 && r % 8 == 0 && reinterpret_cast<uintptr_t>(P) % 16 == 0;
  merge_tc_kernel<T, F, TR, TC><<<dim3(unsigned(strips), unsigned(chunks)), kTcThreads, smem, stream()>>>(
      W.as<T>(), out.as<T>(), P, ps_i, ps_k, Q, qs_k, qs_j, rows, cols, r, rp, scale, int(per_block), p_async);
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
  const bool aligned16 = cols % 8 == 0 && aligned(W.data, 16) && aligned(out.data, 16);
  bool vec = !fan_in_fan_out && cols % 8 == 0 && aligned(W.data, 32) && aligned(out.data, 32) && aligned(A.data, 32);
  dim3 grid(static_cast<unsigned>((cols + kTN - 1) / kTN), static_cast<unsigned>((rows + kTM - 1) / kTM));
  if (grid.y > 65535) vec = false;
  dispatch_float(W.dtype, "weight", [&](auto wz) {
    dispatch_float(A.dtype, "A", [&](auto fz) {
      using T = decltype(wz);
      using F = decltype(fz);
      if constexpr (!std::is_same<F, float>::value) {
        // 16-bit factors: tensor cores, W streamed through shared memory (any layout, r ≤ 128).
        if (aligned16 && r <= kTcMaxRank && !tc_disabled()) {
          // 64×128 tiles: 32×256 ones were measured 2-19% slower on the H200.
          launch_merge_tc<T, F, 64>(W, A, B, scale, fan_in_fan_out, out);
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
