// LoRA over a quantized base on the CPU (peft's lora.Linear over bnb Linear4bit / Linear8bitLt, or a
// GGUF tensor): y = x·deq(W)ᵀ + bias + Σ s·(x·Aᵀ)·Bᵀ and dx = dy·deq(W) + Σ mask⊙(s·dy·B)·A.
// Few tokens (n ≤ kGemvMaxTokens) run the decode GEMV (quant_gemv.h), which reads W's bytes once.
// Otherwise W is a B operand that the packed GEMM (gemm.h) decodes while packing its KC×NC panels
// (MatView::decode): never a full-size dequantised copy, x packed once, the base and every
// adapter as K segments of one GEMM writing y once. The backward's dx is the same GEMM over
// B = deq(W), its adapter terms as in linear_backward.
#include <algorithm>
#include <memory>
#include <string>
#include <vector>
#include "../core/thread_pool.h"
#include "gemm.h"
#include "lora_dy_pass.h"
#include "microkernel.h"
#include "ops.h"
#include "quant.h"
#include "quant_gemv.h"

namespace lorakit {
namespace cpu {
namespace {

std::vector<float>& task_scratch(int64_t floats) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < floats) buf.resize(static_cast<size_t>(floats));
  return buf;
}

// bf16 activations use deq(W) rounded to bf16, as bnb dequantises to its compute dtype (the
// activations' dtype): the GEMM then runs on the path's bf16 unit where it has one, and every path
// and batch size sees the same weights. f32 and f16 activations use deq(W) exactly.
void round_bf16(float* v, int64_t n) {
  const KernelTable& kt = kernel_table();
  thread_local std::vector<uint16_t> bits;
  if (static_cast<int64_t>(bits.size()) < n) bits.resize(static_cast<size_t>(n));
  kt.store_row(v, bits.data(), DType::BF16, n);
  kt.load_row(bits.data(), DType::BF16, 1.f, n, v);
}

// deq(W) as a GEMM operand decoded while packed: B = deq(W)ᵀ (transposed) or B = deq(W).
struct DecodeCtx {
  const QuantWeight* W;
  QuantDecodeFn fn;
  bool bf16;
  QuantDecode16Fn fn16;  // null: the GEMM's packing rounds fn's f32 values
};
void decode_row(const void* ctx, int64_t row, int64_t c0, int64_t len, float* out) {
  const DecodeCtx* d = static_cast<const DecodeCtx*>(ctx);
  d->fn(*d->W, row, c0, len, out);  // rounded to bf16 by the GEMM's packing for a BF16 view
}
void decode_row16(const void* ctx, int64_t row, int64_t c0, int64_t len, uint16_t* out) {
  const DecodeCtx* d = static_cast<const DecodeCtx*>(ctx);
  d->fn16(*d->W, row, c0, len, out);
}
MatView quant_view(const DecodeCtx& d, bool transposed) {
  MatView v;
  v.dtype = d.bf16 ? DType::BF16 : DType::F32;
  v.decode = decode_row;
  if (d.bf16 && d.fn16) v.decode16 = decode_row16;
  v.ctx = &d;
  v.decode_t = transposed;
  return v;
}

const char* at(const void* p, DType t, int64_t elems) { return static_cast<const char*>(p) + elems * dtype_size(t); }

// The portable decode GEMV: a few rows of W decoded into an L1/L2-sized scratch, then dotted with
// every token's row (the path's dot_rows).
void gemv_generic(const QuantWeight& W, const void* xv, int64_t n, int64_t j0, int64_t j1, float* y, int64_t ldy, bool bf16) {
  constexpr int64_t kRows = 4;
  const float* x = static_cast<const float*>(xv);
  const int64_t cols = W.spec.cols;
  const KernelTable& kt = kernel_table();
  float* w = task_scratch(kRows * cols).data();
  float out[kRows];
  for (int64_t j = j0; j < j1; j += kRows) {
    const int64_t nr = std::min(kRows, j1 - j);
    dequantize_rows(W, j, nr, w);
    if (bf16) round_bf16(w, nr * cols);
    for (int64_t i = 0; i < n; i++) {
      std::fill(out, out + nr, 0.f);
      kt.dot_rows(cols, x + i * cols, w, DType::F32, cols, nr, out);
      for (int64_t r = 0; r < nr; r++) y[i * ldy + j + r] = out[r];
    }
  }
}

// y = x·deq(W)ᵀ + bias + Σ s·u·Bᵀ for n ≤ kGemvMaxTokens: the decode GEMV over blocks of output
// rows, each finished (bias, adapters, rounding) by the task that computed it.
void decode_forward(const TensorRef& x, const QuantWeight& W, const TensorRef* bias, const std::vector<FusedAdapter>& adapters,
                    const std::vector<TensorRef>& us, const TensorRef& y) {
  const int64_t in = W.spec.cols, outf = W.spec.rows, n = x.numel() / in;
  const bool bf16 = x.dtype == DType::BF16;
  QuantGemv g = quant_gemv_kernel(W.spec, bf16);
  if (!g.fn) g = QuantGemv{gemv_generic, GemvXOrder::Natural, 0};
  const QuantGemvFn kernel = g.fn;
  // x arranged once per call in the kernel's order (bf16 bits as they are for the vdpbf16ps kernels).
  std::vector<float> xs(g.x_bf16 ? 0 : static_cast<size_t>(n * in)), yf(static_cast<size_t>(n * outf));
  std::vector<uint16_t> xs16(g.x_bf16 ? static_cast<size_t>(n * in) : 0);
  for (int64_t i = 0; i < n; i++)
    for (int64_t k = 0; k < in; k++) {
      if (g.x_bf16) xs16[i * in + gemv_x_slot(g, k)] = static_cast<const uint16_t*>(x.data)[i * in + k];
      else xs[i * in + gemv_x_slot(g, k)] = load_f32(x.data, x.dtype, i * in + k);
    }
  const void* xa = g.x_bf16 ? static_cast<const void*>(xs16.data()) : xs.data();
  std::vector<std::vector<float>> uf(adapters.size());
  for (size_t a = 0; a < adapters.size(); a++) {
    uf[a].resize(static_cast<size_t>(us[a].numel()));
    for (size_t e = 0; e < uf[a].size(); e++) uf[a][e] = load_f32(us[a].data, us[a].dtype, static_cast<int64_t>(e));
  }
  constexpr int64_t kRowsPerTask = 16;
  parallel_for((outf + kRowsPerTask - 1) / kRowsPerTask, [&](int64_t t0, int64_t t1) {
    const int64_t j0 = t0 * kRowsPerTask, j1 = std::min(outf, t1 * kRowsPerTask);
    kernel(W, xa, n, j0, j1, yf.data(), outf, bf16);
    // The adapters' terms d[a][i][j] = u[a][i]·B[a][j] for the task's rows by the path's vector
    // dot_rows (a scalar dot per row cost a tenth of the n = 1 forward over a tall W).
    const KernelTable& kt = kernel_table();
    const int64_t rows = j1 - j0;
    std::vector<float> d(adapters.size() * static_cast<size_t>(n * rows), 0.f);
    for (size_t a = 0; a < adapters.size(); a++) {
      const TensorRef& B = adapters[a].B;
      const int64_t r = B.dim(1);
      for (int64_t i = 0; i < n; i++)
        kt.dot_rows(r, uf[a].data() + i * r, at(B.data, B.dtype, j0 * r), B.dtype, r, rows, d.data() + (a * n + i) * rows);
    }
    for (int64_t j = j0; j < j1; j++)
      for (int64_t i = 0; i < n; i++) {
        float v = yf[i * outf + j] + (bias ? load_f32(bias->data, bias->dtype, j) : 0.f);
        for (size_t a = 0; a < adapters.size(); a++) v += adapters[a].scale * d[(a * n + i) * rows + j - j0];
        store_f32(y.data, y.dtype, i * outf + j, v);
      }
  });
}

}  // namespace

QuantDecodeFn quant_decode_kernel() {
  const std::string path = kernel_table().name;
  QuantDecodeFn fn = path.rfind("avx512", 0) == 0 || path.rfind("amx", 0) == 0 ? quant_decode_avx512()
                     : path == "avx2"                                            ? quant_decode_avx2()
                                                                                 : nullptr;
  return fn ? fn : dequantize_segment;
}

QuantDecode16Fn quant_decode16_kernel(QuantFormat f) {
  const std::string path = kernel_table().name;
  return path.rfind("avx512", 0) == 0 || path.rfind("amx", 0) == 0 ? quant_decode16_avx512(f) : nullptr;
}

QuantGemv quant_gemv_kernel(const QuantSpec& s, bool bf16) {
  const std::string path = kernel_table().name;
  const bool bf16_unit = path == "avx512bf16" || path.rfind("amx", 0) == 0;
  if (bf16 && bf16_unit) {
    const QuantGemv g = quant_gemv_avx512bf16(s);
    if (g.fn) return g;
  }
  if (path.rfind("avx512", 0) == 0 || path.rfind("amx", 0) == 0) return quant_gemv_avx512(s, bf16);
  if (path == "avx2") return quant_gemv_avx2(s, bf16);
  return {};
}

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
  if (n <= kGemvMaxTokens) return decode_forward(x, W, bias, adapters, us, y);
  const DecodeCtx ctx{&W, quant_decode_kernel(), x.dtype == DType::BF16, quant_decode16_kernel(W.spec.format)};
  std::vector<KSegment> segs{{row_major(x.data, x.dtype, in), quant_view(ctx, true), in, 1.f}};
  for (size_t i = 0; i < adapters.size(); i++) {
    const TensorRef& B = adapters[i].B;
    const int64_t r = B.dim(1);
    segs.push_back({row_major(us[i].data, us[i].dtype, r), transposed(B.data, B.dtype, r), r, adapters[i].scale});
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

void quant_linear_backward(const TensorRef& dy, const QuantWeight& W, const std::vector<BackwardTerm>& terms,
                           const TensorRef* dx) {
  const int64_t in = W.spec.cols, outf = W.spec.rows, n = dy.numel() / outf;
  std::vector<std::unique_ptr<float[]>> gs;
  lora_term_grads(dy, n, in, outf, terms, gs);
  if (!dx) return;
  // dx = dy·deq(W) + Σ g·A, the adapters without dropout as extra K segments (as linear_backward).
  const DecodeCtx ctx{&W, quant_decode_kernel(), dy.dtype == DType::BF16, quant_decode16_kernel(W.spec.format)};
  std::vector<KSegment> segs{{row_major(dy.data, dy.dtype, outf), quant_view(ctx, false), outf, 1.f}};
  bool any_dropout = false;
  for (size_t a = 0; a < terms.size(); a++) {
    const BackwardTerm& t = terms[a];
    if (t.dropout_p > 0.f) {
      any_dropout = true;
      continue;
    }
    const int64_t r = t.B.dim(1);
    segs.push_back({row_major(gs[a].get(), DType::F32, r), row_major(t.A.data, t.A.dtype, in), r, 1.f});
  }
  std::unique_ptr<float[]> acc(any_dropout ? new float[n * in] : nullptr);
  GemmOutput o;
  o.data = any_dropout ? acc.get() : dx->data;
  o.dtype = any_dropout ? DType::F32 : dx->dtype;
  o.ldc = in;
  gemm(n, in, segs, o);
  if (!any_dropout) return;
  add_dropout_dx(n, in, terms, gs, acc.get());
  convert(acc.get(), DType::F32, dx->data, dx->dtype, n * in);
}

}  // namespace cpu
}  // namespace lorakit
