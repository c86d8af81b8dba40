// LoraEmbedding on cuda (peft's lora.Embedding): y = W[idx] + Σ s·Aᵀ[idx]·Bᵀ, and the backward
// dB = s·dyᵀ·Aᵀ[idx], dAᵀ[i] = Σ_{p: idx[p] = i} s·dy[p]·B. Indices stay on the host (they are
// checked there and the backward groups them by value); each call uploads them once. The dA sum
// runs per embedding row over its positions in order (a host counting sort), with no atomics, so
// repeated runs give identical bits, as on the cpu.
#include <algorithm>
#include <vector>
#include "common.cuh"
#include "ops.h"
#include "runtime.h"

namespace lorakit {
namespace cuda {
namespace {

struct EmbTerm {
  const void* A;  // [r, num]
  const void* B;  // [dim, r]
  DType adt, bdt;
  int r;
  float scale;
};

// One thread per output element: W's row plus every adapter that applies to this position, in
// f32, rounded once.
template <class T>
__global__ void embedding_forward_kernel(const int64_t* __restrict__ idx, const int32_t* __restrict__ row_adapter,
                                         const T* __restrict__ W, const EmbTerm* __restrict__ terms, int nterms,
                                         int64_t n, int64_t num, int64_t dim, T* __restrict__ y) {
  for (int64_t p = blockIdx.y; p < n; p += gridDim.y) {
    const int64_t row = idx[p];
    const int ra = row_adapter ? row_adapter[p] : -2;
    for (int64_t d = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; d < dim; d += int64_t(gridDim.x) * blockDim.x) {
      float acc = to_f32<T>(W[row * dim + d]);
      for (int t = 0; t < nterms; t++) {
        if (ra != -2 && ra != t) continue;
        const EmbTerm tm = terms[t];
        float s = 0.f;
        for (int k = 0; k < tm.r; k++) s = fmaf(load_as_f32(tm.A, tm.adt, int64_t(k) * num + row), load_as_f32(tm.B, tm.bdt, d * tm.r + k), s);
        acc = fmaf(tm.scale, s, acc);
      }
      y[p * dim + d] = from_f32<T>(acc);
    }
  }
}

// U[p, k] = A[k, idx[p]] in dtype U.
template <class U>
__global__ void gather_columns_kernel(const int64_t* __restrict__ idx, const void* A, DType adt, int64_t num, int r,
                                      int64_t n, U* __restrict__ out) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n * r; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = e / r, k = e % r;
    out[e] = from_f32<U>(load_as_f32(A, adt, k * num + idx[p]));
  }
}

// dA[k, i] = Σ_{q in [start[i], start[i+1])} g[order[q], k], in order, in f64 (as the cpu), zero for
// padding_idx and for rows no position used.
template <class D>
__global__ void segment_sum_kernel(const float* __restrict__ g, const int64_t* __restrict__ order,
                                   const int64_t* __restrict__ start, int64_t num, int r, int64_t padding_idx,
                                   D* __restrict__ dA) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < num * r; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = e / num, i = e % num;
    double acc = 0.0;
    if (i != padding_idx)
      for (int64_t q = start[i]; q < start[i + 1]; q++) acc += g[order[q] * r + k];
    dA[k * num + i] = from_f32<D>(static_cast<float>(acc));
  }
}

std::vector<int64_t> host_indices(const TensorRef& idx) {
  const int64_t n = idx.numel();
  std::vector<int64_t> v(n);
  for (int64_t p = 0; p < n; p++) v[p] = index_at(idx, p);
  return v;
}

// A device buffer released at scope exit (stream-ordered reuse through the caching allocator).
struct Buf {
  void* p = nullptr;
  size_t n = 0;
  explicit Buf(size_t bytes) : p(bytes ? alloc(bytes, false) : nullptr), n(bytes) {}
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  ~Buf() {
    if (p) cuda::free(p, n);
  }
  template <class T> T* as() const { return static_cast<T*>(p); }
};

// Pageable host → device: cudaMemcpyAsync returns once the host data is staged.
void upload(void* dst, const void* src, size_t bytes) {
  if (bytes) LK_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream()), "embedding: upload");
}

unsigned grid1(int64_t work) { return blocks_for(work, 256); }

}  // namespace

void embedding_forward(const TensorRef& idx, const TensorRef& W, const std::vector<AdapterFactors>& adapters,
                       const int32_t* row_adapter, const TensorRef& y) {
  const int64_t num = W.dim(0), dim = W.dim(1), n = idx.numel();
  if (n == 0 || dim == 0) return;
  if (y.dtype != W.dtype) throw_type("y: on cuda, expected the weight's dtype " + std::string(dtype_name(W.dtype)));
  std::vector<int64_t> hidx = host_indices(idx);
  std::vector<EmbTerm> terms;
  for (const auto& a : adapters)
    terms.push_back({a.A.data, a.B.data, a.A.dtype, a.B.dtype, static_cast<int>(a.A.dim(0)), a.scale});
  Buf didx(n * sizeof(int64_t)), dterms(terms.size() * sizeof(EmbTerm)), drows(row_adapter ? n * sizeof(int32_t) : 0);
  upload(didx.p, hidx.data(), didx.n);
  upload(dterms.p, terms.data(), dterms.n);
  if (row_adapter) upload(drows.p, row_adapter, drows.n);
  const dim3 grid(blocks_for(dim, 256, 1024), static_cast<unsigned>(std::min<int64_t>(n, 65535)));
  dispatch_float(W.dtype, "weight", [&](auto z) {
    using T = decltype(z);
    embedding_forward_kernel<T><<<grid, 256, 0, stream()>>>(didx.as<int64_t>(), drows.as<int32_t>(), W.as<T>(),
                                                            dterms.as<EmbTerm>(), static_cast<int>(terms.size()), n, num,
                                                            dim, y.as<T>());
  });
  LK_LAUNCHED("embedding forward");
}

void embedding_backward(const TensorRef& idx, const TensorRef& dy, const TensorRef& A, const TensorRef& B, float scale,
                        int64_t padding_idx, const TensorRef* dA, const TensorRef* dB) {
  const int64_t r = A.dim(0), num = A.dim(1), dim = B.dim(0), n = idx.numel();
  const DType dt = dy.dtype;
  if (n == 0) {  // no positions: zero gradients
    if (dA) LK_CUDA(cudaMemsetAsync(dA->data, 0, dA->numel() * dtype_size(dA->dtype), stream()), "memset");
    if (dB) LK_CUDA(cudaMemsetAsync(dB->data, 0, dB->numel() * dtype_size(dB->dtype), stream()), "memset");
    return;
  }
  std::vector<int64_t> hidx = host_indices(idx);
  Buf didx(n * sizeof(int64_t));
  upload(didx.p, hidx.data(), didx.n);
  if (dB) {  // U = Aᵀ[idx] in dy's dtype, then dB = scale·dyᵀ·U
    Buf u(n * r * dtype_size(dt));
    dispatch_float(dt, "dy", [&](auto z) {
      using U = decltype(z);
      gather_columns_kernel<U><<<grid1(n * r), 256, 0, stream()>>>(didx.as<int64_t>(), A.data, A.dtype, num,
                                                                  static_cast<int>(r), n, u.as<U>());
    });
    LK_LAUNCHED("embedding backward: gather");
    const bool direct = dB->dtype == dt || dB->dtype == DType::F32;
    Buf f32(direct ? 0 : dim * r * sizeof(float));
    gemm_rm(dim, r, n, dy.data, dim, true, u.p, r, false, direct ? dB->data : f32.p, r, dt, direct ? dB->dtype : DType::F32, scale);
    if (!direct) convert(f32.p, DType::F32, dB->data, dB->dtype, dim * r);
  }
  if (!dA) return;
  // g = scale·dy·B [n, r] in f32 (B in dy's dtype as the GEMM operand)
  Buf bconv(B.dtype == dt ? 0 : B.numel() * dtype_size(dt));
  if (bconv.p) convert(B.data, B.dtype, bconv.p, dt, B.numel());
  Buf g(n * r * sizeof(float));
  gemm_rm(n, r, dim, dy.data, dim, false, bconv.p ? bconv.p : B.data, r, false, g.p, r, dt, DType::F32, scale);
  // Positions grouped by index (stable counting sort on the host).
  std::vector<int64_t> start(num + 1, 0), order(n);
  for (int64_t p = 0; p < n; p++) start[hidx[p] + 1]++;
  for (int64_t i = 0; i < num; i++) start[i + 1] += start[i];
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t p = 0; p < n; p++) order[fill[hidx[p]]++] = p;
  }
  Buf dorder(n * sizeof(int64_t)), dstart((num + 1) * sizeof(int64_t));
  upload(dorder.p, order.data(), dorder.n);
  upload(dstart.p, start.data(), dstart.n);
  dispatch_float(dA->dtype, "dA", [&](auto z) {
    using D = decltype(z);
    segment_sum_kernel<D><<<grid1(num * r), 256, 0, stream()>>>(g.as<float>(), dorder.as<int64_t>(), dstart.as<int64_t>(),
                                                               num, static_cast<int>(r), padding_idx, dA->as<D>());
  });
  LK_LAUNCHED("embedding backward: dA");
}

}  // namespace cuda
}  // namespace lorakit
