#include <algorithm>
#include <vector>
#include "../core/thread_pool.h"
#include "microkernel.h"
#include "gemm.h"
#include "ops.h"

namespace lorakit {
namespace cpu {

// u = x·Aᵀ. Per-token dot products against A's r rows, split over tokens (and A's rows at
// decode), keep every thread busy and are fast while A stays in L2. With many tokens and a large A
// (r·in >= 2^17, 512 KiB in f32) they re-read all of A for every token, so the packed GEMM takes
// over: on the AVX2 path at d = 4096, r = 64 the forward / base GEMM ratio went 1.06-1.09x -> 1.04-1.07x.
void lora_shrink(const TensorRef& x, const TensorRef& A, const TensorRef& out) {
  int64_t in = A.dim(1), r = A.dim(0), n = x.numel() / in;
  constexpr int64_t kGemmRowBlock = 96;  // gemm.cc's row unit (lcm of MR and 32): it splits tokens in blocks of this many
  const bool gemm_wins = r * in >= (int64_t(1) << 17) && (n + kGemmRowBlock - 1) / kGemmRowBlock >= num_threads();
  if (out.dtype != DType::F32 || r > 256 || gemm_wins) {
    KSegment s{row_major(x.data, x.dtype, in), transposed(A.data, A.dtype, in), in, 1.f};
    GemmOutput o;
    o.data = out.data;
    o.dtype = out.dtype;
    o.ldc = r;
    gemm(n, r, {s}, o);
    return;
  }
  const KernelTable& kt = kernel_table();
  const size_t xes = dtype_size(x.dtype), aes = dtype_size(A.dtype);
  float* u = static_cast<float*>(out.data);
  // Few tokens (decode): split A's rows too, so that all threads stream A.
  const int64_t qb = n >= 2 * num_threads() ? r : std::min<int64_t>(r, 8);
  const int64_t qblocks = (r + qb - 1) / qb;
  parallel_for(n * qblocks, [&](int64_t b, int64_t e) {
    std::vector<float> row(in);
    int64_t loaded = -1;
    for (int64_t t = b; t < e; t++) {
      int64_t i = t / qblocks, q0 = (t % qblocks) * qb, nq = std::min(qb, r - q0);
      if (i != loaded) {
        kt.load_row(static_cast<const char*>(x.data) + i * in * xes, x.dtype, 1.f, in, row.data());
        loaded = i;
      }
      std::fill(u + i * r + q0, u + i * r + q0 + nq, 0.f);
      kt.dot_rows(in, row.data(), static_cast<const char*>(A.data) + q0 * in * aes, A.dtype, in, nq, u + i * r + q0);
    }
  });
}

void linear_forward(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fan_in_fan_out,
                    const std::vector<ForwardTerm>& terms, const TensorRef& y) {
  int64_t in = fan_in_fan_out ? W.dim(0) : W.dim(1);
  int64_t outf = fan_in_fan_out ? W.dim(1) : W.dim(0);
  int64_t n = x.numel() / in;
  std::vector<KSegment> segs;
  // B operand is Wᵀ: element (k = in index, j = out index).
  MatView wt = fan_in_fan_out ? row_major(W.data, W.dtype, outf) : transposed(W.data, W.dtype, in);
  segs.push_back({row_major(x.data, x.dtype, in), wt, in, 1.f});
  for (const auto& t : terms) {
    int64_t r = t.B.dim(1);
    segs.push_back({row_major(t.u.data, t.u.dtype, r), transposed(t.B.data, t.B.dtype, r), r, t.scale});
  }
  GemmOutput o;
  o.data = y.data;
  o.dtype = y.dtype;
  o.ldc = outf;
  if (bias) {
    o.bias = bias->data;
    o.bias_dtype = bias->dtype;
  }
  gemm(n, outf, segs, o);
}

void lora_forward(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fan_in_fan_out,
                  const std::vector<FusedAdapter>& adapters, const TensorRef& y) {
  const int64_t n = x.rows();
  std::vector<std::vector<float>> scratch(adapters.size());
  std::vector<ForwardTerm> terms;
  for (size_t i = 0; i < adapters.size(); i++) {
    const FusedAdapter& a = adapters[i];
    TensorRef u;
    if (a.u_out) {
      u = *a.u_out;
    } else {
      const int64_t r = a.A.shape[0];
      scratch[i].resize(static_cast<size_t>(n * r));
      u.data = scratch[i].data();
      u.dtype = DType::F32;
      u.shape = {n, r};
    }
    lora_shrink(x, a.A, u);
    terms.push_back({u, a.B, a.scale});
  }
  linear_forward(x, W, bias, fan_in_fan_out, terms, y);
}

void dropout(const TensorRef& x, float p, uint64_t seed, uint64_t stream, const TensorRef& out) {
  int64_t n = x.numel();
  float keep_scale = 1.f / (1.f - p);
  parallel_for(
      n,
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; i++) {
          float v = dropout_keep(seed, stream, static_cast<uint64_t>(i), p) ? load_f32(x.data, x.dtype, i) * keep_scale
                                                                            : 0.f;
          store_f32(out.data, out.dtype, i, v);
        }
      },
      1 << 14);
}

}  // namespace cpu
}  // namespace lorakit
