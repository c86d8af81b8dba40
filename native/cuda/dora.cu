// DoRA (peft's DoraLinearLayer) on cuda, with the cpu's formulas (native/cpu/dora.cc): the weight
// norm from the low-rank identity ‖W + sBA‖² = ‖W‖² + 2s·rowsum((W·Aᵀ)⊙B) + s²·rowsum((B·AAᵀ)⊙B)
// (no dense delta), the forward's pre = xa·Wᵀ + s·u·Bᵀ kept for the backward, and the backward with
// the norm detached. GEMMs run in exact fp32 on f32 copies (this path is for correctness and API
// parity, not tuned); reductions are per output in a fixed order (f64), so results repeat bit for bit.
#include <vector>
#include "../core/dropout_mask.h"
#include "common.cuh"
#include "device_buffer.h"
#include "ops.h"
#include "runtime.h"

namespace lorakit {
namespace cuda {
namespace {

unsigned grid(int64_t n) { return blocks_for(n, 256); }

// One block per output o: ‖W_o‖² in f64 (strided over in; a fixed-shape tree), then the cross and
// quadratic terms over r, and the square root.
__global__ void norm_kernel(const float* __restrict__ W, bool fifo, int64_t in, int64_t outf, const float* __restrict__ M,
                            const float* __restrict__ G, const float* __restrict__ B, int r, float scale, float* __restrict__ norm) {
  __shared__ double part[256];
  const int64_t o = blockIdx.x;
  double s = 0;
  for (int64_t i = threadIdx.x; i < in; i += blockDim.x) {
    const double v = fifo ? W[i * outf + o] : W[o * in + i];
    s += v * v;
  }
  part[threadIdx.x] = s;
  __syncthreads();
  for (int step = 128; step > 0; step >>= 1) {
    if (threadIdx.x < step) part[threadIdx.x] += part[threadIdx.x + step];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    double cross = 0, quad = 0;
    for (int k = 0; k < r; k++) {
      const double bk = B[o * r + k];
      cross += double(M[o * r + k]) * bk;
      double bg = 0;
      for (int j = 0; j < r; j++) bg += double(B[o * r + j]) * G[j * r + k];
      quad += bg * bk;
    }
    const double n2 = part[0] + 2.0 * scale * cross + double(scale) * scale * quad;
    norm[o] = static_cast<float>(sqrt(n2 > 0 ? n2 : 0.0));
  }
}

// y = bias + k⊙pre (+ diff), k = magnitude / norm, rounded once.
template <class T>
__global__ void dora_out_kernel(const float* __restrict__ pre, const float* __restrict__ diff, const void* mag, DType mt,
                                const float* __restrict__ norm, const void* bias, DType bt, int64_t n, int64_t outf, T* __restrict__ y) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n * outf; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = e % outf;
    float v = load_as_f32(mag, mt, o) / norm[o] * pre[e];
    if (diff) v += diff[e];
    if (bias) v += load_as_f32(bias, bt, o);
    y[e] = from_f32<T>(v);
  }
}

// dyk = k⊙dy (f32), minus dy too when `minus_dy` (the dropout path's (k − 1)⊙dy).
__global__ void scale_dy_kernel(const void* dy, DType dt, const void* mag, DType mt, const float* __restrict__ norm,
                                int64_t n, int64_t outf, bool minus_dy, float* __restrict__ dyk) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n * outf; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = e % outf;
    const float d = load_as_f32(dy, dt, e);
    dyk[e] = load_as_f32(mag, mt, o) / norm[o] * d - (minus_dy ? d : 0.f);
  }
}

// dmagnitude[o] = Σ_i dy[i, o]·pre[i, o] / norm[o], in row order, f64.
template <class D>
__global__ void dmag_kernel(const void* dy, DType dt, const float* __restrict__ pre, const float* __restrict__ norm, int64_t n,
                            int64_t outf, D* __restrict__ dm) {
  for (int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; o < outf; o += int64_t(gridDim.x) * blockDim.x) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += double(load_as_f32(dy, dt, i * outf + o)) * pre[i * outf + o];
    dm[o] = from_f32<D>(static_cast<float>(s / norm[o]));
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
    const float kk = load_as_f32(mag, mt, o) / norm[o];
    const float w = to_f32<T>(W[e]);
    out[e] = from_f32<T>(inverse ? w / kk - d : kk * (w + d));
  }
}

// W's [out, in] view as the A operand (m = out, k = in) and its transpose as the B operand of x·Wᵀ.
struct WView {
  const float* p;
  bool fifo;
  int64_t in, outf;
  // op(A) = W_oi [out, in]
  bool oi_t() const { return fifo; }
  int64_t oi_ld() const { return fifo ? outf : in; }
  // op(B) = Wᵀ [in, out]
  bool t_t() const { return !fifo; }
  int64_t t_ld() const { return fifo ? outf : in; }
};

void weight_norm_f32(const WView& w, const float* Af, const float* Bf, int64_t r, float scale, float* norm) {
  Buf M(w.outf * r * sizeof(float)), G(r * r * sizeof(float));
  gemm_rm(w.outf, r, w.in, w.p, w.oi_ld(), w.oi_t(), Af, w.in, true, M.f(), r, DType::F32, DType::F32, 1.f);  // W·Aᵀ
  gemm_rm(r, r, w.in, Af, w.in, false, Af, w.in, true, G.f(), r, DType::F32, DType::F32, 1.f);                // A·Aᵀ
  norm_kernel<<<unsigned(w.outf), 256, 0, stream()>>>(w.p, w.fifo, w.in, w.outf, M.f(), G.f(), Bf, int(r), scale, norm);
  LK_LAUNCHED("dora: norm");
}

}  // namespace

void dora_weight_norm(const TensorRef& W, const TensorRef& A, const TensorRef& B, float scale, bool fifo, float* norm) {
  const int64_t in = fifo ? W.dim(0) : W.dim(1), outf = fifo ? W.dim(1) : W.dim(0);
  std::vector<Buf> hold;
  WView w{as_f32(W, hold), fifo, in, outf};
  weight_norm_f32(w, as_f32(A, hold), as_f32(B, hold), A.dim(0), scale, norm);
}

void dora_linear_forward(const TensorRef& x, const TensorRef& xa, const TensorRef& W, const TensorRef* bias, bool fifo,
                         const TensorRef& u, const TensorRef& A, const TensorRef& B, float scale, const TensorRef& magnitude,
                         const TensorRef& y, float* pre, float* norm) {
  const int64_t in = fifo ? W.dim(0) : W.dim(1), outf = fifo ? W.dim(1) : W.dim(0), n = x.numel() / in, r = B.dim(1);
  std::vector<Buf> hold;
  WView w{as_f32(W, hold), fifo, in, outf};
  const float* Af = as_f32(A, hold);
  const float* Bf = as_f32(B, hold);
  weight_norm_f32(w, Af, Bf, r, scale, norm);
  const float* xaf = as_f32(xa, hold);
  const float* uf = as_f32(u, hold);
  gemm_rm(n, outf, in, xaf, in, false, w.p, w.t_ld(), w.t_t(), pre, outf, DType::F32, DType::F32, 1.f);
  gemm_rm(n, outf, r, uf, r, false, Bf, r, true, pre, outf, DType::F32, DType::F32, scale, 1.f);
  const bool dropped = xa.data != x.data;
  Buf diff(dropped ? n * outf * sizeof(float) : 0);
  if (dropped) {  // (x − xa)·Wᵀ: the base path outside the dropout
    const float* xf = as_f32(x, hold);
    Buf dx(n * in * sizeof(float));
    sub_kernel<<<grid(n * in), 256, 0, stream()>>>(xf, xaf, n * in, dx.f());
    LK_LAUNCHED("dora: x - xa");
    gemm_rm(n, outf, in, dx.f(), in, false, w.p, w.t_ld(), w.t_t(), diff.f(), outf, DType::F32, DType::F32, 1.f);
  }
  dispatch_float(y.dtype, "y", [&](auto z) {
    using T = decltype(z);
    dora_out_kernel<T><<<grid(n * outf), 256, 0, stream()>>>(pre, diff.f(), magnitude.data, magnitude.dtype, norm,
                                                            bias ? bias->data : nullptr, bias ? bias->dtype : DType::F32, n,
                                                            outf, y.as<T>());
  });
  LK_LAUNCHED("dora: output");
}

void dora_linear_backward(const TensorRef& dy, const TensorRef& W, bool fifo, const DoraBackwardArgs& a,
                          const TensorRef* dx, const TensorRef* dA, const TensorRef* dB, const TensorRef* dmagnitude) {
  const int64_t in = fifo ? W.dim(0) : W.dim(1), outf = fifo ? W.dim(1) : W.dim(0), n = dy.numel() / outf, r = a.B.dim(1);
  std::vector<Buf> hold;
  if (dmagnitude) {
    dispatch_float(dmagnitude->dtype, "dmagnitude", [&](auto z) {
      using D = decltype(z);
      dmag_kernel<D><<<grid(outf), 256, 0, stream()>>>(dy.data, dy.dtype, a.pre, a.norm, n, outf, dmagnitude->as<D>());
    });
    LK_LAUNCHED("dora: dmagnitude");
  }
  Buf dyk(n * outf * sizeof(float));
  scale_dy_kernel<<<grid(n * outf), 256, 0, stream()>>>(dy.data, dy.dtype, a.magnitude.data, a.magnitude.dtype, a.norm, n, outf,
                                                        false, dyk.f());
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
  WView w{as_f32(W, hold), fifo, in, outf};
  // op(B) = W_oi [out, in] for dy·W: stored [out, in] (no transpose) or [in, out] (transpose)
  const bool wt = fifo;
  const int64_t wld = fifo ? outf : in;
  Buf out(n * in * sizeof(float));
  if (a.dropout_p <= 0.f) {  // dx = dyk·W + g·A
    gemm_rm(n, in, outf, dyk.f(), outf, false, w.p, wld, wt, out.f(), in, DType::F32, DType::F32, 1.f);
    gemm_rm(n, in, r, g.f(), r, false, Af, in, false, out.f(), in, DType::F32, DType::F32, 1.f, 1.f);
    store(out.f(), *dx);
    return;
  }
  // dx = dy·W + mask⊙(((k − 1)⊙dy)·W + g·A)/(1 − p)
  scale_dy_kernel<<<grid(n * outf), 256, 0, stream()>>>(dy.data, dy.dtype, a.magnitude.data, a.magnitude.dtype, a.norm, n, outf,
                                                        true, dyk.f());
  LK_LAUNCHED("dora: (k-1)*dy");
  const float* dyf = as_f32(dy, hold);
  gemm_rm(n, in, outf, dyf, outf, false, w.p, wld, wt, out.f(), in, DType::F32, DType::F32, 1.f);
  Buf inner(n * in * sizeof(float));
  gemm_rm(n, in, outf, dyk.f(), outf, false, w.p, wld, wt, inner.f(), in, DType::F32, DType::F32, 1.f);
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
