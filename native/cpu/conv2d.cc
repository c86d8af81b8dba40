// Conv2d through im2col plus the packed GEMM (gemm.h): per image, cols [C·kh·kw, Ho·Wo] and
// y_n = W·cols for each group, with the LoRA 1×1 expand and the bias as extra K segments.
#include <algorithm>
#include <cstring>
#include <memory>
#include "../core/thread_pool.h"
#include "gemm.h"
#include "ops.h"

namespace lorakit {
namespace cpu {
namespace {

struct Dims {
  int64_t N, C, H, W, O, kh, kw, Ho, Wo, P, K;  // K = C·kh·kw (all input channels)
};

// cols[(c·kh + i)·kw + j, oh·Wo + ow] = x[n, c, oh·sh − ph + i·dh, ow·sw − pw + j·dw] (0 outside).
void im2col(const TensorRef& x, int64_t n, const Dims& d, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
            int64_t dw, float* cols) {
  const int64_t base = n * d.C * d.H * d.W;
  parallel_for(
      d.K,
      [&](int64_t b, int64_t e) {
        for (int64_t row = b; row < e; row++) {
          int64_t c = row / (d.kh * d.kw), i = (row / d.kw) % d.kh, j = row % d.kw;
          float* out = cols + row * d.P;
          for (int64_t oh = 0; oh < d.Ho; oh++) {
            int64_t h = oh * sh - ph + i * dh;
            for (int64_t ow = 0; ow < d.Wo; ow++) {
              int64_t w = ow * sw - pw + j * dw;
              out[oh * d.Wo + ow] =
                  (h >= 0 && h < d.H && w >= 0 && w < d.W) ? load_f32(x.data, x.dtype, base + (c * d.H + h) * d.W + w) : 0.f;
            }
          }
        }
      },
      std::max<int64_t>(1, 4096 / std::max<int64_t>(1, d.P)));
}

// acc[c, h, w] += Σ over (i, j, oh, ow) mapping to (h, w) of dcols[...]; parallel over channels, fixed order.
void col2im_add(const float* dcols, const Dims& d, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                float* acc) {
  parallel_for(d.C, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; c++)
      for (int64_t i = 0; i < d.kh; i++)
        for (int64_t j = 0; j < d.kw; j++) {
          const float* src = dcols + ((c * d.kh + i) * d.kw + j) * d.P;
          float* dst = acc + c * d.H * d.W;
          for (int64_t oh = 0; oh < d.Ho; oh++) {
            int64_t h = oh * sh - ph + i * dh;
            if (h < 0 || h >= d.H) continue;
            for (int64_t ow = 0; ow < d.Wo; ow++) {
              int64_t w = ow * sw - pw + j * dw;
              if (w >= 0 && w < d.W) dst[h * d.W + w] += src[oh * d.Wo + ow];
            }
          }
        }
  });
}

Dims dims_of(const TensorRef& x, const TensorRef& W, const ConvGeom& g) {
  Dims d;
  d.N = x.dim(0);
  d.C = x.dim(1);
  d.H = x.dim(2);
  d.W = x.dim(3);
  d.O = W.dim(0);
  d.kh = W.dim(2);
  d.kw = W.dim(3);
  d.Ho = conv_out_size(d.H, d.kh, g.sh, g.ph, g.dh);
  d.Wo = conv_out_size(d.W, d.kw, g.sw, g.pw, g.dw);
  d.P = d.Ho * d.Wo;
  d.K = d.C * d.kh * d.kw;
  return d;
}

bool same_cols(const TensorRef& x, const ConvTerm& t, const ConvGeom& g) {
  return t.xa.data == x.data && g.dh == 1 && g.dw == 1;
}

}  // namespace

void conv2d_forward(const TensorRef& x, const TensorRef& W, const TensorRef* bias, const ConvGeom& g,
                    const std::vector<ConvTerm>& terms, const int32_t* image_adapter, const TensorRef& y) {
  Dims d = dims_of(x, W, g);
  int64_t Kg = d.K / g.groups, og = d.O / g.groups;
  std::unique_ptr<float[]> cols(new float[std::max<int64_t>(1, d.K * d.P)]), colsA(new float[std::max<int64_t>(1, d.K * d.P)]);
  std::unique_ptr<float[]> ones(new float[std::max<int64_t>(1, d.P)]);
  std::fill(ones.get(), ones.get() + d.P, 1.f);
  for (int64_t n = 0; n < d.N; n++) {
    im2col(x, n, d, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, cols.get());
    auto used = [&](size_t a) { return !image_adapter || image_adapter[n] == static_cast<int32_t>(a); };
    // u_n = A_flat [r, K] · im2col(xa_n, dilation 1)
    for (size_t a = 0; a < terms.size(); a++) {
      if (!used(a)) continue;
      const auto& t = terms[a];
      int64_t r = t.A.dim(0);
      const float* c = cols.get();
      if (!same_cols(x, t, g)) {
        im2col(t.xa, n, d, g.sh, g.sw, g.ph, g.pw, 1, 1, colsA.get());
        c = colsA.get();
      }
      GemmOutput uo;
      uo.data = static_cast<float*>(t.u.data) + n * r * d.P;
      uo.ldc = d.P;
      gemm(r, d.P, {{row_major(t.A.data, t.A.dtype, d.K), row_major(c, DType::F32, d.P), d.K, 1.f}}, uo);
    }
    for (int64_t grp = 0; grp < g.groups; grp++) {
      std::vector<KSegment> segs;
      segs.push_back({MatView{static_cast<const char*>(W.data) + grp * og * Kg * dtype_size(W.dtype), W.dtype, Kg, 1},
                      row_major(cols.get() + grp * Kg * d.P, DType::F32, d.P), Kg, 1.f});
      for (size_t a = 0; a < terms.size(); a++) {
        if (!used(a)) continue;
        const auto& t = terms[a];
        int64_t r = t.A.dim(0), rg = r / g.groups;
        const float* u = static_cast<const float*>(t.u.data) + n * r * d.P + grp * rg * d.P;
        segs.push_back({MatView{static_cast<const char*>(t.B.data) + grp * og * rg * dtype_size(t.B.dtype), t.B.dtype, rg, 1},
                        row_major(u, DType::F32, d.P), rg, t.scale});
      }
      if (bias)  // bias[o]·1 as a K = 1 segment: the bias is per output row here
        segs.push_back({MatView{static_cast<const char*>(bias->data) + grp * og * dtype_size(bias->dtype), bias->dtype, 1, 0},
                        row_major(ones.get(), DType::F32, d.P), 1, 1.f});
      GemmOutput o;
      o.data = static_cast<char*>(y.data) + (n * d.O + grp * og) * d.P * dtype_size(y.dtype);
      o.dtype = y.dtype;
      o.ldc = d.P;
      gemm(og, d.P, segs, o);
    }
  }
}

void conv2d_backward(const TensorRef& dy, const TensorRef& W, const ConvGeom& g, const std::vector<ConvTerm>& terms,
                     const TensorRef* dx) {
  if (terms.empty() && !dx) return;
  // x's shape comes from the first term's xa when present, else from dx.
  const TensorRef& xs = !terms.empty() ? terms[0].xa : *dx;
  Dims d = dims_of(xs, W, g);
  int64_t Kg = d.K / g.groups, og = d.O / g.groups;
  int64_t CHW = d.C * d.H * d.W;
  std::unique_ptr<float[]> cols(new float[std::max<int64_t>(1, d.K * d.P)]), dcols(new float[std::max<int64_t>(1, d.K * d.P)]);
  std::unique_ptr<float[]> dxacc, tmp;
  if (dx) dxacc.reset(new float[std::max<int64_t>(1, CHW)]);
  // Per adapter: g_n [r, P] scratch, and an f32 dA accumulator over images.
  std::vector<std::unique_ptr<float[]>> gs, dAacc;
  for (const auto& t : terms) {
    int64_t r = t.A.dim(0);
    gs.emplace_back(new float[std::max<int64_t>(1, r * d.P)]);
    dAacc.emplace_back(t.dA ? new float[std::max<int64_t>(1, r * d.K)]() : nullptr);
  }
  for (int64_t n = 0; n < d.N; n++) {
    const char* dyn = static_cast<const char*>(dy.data) + n * d.O * d.P * dtype_size(dy.dtype);
    for (size_t a = 0; a < terms.size(); a++) {
      const auto& t = terms[a];
      int64_t r = t.A.dim(0), rg = r / g.groups;
      // g_n[group rows] = scale·B_gᵀ·dy_n[group]
      for (int64_t grp = 0; grp < g.groups; grp++) {
        GemmOutput o;
        o.data = gs[a].get() + grp * rg * d.P;
        o.ldc = d.P;
        MatView bt{static_cast<const char*>(t.B.data) + grp * og * rg * dtype_size(t.B.dtype), t.B.dtype, 1, rg};
        gemm(rg, d.P, {{bt, row_major(dyn + grp * og * d.P * dtype_size(dy.dtype), dy.dtype, d.P), og, t.scale}}, o);
      }
      if (t.dA) {  // dA += g_n · colsA_nᵀ
        im2col(t.xa, n, d, g.sh, g.sw, g.ph, g.pw, 1, 1, cols.get());
        GemmOutput o;
        o.data = dAacc[a].get();
        o.ldc = d.K;
        o.beta = 1.f;
        gemm(r, d.K, {{row_major(gs[a].get(), DType::F32, d.P), transposed(cols.get(), DType::F32, d.P), d.P, 1.f}}, o);
      }
    }
    if (!dx) continue;
    std::fill(dxacc.get(), dxacc.get() + CHW, 0.f);
    // Base: dcols[group K block] = W_gᵀ · dy_n[group], then col2im with the base dilation.
    for (int64_t grp = 0; grp < g.groups; grp++) {
      GemmOutput o;
      o.data = dcols.get() + grp * Kg * d.P;
      o.ldc = d.P;
      MatView wt{static_cast<const char*>(W.data) + grp * og * Kg * dtype_size(W.dtype), W.dtype, 1, Kg};
      gemm(Kg, d.P, {{wt, row_major(dyn + grp * og * d.P * dtype_size(dy.dtype), dy.dtype, d.P), og, 1.f}}, o);
    }
    col2im_add(dcols.get(), d, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, dxacc.get());
    // Adapters without dropout share one dcols = Σ A_flatᵀ·g_n; each dropout adapter gets its mask.
    std::vector<KSegment> plain;
    for (size_t a = 0; a < terms.size(); a++) {
      const auto& t = terms[a];
      if (t.dropout_p > 0.f) continue;
      int64_t r = t.A.dim(0);
      plain.push_back({transposed(t.A.data, t.A.dtype, d.K), row_major(gs[a].get(), DType::F32, d.P), r, 1.f});
    }
    if (!plain.empty()) {
      GemmOutput o;
      o.data = dcols.get();
      o.ldc = d.P;
      gemm(d.K, d.P, plain, o);
      col2im_add(dcols.get(), d, g.sh, g.sw, g.ph, g.pw, 1, 1, dxacc.get());
    }
    for (size_t a = 0; a < terms.size(); a++) {
      const auto& t = terms[a];
      if (t.dropout_p <= 0.f) continue;
      int64_t r = t.A.dim(0);
      if (!tmp) tmp.reset(new float[std::max<int64_t>(1, CHW)]);
      std::fill(tmp.get(), tmp.get() + CHW, 0.f);
      GemmOutput o;
      o.data = dcols.get();
      o.ldc = d.P;
      gemm(d.K, d.P, {{transposed(t.A.data, t.A.dtype, d.K), row_major(gs[a].get(), DType::F32, d.P), r, 1.f}}, o);
      col2im_add(dcols.get(), d, g.sh, g.sw, g.ph, g.pw, 1, 1, tmp.get());
      float keep_scale = 1.f / (1.f - t.dropout_p);
      for (int64_t i = 0; i < CHW; i++)
        if (dropout_keep(t.seed, t.stream, static_cast<uint64_t>(n * CHW + i), t.dropout_p)) dxacc[i] += tmp[i] * keep_scale;
    }
    convert(dxacc.get(), DType::F32, static_cast<char*>(dx->data) + n * CHW * dtype_size(dx->dtype), dx->dtype, CHW);
  }
  // dB[group rows] = scale·Σ_n dy_n[group]·u_n[group]ᵀ: one GEMM with a K segment per image.
  for (size_t a = 0; a < terms.size(); a++) {
    const auto& t = terms[a];
    if (t.dA) convert(dAacc[a].get(), DType::F32, t.dA->data, t.dA->dtype, t.A.dim(0) * d.K);
    if (!t.dB) continue;
    int64_t r = t.A.dim(0), rg = r / g.groups;
    for (int64_t grp = 0; grp < g.groups; grp++) {
      std::vector<KSegment> segs;
      for (int64_t n = 0; n < d.N; n++) {
        const char* dyg = static_cast<const char*>(dy.data) + (n * d.O + grp * og) * d.P * dtype_size(dy.dtype);
        const float* ug = static_cast<const float*>(t.u.data) + (n * r + grp * rg) * d.P;
        segs.push_back({row_major(dyg, dy.dtype, d.P), transposed(ug, DType::F32, d.P), d.P, t.scale});
      }
      GemmOutput o;
      o.data = static_cast<char*>(t.dB->data) + grp * og * rg * dtype_size(t.dB->dtype);
      o.dtype = t.dB->dtype;
      o.ldc = rg;
      gemm(og, rg, segs, o);
    }
  }
}

}  // namespace cpu
}  // namespace lorakit
