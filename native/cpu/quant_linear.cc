// LoRA over a quantized base on the CPU (peft's lora.Linear over bnb Linear4bit / Linear8bitLt, or a
// GGUF tensor): y = x·deq(W)ᵀ + bias + Σ s·(x·Aᵀ)·Bᵀ and dx = dy·deq(W) + Σ mask⊙(s·dy·B)·A.
// W is decoded a chunk of its rows at a time into a small f32 scratch (never a full-size copy),
// and the packed GEMM (gemm.h) runs over that chunk: in the forward a chunk of rows is a block of
// y's columns, with the base and every adapter's expand as K segments of one GEMM; in the backward
// a chunk of rows is a block of the K dimension of dy·W, accumulated in f32.
#include <algorithm>
#include <memory>
#include <vector>
#include "../core/thread_pool.h"
#include "gemm.h"
#include "lora_dy_pass.h"
#include "ops.h"
#include "quant.h"

namespace lorakit {
namespace cpu {
namespace {

constexpr int64_t kScratchFloats = int64_t(1) << 17;  // 512 KiB of decoded W per chunk (L2-sized)
constexpr int64_t kFewTokens = 16;  // up to here each pool task runs its own chunks' GEMMs

// Rows of W per chunk: a multiple of 16 within the scratch budget, at least 16.
int64_t chunk_rows(int64_t cols, int64_t rows, int64_t cap) {
  int64_t ch = std::max<int64_t>(16, kScratchFloats / cols / 16 * 16);
  return std::min({ch, cap, rows});
}

std::vector<float>& task_scratch(int64_t floats) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < floats) buf.resize(static_cast<size_t>(floats));
  return buf;
}

// Rows [r0, r0 + nr) of deq(W) into dst, decoded in parallel.
void decode_parallel(const QuantWeight& W, int64_t r0, int64_t nr, float* dst) {
  const int64_t cols = W.spec.cols;
  parallel_for(nr, [&](int64_t a, int64_t b) { dequantize_rows(W, r0 + a, b - a, dst + a * cols); });
}

const char* at(const void* p, DType t, int64_t elems) { return static_cast<const char*>(p) + elems * dtype_size(t); }

}  // namespace

void quant_lora_forward(const TensorRef& x, const QuantWeight& W, const TensorRef* bias,
                        const std::vector<FusedAdapter>& adapters, const TensorRef& y) {
  const int64_t in = W.spec.cols, outf = W.spec.rows, n = x.numel() / in;
  std::vector<std::unique_ptr<float[]>> scratch;
  std::vector<TensorRef> us;
  for (const FusedAdapter& a : adapters) {
    TensorRef u;
    if (a.u_out) {
      u = *a.u_out;
    } else {
      const int64_t r = a.A.shape[0];
      scratch.emplace_back(new float[n * r]);
      u.data = scratch.back().get();
      u.dtype = DType::F32;
      u.shape = {n, r};
    }
    lora_shrink(x, a.A, u);
    us.push_back(u);
  }
  // One GEMM over output columns [j0, j0 + nj), reading W's decoded rows from w.
  auto chunk_gemm = [&](int64_t j0, int64_t nj, const float* w) {
    std::vector<KSegment> segs{{row_major(x.data, x.dtype, in), transposed(w, DType::F32, in), in, 1.f}};
    for (size_t i = 0; i < adapters.size(); i++) {
      const TensorRef& B = adapters[i].B;
      const int64_t r = B.dim(1);
      segs.push_back({row_major(us[i].data, us[i].dtype, r), transposed(at(B.data, B.dtype, j0 * r), B.dtype, r), r,
                      adapters[i].scale});
    }
    GemmOutput o;
    o.data = const_cast<char*>(at(y.data, y.dtype, j0));
    o.dtype = y.dtype;
    o.ldc = outf;
    if (bias) {
      o.bias = at(bias->data, bias->dtype, j0);
      o.bias_dtype = bias->dtype;
    }
    gemm(n, nj, segs, o);
  };
  if (n <= kFewTokens) {
    // Few tokens: every task decodes and multiplies its own chunks (the GEMM runs inline).
    const int64_t ch = chunk_rows(in, outf, std::max<int64_t>(16, outf / (4 * num_threads()) / 16 * 16));
    parallel_for((outf + ch - 1) / ch, [&](int64_t t0, int64_t t1) {
      float* w = task_scratch(ch * in).data();
      for (int64_t t = t0; t < t1; t++) {
        const int64_t j0 = t * ch, nj = std::min(ch, outf - j0);
        dequantize_rows(W, j0, nj, w);
        chunk_gemm(j0, nj, w);
      }
    });
    return;
  }
  // Many tokens: wide chunks decoded by all threads, then one threaded GEMM per chunk.
  const int64_t ch = std::min(outf, std::max<int64_t>(256, chunk_rows(in, outf, outf)));
  std::unique_ptr<float[]> w(new float[ch * in]);
  for (int64_t j0 = 0; j0 < outf; j0 += ch) {
    const int64_t nj = std::min(ch, outf - j0);
    decode_parallel(W, j0, nj, w.get());
    chunk_gemm(j0, nj, w.get());
  }
}

void quant_linear_backward(const TensorRef& dy, const QuantWeight& W, const std::vector<BackwardTerm>& terms,
                           const TensorRef* dx) {
  const int64_t in = W.spec.cols, outf = W.spec.rows, n = dy.numel() / outf;
  std::vector<std::unique_ptr<float[]>> gs;
  lora_term_grads(dy, n, in, outf, terms, gs);
  if (!dx) return;
  // acc = Σ over chunks of W's rows dy[:, chunk]·deq(W)[chunk, :] (f32), the adapters without
  // dropout joining the first chunk's GEMM as K segments, then the dropout terms.
  std::unique_ptr<float[]> own;
  float* acc = dx->dtype == DType::F32 ? dx->as<float>() : (own.reset(new float[n * in]), own.get());
  const int64_t ch = std::min(outf, std::max<int64_t>(256, chunk_rows(in, outf, outf)));
  std::unique_ptr<float[]> w(new float[ch * in]);
  bool any_dropout = false;
  for (int64_t k0 = 0; k0 < outf; k0 += ch) {
    const int64_t nk = std::min(ch, outf - k0);
    decode_parallel(W, k0, nk, w.get());
    std::vector<KSegment> segs{{row_major(at(dy.data, dy.dtype, k0), dy.dtype, outf), row_major(w.get(), DType::F32, in), nk, 1.f}};
    for (size_t a = 0; k0 == 0 && a < terms.size(); a++) {
      const BackwardTerm& t = terms[a];
      if (t.dropout_p > 0.f) {
        any_dropout = true;
        continue;
      }
      const int64_t r = t.B.dim(1);
      segs.push_back({row_major(gs[a].get(), DType::F32, r), row_major(t.A.data, t.A.dtype, in), r, 1.f});
    }
    GemmOutput o;
    o.data = acc;
    o.ldc = in;
    o.beta = k0 == 0 ? 0.f : 1.f;
    gemm(n, in, segs, o);
  }
  if (any_dropout) add_dropout_dx(n, in, terms, gs, acc);
  if (own) convert(acc, DType::F32, dx->data, dx->dtype, n * in);
}

}  // namespace cpu
}  // namespace lorakit
