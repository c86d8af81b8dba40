// LoRA linear on cuBLASLt: shrink, fused forward, backward, and the bare base GEMM.
//
// How the LoRA term joins the base GEMM: on Hopper, from kSm90MinRows rows, the forward's
// y = x·Wᵀ + Σ s·u·Bᵀ + b and the backward's dx = dy·W + Σ g·A are each one GEMM of our own
// (gemm_sm90.cu: the adapters as a K-extension, y or dx written once). Elsewhere, or where its
// alignment rules fail, cuBLASLt does it in two GEMMs, since it has no low-rank epilogue: y =
// bias + s·u·Bᵀ first (a K = r GEMM, one write of y), then the base GEMM with beta = 1
// accumulating x·Wᵀ into that y; dx likewise: dx = g·A, then dx += dy·W; g = s·dy·B.
// n ≤ 16 goes to the decode kernel (decode.cu), which streams W once.
// Every GEMM's algorithm is chosen once per shape (the fastest of the heuristic's candidates) and
// cached, so repeated calls in a process use the same one: results are run-to-run deterministic
// (cuBLASLt's reductions for a fixed algorithm are deterministic). Another process may time the
// candidates differently and pick another algorithm.
#include <cstdlib>
#include <functional>
#include <string>
#include <map>
#include <mutex>
#include "common.cuh"
#include "cublaslt_gemm.h"
#include "device_buffer.h"
#include "graph_replay.h"
#include "ops.h"
#include "runtime.h"

namespace lorakit {
namespace cuda {
namespace {

using lt::Gemm;
using lt::run;

// A device buffer released at scope exit (returned to the caching allocator).
struct Scratch {
  void* p = nullptr;
  size_t n = 0;
  Scratch() = default;
  Scratch(size_t bytes) : p(alloc(bytes, false)), n(bytes) {}
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() {
    if (p) cuda::free(p, n);
  }
};

// t in dtype dt: t itself, or a converted copy held by s.
const void* as_dtype(const TensorRef& t, DType dt, Scratch& s) {
  if (t.dtype == dt) return t.data;
  s.~Scratch();
  new (&s) Scratch(t.numel() * dtype_size(dt));
  convert(t.data, t.dtype, s.p, dt, t.numel());
  return s.p;
}

void require_dtype(const TensorRef& t, DType dt, const std::string& name, const char* what) {
  if (t.dtype != dt)
    throw_type(name + ": on cuda, expected " + dtype_name(dt) + " (the dtype of " + what + "), got " + dtype_name(t.dtype));
}

// Which way computes a LoRA product (the forward's y, the backward's dx): the one-pass sm_90 kernel
// or two cuBLASLt GEMMs. LORAKIT_CUDA_GEMM=sm90|cublas forces one (where the kernel takes the
// operands); by default, from kSm90MinRows rows, both are timed once per shape bucket (rows
// rounded up to a power of two) and the faster is kept for the process, as cuBLASLt's own
// algorithm is chosen.
constexpr int64_t kSm90MinRows = 64;
enum class Path { Auto, Sm90, Cublas };
Path forced_path() {
  static const Path p = [] {
    const char* e = std::getenv("LORAKIT_CUDA_GEMM");
    const std::string v(e ? e : "");
    return v == "sm90" ? Path::Sm90 : v == "cublas" ? Path::Cublas : Path::Auto;
  }();
  return p;
}

bool sm90_considered(int64_t rows) {
  const Path p = forced_path();
  return p == Path::Sm90 || (p == Path::Auto && rows >= kSm90MinRows);
}

int64_t bucket(int64_t rows) {
  int64_t b = 1;
  while (b < rows) b <<= 1;
  return b;
}

// Median-free and short on purpose: 2 warm-up and 3 timed runs of each into scratch memory.
float time_ms(const std::function<void(void*)>& f, void* out) {
  cudaStream_t st = stream();
  for (int i = 0; i < 2; i++) f(out);
  cudaEvent_t e0, e1;
  LK_CUDA(cudaEventCreate(&e0), "cudaEventCreate");
  LK_CUDA(cudaEventCreate(&e1), "cudaEventCreate");
  cudaEventRecord(e0, st);
  for (int i = 0; i < 3; i++) f(out);
  cudaEventRecord(e1, st);
  cudaEventSynchronize(e1);
  float ms = 0.f;
  cudaEventElapsedTime(&ms, e0, e1);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return ms;
}

bool use_sm90(const std::string& key, size_t out_bytes, const std::function<void(void*)>& sm90,
              const std::function<void(void*)>& cublas) {
  if (forced_path() != Path::Auto) return forced_path() == Path::Sm90;
  static std::mutex mu;
  static std::map<std::string, bool>* chosen = new std::map<std::string, bool>();  // leaked: no teardown order issues
  std::lock_guard<std::mutex> lock(mu);
  auto it = chosen->find(key);
  if (it != chosen->end()) return it->second;
  Scratch out(out_bytes);
  const float t_cublas = time_ms(cublas, out.p);
  const float t_sm90 = time_ms(sm90, out.p);
  return chosen->emplace(key, t_sm90 < t_cublas).first->second;
}

std::string shape_key(const char* op, DType dt, int64_t rows, std::initializer_list<int64_t> dims) {
  std::string k = std::string(op) + ":" + dtype_name(dt) + ":" + std::to_string(bucket(rows));
  for (int64_t d : dims) k += ":" + std::to_string(d);
  return k;
}

}  // namespace

void lora_shrink(const TensorRef& x, const TensorRef& A, const TensorRef& out) {
  int64_t in = A.dim(1), r = A.dim(0), n = x.numel() / in;
  Scratch sa, so;
  const void* a = as_dtype(A, x.dtype, sa);
  // cuBLASLt writes f32 or the input type; other output types go through a scratch buffer.
  bool direct = out.dtype == x.dtype || out.dtype == DType::F32;
  void* o = direct ? out.data : (new (&so) Scratch(n * r * 4), so.p);
  Gemm g{n, r, in, x.data, in, false, a, in, true, o, r, x.dtype, direct ? out.dtype : DType::F32};
  run(g);
  if (!direct) convert(o, DType::F32, out.data, out.dtype, n * r);
}

void gemm_rm(int64_t m, int64_t n, int64_t k, const void* A, int64_t lda, bool ta, const void* B, int64_t ldb, bool tb,
             void* C, int64_t ldc, DType ab, DType c, float alpha, float beta) {
  if (c != ab && c != DType::F32) throw_type("cuda gemm: the output must be f32 or the operands' dtype");
  run(Gemm{m, n, k, A, lda, ta, B, ldb, tb, C, ldc, ab, c, alpha, beta});
}

void lora_expand(const TensorRef& u, const TensorRef& B, float scale, const TensorRef& z) {
  const int64_t r = B.dim(1), outf = B.dim(0), n = u.numel() / r;
  require_dtype(z, u.dtype, "z", "u");
  Scratch sb;
  const void* Bp = as_dtype(B, u.dtype, sb);
  run(Gemm{n, outf, r, u.data, r, false, Bp, r, true, z.data, outf, u.dtype, u.dtype, scale});
}

void base_gemm(const TensorRef& x, const TensorRef& W, const TensorRef& y, bool input_grad) {
  int64_t in = W.dim(1), outf = W.dim(0);
  require_dtype(x, W.dtype, "x", "the weight");
  require_dtype(y, W.dtype, "y", "the weight");
  if (input_grad) {  // y [n, in] = x [n, out]·W
    int64_t n = x.numel() / outf;
    run(Gemm{n, in, outf, x.data, outf, false, W.data, in, false, y.data, in, W.dtype, W.dtype});
  } else {
    int64_t n = x.numel() / in;
    run(Gemm{n, outf, in, x.data, in, false, W.data, in, true, y.data, outf, W.dtype, W.dtype});
  }
}

void linear_forward(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fifo,
                    const std::vector<ForwardTerm>& terms, const TensorRef& y) {
  linear_forward_scaled(x, W, bias, fifo, terms, y, nullptr);
}

void linear_forward_scaled(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fifo,
                           const std::vector<ForwardTerm>& terms, const TensorRef& y, const float* col_scale) {
  require_dtype(x, W.dtype, "x", "the weight");
  require_dtype(y, W.dtype, "y", "the weight");
  const DType dt = W.dtype;
  const int64_t in = fifo ? W.dim(0) : W.dim(1), outf = fifo ? W.dim(1) : W.dim(0), n = in ? x.numel() / in : 0;
  if (decode_applicable(x, W, fifo, terms)) {
    DecodeDora d;
    d.k = col_scale;
    decode_forward(x, W, bias, terms, y, false, d);  // k in the epilogue: y written once
    return;
  }
  if (n == 0 || outf == 0) return;
  Scratch sbias;
  const void* b = bias ? as_dtype(*bias, dt, sbias) : nullptr;
  // Two cuBLASLt GEMMs: y (+)= s·u·Bᵀ per adapter (bias on the first), then y (+)= x·Wᵀ; with
  // col_scale the bias joins the scale's pass over y instead.
  const void* gemm_bias = col_scale ? nullptr : b;
  auto two_gemms = [&](void* out) {
    bool have_y = false;
    for (const auto& t : terms) {
      int64_t r = t.B.dim(1);
      Scratch su, sb;
      const void* u = as_dtype(t.u, dt, su);
      const void* Bp = as_dtype(t.B, dt, sb);
      run(Gemm{n, outf, r, u, r, false, Bp, r, true, out, outf, dt, dt, t.scale, have_y ? 1.f : 0.f, have_y ? nullptr : gemm_bias});
      have_y = true;
    }
    if (in == 0) {
      if (!have_y) throw_range("x: in_features is 0");
    } else {
      // W [out, in] is Bᵀ stored row-major [n=out, k=in]; fan_in_fan_out W [in, out] is B.
      run(Gemm{n, outf, in, x.data, in, false, W.data, fifo ? outf : in, !fifo, out, outf, dt, dt, 1.f, have_y ? 1.f : 0.f,
               have_y ? nullptr : gemm_bias});
    }
    if (col_scale) scale_columns(out, out, dt, n, outf, col_scale, b, dt);
  };
  if (in > 0 && sm90_considered(n)) {  // y = x·Wᵀ + Σ s·u·Bᵀ + bias in one pass, y written once
    std::vector<Buf> hold;
    std::vector<Sm90Operand> ops{{x.data, W.data, in, 1.f, !fifo}};
    for (const auto& t : terms)
      if (t.scale != 0.f) ops.push_back({in_dtype(t.u, dt, hold), in_dtype(t.B, dt, hold), t.B.dim(1), t.scale, true});
    if (sm90_gemm_supports(dt, n, outf, ops, b, y.data)) {
      auto one_pass = [&](void* out) { sm90_lora_gemm(dt, n, outf, ops, b, out, col_scale); };
      std::string key = shape_key("fwd", dt, n, {in, outf, fifo, b != nullptr, col_scale != nullptr});
      for (size_t i = 1; i < ops.size(); i++) key += ":r" + std::to_string(ops[i].k);
      if (use_sm90(key, size_t(n * outf) * dtype_size(dt), one_pass, two_gemms)) {
        one_pass(y.data);
        return;
      }
    }
  }
  two_gemms(y.data);
}

// A layer's forward call: replayed from a graph when it repeats (graph_replay.h). The key holds
// what the launches depend on; u_out (training) is part of it, so is every adapter's scale.
void lora_forward(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fifo,
                  const std::vector<FusedAdapter>& adapters, const TensorRef& y) {
  auto direct = [&] { lora_forward_scaled(x, W, bias, fifo, adapters, y, nullptr); };
  if (!graph_replay()) return direct();
  run_graphed(lora_forward_key(x, W, bias, fifo, adapters, y), direct);
}

namespace {

// Each adapter's shrink for a forward: u into u_out when given, else into scratch held by us (f32
// from the small shrink kernel where the decode kernel will run, else x's dtype).
std::vector<ForwardTerm> shrink_terms(const TensorRef& x, int64_t in, const std::vector<FusedAdapter>& adapters, bool small,
                                      std::vector<Scratch>& us, float* gram = nullptr) {
  const int64_t n = in ? x.numel() / in : 0;
  std::vector<ForwardTerm> terms;
  for (size_t i = 0; i < adapters.size(); i++) {
    const auto& a = adapters[i];
    const int64_t r = a.A.dim(0);
    TensorRef u;
    if (a.u_out) {
      u = *a.u_out;
    } else {
      u.dtype = small ? DType::F32 : x.dtype;
      u.shape = {n, r};
      new (&us[i]) Scratch(static_cast<size_t>(n * r) * dtype_size(u.dtype));
      u.data = us[i].p;
    }
    if (small) decode_shrink(x, a.A, u, i == 0 ? gram : nullptr);
    else lora_shrink(x, a.A, u);
    terms.push_back({u, a.B, a.scale});
  }
  return terms;
}

}  // namespace

bool lora_decode_applicable(const TensorRef& x, const TensorRef& W, bool fifo, const std::vector<FusedAdapter>& adapters) {
  std::vector<ForwardTerm> probe;
  for (const auto& a : adapters) probe.push_back({x, a.B, a.scale});
  return decode_applicable(x, W, fifo, probe);
}

void lora_forward_scaled(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fifo,
                         const std::vector<FusedAdapter>& adapters, const TensorRef& y, const float* col_scale) {
  require_dtype(x, W.dtype, "x", "the weight");
  const int64_t in = fifo ? W.dim(0) : W.dim(1);
  // Small batches: f32 u from the small shrink kernel, then the decode kernel (which reads any dtype).
  const bool small = lora_decode_applicable(x, W, fifo, adapters);
  std::vector<Scratch> us(adapters.size());
  const std::vector<ForwardTerm> terms = shrink_terms(x, in, adapters, small, us);
  if (small) {  // as linear_forward_scaled's decode branch, the kernel overlapping the last shrink
    require_dtype(y, W.dtype, "y", "the weight");
    DecodeDora d;
    d.k = col_scale;
    decode_forward(x, W, bias, terms, y, !adapters.empty(), d);  // k in the epilogue: y written once
    return;
  }
  cuda::linear_forward_scaled(x, W, bias, fifo, terms, y, col_scale);
}

void lora_forward_dora_decode(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fifo,
                              const std::vector<FusedAdapter>& adapters, const TensorRef& y, const DecodeDora& d, float* gram) {
  require_dtype(x, W.dtype, "x", "the weight");
  require_dtype(y, W.dtype, "y", "the weight");
  std::vector<Scratch> us(adapters.size());
  const std::vector<ForwardTerm> terms = shrink_terms(x, fifo ? W.dim(0) : W.dim(1), adapters, true, us, gram);
  decode_forward(x, W, bias, terms, y, !adapters.empty(), d);
}

void linear_backward(const TensorRef& dy, const TensorRef& W, bool fifo, const std::vector<BackwardTerm>& terms,
                     const TensorRef* dx) {
  require_dtype(dy, W.dtype, "dy", "the weight");
  if (dx) require_dtype(*dx, W.dtype, "dx", "the weight");
  const DType dt = W.dtype;
  const int64_t in = fifo ? W.dim(0) : W.dim(1), outf = fifo ? W.dim(1) : W.dim(0), n = dy.numel() / outf;
  if (n == 0) {  // no rows: zero gradients
    for (const auto& t : terms) {
      if (t.dA) LK_CUDA(cudaMemsetAsync(t.dA->data, 0, t.dA->numel() * dtype_size(t.dA->dtype), stream()), "memset");
      if (t.dB) LK_CUDA(cudaMemsetAsync(t.dB->data, 0, t.dB->numel() * dtype_size(t.dB->dtype), stream()), "memset");
    }
    return;
  }
  std::vector<Scratch> gs(terms.size()), As(terms.size());
  for (size_t a = 0; a < terms.size(); a++) {
    const auto& t = terms[a];
    int64_t r = t.B.dim(1);
    Scratch sb, su, sx, sd;
    const void* Bp = as_dtype(t.B, dt, sb);
    // g = s·dy·B [n, r] and dB = s·dyᵀ·u [out, r]: from one read of dy where lora_grad.cu applies,
    // else two GEMMs (B [out, r] is g's row-major [k, n] operand).
    new (&gs[a]) Scratch(n * r * dtype_size(dt));
    const void* u = t.dB ? as_dtype(t.u, dt, su) : nullptr;
    if (!t.dB || !lora_grad_fused(dy, Bp, u, r, t.scale, gs[a].p, *t.dB)) {
      run(Gemm{n, r, outf, dy.data, outf, false, Bp, r, false, gs[a].p, r, dt, dt, t.scale});
      if (t.dB) {
        bool direct = t.dB->dtype == dt || t.dB->dtype == DType::F32;
        void* o = direct ? t.dB->data : (new (&sd) Scratch(outf * r * 4), sd.p);
        run(Gemm{outf, r, n, dy.data, outf, true, u, r, false, o, r, dt, direct ? t.dB->dtype : DType::F32, t.scale});
        if (!direct) convert(o, DType::F32, t.dB->data, t.dB->dtype, outf * r);
      }
    }
    if (t.dA) {  // dA = gᵀ·xa [r, in]
      const void* xa = as_dtype(t.xa, dt, sx);
      Scratch sd2;
      bool direct = t.dA->dtype == dt || t.dA->dtype == DType::F32;
      void* o = direct ? t.dA->data : (new (&sd2) Scratch(r * in * 4), sd2.p);
      run(Gemm{r, in, n, gs[a].p, r, true, xa, in, false, o, in, dt, direct ? t.dA->dtype : DType::F32, 1.f});
      if (!direct) convert(o, DType::F32, t.dA->data, t.dA->dtype, r * in);
    }
  }
  if (!dx) return;
  std::vector<size_t> dropped;
  for (size_t a = 0; a < terms.size(); a++)
    if (terms[a].dropout_p > 0.f) dropped.push_back(a);
  // Two cuBLASLt GEMMs: dx = Σ g·A over adapters without dropout, then dx (+)= dy·W.
  auto two_gemms = [&](void* out) {
    bool have = false;
    for (size_t a = 0; a < terms.size(); a++) {
      const auto& t = terms[a];
      if (t.dropout_p > 0.f) continue;
      int64_t r = t.A.dim(0);
      Scratch sa;
      const void* Ap = as_dtype(t.A, dt, sa);
      run(Gemm{n, in, r, gs[a].p, r, false, Ap, in, false, out, in, dt, dt, 1.f, have ? 1.f : 0.f});
      have = true;
    }
    // W [out, in] is the row-major [k=out, n=in] operand; fan_in_fan_out W [in, out] is its transpose.
    run(Gemm{n, in, outf, dy.data, outf, false, W.data, fifo ? outf : in, fifo, out, in, dt, dt, 1.f, have ? 1.f : 0.f});
  };
  bool done = false;
  if (sm90_considered(n)) {  // dx = dy·W + Σ g·A in one pass (g carries the scale)
    std::vector<Buf> hold;
    std::vector<Sm90Operand> ops{{dy.data, W.data, outf, 1.f, fifo}};
    for (size_t a = 0; a < terms.size(); a++)
      if (terms[a].dropout_p <= 0.f) ops.push_back({gs[a].p, in_dtype(terms[a].A, dt, hold), terms[a].A.dim(0), 1.f, false});
    if (sm90_gemm_supports(dt, n, in, ops, nullptr, dx->data)) {
      auto one_pass = [&](void* out) { sm90_lora_gemm(dt, n, in, ops, nullptr, out); };
      std::string key = shape_key("dx", dt, n, {in, outf, fifo});
      for (size_t i = 1; i < ops.size(); i++) key += ":r" + std::to_string(ops[i].k);
      if (use_sm90(key, size_t(n * in) * dtype_size(dt), one_pass, two_gemms)) {
        one_pass(dx->data);
        done = true;
      }
    }
  }
  if (!done) two_gemms(dx->data);
  // Adapters with dropout: their masked term is added on top.
  for (size_t a : dropped) {
    const auto& t = terms[a];
    int64_t r = t.A.dim(0);
    Scratch sa, tmp(n * in * dtype_size(dt));
    const void* Ap = as_dtype(t.A, dt, sa);
    run(Gemm{n, in, r, gs[a].p, r, false, Ap, in, false, tmp.p, in, dt, dt, 1.f, 0.f});
    TensorRef tr;
    tr.data = tmp.p;
    tr.dtype = dt;
    tr.shape = dx->shape;
    masked_accumulate(tr, t.dropout_p, t.seed, t.stream, *dx);
  }
}

}  // namespace cuda
}  // namespace lorakit
