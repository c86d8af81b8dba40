// DoRA (peft's DoraLinearLayer) on cuda: y = k ⊙ (x·Wᵀ + s·u·Bᵀ) + bias, k = magnitude / ‖W + s·B·A‖
// per output (the norm detached). Without dropout the forward is the LoRA forward (linear_blas.cu:
// decode, sm_90 one-pass or cuBLASLt) with k in its epilogue, or in one pass over y fused with the
// bias; training keeps the unscaled pre = x·Wᵀ + s·u·Bᵀ (x's dtype) for dmagnitude. The norm by the
// low-rank identity ‖W + sBA‖² = ‖W‖² + 2s·rowsum((W·Aᵀ)⊙B) + s²·rowsum((B·AAᵀ)⊙B) (dora_norm.cuh):
// ‖W‖² per row (the caller keeps it while W is unchanged), one GEMM W·Aᵀ reading W in its dtype
// (f32 output), A·Aᵀ in f32. At n ≤ 16 one decode launch does it all (dora_decode_forward): k from
// magnitude / norm in its epilogue, y and pre written once, and a stale norm from its own pass over
// W when W is 16-bit (decode_tc.cu), so W is read once per forward. The backward without dropout is the LoRA backward with dy replaced by k⊙dy; with
// dropout (dy·W and ((k−1)⊙dy)·W are needed apart) exact fp32 GEMMs on f32 copies. Reductions run
// per output in a fixed order (f64), so results repeat bit for bit.
#include <algorithm>
#include <vector>
#include "../core/dropout_mask.h"
#include "common.cuh"
#include "device_buffer.h"
#include "dora_norm.cuh"
#include "ops.h"
#include "runtime.h"

namespace lorakit {
namespace cuda {
namespace {

unsigned grid(int64_t n) { return blocks_for(n, 256); }

// ‖W_o‖² of W [out, in]: one block per output, f64 over a fixed-shape tree.
template <class T>
__global__ void row_sq_kernel(const T* __restrict__ W, int64_t in, float* __restrict__ wsq) {
  __shared__ double part[256];
  const int64_t o = blockIdx.x;
  double s = 0;
  for (int64_t i = threadIdx.x; i < in; i += blockDim.x) {
    const double v = to_f32<T>(W[o * in + i]);
    s += v * v;
  }
  part[threadIdx.x] = s;
  __syncthreads();
  for (int step = 128; step > 0; step >>= 1) {
    if (threadIdx.x < step) part[threadIdx.x] += part[threadIdx.x + step];
    __syncthreads();
  }
  if (threadIdx.x == 0) wsq[o] = static_cast<float>(part[0]);
}

// ‖W_o‖² of W [in, out] (fan_in_fan_out): one thread per output, rows in order (coalesced).
template <class T>
__global__ void col_sq_kernel(const T* __restrict__ W, int64_t in, int64_t outf, float* __restrict__ wsq) {
  for (int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; o < outf; o += int64_t(gridDim.x) * blockDim.x) {
    double s = 0;
    for (int64_t i = 0; i < in; i++) {
      const double v = to_f32<T>(W[i * outf + o]);
      s += v * v;
    }
    wsq[o] = static_cast<float>(s);
  }
}

// norm[o] = √(‖W_o‖² + 2s·Σ_k M[o,k]·B[o,k] + s²·Σ_k (B_o·G)_k·B[o,k]), M = W·Aᵀ, G = A·Aᵀ; f64.
// With mag: also k[o] = magnitude[o] / norm[o] (as k_kernel), saving the forward that launch.
__global__ void norm_combine_kernel(const float* __restrict__ wsq, const float* __restrict__ M, const float* __restrict__ G,
                                    const void* __restrict__ B, DType bt, int64_t outf, int r, float scale, float* __restrict__ norm,
                                    const void* mag, DType mt, float* __restrict__ k) {
  for (int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; o < outf; o += int64_t(gridDim.x) * blockDim.x) {
    const float nrm = dora_row_norm(wsq[o], [&](int q) { return M[o * r + q]; }, [&](int q) { return load_as_f32(B, bt, o * r + q); }, G, r, scale);
    norm[o] = nrm;
    if (k) k[o] = dora_k(mag, mt, o, nrm);
  }
}

// k[o] = magnitude[o] / norm[o]
__global__ void k_kernel(const void* mag, DType mt, const float* __restrict__ norm, int64_t outf, float* __restrict__ k) {
  for (int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; o < outf; o += int64_t(gridDim.x) * blockDim.x)
    k[o] = dora_k(mag, mt, o, norm[o]);
}

// y[i, c] = k[c]·src[i, c] (+ bias[c]), rounded once; V columns per thread (16-byte accesses when
// the rows allow), blocks over column strips × row groups so k and bias are read once per thread.
template <class T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <class T, int V>
__global__ void scale_columns_kernel(const T* src, T* y, const float* __restrict__ k,  // src may be y
                                     const void* bias, DType bt, int64_t n, int64_t outf) {
  const int64_t c0 = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  if (c0 >= outf) return;
  float kk[V], bb[V];
#pragma unroll
  for (int j = 0; j < V; j++) {
    kk[j] = k[c0 + j];
    bb[j] = bias ? load_as_f32(bias, bt, c0 + j) : 0.f;
  }
  for (int64_t i = blockIdx.y; i < n; i += gridDim.y) {
    Pack<T, V> p = *reinterpret_cast<const Pack<T, V>*>(src + i * outf + c0);
#pragma unroll
    for (int j = 0; j < V; j++) p.v[j] = from_f32<T>(kk[j] * to_f32<T>(p.v[j]) + bb[j]);
    *reinterpret_cast<Pack<T, V>*>(y + i * outf + c0) = p;
  }
}

// dmagnitude[o] = Σ_i dy[i, o]·pre[i, o] / norm[o]: f64 partial sums over kDmagChunks fixed row
// ranges (enough threads for large n), then summed in range order, so the result repeats exactly.
constexpr int kDmagChunks = 32;

__global__ void dmag_partial_kernel(const void* dy, DType dt, const void* pre, DType pt, int64_t n, int64_t outf,
                                    double* __restrict__ part) {
  const int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= outf) return;
  const int64_t per = (n + kDmagChunks - 1) / kDmagChunks, i0 = blockIdx.y * per, i1 = i0 + per < n ? i0 + per : n;
  double s = 0;
  for (int64_t i = i0; i < i1; i++) s += double(load_as_f32(dy, dt, i * outf + o)) * load_as_f32(pre, pt, i * outf + o);
  part[blockIdx.y * outf + o] = s;
}

template <class D>
__global__ void dmag_final_kernel(const double* __restrict__ part, const float* __restrict__ norm, int64_t outf, D* __restrict__ dm) {
  for (int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; o < outf; o += int64_t(gridDim.x) * blockDim.x) {
    double s = 0;
    for (int c = 0; c < kDmagChunks; c++) s += part[c * outf + o];
    dm[o] = from_f32<D>(static_cast<float>(s / norm[o]));
  }
}

// The dropout path's output: y = bias + k⊙pre + diff (f32 pre and diff), rounded once.
template <class T>
__global__ void dora_out_kernel(const float* __restrict__ pre, const float* __restrict__ diff, const float* __restrict__ k,
                                const void* bias, DType bt, int64_t n, int64_t outf, T* __restrict__ y) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n * outf; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = e % outf;
    float v = k[o] * pre[e] + diff[e];
    if (bias) v += load_as_f32(bias, bt, o);
    y[e] = from_f32<T>(v);
  }
}

// dyk = k⊙dy (f32), minus dy too when `minus_dy` (the dropout path's (k − 1)⊙dy).
__global__ void scale_dy_kernel(const void* dy, DType dt, const float* __restrict__ k, int64_t n, int64_t outf, bool minus_dy,
                                float* __restrict__ dyk) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n * outf; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = e % outf;
    const float d = load_as_f32(dy, dt, e);
    dyk[e] = k[o] * d - (minus_dy ? d : 0.f);
  }
}

__global__ void sub_kernel(const float* __restrict__ a, const float* __restrict__ b, int64_t n, float* __restrict__ out) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) out[i] = a[i] - b[i];
}

__global__ void masked_add_kernel(const float* __restrict__ src, float* __restrict__ dst, int64_t n, uint64_t seed,
                                  uint64_t stream, float p) {
  const float keep_scale = 1.f / (1.f - p);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    if (dropout_keep(seed, stream, uint64_t(i), p)) dst[i] += src[i] * keep_scale;
}

template <class T>
__global__ void store_kernel(const float* __restrict__ src, T* __restrict__ dst, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = from_f32<T>(src[i]);
}

void store(const float* src, const TensorRef& dst) {
  dispatch_float(dst.dtype, "output", [&](auto z) {
    using T = decltype(z);
    store_kernel<T><<<grid(dst.numel()), 256, 0, stream()>>>(src, dst.as<T>(), dst.numel());
  });
  LK_LAUNCHED("dora: store");
}

// out = inverse ? W / k − s·ΔW : k ⊙ (W + s·ΔW), ΔW = B·A in W's layout, k per output feature.
template <class T>
__global__ void dora_merge_kernel(const T* W, T* out, const float* __restrict__ A, const float* __restrict__ B, int64_t rows,
                                  int64_t cols, int r, float scale, bool fifo, const void* mag, DType mt,
                                  const float* __restrict__ norm, bool inverse) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < rows * cols; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e / cols, c = e % cols;
    float d = 0.f;
    for (int k = 0; k < r; k++) d += fifo ? A[int64_t(k) * rows + i] * B[c * r + k] : B[i * r + k] * A[int64_t(k) * cols + c];
    d *= scale;
    const int64_t o = fifo ? c : i;
    const float kk = dora_k(mag, mt, o, norm[o]);
    const float w = to_f32<T>(W[e]);
    out[e] = from_f32<T>(inverse ? w / kk - d : kk * (w + d));
  }
}

// k = magnitude / norm into a device buffer.
Buf scale_vector(const TensorRef& magnitude, const float* norm, int64_t outf) {
  Buf k(std::max<int64_t>(outf, 1) * sizeof(float));
  k_kernel<<<grid(outf), 256, 0, stream()>>>(magnitude.data, magnitude.dtype, norm, outf, k.f());
  LK_LAUNCHED("dora: k");
  return k;
}

TensorRef view(void* data, DType dt, std::vector<int64_t> shape) {
  TensorRef t;
  t.data = data;
  t.dtype = dt;
  t.shape = std::move(shape);
  return t;
}

}  // namespace

void scale_columns(const void* src, void* y, DType dt, int64_t n, int64_t outf, const float* k, const void* bias, DType bias_dt) {
  if (n == 0 || outf == 0) return;
  dispatch_float(dt, "y", [&](auto z) {
    using T = decltype(z);
    constexpr int V = 16 / sizeof(T);
    const bool packed = outf % V == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0 && reinterpret_cast<uintptr_t>(y) % 16 == 0;
    const int64_t threads_x = packed ? outf / V : outf;
    const unsigned gx = blocks_for(threads_x, 128);
    const unsigned gy = static_cast<unsigned>(std::min<int64_t>({n, 65535, std::max<int64_t>(1, 4096 / gx)}));
    if (packed)
      scale_columns_kernel<T, V><<<dim3(gx, gy), 128, 0, stream()>>>(static_cast<const T*>(src), static_cast<T*>(y), k, bias,
                                                                      bias_dt, n, outf);
    else
      scale_columns_kernel<T, 1><<<dim3(gx, gy), 128, 0, stream()>>>(static_cast<const T*>(src), static_cast<T*>(y), k, bias,
                                                                      bias_dt, n, outf);
  });
  LK_LAUNCHED("dora: scale columns");
}

namespace {

// ‖W_o‖² per output: the caller's wsq when ready, else computed into it (or into own, which the
// caller keeps alive, when it keeps none).
float* row_squares(const TensorRef& W, bool fifo, float* wsq, bool wsq_ready, Buf& own) {
  const int64_t in = fifo ? W.dim(0) : W.dim(1), outf = fifo ? W.dim(1) : W.dim(0);
  if (!wsq) own = Buf(outf * sizeof(float));
  float* sq = wsq ? wsq : own.f();
  if (!wsq || !wsq_ready) {
    dispatch_float(W.dtype, "weight", [&](auto z) {
      using T = decltype(z);
      if (fifo) col_sq_kernel<T><<<grid(outf), 256, 0, stream()>>>(W.as<T>(), in, outf, sq);
      else row_sq_kernel<T><<<unsigned(outf), 256, 0, stream()>>>(W.as<T>(), in, sq);
    });
    LK_LAUNCHED("dora: row norms");
  }
  return sq;
}

// The forward at n ≤ 16 (no dropout) on the decode kernel, which computes k = magnitude / norm and
// writes y (and pre) itself; with a stale norm and a tensor-core decode it also computes the norm
// from its own pass over W (M = W·Aᵀ as a second mma row tile; G = A·Aᵀ from the shrink's launch),
// so W is read once per call. False (nothing launched) where the decode path does not apply.
bool dora_decode_forward(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fifo, const std::vector<FusedAdapter>& ad,
                         float scale, const TensorRef& magnitude, float* norm, bool norm_ready, float* wsq, bool wsq_ready,
                         const TensorRef& y, const TensorRef* pre) {
  if (!lora_decode_applicable(x, W, fifo, ad)) return false;
  const TensorRef& A = ad[0].A;
  const TensorRef& B = ad[0].B;
  const int64_t r = A.dim(0);
  DecodeDora d;
  d.mag = magnitude.data;
  d.mag_dt = magnitude.dtype;
  d.norm = norm;
  d.pre = pre ? pre->data : nullptr;
  Buf own, gram;
  if (!norm_ready) {
    const bool fresh = r >= 1 && r <= kDecodeMaxRows && A.dtype == W.dtype && reinterpret_cast<uintptr_t>(A.data) % 16 == 0 &&
                       decode_tc_applicable(x, W);
    if (fresh) {
      gram = Buf(r * r * sizeof(float));
      d.fresh = DecodeNorm{A.data, int(r), row_squares(W, fifo, wsq, wsq_ready, own), gram.f(), B.data, B.dtype, scale};
    } else {
      dora_weight_norm(W, A, B, scale, fifo, norm, wsq, wsq_ready);  // its own pass over W
    }
  }
  lora_forward_dora_decode(x, W, bias, fifo, ad, y, d, d.fresh.A ? gram.f() : nullptr);
  return true;
}

}  // namespace

void dora_weight_norm(const TensorRef& W, const TensorRef& A, const TensorRef& B, float scale, bool fifo, float* norm,
                      float* wsq, bool wsq_ready) {
  dora_weight_norm_k(W, A, B, scale, fifo, norm, wsq, wsq_ready, nullptr, nullptr);
}

void dora_weight_norm_k(const TensorRef& W, const TensorRef& A, const TensorRef& B, float scale, bool fifo, float* norm,
                        float* wsq, bool wsq_ready, const TensorRef* magnitude, float* k) {
  const int64_t in = fifo ? W.dim(0) : W.dim(1), outf = fifo ? W.dim(1) : W.dim(0), r = A.dim(0);
  if (outf == 0) return;
  std::vector<Buf> hold;
  Buf own;
  float* sq = row_squares(W, fifo, wsq, wsq_ready, own);
  Buf M(outf * r * sizeof(float)), G(r * r * sizeof(float));
  // M = W·Aᵀ [out, r] with W read in place (A converted to W's dtype when they differ), f32 out.
  const void* Aw = in_dtype(A, W.dtype, hold);
  gemm_rm(outf, r, in, W.data, fifo ? outf : in, fifo, Aw, in, true, M.f(), r, W.dtype, DType::F32, 1.f);
  if (r <= kDecodeMaxRows && reinterpret_cast<uintptr_t>(A.data) % 16 == 0) {
    decode_gram(A, G.f());  // A·Aᵀ in one small launch, A read in its dtype (16-byte loads)
  } else {
    const float* Af = as_f32(A, hold);
    gemm_rm(r, r, in, Af, in, false, Af, in, true, G.f(), r, DType::F32, DType::F32, 1.f);
  }
  norm_combine_kernel<<<grid(outf), 256, 0, stream()>>>(sq, M.f(), G.f(), B.data, B.dtype, outf, int(r), scale, norm,
                                                        magnitude ? magnitude->data : nullptr, magnitude ? magnitude->dtype : DType::F32, k);
  LK_LAUNCHED("dora: norm");
}

void dora_linear_forward(const TensorRef& x, const TensorRef& xa, const TensorRef& W, const TensorRef* bias, bool fifo,
                         const TensorRef* u, const TensorRef& A, const TensorRef& B, float scale, const TensorRef& magnitude,
                         float* norm, bool norm_ready, float* wsq, bool wsq_ready, const TensorRef& y, const TensorRef* pre) {
  const int64_t in = fifo ? W.dim(0) : W.dim(1), outf = fifo ? W.dim(1) : W.dim(0), n = in ? x.numel() / in : 0;
  const DType dt = W.dtype;
  if (x.dtype != dt || y.dtype != dt || (pre && pre->dtype != dt))
    throw_type(std::string("x: on cuda, x, y and pre take the weight's dtype (") + dtype_name(dt) + ")");
  if (xa.data == x.data &&
      dora_decode_forward(x, W, bias, fifo, {{A, B, scale, u}}, scale, magnitude, norm, norm_ready, wsq, wsq_ready, y, pre))
    return;
  Buf k = norm_ready ? scale_vector(magnitude, norm, outf) : Buf(std::max<int64_t>(outf, 1) * sizeof(float));
  if (!norm_ready) dora_weight_norm_k(W, A, B, scale, fifo, norm, wsq, wsq_ready, &magnitude, k.f());  // its own pass over W
  const void* bp = bias ? bias->data : nullptr;
  const DType bt = bias ? bias->dtype : DType::F32;
  if (xa.data == x.data) {  // no dropout: the LoRA forward, k in its epilogue or one pass over y
    const std::vector<FusedAdapter> ad{{A, B, scale, u}};
    if (!pre) {
      lora_forward_scaled(x, W, bias, fifo, ad, y, k.f());
    } else {
      lora_forward(x, W, nullptr, fifo, ad, *pre);
      scale_columns(pre->data, y.data, dt, n, outf, k.f(), bp, bt);
    }
    return;
  }
  // Dropout: pre = xa·Wᵀ + s·u·Bᵀ, and the base path outside the dropout (x − xa)·Wᵀ, in f32.
  const int64_t r = A.dim(0);
  Buf own_u(u ? 0 : n * r * dtype_size(dt));
  const TensorRef ur = u ? *u : view(own_u.p, dt, {n, r});
  lora_shrink(xa, A, ur);
  std::vector<Buf> hold;
  const float* Wf = as_f32(W, hold);
  const float* xaf = as_f32(xa, hold);
  const float* xf = as_f32(x, hold);
  const int64_t wld = fifo ? outf : in;
  Buf P(n * outf * sizeof(float)), diff(n * outf * sizeof(float)), dx(n * in * sizeof(float));
  gemm_rm(n, outf, in, xaf, in, false, Wf, wld, !fifo, P.f(), outf, DType::F32, DType::F32, 1.f);
  gemm_rm(n, outf, r, as_f32(ur, hold), r, false, as_f32(B, hold), r, true, P.f(), outf, DType::F32, DType::F32, scale, 1.f);
  sub_kernel<<<grid(n * in), 256, 0, stream()>>>(xf, xaf, n * in, dx.f());
  LK_LAUNCHED("dora: x - xa");
  gemm_rm(n, outf, in, dx.f(), in, false, Wf, wld, !fifo, diff.f(), outf, DType::F32, DType::F32, 1.f);
  dispatch_float(dt, "y", [&](auto z) {
    using T = decltype(z);
    dora_out_kernel<T><<<grid(n * outf), 256, 0, stream()>>>(P.f(), diff.f(), k.f(), bp, bt, n, outf, y.as<T>());
  });
  LK_LAUNCHED("dora: output");
  if (pre) store(P.f(), *pre);
}

void dora_linear_backward(const TensorRef& dy, const TensorRef& W, bool fifo, const DoraBackwardArgs& a,
                          const TensorRef* dx, const TensorRef* dA, const TensorRef* dB, const TensorRef* dmagnitude) {
  const int64_t in = fifo ? W.dim(0) : W.dim(1), outf = fifo ? W.dim(1) : W.dim(0), n = dy.numel() / outf, r = a.B.dim(1);
  const DType dt = W.dtype;
  if (dy.dtype != dt) throw_type(std::string("dy: on cuda, expected the weight's dtype (") + dtype_name(dt) + ")");
  if (dmagnitude) {
    Buf part(size_t(kDmagChunks) * std::max<int64_t>(outf, 1) * sizeof(double));
    if (n > 0) {
      dmag_partial_kernel<<<dim3(blocks_for(outf, 256), kDmagChunks), 256, 0, stream()>>>(dy.data, dy.dtype, a.pre.data, a.pre.dtype,
                                                                                          n, outf, static_cast<double*>(part.p));
      LK_LAUNCHED("dora: dmagnitude partials");
    } else {
      LK_CUDA(cudaMemsetAsync(part.p, 0, part.n, stream()), "memset");
    }
    dispatch_float(dmagnitude->dtype, "dmagnitude", [&](auto z) {
      using D = decltype(z);
      dmag_final_kernel<D><<<grid(outf), 256, 0, stream()>>>(static_cast<const double*>(part.p), a.norm, outf, dmagnitude->as<D>());
    });
    LK_LAUNCHED("dora: dmagnitude");
  }
  Buf k = scale_vector(a.magnitude, a.norm, outf);
  if (a.dropout_p <= 0.f) {  // the LoRA backward of k⊙dy: g = s·dyk·B, dA = gᵀ·xa, dB = s·dykᵀ·u, dx = dyk·W + g·A
    Buf dyk(std::max<int64_t>(n * outf, 1) * dtype_size(dt));
    scale_columns(dy.data, dyk.p, dt, n, outf, k.f(), nullptr, DType::F32);
    BackwardTerm t{a.xa, a.u, a.A, a.B, a.scale, 0.f, a.seed, a.stream, dA, dB};
    linear_backward(view(dyk.p, dt, dy.shape), W, fifo, {t}, dx);
    return;
  }
  std::vector<Buf> hold;
  Buf dyk(n * outf * sizeof(float));
  scale_dy_kernel<<<grid(n * outf), 256, 0, stream()>>>(dy.data, dy.dtype, k.f(), n, outf, false, dyk.f());
  LK_LAUNCHED("dora: k*dy");
  const float* Af = as_f32(a.A, hold);
  const float* Bf = as_f32(a.B, hold);
  Buf g(n * r * sizeof(float));
  gemm_rm(n, r, outf, dyk.f(), outf, false, Bf, r, false, g.f(), r, DType::F32, DType::F32, a.scale);  // g = s·dyk·B
  if (dB) {  // dB = s·dykᵀ·u
    Buf o(outf * r * sizeof(float));
    gemm_rm(outf, r, n, dyk.f(), outf, true, as_f32(a.u, hold), r, false, o.f(), r, DType::F32, DType::F32, a.scale);
    store(o.f(), *dB);
  }
  if (dA) {  // dA = gᵀ·xa
    Buf o(r * in * sizeof(float));
    gemm_rm(r, in, n, g.f(), r, true, as_f32(a.xa, hold), in, false, o.f(), in, DType::F32, DType::F32, 1.f);
    store(o.f(), *dA);
  }
  if (!dx) return;
  const float* Wf = as_f32(W, hold);
  // op(B) = W_oi [out, in] for dy·W: stored [out, in] (no transpose) or [in, out] (transpose)
  const bool wt = fifo;
  const int64_t wld = fifo ? outf : in;
  Buf out(n * in * sizeof(float));
  // dx = dy·W + mask⊙(((k − 1)⊙dy)·W + g·A)/(1 − p)
  scale_dy_kernel<<<grid(n * outf), 256, 0, stream()>>>(dy.data, dy.dtype, k.f(), n, outf, true, dyk.f());
  LK_LAUNCHED("dora: (k-1)*dy");
  const float* dyf = as_f32(dy, hold);
  gemm_rm(n, in, outf, dyf, outf, false, Wf, wld, wt, out.f(), in, DType::F32, DType::F32, 1.f);
  Buf inner(n * in * sizeof(float));
  gemm_rm(n, in, outf, dyk.f(), outf, false, Wf, wld, wt, inner.f(), in, DType::F32, DType::F32, 1.f);
  gemm_rm(n, in, r, g.f(), r, false, Af, in, false, inner.f(), in, DType::F32, DType::F32, 1.f, 1.f);
  masked_add_kernel<<<grid(n * in), 256, 0, stream()>>>(inner.f(), out.f(), n * in, a.seed, a.stream, a.dropout_p);
  LK_LAUNCHED("dora: dropout");
  store(out.f(), *dx);
}

void dora_merge(const TensorRef& W, const TensorRef& A, const TensorRef& B, float scale, bool fifo, const TensorRef& magnitude,
                const float* norm, bool inverse, const TensorRef& out) {
  const int64_t rows = W.dim(0), cols = W.dim(1);
  std::vector<Buf> hold;
  const float* Af = as_f32(A, hold);
  const float* Bf = as_f32(B, hold);
  dispatch_float(W.dtype, "weight", [&](auto z) {
    using T = decltype(z);
    if (out.dtype != W.dtype) throw_type("out: on cuda, expected the weight's dtype");
    dora_merge_kernel<T><<<grid(rows * cols), 256, 0, stream()>>>(W.as<T>(), out.as<T>(), Af, Bf, rows, cols,
                                                                 static_cast<int>(A.dim(0)), scale, fifo, magnitude.data,
                                                                 magnitude.dtype, norm, inverse);
  });
  LK_LAUNCHED("dora: merge");
}

}  // namespace cuda
}  // namespace lorakit
