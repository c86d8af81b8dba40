#include <memory>
#include "../core/thread_pool.h"
#include "gemm.h"
#include "lora_dy_pass.h"
#include "ops.h"

namespace lorakit {
namespace cpu {

void lora_term_grads(const TensorRef& dy, int64_t n, int64_t in, int64_t outf, const std::vector<BackwardTerm>& terms,
                     std::vector<std::unique_ptr<float[]>>& gs) {
  MatView dyv = row_major(dy.data, dy.dtype, outf);
  // g = scale·dy·B [n, r] per adapter (kept in f32 for dA and dx) and dB = scale·dyᵀ·u, in one
  // pass over dy while its per-task partials stay small; two GEMMs beyond that.
  int64_t rsum = 0;
  for (const auto& t : terms) rsum += t.B.dim(1);
  const bool fused = !terms.empty() && n * rsum * ((outf + 127) / 128) <= (int64_t(1) << 23);
  if (fused) dy_pass(dy, n, outf, terms, gs);
  for (size_t a = 0; !fused && a < terms.size(); a++) {
    const auto& t = terms[a];
    int64_t r = t.B.dim(1);
    gs.emplace_back(new float[n * r]);
    GemmOutput o;
    o.data = gs.back().get();
    o.ldc = r;
    gemm(n, r, {{dyv, row_major(t.B.data, t.B.dtype, r), outf, t.scale}}, o);
  }

  for (size_t a = 0; a < terms.size(); a++) {
    const auto& t = terms[a];
    int64_t r = t.B.dim(1);
    if (t.dB && !fused) {  // dB = scale·dyᵀ·u : [out, r]
      GemmOutput o;
      o.data = t.dB->data;
      o.dtype = t.dB->dtype;
      o.ldc = r;
      gemm(outf, r, {{transposed(dy.data, dy.dtype, outf), row_major(t.u.data, t.u.dtype, r), n, t.scale}}, o);
    }
    if (t.dA) {  // dA = gᵀ·xa : [r, in]
      GemmOutput o;
      o.data = t.dA->data;
      o.dtype = t.dA->dtype;
      o.ldc = in;
      gemm(r, in, {{transposed(gs[a].get(), DType::F32, r), row_major(t.xa.data, t.xa.dtype, in), n, 1.f}}, o);
    }
  }
}

void add_dropout_dx(int64_t n, int64_t in, const std::vector<BackwardTerm>& terms,
                    const std::vector<std::unique_ptr<float[]>>& gs, float* accp) {
  std::unique_ptr<float[]> tmp(new float[n * in]);
  for (size_t a = 0; a < terms.size(); a++) {
    const auto& t = terms[a];
    if (t.dropout_p <= 0.f) continue;
    int64_t r = t.B.dim(1);
    GemmOutput ot;
    ot.data = tmp.get();
    ot.ldc = in;
    gemm(n, in, {{row_major(gs[a].get(), DType::F32, r), row_major(t.A.data, t.A.dtype, in), r, 1.f}}, ot);
    float keep_scale = 1.f / (1.f - t.dropout_p);
    const float* tp = tmp.get();
    parallel_for(
        n * in,
        [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; i++)
            if (dropout_keep(t.seed, t.stream, static_cast<uint64_t>(i), t.dropout_p)) accp[i] += tp[i] * keep_scale;
        },
        1 << 14);
  }
}

void linear_backward(const TensorRef& dy, const TensorRef& W, bool fan_in_fan_out,
                     const std::vector<BackwardTerm>& terms, const TensorRef* dx) {
  int64_t in = fan_in_fan_out ? W.dim(0) : W.dim(1);
  int64_t outf = fan_in_fan_out ? W.dim(1) : W.dim(0);
  int64_t n = dy.numel() / outf;
  MatView dyv = row_major(dy.data, dy.dtype, outf);
  std::vector<std::unique_ptr<float[]>> gs;
  lora_term_grads(dy, n, in, outf, terms, gs);
  if (!dx) return;
  // dx = dy·W + sum g·A. Adapters without dropout join the base GEMM as extra K segments.
  MatView w = fan_in_fan_out ? transposed(W.data, W.dtype, outf) : row_major(W.data, W.dtype, in);
  std::vector<KSegment> segs{{dyv, w, outf, 1.f}};
  bool any_dropout = false;
  for (size_t a = 0; a < terms.size(); a++) {
    const auto& t = terms[a];
    int64_t r = t.B.dim(1);
    if (t.dropout_p > 0.f) {
      any_dropout = true;
      continue;
    }
    segs.push_back({row_major(gs[a].get(), DType::F32, r), row_major(t.A.data, t.A.dtype, in), r, 1.f});
  }
  if (!any_dropout) {
    GemmOutput o;
    o.data = dx->data;
    o.dtype = dx->dtype;
    o.ldc = in;
    gemm(n, in, segs, o);
    return;
  }
  std::unique_ptr<float[]> acc(new float[n * in]);
  GemmOutput o;
  o.data = acc.get();
  o.ldc = in;
  gemm(n, in, segs, o);
  add_dropout_dx(n, in, terms, gs, acc.get());
  convert(acc.get(), DType::F32, dx->data, dx->dtype, n * in);
}

}  // namespace cpu
}  // namespace lorakit
