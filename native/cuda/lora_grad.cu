// linear_backward's g = s·dy·B [n, r] and dB = s·dyᵀ·u [out, r] from one read of dy, for 16-bit
// dy and r ≤ 64. Hand-written because cuBLASLt cannot produce two reductions of one operand (dy
// over its columns for g, over its rows for dB) from one read: as two GEMMs it reads dy, by far
// the largest operand of both, twice, and both GEMMs are memory-bound.
//
// A block owns a strip of TO columns of dy and a chunk of rows; it streams the chunk in 32-row
// tiles through shared memory (cp.async, 3 stages) and multiplies on tensor cores (mma.sync
// m16n8k16, f32 accumulation). Each of its 8 warps owns TO/8 of the strip's columns: it holds B's
// fragments for them and their dB accumulators for the whole chunk, and per tile computes its
// share of g over them. The warps' shares of g are added in shared memory in warp order and
// written as the strip's partial; dB's accumulators are written once per chunk as the chunk's
// partial. A second kernel adds the partials in index order, scales and rounds once (g to dy's
// dtype, dB to its own). No atomics: results do not depend on timing, only on the grid, which
// depends on the shape and the GPU's SM count.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include "common.cuh"
#include "device_buffer.h"
#include "mma.cuh"
#include "ops.h"
#include "runtime.h"

namespace lorakit {
namespace cuda {
namespace {

constexpr int kWarps = 8, kThreads = kWarps * 32;
constexpr int kRows = 32;   // rows of dy per tile
constexpr int kStages = 3;  // tiles in the cp.async ring
constexpr int kMaxRank = 64;
// The default path uses the kernel up to this rank (LORAKIT_CUDA_GRAD=fused: up to kMaxRank).
// Measured on the H200 (bench/results/gpu-grad-2026-11-29*.txt, bf16, d_in 4096): 1.1-1.8x faster
// than the two GEMMs at r 8 and 16, 0.89-1.23x at r 32, 0.43-0.79x at r 64, where the warps' g
// shares (r floats per row per warp) cost more shared-memory traffic than dy itself and the
// strips are only 256 columns wide (g's partials then weigh as much as dy).
constexpr int kAutoMaxRank = 16;

// Tile sizes for ranks padded to RP = 8·NT. Per thread: dB accumulators 4·MT·NT floats, B
// fragments 2·MT·NT registers, g accumulators 8·NT floats; shared memory stays under 227 KB.
template <int NT>
struct Shape {
  static constexpr int RP = 8 * NT;
  static constexpr int MT = NT <= 2 ? 8 : NT == 4 ? 4 : 2;  // 16-column tiles per warp
  static constexpr int WC = 16 * MT;                        // columns per warp
  static constexpr int TO = kWarps * WC;                    // columns per block
  // Row strides in shared memory: 16 bytes past a multiple of 128 (dy, u), so the 8 rows an
  // ldmatrix reads fall in different banks; g's partial rows 8 words past a multiple of 32.
  static constexpr int DS = TO + 8;
  static constexpr int US = RP == 8 ? 8 : RP + 8;
  static constexpr int GS = RP == 8 ? 8 : RP + 8;
  static constexpr size_t kDyBytes = size_t(kStages) * kRows * DS * 2;
  static constexpr size_t kUBytes = size_t(kStages) * kRows * US * 2;
  static constexpr size_t kRedBytes = size_t(kWarps) * kRows * GS * 4;
  static constexpr size_t kSmem = kDyBytes + kUBytes + kRedBytes;
  static_assert(kSmem <= 227 * 1024, "shared memory");
};

__device__ __forceinline__ void ldsm_x4(uint32_t (&v)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v[0]), "=r"(v[1]), "=r"(v[2]), "=r"(v[3])
               : "r"(smem_addr(p))
               : "memory");
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&v)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v[0]), "=r"(v[1]), "=r"(v[2]), "=r"(v[3])
               : "r"(smem_addr(p))
               : "memory");
}
__device__ __forceinline__ void ldsm_x2_t(uint32_t (&v)[2], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(v[0]), "=r"(v[1])
               : "r"(smem_addr(p))
               : "memory");
}

template <class T>
__device__ __forceinline__ uint32_t pack2(T lo, T hi) {
  const uint32_t l = *reinterpret_cast<const unsigned short*>(&lo), h = *reinterpret_cast<const unsigned short*>(&hi);
  return l | (h << 16);
}

// Partials of one (strip, chunk) block: gpart[strip][row][q] for the chunk's rows and
// dbpart[chunk][col][q] for the strip's columns (q < r, row < n, col < out).
//
// Fragments (m16n8k16; lane = 4·gi + ti): for a 16×16 sub-tile of dy (rows i, columns c), one
// ldmatrix.x4 gives the A operand of g's product (M = rows, K = columns) and an ldmatrix.x4.trans
// of the same addresses the A operand of dB's product (M = columns, K = rows), with its middle two
// registers swapped. u's tile (K = rows, N = ranks) is read transposed; B's fragments (K = columns,
// N = ranks) are loaded from global memory once per block.
template <class T, int NT>
__global__ void __launch_bounds__(kThreads, 1)
    grad_kernel(const T* __restrict__ dy, const T* __restrict__ u, const T* __restrict__ B, int r, int64_t n,
                int64_t outf, int64_t chunk_rows, float* __restrict__ gpart, float* __restrict__ dbpart) {
  using S = Shape<NT>;
  constexpr int MT = S::MT, RP = S::RP, TO = S::TO, DS = S::DS, US = S::US, GS = S::GS;
  extern __shared__ __align__(16) unsigned char smem[];
  T* const dys = reinterpret_cast<T*>(smem);
  T* const uts = reinterpret_cast<T*>(smem + S::kDyBytes);
  float* const red = reinterpret_cast<float*>(smem + S::kDyBytes + S::kUBytes);

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, gi = lane / 4, ti = lane % 4;
  const int64_t col0 = int64_t(blockIdx.x) * TO;
  const int64_t row_begin = int64_t(blockIdx.y) * chunk_rows;
  const int64_t row_end = row_begin + chunk_rows < n ? row_begin + chunk_rows : n;
  const int tiles = int((row_end - row_begin + kRows - 1) / kRows);
  const int wc = warp * S::WC;  // the warp's first column in the strip

  auto load_tile = [&](int tile, int stage) {
    const int64_t r0 = row_begin + int64_t(tile) * kRows;
    T* ds = dys + stage * (kRows * DS);
    constexpr int kPerRow = TO / 8;
    static_assert(kRows * kPerRow % kThreads == 0, "whole steps");
#pragma unroll
    for (int k = 0; k < kRows * kPerRow / kThreads; k++) {
      const int e = threadIdx.x + k * kThreads, i = e / kPerRow, c = e % kPerRow * 8;
      const int64_t row = r0 + i, col = col0 + c;
      const bool ok = row < row_end && col < outf;
      cp_async16(ds + i * DS + c, ok ? dy + row * outf + col : dy, ok);
    }
    T* us = uts + stage * (kRows * US);
    for (int e = threadIdx.x; e < kRows * (RP / 8); e += kThreads) {
      const int i = e / (RP / 8), q = e % (RP / 8) * 8;
      const int64_t row = r0 + i;
      const bool ok = row < row_end;
      cp_async16(us + i * US + q, ok ? u + row * RP + q : u, ok);
    }
  };

#pragma unroll
  for (int s = 0; s < kStages - 1; s++) {
    if (s < tiles) load_tile(s, s);
    cp_async_commit();
  }

  // B's fragments for the warp's columns: k = column 2ti, 2ti + 1 (+8 for the second register),
  // n = rank gi; zero past out and r.
  uint32_t bfr[MT][NT][2];
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const int64_t c = col0 + wc + mt * 16 + h * 8 + 2 * ti;
        const int q = j * 8 + gi;
        T lo = from_f32<T>(0.f), hi = lo;
        if (q < r) {
          if (c < outf) lo = B[c * r + q];
          if (c + 1 < outf) hi = B[(c + 1) * r + q];
        }
        bfr[mt][j][h] = pack2(lo, hi);
      }

  float dacc[MT][NT][4];
  float gacc[2][NT][4];
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) dacc[mt][j][e] = 0.f;

  for (int tile = 0; tile < tiles; tile++) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // the tile is in; every warp is done with the previous tile's stage and red
    {
      const int next = tile + kStages - 1;
      if (next < tiles) load_tile(next, next % kStages);
      cp_async_commit();
    }
    const T* ds = dys + (tile % kStages) * (kRows * DS);
    const T* us = uts + (tile % kStages) * (kRows * US);
#pragma unroll
    for (int rm = 0; rm < 2; rm++) {
#pragma unroll
      for (int j = 0; j < NT; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) gacc[rm][j][e] = 0.f;
      // u's rows rm·16.. as B operand of dB's product (K = rows, N = ranks).
      uint32_t bu[NT][2];
      if constexpr (NT == 1) {
        ldsm_x2_t(bu[0], us + (rm * 16 + lane % 16) * US);
      } else {
#pragma unroll
        for (int jj = 0; jj < NT / 2; jj++) {
          uint32_t v[4];
          ldsm_x4_t(v, us + (rm * 16 + lane % 16) * US + jj * 16 + 8 * (lane / 16));
          bu[2 * jj][0] = v[0];
          bu[2 * jj][1] = v[1];
          bu[2 * jj + 1][0] = v[2];
          bu[2 * jj + 1][1] = v[3];
        }
      }
#pragma unroll
      for (int mt = 0; mt < MT; mt++) {
        const T* p = ds + (rm * 16 + lane % 16) * DS + wc + mt * 16 + 8 * (lane / 16);
        uint32_t a[4], d[4];
        ldsm_x4(a, p);
        ldsm_x4_t(d, p);
#pragma unroll
        for (int j = 0; j < NT; j++) Mma<T>::run(gacc[rm][j], a[0], a[1], a[2], a[3], bfr[mt][j][0], bfr[mt][j][1]);
#pragma unroll
        for (int j = 0; j < NT; j++) Mma<T>::run(dacc[mt][j], d[0], d[2], d[1], d[3], bu[j][0], bu[j][1]);
      }
    }
    // This warp's share of the tile's g: rows rm·16 + gi (+8), ranks j·8 + 2ti (+1).
    float* rw = red + warp * (kRows * GS);
#pragma unroll
    for (int rm = 0; rm < 2; rm++)
#pragma unroll
      for (int j = 0; j < NT; j++) {
        *reinterpret_cast<float2*>(rw + (rm * 16 + gi) * GS + j * 8 + 2 * ti) = make_float2(gacc[rm][j][0], gacc[rm][j][1]);
        *reinterpret_cast<float2*>(rw + (rm * 16 + gi + 8) * GS + j * 8 + 2 * ti) = make_float2(gacc[rm][j][2], gacc[rm][j][3]);
      }
    __syncthreads();
    const int64_t r0 = row_begin + int64_t(tile) * kRows;
    static_assert(kRows * RP % kThreads == 0, "whole steps");
#pragma unroll
    for (int k = 0; k < kRows * RP / kThreads; k++) {
      const int e = threadIdx.x + k * kThreads, i = e / RP, q = e % RP;
      if (q < r && r0 + i < row_end) {
        float sum = 0.f;
#pragma unroll
        for (int w = 0; w < kWarps; w++) sum += red[w * (kRows * GS) + i * GS + q];
        gpart[(int64_t(blockIdx.x) * n + r0 + i) * r + q] = sum;
      }
    }
  }
  cp_async_wait<0>();

  // The chunk's dB over the warp's columns: column wc + mt·16 + gi (+8), ranks j·8 + 2ti (+1).
  float* dp = dbpart + int64_t(blockIdx.y) * outf * r;
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int j = 0; j < NT; j++) {
      const int64_t c = col0 + wc + mt * 16 + gi;
      const int q = j * 8 + 2 * ti;
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const int64_t cc = c + 8 * h;
        if (cc >= outf) continue;
        if (q < r) dp[cc * r + q] = dacc[mt][j][2 * h];
        if (q + 1 < r) dp[cc * r + q + 1] = dacc[mt][j][2 * h + 1];
      }
    }
}

// g[i] = s·Σ_strips gpart (rounded to T), dB[j] = s·Σ_chunks dbpart (in dB's dtype), each sum in
// index order.
template <class T>
__global__ void grad_reduce_kernel(const float* __restrict__ gpart, int strips, int64_t nr, T* __restrict__ g,
                                   const float* __restrict__ dbpart, int chunks, int64_t outr, void* __restrict__ dB,
                                   DType dbt, float scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < nr + outr; i += int64_t(gridDim.x) * blockDim.x) {
    if (i < nr) {
      float s = 0.f;
      for (int k = 0; k < strips; k++) s += gpart[k * nr + i];
      g[i] = from_f32<T>(scale * s);
    } else {
      const int64_t j = i - nr;
      float s = 0.f;
      for (int k = 0; k < chunks; k++) s += dbpart[k * outr + j];
      s *= scale;
      switch (dbt) {
        case DType::F32: static_cast<float*>(dB)[j] = s; break;
        case DType::F16: static_cast<__half*>(dB)[j] = __float2half_rn(s); break;
        default: static_cast<__nv_bfloat16*>(dB)[j] = __float2bfloat16_rn(s); break;
      }
    }
  }
}

// dst [n, rp] = src [n, r] with zero ranks appended.
template <class T>
__global__ void pad_ranks_kernel(const T* __restrict__ src, int r, T* __restrict__ dst, int rp, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n * rp; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / rp;
    const int q = int(i % rp);
    dst[i] = q < r ? src[row * r + q] : from_f32<T>(0.f);
  }
}

// LORAKIT_CUDA_GRAD=fused|gemm forces a path (tests, benchmarks); otherwise the kernel up to kAutoMaxRank.
int grad_mode() {
  static const int forced = [] {
    const char* e = std::getenv("LORAKIT_CUDA_GRAD");
    if (!e) return 0;
    const std::string v(e);
    return v == "fused" ? 1 : v == "gemm" ? 2 : 0;
  }();
  return forced;
}

template <class T, int NT>
void launch(const T* dy, const T* B, const void* u, int r, float scale, T* g, const TensorRef& dB, int64_t n,
            int64_t outf) {
  using S = Shape<NT>;
  static const int per_sm = [] {
    LK_CUDA(cudaFuncSetAttribute(grad_kernel<T, NT>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(S::kSmem)),
            "cudaFuncSetAttribute");
    int v = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v, grad_kernel<T, NT>, kThreads, S::kSmem) != cudaSuccess) {
      cudaGetLastError();
      v = 1;
    }
    return v < 1 ? 1 : v;
  }();
  // One wave: strips × chunks ≤ resident blocks, the rows split evenly over the chunks.
  const int64_t strips = (outf + S::TO - 1) / S::TO;
  const int64_t tiles = (n + kRows - 1) / kRows;
  int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(tiles, int64_t(sm_count()) * per_sm / strips));
  const int64_t chunk_rows = (tiles + chunks - 1) / chunks * kRows;
  chunks = (n + chunk_rows - 1) / chunk_rows;
  const cudaStream_t st = stream();
  // u with its rows padded to RP ranks (16-byte rows for cp.async), unless it already is.
  const bool pad = r != S::RP || reinterpret_cast<uintptr_t>(u) % 16 != 0;
  Buf upad(pad ? size_t(n) * S::RP * sizeof(T) : 0);
  const T* up = static_cast<const T*>(u);
  if (pad) {
    pad_ranks_kernel<T><<<blocks_for(n * S::RP, 256), 256, 0, st>>>(up, r, static_cast<T*>(upad.p), S::RP, n);
    LK_LAUNCHED("lora grad: pad u");
    up = static_cast<const T*>(upad.p);
  }
  Buf gp(size_t(strips) * size_t(n) * size_t(r) * 4), dp(size_t(chunks) * size_t(outf) * size_t(r) * 4);
  grad_kernel<T, NT><<<dim3(unsigned(strips), unsigned(chunks)), kThreads, S::kSmem, st>>>(dy, up, B, r, n, outf, chunk_rows,
                                                                                          gp.f(), dp.f());
  LK_LAUNCHED("lora grad");
  const int64_t nr = n * r, outr = outf * r;
  grad_reduce_kernel<T><<<blocks_for(nr + outr, 256), 256, 0, st>>>(gp.f(), int(strips), nr, g, dp.f(), int(chunks), outr,
                                                                   dB.data, dB.dtype, scale);
  LK_LAUNCHED("lora grad: reduce");
}

}  // namespace

bool lora_grad_fused(const TensorRef& dy, const void* B, const void* u, int64_t r, float scale, void* g,
                     const TensorRef& dB) {
  const int mode = grad_mode();
  if (mode == 2) return false;
  const DType dt = dy.dtype;
  if ((dt != DType::BF16 && dt != DType::F16) || r < 1 || r > kMaxRank) return false;
  if (mode == 0 && r > kAutoMaxRank) return false;
  if (dB.dtype != DType::F32 && dB.dtype != DType::F16 && dB.dtype != DType::BF16) return false;
  const int64_t outf = dB.dim(0);
  if (outf <= 0 || outf % 8 != 0 || reinterpret_cast<uintptr_t>(dy.data) % 16 != 0) return false;
  const int64_t n = dy.numel() / outf;
  if (n <= 0) return false;
  const int ri = int(r);
  auto go = [&](auto z) {
    using T = decltype(z);
    const T* d = static_cast<const T*>(dy.data);
    const T* b = static_cast<const T*>(B);
    T* gt = static_cast<T*>(g);
    if (ri <= 8) launch<T, 1>(d, b, u, ri, scale, gt, dB, n, outf);
    else if (ri <= 16) launch<T, 2>(d, b, u, ri, scale, gt, dB, n, outf);
    else if (ri <= 32) launch<T, 4>(d, b, u, ri, scale, gt, dB, n, outf);
    else launch<T, 8>(d, b, u, ri, scale, gt, dB, n, outf);
  };
  if (dt == DType::BF16) go(__nv_bfloat16{});
  else go(__half{});
  return true;
}

}  // namespace cuda
}  // namespace lorakit
