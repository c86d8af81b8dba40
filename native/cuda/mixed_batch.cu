// Mixed-adapter batches on cuda (peft's forward with adapter_names): the base GEMM over every row
// once (one pass over W, bias included), then the LoRA terms. Rows are grouped per adapter on the
// host (a stable counting sort). Two ways to add the terms, both deterministic (each row belongs to
// one adapter, so every output has one writer and no atomics are needed):
// - segmented (up to 2048 rows with adapters): two launches whatever the number of adapters, as
//   punica/S-LoRA serve many adapters. Rows are cut into tiles of up to 16 rows of one adapter; the shrink kernel
//   computes u = x·Aᵀ per tile (A read once per tile, K split over blocks when there are few
//   tiles; the partial sums are added in split order), the expand kernel adds s·u·Bᵀ into those
//   rows of y, rounding once. u stays in f32.
// - per adapter (larger batches): gather the adapter's rows, shrink and expand with cuBLASLt on
//   tensor cores, scatter-add back: four launches per adapter.
// As in peft, the LoRA term is added to the base output already stored in y's dtype.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#include "common.cuh"
#include "device_buffer.h"
#include "ops.h"
#include "runtime.h"
#include "vec.cuh"

namespace lorakit {
namespace cuda {
namespace {

constexpr int kTileRows = 16;  // rows of one adapter per tile
constexpr int kThreads = 256;
constexpr int kKC = 128;       // shrink: K chunk staged in shared memory
constexpr int kQC = 64;        // ranks per pass (larger ranks loop)
constexpr int kOutPerThread = kTileRows * kQC / kThreads;

struct MixTerm {
  const void* A;  // [r, in], in y's dtype
  const void* B;  // [out, r], in y's dtype
  int r;
  float scale;
};
struct MixTile {
  int32_t term, begin, count;  // rows order[begin, begin + count) use terms[term]
};

// Partial u over one K range (blockIdx.y): u_part[(begin + i)·ldu + q] = Σ_k x[order[begin + i], k]·A[q, k].
// Vec: 16-bit or f32 rows whose length is a multiple of 8, loaded 8 elements at a time.
template <class T, bool Vec>
__global__ void __launch_bounds__(kThreads) shrink_tiles_kernel(const T* __restrict__ x, int64_t in, const MixTerm* __restrict__ terms,
                                                                const MixTile* __restrict__ tiles, const int32_t* __restrict__ order,
                                                                float* __restrict__ u_parts, int64_t part_stride, int64_t ldu,
                                                                int64_t k_per) {
  __shared__ float xs[kTileRows][kKC];
  __shared__ float as[kQC][kKC + 1];  // +1: the threads of a warp read different q at one k
  const MixTile tile = tiles[blockIdx.x];
  const MixTerm tm = terms[tile.term];
  const T* A = static_cast<const T*>(tm.A);
  const int64_t kb = int64_t(blockIdx.y) * k_per, ke = min(in, kb + k_per);
  float* u = u_parts + int64_t(blockIdx.y) * part_stride;
  for (int q0 = 0; q0 < tm.r; q0 += kQC) {
    const int qn = min(kQC, tm.r - q0);
    float acc[kOutPerThread] = {};
    for (int64_t k0 = kb; k0 < ke; k0 += kKC) {
      if (Vec) {
        for (int g = threadIdx.x; g < kTileRows * kKC / 8; g += kThreads) {
          const int i = g / (kKC / 8), kk = g % (kKC / 8) * 8;
          float v[8] = {};
          if (i < tile.count && k0 + kk < ke) load8(x + int64_t(order[tile.begin + i]) * in + k0 + kk, v);
#pragma unroll
          for (int e = 0; e < 8; e++) xs[i][kk + e] = v[e];
        }
        for (int g = threadIdx.x; g < qn * kKC / 8; g += kThreads) {
          const int q = g / (kKC / 8), kk = g % (kKC / 8) * 8;
          float v[8] = {};
          if (k0 + kk < ke) load8(A + int64_t(q0 + q) * in + k0 + kk, v);
#pragma unroll
          for (int e = 0; e < 8; e++) as[q][kk + e] = v[e];
        }
      } else {
        for (int e = threadIdx.x; e < kTileRows * kKC; e += kThreads) {
          const int i = e / kKC, kk = e % kKC;
          xs[i][kk] = (i < tile.count && k0 + kk < ke) ? to_f32<T>(x[int64_t(order[tile.begin + i]) * in + k0 + kk]) : 0.f;
        }
        for (int e = threadIdx.x; e < qn * kKC; e += kThreads) {
          const int q = e / kKC, kk = e % kKC;
          as[q][kk] = k0 + kk < ke ? to_f32<T>(A[int64_t(q0 + q) * in + k0 + kk]) : 0.f;
        }
      }
      __syncthreads();
      // Outputs (i, q) = (o / qn, o % qn): a warp covers few rows and consecutive q (no bank
      // conflicts on as, broadcasts on xs), and no thread works on q >= qn.
#pragma unroll
      for (int s = 0; s < kOutPerThread; s++) {
        const int o = threadIdx.x + s * kThreads, i = o / qn, q = o % qn;
        if (i >= kTileRows) break;
        float v = acc[s];
#pragma unroll 16
        for (int kk = 0; kk < kKC; kk++) v = fmaf(xs[i][kk], as[q][kk], v);
        acc[s] = v;
      }
      __syncthreads();
    }
#pragma unroll
    for (int s = 0; s < kOutPerThread; s++) {
      const int o = threadIdx.x + s * kThreads, i = o / qn, q = o % qn;
      if (i < tile.count) u[int64_t(tile.begin + i) * ldu + q0 + q] = acc[s];
    }
  }
}

// y[order[begin + i], j] += scale·Σ_q u[begin + i, q]·B[j, q] for the tile's rows, u being the sum
// of the K-split partials in split order; one column j per thread (consecutive threads write
// consecutive columns of a row). Vec: r % 8 == 0, B's rows read 8 values at a time.
template <class T, bool Vec>
__global__ void __launch_bounds__(kThreads) expand_tiles_kernel(T* __restrict__ y, int64_t outf, const MixTerm* __restrict__ terms,
                                                                const MixTile* __restrict__ tiles, const int32_t* __restrict__ order,
                                                                const float* __restrict__ u_parts, int64_t part_stride, int splits,
                                                                int64_t ldu) {
  __shared__ float us[kTileRows][kQC];
  const MixTile tile = tiles[blockIdx.x];
  const MixTerm tm = terms[tile.term];
  const T* B = static_cast<const T*>(tm.B);
  const int64_t j = int64_t(blockIdx.y) * kThreads + threadIdx.x;
  float acc[kTileRows] = {};
  for (int q0 = 0; q0 < tm.r; q0 += kQC) {
    const int qn = min(kQC, tm.r - q0);
    __syncthreads();
    for (int e = threadIdx.x; e < kTileRows * kQC; e += kThreads) {
      const int i = e / kQC, q = e % kQC;
      float v = 0.f;
      if (i < tile.count && q < qn)
        for (int s = 0; s < splits; s++) v += u_parts[int64_t(s) * part_stride + int64_t(tile.begin + i) * ldu + q0 + q];
      us[i][q] = v;
    }
    __syncthreads();
    if (j >= outf) continue;
    if (Vec) {
      for (int q = 0; q < qn; q += 8) {
        float b[8];
        load8(B + j * tm.r + q0 + q, b);
#pragma unroll
        for (int e = 0; e < 8; e++)
#pragma unroll
          for (int i = 0; i < kTileRows; i++) acc[i] = fmaf(us[i][q + e], b[e], acc[i]);
      }
    } else {
      for (int q = 0; q < qn; q++) {
        const float b = to_f32<T>(B[j * tm.r + q0 + q]);
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

// dst[i, :] = src[rows[i], :], rows of `bytes` bytes (16-byte steps when every row allows it).
__global__ void gather_rows_kernel(const char* src, char* dst, const int32_t* rows, int64_t n, int64_t bytes, bool vec16) {
  for (int64_t i = blockIdx.y; i < n; i += gridDim.y) {
    const char* s = src + int64_t(rows[i]) * bytes;
    char* d = dst + i * bytes;
    if (vec16) {
      for (int64_t b = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * 16; b < bytes; b += int64_t(gridDim.x) * blockDim.x * 16)
        *reinterpret_cast<uint4*>(d + b) = *reinterpret_cast<const uint4*>(s + b);
    } else {
      for (int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; b < bytes; b += int64_t(gridDim.x) * blockDim.x) d[b] = s[b];
    }
  }
}

// y[rows[i], :] += z[i, :] in f32, rounded once into y's dtype; 8 elements per step when rows are
// 16-byte aligned (vec8).
template <class T>
__global__ void scatter_add_rows_kernel(T* y, const T* z, const int32_t* rows, int64_t n, int64_t cols, bool vec8) {
  for (int64_t i = blockIdx.y; i < n; i += gridDim.y) {
    T* yr = y + int64_t(rows[i]) * cols;
    const T* zr = z + i * cols;
    const int64_t step = int64_t(gridDim.x) * blockDim.x, first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (vec8) {
      for (int64_t j = first * 8; j < cols; j += step * 8) {
        float a[8], b[8];
        load8(yr + j, a);
        load8(zr + j, b);
#pragma unroll
        for (int e = 0; e < 8; e++) a[e] += b[e];
        store8(yr + j, a);
      }
    } else {
      for (int64_t j = first; j < cols; j += step) yr[j] = from_f32<T>(to_f32<T>(yr[j]) + to_f32<T>(zr[j]));
    }
  }
}

unsigned row_blocks(int64_t n) { return static_cast<unsigned>(n < 65535 ? n : 65535); }

unsigned col_blocks(int64_t work, int threads) {
  int64_t b = (work + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : b > 1024 ? 1024 : b);
}

// Bytes rounded up to 16 so the parts of one upload stay aligned.
size_t align16(size_t b) { return (b + 15) / 16 * 16; }

// Measured on the H200 (bench/results/gpu-mixed-2026-11-28.txt, 4 adapters, r 16): the segmented
// kernels take 46/60 µs at 16/512 rows where the per-adapter path takes 125/128 µs, but they run on
// CUDA cores, and at 4096 rows the per-adapter path's tensor-core GEMMs win (308 against 397 µs).
constexpr int64_t kSegmentedMaxRows = 2048;

// LORAKIT_CUDA_MIXED=segmented|per-adapter forces a path (benchmarks, tests); otherwise by rows.
bool use_segmented(int64_t rows) {
  static const int forced = [] {
    const char* e = std::getenv("LORAKIT_CUDA_MIXED");
    if (!e) return 0;
    const std::string v(e);
    return v == "segmented" ? 1 : v == "per-adapter" ? 2 : 0;
  }();
  return forced ? forced == 1 : rows <= kSegmentedMaxRows;
}

// Rows of each adapter in order: order[start[a], start[a + 1]) are adapter a's rows.
struct RowGroups {
  std::vector<int64_t> start;
  std::vector<int32_t> order;
};

RowGroups group_rows(const int32_t* row_adapter, int64_t n, size_t adapters) {
  RowGroups g;
  g.start.assign(adapters + 1, 0);
  for (int64_t i = 0; i < n; i++)
    if (row_adapter[i] >= 0) g.start[row_adapter[i] + 1]++;
  for (size_t a = 0; a < adapters; a++) g.start[a + 1] += g.start[a];
  g.order.resize(g.start.back());
  std::vector<int64_t> fill(g.start.begin(), g.start.end() - 1);
  for (int64_t i = 0; i < n; i++)
    if (row_adapter[i] >= 0) g.order[fill[row_adapter[i]]++] = static_cast<int32_t>(i);
  return g;
}

void segmented(const TensorRef& x, int64_t in, int64_t outf, const std::vector<AdapterFactors>& adapters,
               const RowGroups& g, const TensorRef& y) {
  const int64_t total = g.start.back();
  std::vector<Buf> hold;  // factors converted to y's dtype, where they differ
  std::vector<MixTerm> terms(adapters.size());
  std::vector<MixTile> tiles;
  int64_t max_r = 0;
  bool r8 = true;
  for (size_t a = 0; a < adapters.size(); a++) {
    const auto& f = adapters[a];
    const int r = int(f.A.dim(0));
    terms[a] = {in_dtype(f.A, y.dtype, hold), in_dtype(f.B, y.dtype, hold), r, f.scale};
    if (g.start[a + 1] > g.start[a]) {
      max_r = std::max<int64_t>(max_r, r);
      r8 = r8 && r % 8 == 0;
    }
    for (int64_t b = g.start[a]; b < g.start[a + 1]; b += kTileRows)
      tiles.push_back({int32_t(a), int32_t(b), int32_t(std::min<int64_t>(kTileRows, g.start[a + 1] - b))});
  }
  if (tiles.size() > 0x7fffffffu) throw_range("x: too many rows for a mixed batch");
  const unsigned col_blocks = unsigned((outf + kThreads - 1) / kThreads);
  if (col_blocks > 65535) throw_range("mixed batch: out_features above 16776960");
  // K split: enough blocks for two per SM when there are few tiles; the partials are summed in order.
  const int64_t chunks = (in + kKC - 1) / kKC;
  int64_t splits = std::min<int64_t>(chunks, std::max<int64_t>(1, (2 * sm_count() + int64_t(tiles.size()) - 1) / int64_t(tiles.size())));
  const int64_t k_per = (chunks + splits - 1) / splits * kKC;
  splits = (in + k_per - 1) / k_per;
  // One upload: terms, tiles, order.
  const size_t terms_bytes = align16(terms.size() * sizeof(MixTerm)), tiles_bytes = align16(tiles.size() * sizeof(MixTile));
  const size_t order_bytes = size_t(total) * sizeof(int32_t);
  Buf meta(terms_bytes + tiles_bytes + order_bytes);
  std::vector<char> host(meta.n);
  std::memcpy(host.data(), terms.data(), terms.size() * sizeof(MixTerm));
  std::memcpy(host.data() + terms_bytes, tiles.data(), tiles.size() * sizeof(MixTile));
  std::memcpy(host.data() + terms_bytes + tiles_bytes, g.order.data(), order_bytes);
  const int64_t part_stride = total * max_r;
  Buf u(size_t(splits) * size_t(part_stride) * sizeof(float));
  // Pageable host → device: cudaMemcpyAsync returns once `host` is staged, so it may go out of scope.
  LK_CUDA(cudaMemcpyAsync(meta.p, host.data(), meta.n, cudaMemcpyHostToDevice, stream()), "mixed batch: upload");
  const char* base = static_cast<const char*>(meta.p);
  const auto* dterms = reinterpret_cast<const MixTerm*>(base);
  const auto* dtiles = reinterpret_cast<const MixTile*>(base + terms_bytes);
  const auto* dorder = reinterpret_cast<const int32_t*>(base + terms_bytes + tiles_bytes);
  const bool xvec = in % 8 == 0;
  dispatch_float(y.dtype, "y", [&](auto z) {
    using T = decltype(z);
    const dim3 sgrid(unsigned(tiles.size()), unsigned(splits));
    if (xvec)
      shrink_tiles_kernel<T, true><<<sgrid, kThreads, 0, stream()>>>(x.as<T>(), in, dterms, dtiles, dorder, u.f(), part_stride, max_r, k_per);
    else
      shrink_tiles_kernel<T, false><<<sgrid, kThreads, 0, stream()>>>(x.as<T>(), in, dterms, dtiles, dorder, u.f(), part_stride, max_r, k_per);
    LK_LAUNCHED("mixed batch: shrink");
    const dim3 egrid(unsigned(tiles.size()), col_blocks);
    if (r8)
      expand_tiles_kernel<T, true><<<egrid, kThreads, 0, stream()>>>(y.as<T>(), outf, dterms, dtiles, dorder, u.f(), part_stride, int(splits), max_r);
    else
      expand_tiles_kernel<T, false><<<egrid, kThreads, 0, stream()>>>(y.as<T>(), outf, dterms, dtiles, dorder, u.f(), part_stride, int(splits), max_r);
    LK_LAUNCHED("mixed batch: expand");
  });
  // meta, u and the converted factors go back to the allocator here: stream-ordered after the kernels.
}

void per_adapter(const TensorRef& x, int64_t in, int64_t outf, const std::vector<AdapterFactors>& adapters,
                 const RowGroups& g, const TensorRef& y) {
  const std::vector<int64_t>& start = g.start;
  Buf idx(size_t(start.back()) * sizeof(int32_t));
  // Pageable host → device: cudaMemcpyAsync returns once `order` is staged, so it may go out of scope.
  LK_CUDA(cudaMemcpyAsync(idx.p, g.order.data(), idx.n, cudaMemcpyHostToDevice, stream()), "mixed batch: row index upload");
  const size_t es = dtype_size(x.dtype);
  int64_t max_rows = 0, max_r = 0;
  for (size_t a = 0; a < adapters.size(); a++) {
    max_rows = std::max(max_rows, start[a + 1] - start[a]);
    max_r = std::max(max_r, adapters[a].A.dim(0));
  }
  Buf xg(size_t(max_rows * in) * es), ub(size_t(max_rows * max_r) * es), zb(size_t(max_rows * outf) * es);
  for (size_t a = 0; a < adapters.size(); a++) {
    const int64_t ng = start[a + 1] - start[a];
    if (ng == 0) continue;
    const int32_t* rows = static_cast<const int32_t*>(idx.p) + start[a];
    const int64_t row_bytes = in * int64_t(es);
    const bool vec16 = row_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(x.data) % 16 == 0;
    gather_rows_kernel<<<dim3(col_blocks(vec16 ? row_bytes / 16 : row_bytes, 256), row_blocks(ng)), 256, 0, stream()>>>(
        static_cast<const char*>(x.data), static_cast<char*>(xg.p), rows, ng, row_bytes, vec16);
    LK_LAUNCHED("mixed batch: gather");
    const int64_t r = adapters[a].A.dim(0);
    TensorRef xr{xg.p, x.dtype, {ng, in}}, ur{ub.p, x.dtype, {ng, r}}, zr{zb.p, x.dtype, {ng, outf}};
    lora_shrink(xr, adapters[a].A, ur);
    lora_expand(ur, adapters[a].B, adapters[a].scale, zr);
    dispatch_float(y.dtype, "y", [&](auto z) {
      using T = decltype(z);
      const bool vec8 = outf % 8 == 0 && reinterpret_cast<uintptr_t>(y.data) % 32 == 0;
      scatter_add_rows_kernel<T><<<dim3(col_blocks(vec8 ? outf / 8 : outf, 256), row_blocks(ng)), 256, 0, stream()>>>(
          y.as<T>(), static_cast<const T*>(zb.p), rows, ng, outf, vec8);
    });
    LK_LAUNCHED("mixed batch: scatter-add");
  }
  // The buffers go back to the allocator here: stream-ordered after this batch's kernels.
}

}  // namespace

void mixed_linear_forward(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fan_in_fan_out,
                          const std::vector<AdapterFactors>& adapters, const int32_t* row_adapter,
                          const TensorRef& y) {
  const int64_t in = fan_in_fan_out ? W.dim(0) : W.dim(1), outf = fan_in_fan_out ? W.dim(1) : W.dim(0);
  const int64_t n = in ? x.numel() / in : 0;
  if (x.dtype != y.dtype) throw_type(std::string("y: expected x's dtype ") + dtype_name(x.dtype) + ", got " + dtype_name(y.dtype));
  linear_forward(x, W, bias, fan_in_fan_out, {}, y);
  if (n == 0 || outf == 0 || adapters.empty()) return;
  const RowGroups g = group_rows(row_adapter, n, adapters.size());
  if (g.start.back() == 0) return;
  if (use_segmented(g.start.back())) segmented(x, in, outf, adapters, g, y);
  else per_adapter(x, in, outf, adapters, g, y);
}

}  // namespace cuda
}  // namespace lorakit
