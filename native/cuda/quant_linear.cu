// LoRA over a quantized base on cuda (peft's lora.Linear over bnb Linear4bit / Linear8bitLt):
//   y  = x·deq(W)ᵀ + bias + Σ scale·(x·Aᵀ)·Bᵀ        dx = dy·deq(W) + Σ mask ⊙ (scale·dy·B)·A
// dA, dB as linear_backward's (linear_blas.cu). Never a full-size dequantised copy of W:
// - n ≤ 16 rows, 16-bit x: a tensor-core decode kernel (decode_tc.cu's scheme) reads W's
//   quantized bytes once, 16 bytes per lane for nf4/fp4/int8, decodes them in registers to x's
//   dtype (the 4-bit code book in shared memory) and feeds mma.sync; bias and LoRA terms are
//   added in the epilogue (decode_common.cuh), so y is written once.
// - 16 < n ≤ kQuantSm90MaxRows, 16-bit x, nf4/fp4 on Hopper: gemm_sm90_quant.cuh's one-pass kernel,
//   W's codes decoded into wgmma's register operand (sm90_quant_lora_gemm). On the H100 (bf16, d_in
//   4096, d_out 4096 / 14336) it takes 1.17-1.37x the bf16 forward at n = 512-2048 where the chunked
//   path takes 1.24-1.78x, but 1.26-1.33x at n = 4096 where chunked takes 1.16-1.21x, so larger n
//   stay chunked: bench/results/gpu-quant-2026-12-06-12-17-33.md (f16: -12-17-45.md).
// - otherwise (and f32 x, which must not go through 16-bit products): W is dequantised in chunks
//   (rows for y, columns for dx) into a scratch of x's dtype of at most kChunkBytes and each
//   chunk is one cuBLASLt GEMM (f32: exact fp32, no TF32) writing its own slice of y or dx; the
//   LoRA terms and bias go into y/dx first and the chunks accumulate onto them (beta = 1), the
//   order of linear_forward's two-GEMM path.
#include <algorithm>
#include <cstdlib>
#include <string>
#include "common.cuh"
#include "decode_common.cuh"
#include "device_buffer.h"
#include "mma.cuh"
#include "ops.h"
#include "quant_codec.cuh"
#include "runtime.h"

namespace lorakit {
namespace cuda {
namespace {

constexpr size_t kChunkBytes = size_t(16) << 20;
constexpr int kWarps = 8, kTiles = 4, kFeatures = kTiles * 8, kLaneK = 32, kStep = kWarps * 4 * kLaneK;

__device__ __forceinline__ uint4 ldg16(const void* p, bool ok) {
  return ok ? __ldg(reinterpret_cast<const uint4*>(p)) : make_uint4(0, 0, 0, 0);
}

template <class T>
__device__ __forceinline__ uint32_t pack2(float a, float b) {
  const auto h = Pair<T>::make(a, b);  // a in the low half: the lower k
  return *reinterpret_cast<const uint32_t*>(&h);
}

// The 32 values deq(W)[f, k..k+31] of lane's tile as 16 pairs of T (P[2i] = values 2i, 2i+1 ...).
// raw/a: the lane's prefetched 16 bytes and scale (nf4/fp4: packed codes, absmax; int8: unused).
template <class T, QuantFormat F>
__device__ __forceinline__ void lane_weights(const QuantDev& q, const float* code, int64_t f, int64_t k, bool ok,
                                             const uint4& raw, float a, uint32_t (&P)[16]) {
  if (!ok) {
#pragma unroll
    for (int i = 0; i < 16; i++) P[i] = 0;
    return;
  }
  if constexpr (F == QuantFormat::NF4 || F == QuantFormat::FP4) {
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 16; i++) {
      const uint32_t b = (words[i / 4] >> (8 * (i % 4))) & 0xFF;
      P[i] = pack2<T>(__fmul_rn(code[b >> 4], a), __fmul_rn(code[b & 0xF], a));
    }
  } else {
#pragma unroll
    for (int s = 0; s < 4; s++) {
      float w[8];
      quant_deq8(q, code, f, k + 8 * s, w);
#pragma unroll
      for (int p = 0; p < 4; p++) P[4 * s + p] = pack2<T>(w[2 * p], w[2 * p + 1]);
    }
  }
}

// Block: kFeatures output features over a K range; warps take interleaved 128-wide chunks; lane
// (g, t) holds k = 32t..32t+31 of the chunk for W's row (feature 8·tile + g) and x's rows g, g + 8.
// Per 8 values, two mma steps take them as k slots {2t, 2t+1} and {2t+8, 2t+9}: the same
// permutation of k on both operands, so every dot product is unchanged.
template <class T, QuantFormat F>
__global__ void __launch_bounds__(kWarps * 32) quant_decode_kernel(const T* __restrict__ x, QuantDev q, const void* bias,
                                                                   DType bias_dt, T* __restrict__ y, int n,
                                                                   DecodeTerms terms, SplitK sk) {
  __shared__ float red[kWarps][16][kFeatures + 1];
  __shared__ float code[16];
  if (threadIdx.x < 16) code[threadIdx.x] = kQuantCode4[F == QuantFormat::FP4 ? 1 : 0][threadIdx.x];
  __syncthreads();
  const int64_t in = q.cols, outf = q.rows;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
  const int64_t f0 = int64_t(blockIdx.x) * kFeatures;
  const int64_t kb = int64_t(blockIdx.y) * sk.k_per, ke = kb + sk.k_per < in ? kb + sk.k_per : in;
  int64_t feat[kTiles];
  bool fok[kTiles];
#pragma unroll
  for (int j = 0; j < kTiles; j++) {
    feat[j] = f0 + j * 8 + g;
    fok[j] = feat[j] < outf;
  }
  const T* x0 = x + int64_t(g < n ? g : 0) * in;
  const T* x1 = x + int64_t(g + 8 < n ? g + 8 : 0) * in;
  float acc[kTiles][4] = {};
  for (int64_t c = kb + int64_t(warp) * (4 * kLaneK); c < ke; c += kStep) {
    const int64_t k = c + kLaneK * t;
    const bool ok = k < ke;
    uint4 raw[kTiles];
    float am[kTiles];
#pragma unroll
    for (int j = 0; j < kTiles; j++) {  // W's loads first, so they are all in flight together
      raw[j] = make_uint4(0, 0, 0, 0);
      am[j] = 0.f;
      if constexpr (F == QuantFormat::NF4 || F == QuantFormat::FP4) {
        const int64_t e = feat[j] * in + k;
        raw[j] = ldg16(q.data + e / 2, ok && fok[j]);
        if (ok && fok[j]) am[j] = quant_absmax(q, e / q.block);
      }
    }
    uint4 xa[4], xb[4];
#pragma unroll
    for (int s = 0; s < 4; s++) {
      xa[s] = ldg16(x0 + k + 8 * s, ok && g < n);
      xb[s] = ldg16(x1 + k + 8 * s, ok && g + 8 < n);
    }
#pragma unroll
    for (int j = 0; j < kTiles; j++) {
      uint32_t P[16];
      lane_weights<T, F>(q, code, feat[j], k, ok && fok[j], raw[j], am[j], P);
#pragma unroll
      for (int s = 0; s < 4; s++) {
        Mma<T>::run(acc[j], xa[s].x, xb[s].x, xa[s].y, xb[s].y, P[4 * s], P[4 * s + 1]);
        Mma<T>::run(acc[j], xa[s].z, xb[s].z, xa[s].w, xb[s].w, P[4 * s + 2], P[4 * s + 3]);
      }
    }
  }
  decode_tc_finish<T, kWarps, kTiles>(acc, red, f0, n, outf, terms, bias, bias_dt, y, sk);
}

template <class T, QuantFormat F>
void launch_decode(const TensorRef& x, const QuantDev& q, const TensorRef* bias, const DecodeTerms& terms, const TensorRef& y) {
  const int64_t in = q.cols, outf = q.rows;
  const int n = static_cast<int>(x.numel() / in);
  const int64_t groups = (outf + kFeatures - 1) / kFeatures;
  static const int per_sm = resident_blocks_per_sm(quant_decode_kernel<T, F>, kWarps * 32);
  const int64_t resident = int64_t(per_sm) * sm_count();
  // K splits as decode_tc.cu: the fewest whose waves of resident blocks come within 5% of the best.
  const int64_t steps = (in + kStep - 1) / kStep;
  int64_t splits = 1;
  double best = 1e30;
  for (int64_t s = 1; s <= 16 && s <= steps; s++) {
    const double cost = double((groups * s + resident - 1) / resident) / double(s) + 0.02 * double(s);
    if (cost < best * 0.95) {
      best = cost;
      splits = s;
    }
  }
  const int64_t k_per = (steps + splits - 1) / splits * kStep;
  splits = (in + k_per - 1) / k_per;
  SplitKBuffers split(splits, groups, n, outf, k_per);
  quant_decode_kernel<T, F><<<dim3(unsigned(groups), unsigned(splits)), kWarps * 32, 0, stream()>>>(
      x.as<T>(), q, bias ? bias->data : nullptr, bias ? bias->dtype : DType::F32, y.as<T>(), n, terms, split.sk);
}

template <class T>
void decode_dispatch(const TensorRef& x, const QuantDev& q, const TensorRef* bias, const DecodeTerms& terms, const TensorRef& y) {
  switch (q.fmt) {
    case QuantFormat::INT8: launch_decode<T, QuantFormat::INT8>(x, q, bias, terms, y); break;
    case QuantFormat::NF4: launch_decode<T, QuantFormat::NF4>(x, q, bias, terms, y); break;
    case QuantFormat::FP4: launch_decode<T, QuantFormat::FP4>(x, q, bias, terms, y); break;
    case QuantFormat::Q8_0: launch_decode<T, QuantFormat::Q8_0>(x, q, bias, terms, y); break;
    case QuantFormat::Q4_0: launch_decode<T, QuantFormat::Q4_0>(x, q, bias, terms, y); break;
    case QuantFormat::Q4_K: launch_decode<T, QuantFormat::Q4_K>(x, q, bias, terms, y); break;
    case QuantFormat::Q6_K: launch_decode<T, QuantFormat::Q6_K>(x, q, bias, terms, y); break;
  }
}

// y[i, j] = bias[j] in y's dtype (the chunked path's starting value).
template <class T>
__global__ void broadcast_bias_kernel(const void* bias, DType bdt, T* __restrict__ y, int64_t n, int64_t outf) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n * outf; e += int64_t(gridDim.x) * blockDim.x)
    y[e] = from_f32<T>(load_as_f32(bias, bdt, e % outf));
}

// Max rows (or columns) of deq(W) per chunk for a scratch of kChunkBytes: a multiple of 64 (whole
// 16-byte-aligned slices of y/dx), at least 64, at most `total`.
int64_t chunk_of(int64_t total, int64_t other, DType dt) {
  int64_t c = static_cast<int64_t>(kChunkBytes / (size_t(other) * dtype_size(dt))) / 64 * 64;
  if (c < 64) c = 64;
  return c < total ? c : total;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// LORAKIT_QUANT_GEMM=sm90|chunked forces a path for n > 16 (tests, benchmarks; read on every call
// so that a process can switch); unset, the sm_90 kernel takes n ≤ kQuantSm90MaxRows.
constexpr int64_t kQuantSm90MaxRows = 2048;
bool quant_sm90_allowed(int64_t n) {
  const char* e = std::getenv("LORAKIT_QUANT_GEMM");
  if (!e) return n <= kQuantSm90MaxRows;
  return std::string(e) != "chunked";
}

void require_same(const TensorRef& t, DType dt, const char* name) {
  if (t.dtype != dt)
    throw_type(std::string(name) + ": on cuda, expected " + dtype_name(dt) + " (the dtype of the input), got " + dtype_name(t.dtype));
}

}  // namespace

void quant_lora_forward(const TensorRef& x, const QuantWeight& W, const TensorRef* bias, const std::vector<FusedAdapter>& adapters,
                        const TensorRef& y) {
  const DType dt = x.dtype;
  require_same(y, dt, "y");
  const QuantDev q = quant_dev(W.spec, W.data);
  const int64_t in = q.cols, outf = q.rows, n = x.numel() / in;
  if (n == 0 || outf == 0) return;
  const bool small = dt != DType::F32 && n <= kDecodeMaxRows && adapters.size() <= kDecodeMaxTerms && in % kLaneK == 0 &&
                     aligned16(x.data) && aligned16(W.data);
  // The shrinks: into u_out (x's dtype, kept for backward) or scratch (f32 for the decode epilogue).
  std::vector<Buf> us;
  us.reserve(adapters.size());
  std::vector<TensorRef> u(adapters.size());
  for (size_t i = 0; i < adapters.size(); i++) {
    const auto& a = adapters[i];
    if (a.u_out) {
      u[i] = *a.u_out;
    } else {
      u[i].dtype = small ? DType::F32 : dt;
      u[i].shape = {n, a.A.dim(0)};
      us.emplace_back(static_cast<size_t>(n * a.A.dim(0)) * dtype_size(u[i].dtype));
      u[i].data = us.back().p;
    }
    if (small) decode_shrink(x, a.A, u[i]);
    else lora_shrink(x, a.A, u[i]);
  }
  if (small) {
    DecodeTerms terms{};
    terms.count = static_cast<int>(adapters.size());
    for (size_t i = 0; i < adapters.size(); i++) {
      const TensorRef& B = adapters[i].B;
      const int r = static_cast<int>(B.dim(1));
      const bool vec = u[i].dtype == DType::F32 && B.dtype != DType::F32 && r % 8 == 0 && aligned16(u[i].data) && aligned16(B.data);
      terms.t[i] = DecodeTerm{u[i].data, B.data, u[i].dtype, B.dtype, r, adapters[i].scale, vec};
    }
    if (dt == DType::BF16) decode_dispatch<__nv_bfloat16>(x, q, bias, terms, y);
    else decode_dispatch<__half>(x, q, bias, terms, y);
    LK_LAUNCHED("quantized decode forward");
    return;
  }
  if (dt != DType::F32 && quant_sm90_allowed(n)) {  // y = x·deq(W)ᵀ + Σ s·u·Bᵀ + bias, W decoded in the tile loads
    std::vector<Buf> hold;
    std::vector<Sm90Operand> ops{{x.data, q.data, in, 1.f, true}};
    for (size_t i = 0; i < adapters.size(); i++)
      if (adapters[i].scale != 0.f && adapters[i].B.dim(1) > 0)
        ops.push_back({in_dtype(u[i], dt, hold), in_dtype(adapters[i].B, dt, hold), adapters[i].B.dim(1), adapters[i].scale, true});
    const void* b = bias ? in_dtype(*bias, dt, hold) : nullptr;
    if (sm90_quant_gemm_supports(dt, n, q, ops, b, y.data)) {
      sm90_quant_lora_gemm(dt, n, q, ops, b, y.data);
      return;
    }
  }
  const size_t es = dtype_size(dt);
  bool have_y = false;
  if (bias) {
    dispatch_float(dt, "y", [&](auto z) {
      using T = decltype(z);
      broadcast_bias_kernel<T><<<blocks_for(n * outf, 256), 256, 0, stream()>>>(bias->data, bias->dtype, y.as<T>(), n, outf);
    });
    LK_LAUNCHED("bias");
    have_y = true;
  }
  for (size_t i = 0; i < adapters.size(); i++) {  // y (+)= scale·u·Bᵀ
    const int64_t r = adapters[i].B.dim(1);
    if (r == 0) continue;
    std::vector<Buf> hold;
    const void* Bp = in_dtype(adapters[i].B, dt, hold);
    const void* up = in_dtype(u[i], dt, hold);
    gemm_rm(n, outf, r, up, r, false, Bp, r, true, y.data, outf, dt, dt, adapters[i].scale, have_y ? 1.f : 0.f);
    have_y = true;
  }
  // y[:, o0:o0+c] (+)= x·deq(W[o0:o0+c])ᵀ, one bounded chunk of W's rows at a time.
  const int64_t rc = chunk_of(outf, in, dt);
  Buf wc(size_t(rc) * size_t(in) * es);
  for (int64_t o0 = 0; o0 < outf; o0 += rc) {
    const int64_t c = std::min(rc, outf - o0);
    quant_dequantize_rows(q, o0, c, 0, in, wc.p, dt, in);
    gemm_rm(n, c, in, x.data, in, false, wc.p, in, true, static_cast<char*>(y.data) + o0 * es, outf, dt, dt, 1.f,
            have_y ? 1.f : 0.f);
  }
}

void quant_linear_backward(const TensorRef& dy, const QuantWeight& W, const std::vector<BackwardTerm>& terms, const TensorRef* dx) {
  const DType dt = dy.dtype;
  if (dx) require_same(*dx, dt, "dx");
  const QuantDev q = quant_dev(W.spec, W.data);
  const int64_t in = q.cols, outf = q.rows, n = dy.numel() / outf;
  // dA, dB exactly as linear_backward computes them: it reads only W's shape and dtype when dx is null.
  bool grads = false;
  for (const auto& t : terms) grads = grads || t.dA || t.dB;
  if (grads) {
    TensorRef shape_only;
    shape_only.dtype = dt;
    shape_only.shape = {outf, in};
    linear_backward(dy, shape_only, false, terms, nullptr);
  }
  if (!dx || n == 0) return;
  const size_t es = dtype_size(dt);
  // g = scale·dy·B per adapter; dx = Σ g·A over the adapters without dropout.
  std::vector<Buf> gs;
  gs.reserve(terms.size());
  bool have = false;
  for (const auto& t : terms) {
    const int64_t r = t.A.dim(0);
    std::vector<Buf> hold;
    gs.emplace_back(size_t(n * r) * es);
    if (r == 0) continue;
    const void* Bp = in_dtype(t.B, dt, hold);
    gemm_rm(n, r, outf, dy.data, outf, false, Bp, r, false, gs.back().p, r, dt, dt, t.scale);
    if (t.dropout_p > 0.f) continue;
    const void* Ap = in_dtype(t.A, dt, hold);
    gemm_rm(n, in, r, gs.back().p, r, false, Ap, in, false, dx->data, in, dt, dt, 1.f, have ? 1.f : 0.f);
    have = true;
  }
  // dx[:, c0:c0+c] (+)= dy·deq(W)[:, c0:c0+c], one bounded chunk of W's columns at a time.
  const int64_t cc = chunk_of(in, outf, dt);  // multiples of 64: whole 8-value groups until the last chunk
  Buf wc(size_t(cc) * size_t(outf) * es);
  for (int64_t c0 = 0; c0 < in; c0 += cc) {
    const int64_t c = std::min(cc, in - c0);
    quant_dequantize_rows(q, 0, outf, c0, c, wc.p, dt, c);
    gemm_rm(n, c, outf, dy.data, outf, false, wc.p, c, false, static_cast<char*>(dx->data) + c0 * es, in, dt, dt, 1.f,
            have ? 1.f : 0.f);
  }
  // Adapters with dropout: their masked term on top, as linear_backward.
  for (size_t a = 0; a < terms.size(); a++) {
    const auto& t = terms[a];
    const int64_t r = t.A.dim(0);
    if (t.dropout_p <= 0.f || r == 0) continue;
    std::vector<Buf> hold;
    const void* Ap = in_dtype(t.A, dt, hold);
    Buf tmp(size_t(n * in) * es);
    gemm_rm(n, in, r, gs[a].p, r, false, Ap, in, false, tmp.p, in, dt, dt, 1.f, 0.f);
    TensorRef tr;
    tr.data = tmp.p;
    tr.dtype = dt;
    tr.shape = dx->shape;
    masked_accumulate(tr, t.dropout_p, t.seed, t.stream, *dx);
  }
}

}  // namespace cuda
}  // namespace lorakit
