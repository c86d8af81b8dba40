// Mixed-adapter batches on cuda (peft's forward with adapter_names): the base GEMM over every row
// once (one pass over W, bias included), then the LoRA terms of all adapters in two launches
// whatever the number of adapters (segmented shrink and expand, as punica/S-LoRA serve many
// adapters): rows are grouped per adapter on the host (a stable counting sort) and cut into tiles
// of up to 16 rows of one adapter; the shrink kernel computes u = x·Aᵀ for a tile with A read once
// per tile, the expand kernel adds s·u·Bᵀ into those rows of y. Each row belongs to one adapter,
// so every output is written by one thread: deterministic, no atomics. u stays in f32; the sum is
// added to the base output already stored in y's dtype and rounded once (peft adds its LoRA term to
// the rounded base output too).
#include <algorithm>
#include <cstring>
#include <vector>
#include "common.cuh"
#include "ops.h"
#include "runtime.h"

namespace lorakit {
namespace cuda {
namespace {

constexpr int kTileRows = 16;  // rows of one adapter per tile
constexpr int kThreads = 256;
constexpr int kKC = 128;       // shrink: K chunk staged in shared memory
constexpr int kQC = 64;        // ranks per pass (larger ranks loop)

struct MixTerm {
  const void* A;  // [r, in]
  const void* B;  // [out, r]
  int adt, bdt;
  int r;
  float scale;
};
struct MixTile {
  int32_t term, begin, count;  // rows order[begin, begin + count) use terms[term]
};

// u[(begin + i)·ldu + q] = Σ_k x[order[begin + i], k]·A[q, k] for the tile's rows and q < r.
template <class T>
__global__ void __launch_bounds__(kThreads) shrink_tiles_kernel(const T* __restrict__ x, int64_t in, const MixTerm* __restrict__ terms,
                                                                const MixTile* __restrict__ tiles, const int32_t* __restrict__ order,
                                                                float* __restrict__ u, int64_t ldu) {
  __shared__ float xs[kTileRows][kKC];
  __shared__ float as[kQC][kKC + 1];  // +1: the threads of a warp read different q at one k
  const MixTile tile = tiles[blockIdx.x];
  const MixTerm tm = terms[tile.term];
  for (int q0 = 0; q0 < tm.r; q0 += kQC) {
    const int qn = min(kQC, tm.r - q0);
    float acc[kTileRows * kQC / kThreads] = {};
    for (int64_t k0 = 0; k0 < in; k0 += kKC) {
      for (int e = threadIdx.x; e < kTileRows * kKC; e += kThreads) {
        const int i = e / kKC, kk = e % kKC;
        xs[i][kk] = (i < tile.count && k0 + kk < in) ? to_f32<T>(x[int64_t(order[tile.begin + i]) * in + k0 + kk]) : 0.f;
      }
      for (int e = threadIdx.x; e < kQC * kKC; e += kThreads) {
        const int q = e / kKC, kk = e % kKC;
        as[q][kk] = (q < qn && k0 + kk < in) ? load_as_f32(tm.A, DType(tm.adt), int64_t(q0 + q) * in + k0 + kk) : 0.f;
      }
      __syncthreads();
      // Outputs (i, q) = (o / qn, o % qn): a warp covers few rows and consecutive q (no bank
      // conflicts on as, broadcasts on xs), and no thread works on q ≥ qn.
#pragma unroll
      for (int s = 0; s < kTileRows * kQC / kThreads; s++) {
        const int o = threadIdx.x + s * kThreads, i = o / qn, q = o % qn;
        if (i >= kTileRows) break;
        float v = acc[s];
        for (int kk = 0; kk < kKC; kk++) v = fmaf(xs[i][kk], as[q][kk], v);
        acc[s] = v;
      }
      __syncthreads();
    }
#pragma unroll
    for (int s = 0; s < kTileRows * kQC / kThreads; s++) {
      const int o = threadIdx.x + s * kThreads, i = o / qn, q = o % qn;
      if (i < tile.count) u[int64_t(tile.begin + i) * ldu + q0 + q] = acc[s];
    }
  }
}

// y[order[begin + i], j] += scale·Σ_q u[begin + i, q]·B[j, q] for the tile's rows, one column j per
// thread (consecutive threads write consecutive columns of a row).
template <class T>
__global__ void __launch_bounds__(kThreads) expand_tiles_kernel(T* __restrict__ y, int64_t outf, const MixTerm* __restrict__ terms,
                                                                const MixTile* __restrict__ tiles, const int32_t* __restrict__ order,
                                                                const float* __restrict__ u, int64_t ldu) {
  __shared__ float us[kTileRows][kQC];
  const MixTile tile = tiles[blockIdx.x];
  const MixTerm tm = terms[tile.term];
  const int64_t j = int64_t(blockIdx.y) * kThreads + threadIdx.x;
  float acc[kTileRows] = {};
  for (int q0 = 0; q0 < tm.r; q0 += kQC) {
    const int qn = min(kQC, tm.r - q0);
    __syncthreads();
    for (int e = threadIdx.x; e < kTileRows * kQC; e += kThreads) {
      const int i = e / kQC, q = e % kQC;
      us[i][q] = (i < tile.count && q < qn) ? u[int64_t(tile.begin + i) * ldu + q0 + q] : 0.f;
    }
    __syncthreads();
    if (j < outf) {
      for (int q = 0; q < qn; q++) {
        const float b = load_as_f32(tm.B, DType(tm.bdt), j * tm.r + q0 + q);
#pragma unroll
        for (int i = 0; i < kTileRows; i++) acc[i] = fmaf(us[i][q], b, acc[i]);
      }
    }
  }
  if (j >= outf) return;
#pragma unroll
  for (int i = 0; i < kTileRows; i++) {
    if (i >= tile.count) break;
    T* p = y + int64_t(order[tile.begin + i]) * outf + j;
    *p = from_f32<T>(to_f32<T>(*p) + tm.scale * acc[i]);
  }
}

// Bytes rounded up to 16 so the parts of one upload stay aligned.
size_t align16(size_t b) { return (b + 15) / 16 * 16; }

}  // namespace

void mixed_linear_forward(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fan_in_fan_out,
                          const std::vector<cpu::AdapterFactors>& adapters, const int32_t* row_adapter,
                          const TensorRef& y) {
  const int64_t in = fan_in_fan_out ? W.dim(0) : W.dim(1), outf = fan_in_fan_out ? W.dim(1) : W.dim(0);
  const int64_t n = in ? x.numel() / in : 0;
  if (x.dtype != y.dtype) throw_type(std::string("y: expected x's dtype ") + dtype_name(x.dtype) + ", got " + dtype_name(y.dtype));
  linear_forward(x, W, bias, fan_in_fan_out, {}, y);
  if (n == 0 || outf == 0 || adapters.empty()) return;
  // Rows of each adapter, in order (a stable counting sort), then tiles of up to 16 rows.
  std::vector<int64_t> start(adapters.size() + 1, 0);
  for (int64_t i = 0; i < n; i++)
    if (row_adapter[i] >= 0) start[row_adapter[i] + 1]++;
  for (size_t a = 0; a < adapters.size(); a++) start[a + 1] += start[a];
  const int64_t total = start.back();
  if (total == 0) return;
  std::vector<int32_t> order(total);
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < n; i++)
      if (row_adapter[i] >= 0) order[fill[row_adapter[i]]++] = static_cast<int32_t>(i);
  }
  std::vector<MixTerm> terms(adapters.size());
  std::vector<MixTile> tiles;
  int64_t max_r = 0;
  for (size_t a = 0; a < adapters.size(); a++) {
    const auto& f = adapters[a];
    terms[a] = {f.A.data, f.B.data, int(f.A.dtype), int(f.B.dtype), int(f.A.dim(0)), f.scale};
    max_r = std::max(max_r, f.A.dim(0));
    for (int64_t b = start[a]; b < start[a + 1]; b += kTileRows)
      tiles.push_back({int32_t(a), int32_t(b), int32_t(std::min<int64_t>(kTileRows, start[a + 1] - b))});
  }
  if (tiles.size() > 0x7fffffffu) throw_range("x: too many rows for a mixed batch");
  // One upload: terms, tiles, order.
  const size_t terms_bytes = align16(terms.size() * sizeof(MixTerm)), tiles_bytes = align16(tiles.size() * sizeof(MixTile));
  const size_t order_bytes = size_t(total) * sizeof(int32_t), meta_bytes = terms_bytes + tiles_bytes + order_bytes;
  std::vector<char> host(meta_bytes);
  std::memcpy(host.data(), terms.data(), terms.size() * sizeof(MixTerm));
  std::memcpy(host.data() + terms_bytes, tiles.data(), tiles.size() * sizeof(MixTile));
  std::memcpy(host.data() + terms_bytes + tiles_bytes, order.data(), order_bytes);
  const size_t u_bytes = size_t(total) * size_t(max_r) * sizeof(float);
  char* meta = static_cast<char*>(alloc(meta_bytes, false));
  float* u = nullptr;
  auto release = [&] {
    cuda::free(meta, meta_bytes);
    if (u) cuda::free(u, u_bytes);
  };
  try {
    u = static_cast<float*>(alloc(u_bytes, false));
    // Pageable host → device: cudaMemcpyAsync returns once `host` is staged, so it may go out of scope.
    LK_CUDA(cudaMemcpyAsync(meta, host.data(), meta_bytes, cudaMemcpyHostToDevice, stream()), "mixed batch: upload");
    const auto* dterms = reinterpret_cast<const MixTerm*>(meta);
    const auto* dtiles = reinterpret_cast<const MixTile*>(meta + terms_bytes);
    const auto* dorder = reinterpret_cast<const int32_t*>(meta + terms_bytes + tiles_bytes);
    const unsigned col_blocks = unsigned((outf + kThreads - 1) / kThreads);
    if (col_blocks > 65535) throw_range("mixed batch: out_features above 16776960");
    dispatch_float(y.dtype, "y", [&](auto z) {
      using T = decltype(z);
      shrink_tiles_kernel<T><<<unsigned(tiles.size()), kThreads, 0, stream()>>>(x.as<T>(), in, dterms, dtiles, dorder, u, max_r);
      LK_LAUNCHED("mixed batch: shrink");
      expand_tiles_kernel<T><<<dim3(unsigned(tiles.size()), col_blocks), kThreads, 0, stream()>>>(y.as<T>(), outf, dterms, dtiles,
                                                                                                dorder, u, max_r);
      LK_LAUNCHED("mixed batch: expand");
    });
  } catch (...) {
    release();
    throw;
  }
  release();  // stream-ordered: later users of these blocks run after this batch's kernels
}

}  // namespace cuda
}  // namespace lorakit
