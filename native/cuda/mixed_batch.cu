// Mixed-adapter batches on cuda (peft's forward with adapter_names): the base GEMM over every row
// once (one pass over W, bias included), then for each adapter its rows are gathered, shrunk and
// expanded, and the result is added back into those rows. Each row belongs to one adapter, so the
// scatter-add is plain (no atomics) and deterministic. As in peft, the LoRA term is added to the
// base output already stored in y's dtype (16-bit outputs are rounded twice, like peft's).
#include <vector>
#include "common.cuh"
#include "ops.h"
#include "runtime.h"
#include "vec.cuh"

namespace lorakit {
namespace cuda {
namespace {

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

}  // namespace

void mixed_linear_forward(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fan_in_fan_out,
                          const std::vector<cpu::AdapterFactors>& adapters, const int32_t* row_adapter,
                          const TensorRef& y) {
  const int64_t in = fan_in_fan_out ? W.dim(0) : W.dim(1), outf = fan_in_fan_out ? W.dim(1) : W.dim(0);
  const int64_t n = in ? x.numel() / in : 0;
  linear_forward(x, W, bias, fan_in_fan_out, {}, y);
  if (n == 0 || adapters.empty()) return;
  // Rows of each adapter, in order (a stable counting sort), uploaded in one copy.
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
  const size_t idx_bytes = size_t(total) * sizeof(int32_t);
  int32_t* idx = static_cast<int32_t*>(alloc(idx_bytes, false));
  // Pageable host → device: cudaMemcpyAsync returns once `order` is staged, so it may go out of scope.
  cudaError_t ce = cudaMemcpyAsync(idx, order.data(), idx_bytes, cudaMemcpyHostToDevice, stream());
  if (ce != cudaSuccess) {
    cuda::free(idx, idx_bytes);
    fail(ce, "mixed batch: row index upload");
  }
  const size_t es = dtype_size(x.dtype);
  int64_t max_rows = 0, max_r = 0;
  for (size_t a = 0; a < adapters.size(); a++) {
    max_rows = std::max(max_rows, start[a + 1] - start[a]);
    max_r = std::max(max_r, adapters[a].A.dim(0));
  }
  const size_t xg_bytes = size_t(max_rows * in) * es, u_bytes = size_t(max_rows * max_r) * es,
               z_bytes = size_t(max_rows * outf) * es;
  char* xg = static_cast<char*>(alloc(xg_bytes, false));
  char* ub = static_cast<char*>(alloc(u_bytes, false));
  char* zb = static_cast<char*>(alloc(z_bytes, false));
  auto release = [&] {
    cuda::free(idx, idx_bytes);
    cuda::free(xg, xg_bytes);
    cuda::free(ub, u_bytes);
    cuda::free(zb, z_bytes);
  };
  try {
    for (size_t a = 0; a < adapters.size(); a++) {
      const int64_t ng = start[a + 1] - start[a];
      if (ng == 0) continue;
      const int32_t* rows = idx + start[a];
      const int64_t row_bytes = in * int64_t(es);
      const bool vec16 = row_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(x.data) % 16 == 0;
      gather_rows_kernel<<<dim3(col_blocks(vec16 ? row_bytes / 16 : row_bytes, 256), row_blocks(ng)), 256, 0, stream()>>>(
          static_cast<const char*>(x.data), xg, rows, ng, row_bytes, vec16);
      LK_LAUNCHED("mixed batch: gather");
      const int64_t r = adapters[a].A.dim(0);
      TensorRef xr{xg, x.dtype, {ng, in}}, ur{ub, x.dtype, {ng, r}}, zr{zb, x.dtype, {ng, outf}};
      lora_shrink(xr, adapters[a].A, ur);
      lora_expand(ur, adapters[a].B, adapters[a].scale, zr);
      dispatch_float(y.dtype, "y", [&](auto z) {
        using T = decltype(z);
        const bool vec8 = outf % 8 == 0 && reinterpret_cast<uintptr_t>(y.data) % 32 == 0;
        scatter_add_rows_kernel<T><<<dim3(col_blocks(vec8 ? outf / 8 : outf, 256), row_blocks(ng)), 256, 0, stream()>>>(
            y.as<T>(), reinterpret_cast<const T*>(zb), rows, ng, outf, vec8);
      });
      LK_LAUNCHED("mixed batch: scatter-add");
    }
  } catch (...) {
    release();
    throw;
  }
  release();  // stream-ordered: later users of these blocks run after this batch's kernels
}

}  // namespace cuda
}  // namespace lorakit
