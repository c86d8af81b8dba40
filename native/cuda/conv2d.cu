// LoraConv2d on cuda (peft's lora.Conv2d), with the cpu's algorithm (native/cpu/conv2d.cc): per
// image, im2col, then the base conv as W·cols per group, each adapter's A as a conv over the
// (dilation-1) columns into u, and its grouped 1×1 B added into the same f32 accumulator; bias and
// one rounding at the end. All GEMMs run in exact fp32 on f32 copies of the factors and columns:
// this path is for correctness and API parity, not yet tuned (16-bit tensor-core GEMMs would
// need u rounded). The backward sums images in order and uses a gather-form col2im (each input
// element adds its kernel positions in a fixed order), so it has no atomics and repeats bit for bit.
#include <vector>
#include "../core/dropout_mask.h"
#include "common.cuh"
#include "device_buffer.h"
#include "ops.h"
#include "runtime.h"

namespace lorakit {
namespace cuda {
namespace {

struct Dims {
  int64_t N, C, H, W, O, kh, kw, Ho, Wo, P, K;
};

Dims dims_of(const TensorRef& x, const TensorRef& W, const ConvGeom& g) {
  Dims d;
  d.N = x.dim(0), d.C = x.dim(1), d.H = x.dim(2), d.W = x.dim(3);
  d.O = W.dim(0), d.kh = W.dim(2), d.kw = W.dim(3);
  d.Ho = conv_out_size(d.H, d.kh, g.sh, g.ph, g.dh);
  d.Wo = conv_out_size(d.W, d.kw, g.sw, g.pw, g.dw);
  d.P = d.Ho * d.Wo;
  d.K = d.C * d.kh * d.kw;
  return d;
}

struct Geo {
  int64_t sh, sw, ph, pw, dh, dw;
};

// cols[(c·kh + i)·kw + j, oh·Wo + ow] = x[n, c, oh·sh − ph + i·dh, ow·sw − pw + j·dw] (0 outside), f32.
__global__ void im2col_kernel(const void* x, DType xt, int64_t base, Dims d, Geo q, float* cols) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < d.K * d.P; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = e / d.P, p = e % d.P;
    const int64_t c = row / (d.kh * d.kw), i = (row / d.kw) % d.kh, j = row % d.kw;
    const int64_t h = (p / d.Wo) * q.sh - q.ph + i * q.dh, w = (p % d.Wo) * q.sw - q.pw + j * q.dw;
    cols[e] = (h >= 0 && h < d.H && w >= 0 && w < d.W) ? load_as_f32(x, xt, base + (c * d.H + h) * d.W + w) : 0.f;
  }
}

// acc[c, h, w] += Σ_{i, j} dcols[(c, i, j), (oh, ow)] over the output positions that read (h, w),
// in (i, j) order: one thread per input element, so no two threads write the same place.
__global__ void col2im_add_kernel(const float* __restrict__ dcols, Dims d, Geo q, float* __restrict__ acc) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < d.C * d.H * d.W; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = e / (d.H * d.W), h = (e / d.W) % d.H, w = e % d.W;
    float s = 0.f;
    for (int64_t i = 0; i < d.kh; i++) {
      const int64_t th = h + q.ph - i * q.dh;
      if (th < 0 || th % q.sh != 0 || th / q.sh >= d.Ho) continue;
      for (int64_t j = 0; j < d.kw; j++) {
        const int64_t tw = w + q.pw - j * q.dw;
        if (tw < 0 || tw % q.sw != 0 || tw / q.sw >= d.Wo) continue;
        s += dcols[((c * d.kh + i) * d.kw + j) * d.P + (th / q.sh) * d.Wo + tw / q.sw];
      }
    }
    acc[e] += s;
  }
}

// y[o, p] = acc[o, p] + bias[o], rounded once into y's dtype.
template <class T>
__global__ void finish_kernel(const float* __restrict__ acc, const void* bias, DType bt, int64_t O, int64_t P, T* __restrict__ y) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < O * P; e += int64_t(gridDim.x) * blockDim.x)
    y[e] = from_f32<T>(acc[e] + (bias ? load_as_f32(bias, bt, e / P) : 0.f));
}

// dst[i] += (mask(i) ? src[i] / (1 − p) : 0), the dropout mask of element offset + i.
__global__ void masked_add_kernel(const float* __restrict__ src, float* __restrict__ dst, int64_t n, uint64_t offset,
                                  uint64_t seed, uint64_t stream, float p) {
  const float keep_scale = 1.f / (1.f - p);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    if (dropout_keep(seed, stream, offset + uint64_t(i), p)) dst[i] += src[i] * keep_scale;
}

template <class T>
__global__ void store_kernel(const float* __restrict__ src, T* __restrict__ dst, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = from_f32<T>(src[i]);
}

unsigned grid(int64_t n) { return blocks_for(n, 256); }

void im2col(const TensorRef& x, int64_t n, const Dims& d, Geo q, float* cols) {
  im2col_kernel<<<grid(d.K * d.P), 256, 0, stream()>>>(x.data, x.dtype, n * d.C * d.H * d.W, d, q, cols);
  LK_LAUNCHED("conv2d: im2col");
}

void zero(void* p, size_t bytes) {
  if (bytes) LK_CUDA(cudaMemsetAsync(p, 0, bytes, stream()), "memset");
}

void store(const float* src, const TensorRef& dst, int64_t offset, int64_t n) {
  dispatch_float(dst.dtype, "output", [&](auto z) {
    using T = decltype(z);
    store_kernel<T><<<grid(n), 256, 0, stream()>>>(src, dst.as<T>() + offset, n);
  });
  LK_LAUNCHED("conv2d: store");
}

}  // namespace

void conv2d_forward(const TensorRef& x, const TensorRef& W, const TensorRef* bias, const ConvGeom& g,
                    const std::vector<ConvTerm>& terms, const int32_t* image_adapter, const TensorRef& y) {
  const Dims d = dims_of(x, W, g);
  if (d.N == 0 || d.O == 0 || d.P == 0) return;
  const Geo base{g.sh, g.sw, g.ph, g.pw, g.dh, g.dw}, dil1{g.sh, g.sw, g.ph, g.pw, 1, 1};
  const int64_t Kg = d.K / g.groups, og = d.O / g.groups;
  std::vector<Buf> hold;
  const float* Wf = as_f32(W, hold);
  std::vector<const float*> Af, Bf;
  for (const auto& t : terms) {
    Af.push_back(as_f32(t.A, hold));
    Bf.push_back(as_f32(t.B, hold));
  }
  Buf cols(d.K * d.P * sizeof(float)), colsA(terms.empty() ? 0 : d.K * d.P * sizeof(float)), acc(d.O * d.P * sizeof(float));
  for (int64_t n = 0; n < d.N; n++) {
    im2col(x, n, d, base, cols.f());
    auto used = [&](size_t a) { return !image_adapter || image_adapter[n] == static_cast<int32_t>(a); };
    for (size_t a = 0; a < terms.size(); a++) {  // u_n = A_flat [r, K]·cols(xa_n, dilation 1)
      if (!used(a)) continue;
      const auto& t = terms[a];
      const int64_t r = t.A.dim(0);
      const bool same = t.xa.data == x.data && g.dh == 1 && g.dw == 1;
      if (!same) im2col(t.xa, n, d, dil1, colsA.f());
      gemm_rm(r, d.P, d.K, Af[a], d.K, false, same ? cols.f() : colsA.f(), d.P, false, t.u.as<float>() + n * r * d.P, d.P,
              DType::F32, DType::F32, 1.f);
    }
    for (int64_t grp = 0; grp < g.groups; grp++) {
      float* accg = acc.f() + grp * og * d.P;
      gemm_rm(og, d.P, Kg, Wf + grp * og * Kg, Kg, false, cols.f() + grp * Kg * d.P, d.P, false, accg, d.P, DType::F32,
              DType::F32, 1.f);
      for (size_t a = 0; a < terms.size(); a++) {  // += scale·B_g [og, rg]·u_g [rg, P]
        if (!used(a)) continue;
        const auto& t = terms[a];
        const int64_t r = t.A.dim(0), rg = r / g.groups;
        gemm_rm(og, d.P, rg, Bf[a] + grp * og * rg, rg, false, t.u.as<float>() + (n * r + grp * rg) * d.P, d.P, false, accg,
                d.P, DType::F32, DType::F32, t.scale, 1.f);
      }
    }
    dispatch_float(y.dtype, "y", [&](auto z) {
      using T = decltype(z);
      finish_kernel<T><<<grid(d.O * d.P), 256, 0, stream()>>>(acc.f(), bias ? bias->data : nullptr,
                                                              bias ? bias->dtype : DType::F32, d.O, d.P,
                                                              y.as<T>() + n * d.O * d.P);
    });
    LK_LAUNCHED("conv2d: finish");
  }
}

void conv2d_backward(const TensorRef& dy, const TensorRef& W, const ConvGeom& g, const std::vector<ConvTerm>& terms,
                     const TensorRef* dx) {
  if (terms.empty() && !dx) return;
  const TensorRef& xs = !terms.empty() ? terms[0].xa : *dx;
  const Dims d = dims_of(xs, W, g);
  const Geo base{g.sh, g.sw, g.ph, g.pw, g.dh, g.dw}, dil1{g.sh, g.sw, g.ph, g.pw, 1, 1};
  const int64_t Kg = d.K / g.groups, og = d.O / g.groups, CHW = d.C * d.H * d.W;
  std::vector<Buf> hold;
  const float* Wf = as_f32(W, hold);
  std::vector<const float*> Af, Bf;
  std::vector<Buf> gs, dAacc, dBacc;
  for (const auto& t : terms) {
    const int64_t r = t.A.dim(0);
    Af.push_back(as_f32(t.A, hold));
    Bf.push_back(as_f32(t.B, hold));
    gs.emplace_back(r * d.P * sizeof(float));
    dAacc.emplace_back(t.dA ? r * d.K * sizeof(float) : 0);
    dBacc.emplace_back(t.dB ? d.O * (r / g.groups) * sizeof(float) : 0);
    zero(dAacc.back().p, dAacc.back().n);
    zero(dBacc.back().p, dBacc.back().n);
  }
  Buf dyf(d.O * d.P * sizeof(float)), cols(d.K * d.P * sizeof(float)), dcols(dx ? d.K * d.P * sizeof(float) : 0),
      dxacc(dx ? CHW * sizeof(float) : 0), tmp(dx ? CHW * sizeof(float) : 0);
  for (int64_t n = 0; n < d.N; n++) {
    convert(static_cast<const char*>(dy.data) + n * d.O * d.P * dtype_size(dy.dtype), dy.dtype, dyf.p, DType::F32, d.O * d.P);
    for (size_t a = 0; a < terms.size(); a++) {
      const auto& t = terms[a];
      const int64_t r = t.A.dim(0), rg = r / g.groups;
      for (int64_t grp = 0; grp < g.groups; grp++)  // g_n[group rows] = scale·B_gᵀ·dy_n[group]
        gemm_rm(rg, d.P, og, Bf[a] + grp * og * rg, rg, true, dyf.f() + grp * og * d.P, d.P, false, gs[a].f() + grp * rg * d.P,
                d.P, DType::F32, DType::F32, t.scale);
      if (t.dA) {  // dA += g_n·cols(xa_n)ᵀ
        im2col(t.xa, n, d, dil1, cols.f());
        gemm_rm(r, d.K, d.P, gs[a].f(), d.P, false, cols.f(), d.P, true, dAacc[a].f(), d.K, DType::F32, DType::F32, 1.f, 1.f);
      }
      if (t.dB)  // dB[group rows] += scale·dy_n[group]·u_n[group]ᵀ
        for (int64_t grp = 0; grp < g.groups; grp++)
          gemm_rm(og, rg, d.P, dyf.f() + grp * og * d.P, d.P, false, t.u.as<float>() + (n * r + grp * rg) * d.P, d.P, true,
                  dBacc[a].f() + grp * og * rg, rg, DType::F32, DType::F32, t.scale, 1.f);
    }
    if (!dx) continue;
    zero(dxacc.p, dxacc.n);
    for (int64_t grp = 0; grp < g.groups; grp++)  // dcols = W_gᵀ·dy_n[group]
      gemm_rm(Kg, d.P, og, Wf + grp * og * Kg, Kg, true, dyf.f() + grp * og * d.P, d.P, false, dcols.f() + grp * Kg * d.P, d.P,
              DType::F32, DType::F32, 1.f);
    col2im_add_kernel<<<grid(CHW), 256, 0, stream()>>>(dcols.f(), d, base, dxacc.f());
    LK_LAUNCHED("conv2d: col2im");
    bool any_plain = false;
    for (size_t a = 0; a < terms.size(); a++) {  // adapters without dropout share one Σ A_flatᵀ·g_n
      const auto& t = terms[a];
      if (t.dropout_p > 0.f) continue;
      gemm_rm(d.K, d.P, t.A.dim(0), Af[a], d.K, true, gs[a].f(), d.P, false, dcols.f(), d.P, DType::F32, DType::F32, 1.f,
              any_plain ? 1.f : 0.f);
      any_plain = true;
    }
    if (any_plain) {
      col2im_add_kernel<<<grid(CHW), 256, 0, stream()>>>(dcols.f(), d, dil1, dxacc.f());
      LK_LAUNCHED("conv2d: col2im");
    }
    for (size_t a = 0; a < terms.size(); a++) {  // each dropout adapter through its own mask
      const auto& t = terms[a];
      if (t.dropout_p <= 0.f) continue;
      gemm_rm(d.K, d.P, t.A.dim(0), Af[a], d.K, true, gs[a].f(), d.P, false, dcols.f(), d.P, DType::F32, DType::F32, 1.f);
      zero(tmp.p, tmp.n);
      col2im_add_kernel<<<grid(CHW), 256, 0, stream()>>>(dcols.f(), d, dil1, tmp.f());
      masked_add_kernel<<<grid(CHW), 256, 0, stream()>>>(tmp.f(), dxacc.f(), CHW, uint64_t(n * CHW), t.seed, t.stream,
                                                         t.dropout_p);
      LK_LAUNCHED("conv2d: dropout");
    }
    store(dxacc.f(), *dx, n * CHW, CHW);
  }
  for (size_t a = 0; a < terms.size(); a++) {
    const auto& t = terms[a];
    if (t.dA) store(dAacc[a].f(), *t.dA, 0, t.A.dim(0) * d.K);
    if (t.dB) store(dBacc[a].f(), *t.dB, 0, t.dB->numel());
  }
}

}  // namespace cuda
}  // namespace lorakit
