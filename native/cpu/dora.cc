#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include "../core/thread_pool.h"
#include "gemm.h"
#include "ops.h"

namespace lorakit {
namespace cpu {
namespace {

// Wᵀ as the [in, out] B operand of x·Wᵀ.
MatView weight_t(const TensorRef& W, bool fifo, int64_t in, int64_t outf) {
  return fifo ? row_major(W.data, W.dtype, outf) : transposed(W.data, W.dtype, in);
}

std::unique_ptr<float[]> scale_vector(const TensorRef& magnitude, const float* norm, int64_t outf) {
  std::unique_ptr<float[]> k(new float[outf]);
  for (int64_t o = 0; o < outf; o++) k[o] = load_f32(magnitude.data, magnitude.dtype, o) / norm[o];
  return k;
}

// ‖W_o‖² per output, f64 sums stored f32 (kept by the caller while W is unchanged).
void row_squares(const TensorRef& W, bool fan_in_fan_out, int64_t in, int64_t outf, float* wsq) {
  parallel_for(
      outf,
      [&](int64_t b, int64_t e) {
        for (int64_t o = b; o < e; o++) {
          double s = 0;
          if (fan_in_fan_out) {
            for (int64_t i = 0; i < in; i++) {
              double v = load_f32(W.data, W.dtype, i * outf + o);
              s += v * v;
            }
          } else if (W.dtype == DType::F32) {
            // f32 partial sums over 64-element blocks (vectorizable), accumulated in f64.
            const float* row = static_cast<const float*>(W.data) + o * in;
            int64_t i = 0;
            for (; i + 64 <= in; i += 64) {
              float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
              for (int64_t j = 0; j < 64; j += 8)
                for (int l = 0; l < 8; l++) part[l] += row[i + j + l] * row[i + j + l];
              s += double(part[0]) + part[1] + part[2] + part[3] + part[4] + part[5] + part[6] + part[7];
            }
            for (; i < in; i++) s += double(row[i]) * row[i];
          } else {
            for (int64_t i = 0; i < in; i++) {
              double v = load_f32(W.data, W.dtype, o * in + i);
              s += v * v;
            }
          }
          wsq[o] = static_cast<float>(s);
        }
      },
      std::max<int64_t>(1, 4096 / std::max<int64_t>(1, in)));
}

// norm[o] from ‖W_o‖² and M = W·Aᵀ (element (o, k) at Mp[o·m_rs + k·m_cs]) by the low-rank identity.
void norm_from_projection(const TensorRef& A, const TensorRef& B, float scale, int64_t in, int64_t outf, const float* wsq,
                          const float* Mp, int64_t m_rs, int64_t m_cs, float* norm) {
  int64_t r = A.dim(0);
  // G = A·Aᵀ [r, r] in f64, from an f32 copy of A (no per-element dtype dispatch in the loops)
  std::unique_ptr<float[]> Af(new float[std::max<int64_t>(1, r * in)]);
  convert(A.data, A.dtype, Af.get(), DType::F32, r * in);
  std::unique_ptr<double[]> G(new double[std::max<int64_t>(1, r * r)]);
  for (int64_t a = 0; a < r; a++)
    for (int64_t b = a; b < r; b++) {
      const float* pa = Af.get() + a * in;
      const float* pb = Af.get() + b * in;
      double s = 0;
      for (int64_t i = 0; i < in; i++) s += double(pa[i]) * pb[i];
      G[a * r + b] = G[b * r + a] = s;
    }
  std::unique_ptr<float[]> Bf(new float[std::max<int64_t>(1, outf * r)]);
  convert(B.data, B.dtype, Bf.get(), DType::F32, outf * r);
  const double* Gp = G.get();
  const float* Bp = Bf.get();
  parallel_for(
      outf,
      [&](int64_t b, int64_t e) {
        for (int64_t o = b; o < e; o++) {
          const float* bo = Bp + o * r;
          double cross = 0, quad = 0;
          for (int64_t k = 0; k < r; k++) {
            double bg = 0;
            for (int64_t j = 0; j < r; j++) bg += double(bo[j]) * Gp[j * r + k];
            cross += double(Mp[o * m_rs + k * m_cs]) * bo[k];
            quad += bg * bo[k];
          }
          double n2 = double(wsq[o]) + 2.0 * scale * cross + double(scale) * scale * quad;
          norm[o] = static_cast<float>(std::sqrt(std::max(0.0, n2)));
        }
      },
      std::max<int64_t>(1, 256 / std::max<int64_t>(1, r * r)));
}

}  // namespace

void dora_weight_norm(const TensorRef& W, const TensorRef& A, const TensorRef& B, float scale, bool fan_in_fan_out,
                      float* norm, float* wsq, bool wsq_ready) {
  int64_t in = fan_in_fan_out ? W.dim(0) : W.dim(1);
  int64_t outf = fan_in_fan_out ? W.dim(1) : W.dim(0);
  int64_t r = A.dim(0);
  std::unique_ptr<float[]> own;
  if (!wsq) own.reset(new float[std::max<int64_t>(1, outf)]);
  float* sq = wsq ? wsq : own.get();
  if (!wsq || !wsq_ready) row_squares(W, fan_in_fan_out, in, outf, sq);
  // Mᵀ = A·Wᵀ [r, out]: one pass over W, in the forward's orientation (r rows against W, which the
  // GEMM streams well; W·Aᵀ with W as the tall operand is far slower for small r).
  std::unique_ptr<float[]> M(new float[std::max<int64_t>(1, outf * r)]);
  GemmOutput mo;
  mo.data = M.get();
  mo.ldc = outf;
  gemm(r, outf, {{row_major(A.data, A.dtype, in), weight_t(W, fan_in_fan_out, in, outf), in, 1.f}}, mo);
  norm_from_projection(A, B, scale, in, outf, sq, M.get(), 1, outf, norm);
}

void dora_linear_forward(const TensorRef& x, const TensorRef& xa, const TensorRef& W, const TensorRef* bias,
                         bool fan_in_fan_out, const TensorRef* u, const TensorRef& A, const TensorRef& B, float scale,
                         const TensorRef& magnitude, float* norm, bool norm_ready, float* wsq, bool wsq_ready,
                         const TensorRef& y, const TensorRef* pre) {
  int64_t in = fan_in_fan_out ? W.dim(0) : W.dim(1);
  int64_t outf = fan_in_fan_out ? W.dim(1) : W.dim(0);
  int64_t n = x.rows(), r = A.dim(0);
  MatView wt = weight_t(W, fan_in_fan_out, in, outf);
  // u = xa·Aᵀ, into the caller's tensor (kept for backward) or f32 scratch.
  std::unique_ptr<float[]> own_u;
  GemmOutput uo;
  uo.ldc = r;
  if (u) {
    uo.data = u->data;
    uo.dtype = u->dtype;
  } else {
    own_u.reset(new float[std::max<int64_t>(1, n * r)]);
    uo.data = own_u.get();
  }
  gemm(n, r, {{row_major(xa.data, xa.dtype, in), transposed(A.data, A.dtype, in), in, 1.f}}, uo);
  std::unique_ptr<float[]> own_pre;
  float* P = nullptr;
  if (!norm_ready && xa.data == x.data) {
    // The norm is due and there is no dropout: A's r rows stacked under x (with zero u rows), so one
    // GEMM streams W for pre = x·Wᵀ + s·u·Bᵀ and for the norm's projection A·Wᵀ.
    const int64_t m = n + r;
    std::unique_ptr<float[]> X(new float[std::max<int64_t>(1, m * in)]), U(new float[std::max<int64_t>(1, m * r)]());
    convert(x.data, x.dtype, X.get(), DType::F32, n * in);
    convert(A.data, A.dtype, X.get() + n * in, DType::F32, r * in);
    convert(uo.data, uo.dtype, U.get(), DType::F32, n * r);
    own_pre.reset(new float[std::max<int64_t>(1, m * outf)]);
    GemmOutput po;
    po.data = own_pre.get();
    po.ldc = outf;
    gemm(m, outf,
         {{row_major(X.get(), DType::F32, in), wt, in, 1.f}, {row_major(U.get(), DType::F32, r), transposed(B.data, B.dtype, r), r, scale}},
         po);
    std::unique_ptr<float[]> own_sq;
    if (!wsq) own_sq.reset(new float[std::max<int64_t>(1, outf)]);
    float* sq = wsq ? wsq : own_sq.get();
    if (!wsq || !wsq_ready) row_squares(W, fan_in_fan_out, in, outf, sq);
    norm_from_projection(A, B, scale, in, outf, sq, own_pre.get() + n * outf, 1, outf, norm);
    P = own_pre.get();
    if (pre) std::memcpy(pre->data, P, n * outf * sizeof(float));
  } else {
    if (!norm_ready) dora_weight_norm(W, A, B, scale, fan_in_fan_out, norm, wsq, wsq_ready);
    // pre = xa·Wᵀ + s·u·Bᵀ in one GEMM (the adapter as a K extension), f32
    P = pre ? static_cast<float*>(pre->data) : (own_pre.reset(new float[std::max<int64_t>(1, n * outf)]), own_pre.get());
    GemmOutput po;
    po.data = P;
    po.ldc = outf;
    gemm(n, outf,
         {{row_major(xa.data, xa.dtype, in), wt, in, 1.f}, {row_major(uo.data, uo.dtype, r), transposed(B.data, B.dtype, r), r, scale}},
         po);
  }
  std::unique_ptr<float[]> diff;
  if (xa.data != x.data) {  // (x − xa)·Wᵀ: the base path outside the dropout
    diff.reset(new float[std::max<int64_t>(1, n * outf)]);
    GemmOutput d;
    d.data = diff.get();
    d.ldc = outf;
    gemm(n, outf, {{row_major(x.data, x.dtype, in), wt, in, 1.f}, {row_major(xa.data, xa.dtype, in), wt, in, -1.f}}, d);
  }
  std::unique_ptr<float[]> k = scale_vector(magnitude, norm, outf);
  std::unique_ptr<float[]> bvec;
  if (bias) {
    bvec.reset(new float[std::max<int64_t>(1, outf)]);
    convert(bias->data, bias->dtype, bvec.get(), DType::F32, outf);
  }
  const float* kp = k.get();
  const float* dp = diff.get();
  const float* bp = bvec.get();
  parallel_for(
      n,
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; i++) {
          const float* prow = P + i * outf;
          if (!dp && y.dtype == DType::F32) {  // the common f32 case, vectorizable
            float* yrow = static_cast<float*>(y.data) + i * outf;
            if (bp)
              for (int64_t o = 0; o < outf; o++) yrow[o] = kp[o] * prow[o] + bp[o];
            else
              for (int64_t o = 0; o < outf; o++) yrow[o] = kp[o] * prow[o];
            continue;
          }
          for (int64_t o = 0; o < outf; o++) {
            float v = kp[o] * prow[o];
            if (dp) v += dp[i * outf + o];
            if (bp) v += bp[o];
            store_f32(y.data, y.dtype, i * outf + o, v);
          }
        }
      },
      std::max<int64_t>(1, 8192 / std::max<int64_t>(1, outf)));
}

void dora_linear_backward(const TensorRef& dy, const TensorRef& W, bool fan_in_fan_out, const DoraBackwardArgs& a,
                          const TensorRef* dx, const TensorRef* dA, const TensorRef* dB, const TensorRef* dmagnitude) {
  int64_t in = fan_in_fan_out ? W.dim(0) : W.dim(1);
  int64_t outf = fan_in_fan_out ? W.dim(1) : W.dim(0);
  int64_t n = dy.numel() / outf, r = a.B.dim(1);
  std::unique_ptr<float[]> k = scale_vector(a.magnitude, a.norm, outf);
  const float* kp = k.get();
  if (dmagnitude) {  // column sums of dy⊙pre, f64, in row order (deterministic)
    parallel_for(
        outf,
        [&](int64_t b, int64_t e) {
          for (int64_t o = b; o < e; o++) {
            double s = 0;
            for (int64_t i = 0; i < n; i++) s += double(load_f32(dy.data, dy.dtype, i * outf + o)) * a.pre.as<float>()[i * outf + o];
            store_f32(dmagnitude->data, dmagnitude->dtype, o, static_cast<float>(s / a.norm[o]));
          }
        },
        std::max<int64_t>(1, 4096 / std::max<int64_t>(1, n)));
  }
  // dyk = k⊙dy (f32)
  std::unique_ptr<float[]> dyk(new float[n * outf]);
  float* dykp = dyk.get();
  parallel_for(
      n,
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; i++)
          for (int64_t o = 0; o < outf; o++) dykp[i * outf + o] = kp[o] * load_f32(dy.data, dy.dtype, i * outf + o);
      },
      std::max<int64_t>(1, 8192 / std::max<int64_t>(1, outf)));
  MatView dykv = row_major(dykp, DType::F32, outf);
  // g = scale·dyk·B [n, r]
  std::unique_ptr<float[]> g(new float[std::max<int64_t>(1, n * r)]);
  {
    GemmOutput o;
    o.data = g.get();
    o.ldc = r;
    gemm(n, r, {{dykv, row_major(a.B.data, a.B.dtype, r), outf, a.scale}}, o);
  }
  if (dB) {
    GemmOutput o;
    o.data = dB->data;
    o.dtype = dB->dtype;
    o.ldc = r;
    gemm(outf, r, {{transposed(dykp, DType::F32, outf), row_major(a.u.data, a.u.dtype, r), n, a.scale}}, o);
  }
  if (dA) {
    GemmOutput o;
    o.data = dA->data;
    o.dtype = dA->dtype;
    o.ldc = in;
    gemm(r, in, {{transposed(g.get(), DType::F32, r), row_major(a.xa.data, a.xa.dtype, in), n, 1.f}}, o);
  }
  if (!dx) return;
  MatView w = fan_in_fan_out ? transposed(W.data, W.dtype, outf) : row_major(W.data, W.dtype, in);  // [out, in]
  MatView gv = row_major(g.get(), DType::F32, r);
  MatView av = row_major(a.A.data, a.A.dtype, in);
  if (a.dropout_p <= 0.f) {
    GemmOutput o;
    o.data = dx->data;
    o.dtype = dx->dtype;
    o.ldc = in;
    gemm(n, in, {{dykv, w, outf, 1.f}, {gv, av, r, 1.f}}, o);
    return;
  }
  // (k − 1)⊙dy reuses dyk's buffer after dA/dB are done with it.
  parallel_for(
      n,
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; i++)
          for (int64_t o = 0; o < outf; o++) dykp[i * outf + o] -= load_f32(dy.data, dy.dtype, i * outf + o);
      },
      std::max<int64_t>(1, 8192 / std::max<int64_t>(1, outf)));
  std::unique_ptr<float[]> base(new float[n * in]), inner(new float[n * in]);
  GemmOutput ob;
  ob.data = base.get();
  ob.ldc = in;
  gemm(n, in, {{row_major(dy.data, dy.dtype, outf), w, outf, 1.f}}, ob);
  GemmOutput oi;
  oi.data = inner.get();
  oi.ldc = in;
  gemm(n, in, {{dykv, w, outf, 1.f}, {gv, av, r, 1.f}}, oi);
  float keep_scale = 1.f / (1.f - a.dropout_p);
  float* bp = base.get();
  const float* ip = inner.get();
  parallel_for(
      n * in,
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; i++)
          if (dropout_keep(a.seed, a.stream, static_cast<uint64_t>(i), a.dropout_p)) bp[i] += ip[i] * keep_scale;
      },
      1 << 14);
  convert(bp, DType::F32, dx->data, dx->dtype, n * in);
}

void dora_merge(const TensorRef& W, const TensorRef& A, const TensorRef& B, float scale, bool fan_in_fan_out,
                const TensorRef& magnitude, const float* norm, bool inverse, const TensorRef& out) {
  int64_t rows = W.dim(0), cols = W.dim(1), r = A.dim(0);
  int64_t outf = fan_in_fan_out ? cols : rows;
  std::unique_ptr<float[]> k = scale_vector(magnitude, norm, outf);
  // Row i of W gets scale·Σ_k P[i,k]·Q[k,:] (as merge_delta), then k scales per output feature.
  std::unique_ptr<float[]> P(new float[rows * r]), Q(new float[r * cols]);
  for (int64_t i = 0; i < rows; i++)
    for (int64_t j = 0; j < r; j++)
      P[i * r + j] = scale * (fan_in_fan_out ? load_f32(A.data, A.dtype, j * rows + i) : load_f32(B.data, B.dtype, i * r + j));
  for (int64_t j = 0; j < r; j++)
    for (int64_t c = 0; c < cols; c++)
      Q[j * cols + c] = fan_in_fan_out ? load_f32(B.data, B.dtype, c * r + j) : load_f32(A.data, A.dtype, j * cols + c);
  const float* Pp = P.get();
  const float* Qp = Q.get();
  const float* kp = k.get();
  parallel_for(
      rows,
      [&](int64_t b, int64_t e) {
        std::unique_ptr<float[]> delta(new float[cols]);
        for (int64_t i = b; i < e; i++) {
          float* d = delta.get();
          std::fill(d, d + cols, 0.f);
          for (int64_t j = 0; j < r; j++) {
            float p = Pp[i * r + j];
            const float* q = Qp + j * cols;
            for (int64_t c = 0; c < cols; c++) d[c] += p * q[c];
          }
          for (int64_t c = 0; c < cols; c++) {
            float kk = fan_in_fan_out ? kp[c] : kp[i];
            float w = load_f32(W.data, W.dtype, i * cols + c);
            float v = inverse ? w / kk - d[c] : kk * (w + d[c]);
            store_f32(out.data, out.dtype, i * cols + c, v);
          }
        }
      },
      std::max<int64_t>(1, 16384 / std::max<int64_t>(1, cols)));
}

}  // namespace cpu
}  // namespace lorakit
