// Decode forward (n ≤ 16 rows): y = x·Wᵀ + bias + Σ scale·u·Bᵀ in one kernel that streams W once
// with 16-byte loads. Each warp owns 4 output features, each block 32; the block stages x in
// shared memory one 512-wide K chunk at a time, so x is read from L2 once per block, not per warp.
// The rank-r LoRA term and the bias are added in the epilogue, so y is written exactly once.
// When there are too few feature groups to fill the GPU, K is split over blocks (SplitK in decode_common.cuh); 16-bit weights go to the tensor-core kernel of decode_tc.cu.
#include <map>
#include <mutex>
#include <cstdlib>
#include <type_traits>
#include "common.cuh"
#include "ops.h"
#include "runtime.h"
#include "decode_common.cuh"
#include "graph_replay.h"
#include "vec.cuh"

namespace lorakit {
namespace cuda {
namespace {

constexpr int kWarps = 8, kRowsPerWarp = 4, kKC = 512;

template <class T, int NR>
__global__ void __launch_bounds__(kWarps * 32) decode_kernel(const T* __restrict__ x, const T* __restrict__ W,
                                                             const void* bias, DType bias_dt, T* __restrict__ y, int n,
                                                             int64_t in, int64_t outf, DecodeTerms terms, SplitK sk) {
  __shared__ __align__(16) T xs[NR][kKC];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t j0 = (int64_t(blockIdx.x) * kWarps + warp) * kRowsPerWarp;
  const int64_t kb = int64_t(blockIdx.y) * sk.k_per, ke = kb + sk.k_per < in ? kb + sk.k_per : in;
  float acc[kRowsPerWarp][NR];
#pragma unroll
  for (int a = 0; a < kRowsPerWarp; a++)
#pragma unroll
    for (int i = 0; i < NR; i++) acc[a][i] = 0.f;
  const bool vec = in % 8 == 0;
  for (int64_t k0 = kb; k0 < ke; k0 += kKC) {
    const int kc = static_cast<int>(ke - k0 < kKC ? ke - k0 : kKC);
    // 16-bit W: the whole chunk's loads (2 steps × 4 features × 16 bytes per lane) go out before
    // x is staged and before any use, so more of W is in flight per warp.
    constexpr bool kRaw = sizeof(T) == 2;
    constexpr int kSteps = kKC / 256;
    uint4 raw[kSteps][kRowsPerWarp];
    if constexpr (kRaw) {
      if (vec) {
#pragma unroll
        for (int s = 0; s < kSteps; s++) {
          const int k = s * 256 + lane * 8;
#pragma unroll
          for (int a = 0; a < kRowsPerWarp; a++)
            raw[s][a] = k < kc && j0 + a < outf ? __ldg(reinterpret_cast<const uint4*>(W + (j0 + a) * in + k0 + k))
                                                : make_uint4(0, 0, 0, 0);
        }
      }
    }
    if (vec) {  // 16-byte loads of x (kc is a multiple of 8 here)
      constexpr int kPer = 16 / sizeof(T), kVecs = NR * kKC / kPer;
#pragma unroll
      for (int e0 = 0; e0 < kVecs; e0 += kWarps * 32) {
        const int e = e0 + threadIdx.x;
        if (kVecs % (kWarps * 32) != 0 && e >= kVecs) break;
        const int i = e / (kKC / kPer), k = (e % (kKC / kPer)) * kPer;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (i < n && k < kc) v = __ldg(reinterpret_cast<const uint4*>(x + int64_t(i) * in + k0 + k));
        *reinterpret_cast<uint4*>(&xs[i][k]) = v;
      }
    } else {
      for (int e = threadIdx.x; e < NR * kKC; e += kWarps * 32) {
        int i = e / kKC, k = e % kKC;
        xs[i][k] = (i < n && k < kc) ? x[int64_t(i) * in + k0 + k] : from_f32<T>(0.f);
      }
    }
    __syncthreads();
    if (vec) {
#pragma unroll
      for (int s = 0; s < kSteps; s++) {
        const int k = s * 256 + lane * 8;
        if (k >= kc) break;
        float w[kRowsPerWarp][8];
#pragma unroll
        for (int a = 0; a < kRowsPerWarp; a++) {
          if constexpr (kRaw) {
            using P2 = typename Pair<T>::type;
            const P2* h = reinterpret_cast<const P2*>(&raw[s][a]);
#pragma unroll
            for (int q = 0; q < 4; q++) {
              float2 f = h2_to_float2<P2>(h[q]);
              w[a][2 * q] = f.x;
              w[a][2 * q + 1] = f.y;
            }
          } else if (j0 + a < outf) {
            load8(W + (j0 + a) * in + k0 + k, w[a]);
          } else {
#pragma unroll
            for (int q = 0; q < 8; q++) w[a][q] = 0.f;
          }
        }
#pragma unroll
        for (int i = 0; i < NR; i++) {
          if (i >= n) break;
          float xv[8];
          load8_shared(&xs[i][k], xv);
#pragma unroll
          for (int a = 0; a < kRowsPerWarp; a++)
#pragma unroll
            for (int q = 0; q < 8; q++) acc[a][i] = fmaf(w[a][q], xv[q], acc[a][i]);
        }
      }
    } else {
      for (int k = lane; k < kc; k += 32) {
#pragma unroll
        for (int a = 0; a < kRowsPerWarp; a++) {
          float wv = j0 + a < outf ? to_f32<T>(W[(j0 + a) * in + k0 + k]) : 0.f;
#pragma unroll
          for (int i = 0; i < NR; i++) acc[a][i] = fmaf(wv, to_f32<T>(xs[i][k]), acc[a][i]);
        }
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int a = 0; a < kRowsPerWarp; a++)
#pragma unroll
    for (int i = 0; i < NR; i++)
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) acc[a][i] += __shfl_xor_sync(0xffffffffu, acc[a][i], off);
  // Lane l holds row l of x for the warp's 4 output features.
  float v[kRowsPerWarp];
#pragma unroll
  for (int a = 0; a < kRowsPerWarp; a++) {
    v[a] = 0.f;
#pragma unroll
    for (int i = 0; i < NR; i++)
      if (lane == i) v[a] = acc[a][i];
  }
  if (gridDim.y > 1) {
#pragma unroll
    for (int a = 0; a < kRowsPerWarp; a++)
      if (lane < n && j0 + a < outf) sk.part[(int64_t(blockIdx.y) * n + lane) * outf + j0 + a] = v[a];
    if (!split_k_last_arrival(sk)) return;
#pragma unroll
    for (int a = 0; a < kRowsPerWarp; a++) {
      if (lane >= n || j0 + a >= outf) continue;
      float sum = 0.f;
      for (unsigned sp = 0; sp < gridDim.y; sp++) sum += __ldcg(&sk.part[(int64_t(sp) * n + lane) * outf + j0 + a]);
      v[a] = sum;
    }
    if (threadIdx.x == 0) sk.counters[blockIdx.x] = 0;
  }
#pragma unroll
  for (int a = 0; a < kRowsPerWarp; a++) {
    const int64_t j = j0 + a;
    if (lane < n && j < outf) {
      decode_store<T>(v[a], lane, j, outf, terms, bias, bias_dt, y);
    }
  }
}

template <class T, int NR>
void launch(const TensorRef& x, const TensorRef& W, const TensorRef* bias, const DecodeTerms& terms, const TensorRef& y) {
  const int64_t in = W.dim(1), outf = W.dim(0);
  const int n = static_cast<int>(x.numel() / in);
  const int64_t per_block = kWarps * kRowsPerWarp;
  const int64_t groups = (outf + per_block - 1) / per_block;
  // Enough blocks to fill every SM once (as many as are resident at a time), in K ranges of whole chunks.
  static const int per_sm = resident_blocks_per_sm(decode_kernel<T, NR>, kWarps * 32);
  const int64_t chunks = (in + kKC - 1) / kKC;
  int64_t splits = (int64_t(per_sm) * sm_count() + groups - 1) / groups;
  if (splits > chunks) splits = chunks;
  if (splits < 1 || in % 8 != 0) splits = 1;
  const int64_t k_per = (chunks + splits - 1) / splits * kKC;
  splits = (in + k_per - 1) / k_per;
  SplitKBuffers split(splits, groups, n, outf, k_per);
  decode_kernel<T, NR><<<dim3(unsigned(groups), unsigned(splits)), kWarps * 32, 0, stream()>>>(
      x.as<T>(), W.as<T>(), bias ? bias->data : nullptr, bias ? bias->dtype : DType::F32, y.as<T>(), n, in, outf, terms, split.sk);
}

// out(i, Σ_k x[i, k]·A[q, k]) for the n ≤ NR rows of x, by one block of 256 threads, which reads
// A's row q once; x (small) comes from L2.
template <class T, class F, int NR, class Out>
__device__ __forceinline__ void shrink_rows(const T* __restrict__ x, const F* __restrict__ A, int q, int n, int64_t in, Out out) {
  __shared__ float part[8][NR];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float acc[NR];
#pragma unroll
  for (int i = 0; i < NR; i++) acc[i] = 0.f;
  if (in % 8 == 0) {  // 16-byte loads: 8 elements of A's row and of each x row per step
    for (int64_t k = int64_t(threadIdx.x) * 8; k < in; k += 256 * 8) {
      // Every row's load is issued before any use (predicated, no early exit): a break per row
      // made them one round trip each, n of them in a row (0.6 µs per row at n = 16 on an H100).
      float a[8], xv[NR][8];
      load8(A + int64_t(q) * in + k, a);
#pragma unroll
      for (int i = 0; i < NR; i++) {
        if (i < n) {
          load8(x + int64_t(i) * in + k, xv[i]);
        } else {
#pragma unroll
          for (int e = 0; e < 8; e++) xv[i][e] = 0.f;
        }
      }
#pragma unroll
      for (int i = 0; i < NR; i++)
#pragma unroll
        for (int e = 0; e < 8; e++) acc[i] = fmaf(a[e], xv[i][e], acc[i]);
    }
  } else {
    for (int64_t k = threadIdx.x; k < in; k += 256) {
      float a = to_f32<F>(A[int64_t(q) * in + k]);
#pragma unroll
      for (int i = 0; i < NR; i++)
        if (i < n) acc[i] = fmaf(a, to_f32<T>(x[int64_t(i) * in + k]), acc[i]);
    }
  }
#pragma unroll
  for (int i = 0; i < NR; i++) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], off);
    if (lane == 0) part[warp][i] = acc[i];
  }
  __syncthreads();
  if (threadIdx.x < n) {
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < 8; w++) s += part[w][threadIdx.x];
    out(threadIdx.x, s);
  }
}

// u[i, q] = Σ_k x[i, k]·A[q, k] for n ≤ 16 rows: one block per adapter row q. Cheaper to launch
// than a cuBLASLt GEMM at this size. With gram (DoRA's fresh norm; A in x's dtype, r ≤ NR), r more
// blocks write G = A·Aᵀ [r, r] (f32) the same way, A's rows standing in for x's.
template <class T, class F, class U, int NR>
__global__ void __launch_bounds__(256) shrink_small_kernel(const T* __restrict__ x, const F* __restrict__ A,
                                                           U* __restrict__ u, int n, int64_t in, int r, float* __restrict__ gram) {
  pdl_launch_dependents();  // the decode kernel may start streaming W now (it waits before reading u)
  const int q = blockIdx.x;
  if (q < r) {
    shrink_rows<T, F, NR>(x, A, q, n, in, [&](int i, float s) { u[int64_t(i) * r + q] = from_f32<U>(s); });
  } else if constexpr (std::is_same<T, F>::value) {
    shrink_rows<F, F, NR>(A, A, q - r, r, in, [&](int i, float s) { gram[(q - r) * r + i] = s; });
  }
}

}  // namespace

// The split-K ticket counters, one buffer per stream (launches on two streams may overlap): one
// per feature group, zeroed once and left zeroed by each launch. Grown (rarely) after a
// synchronize, since launches in flight may still use the old buffer.
unsigned* decode_split_counters(int64_t groups) {
  struct Counters {
    unsigned* buf = nullptr;
    int64_t size = 0;
  };
  static std::mutex mu;
  static auto* per_stream = new std::map<cudaStream_t, Counters>();  // leaked: no teardown after the driver
  cudaStream_t st = stream();
  std::lock_guard<std::mutex> lock(mu);
  Counters& c = (*per_stream)[st];
  if (groups > c.size) {
    if (c.buf) {
      bump_graph_epoch();  // captured graphs hold the old buffer's address
      LK_CUDA(cudaStreamSynchronize(st), "decode counters");
      LK_CUDA(cudaFree(c.buf), "decode counters");
      c.buf = nullptr;
      c.size = 0;
    }
    unsigned* p = nullptr;
    LK_CUDA(cudaMalloc(&p, groups * sizeof(unsigned)), "decode counters");
    LK_CUDA(cudaMemsetAsync(p, 0, groups * sizeof(unsigned), st), "decode counters");
    c.buf = p;
    c.size = groups;
  }
  return c.buf;
}

void decode_shrink(const TensorRef& x, const TensorRef& A, const TensorRef& u, float* gram) {
  const int64_t in = A.dim(1);
  const int r = static_cast<int>(A.dim(0));
  const int n = static_cast<int>(x.numel() / in);
  if (n > kDecodeMaxRows) throw_range("decode shrink: at most 16 rows");
  if (gram && (r > kDecodeMaxRows || A.dtype != x.dtype)) throw_state("decode shrink: A·Aᵀ needs r ≤ 16 and A in x's dtype");
  if (r == 0 || n == 0) return;
  const unsigned blocks = unsigned(gram ? 2 * r : r);
  dispatch_float(x.dtype, "x", [&](auto xz) {
    dispatch_float(A.dtype, "A", [&](auto az) {
      dispatch_float(u.dtype, "u", [&](auto uz) {
        using T = decltype(xz);
        using F = decltype(az);
        using U = decltype(uz);
        if (n <= 4 && !gram) shrink_small_kernel<T, F, U, 4><<<blocks, 256, 0, stream()>>>(x.as<T>(), A.as<F>(), u.as<U>(), n, in, r, gram);
        else shrink_small_kernel<T, F, U, 16><<<blocks, 256, 0, stream()>>>(x.as<T>(), A.as<F>(), u.as<U>(), n, in, r, gram);
      });
    });
  });
  LK_LAUNCHED("decode shrink");
}

void decode_gram(const TensorRef& A, float* G) {
  const int64_t in = A.dim(1);
  const int r = static_cast<int>(A.dim(0));
  if (r > kDecodeMaxRows) throw_range("decode gram: at most 16 rows");
  if (r == 0) return;
  dispatch_float(A.dtype, "A", [&](auto az) {
    using F = decltype(az);
    shrink_small_kernel<F, F, float, 16><<<r, 256, 0, stream()>>>(A.as<F>(), A.as<F>(), G, r, in, r, nullptr);
  });
  LK_LAUNCHED("decode gram");
}

// Up to 16 rows the decode kernel (split K) is used; LORAKIT_CUDA_DECODE_ROWS (0..16) moves the
// switch, for benchmarks.
static int64_t decode_max_rows() {
  static const int64_t v = [] {
    const char* e = std::getenv("LORAKIT_CUDA_DECODE_ROWS");
    int64_t r = e ? std::atoll(e) : kDecodeMaxRows;
    return r < 0 ? 0 : r > kDecodeMaxRows ? kDecodeMaxRows : r;
  }();
  return v;
}

bool decode_applicable(const TensorRef& x, const TensorRef& W, bool fan_in_fan_out, const std::vector<ForwardTerm>& terms) {
  if (fan_in_fan_out || W.shape.size() != 2 || W.dim(1) == 0) return false;
  int64_t n = x.numel() / W.dim(1);
  if (n < 1 || n > decode_max_rows() || terms.size() > kDecodeMaxTerms) return false;
  if (W.dtype != x.dtype) return false;
  return reinterpret_cast<uintptr_t>(W.data) % 16 == 0;
}

void decode_forward(const TensorRef& x, const TensorRef& W, const TensorRef* bias, const std::vector<ForwardTerm>& terms,
                    const TensorRef& y, bool after_shrink, const DecodeDora& dora) {
  DecodeTerms dt{};
  dt.count = static_cast<int>(terms.size());
  dt.dora = dora;
  for (size_t t = 0; t < terms.size(); t++) {
    const int r = static_cast<int>(terms[t].B.dim(1));
    auto a16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    const bool vec = terms[t].u.dtype == DType::F32 && terms[t].B.dtype != DType::F32 && r % 8 == 0 &&
                     a16(terms[t].u.data) && a16(terms[t].B.data);
    dt.t[t] = DecodeTerm{terms[t].u.data, terms[t].B.data, terms[t].u.dtype, terms[t].B.dtype, r, terms[t].scale, vec};
  }
  const int64_t n = x.numel() / W.dim(1);
  if (decode_tc_forward(x, W, bias, dt, y, after_shrink)) return;
  dispatch_float(W.dtype, "weight", [&](auto z) {
    using T = decltype(z);
    if (n <= 1) launch<T, 1>(x, W, bias, dt, y);
    else if (n <= 4) launch<T, 4>(x, W, bias, dt, y);
    else if (n <= 8) launch<T, 8>(x, W, bias, dt, y);
    else launch<T, 16>(x, W, bias, dt, y);
  });
  LK_LAUNCHED("decode forward");
}

}  // namespace cuda
}  // namespace lorakit
