// Shared by the decode kernels (decode.cu: CUDA cores, any dtype; decode_tc.cu: tensor cores,
// 16-bit weights; quant_linear.cu: tensor cores over quantized weights): the LoRA terms added in
// the epilogue, the split-K bookkeeping and the tensor-core kernels' common tail.
#pragma once
#include "common.cuh"
#include "dora_norm.cuh"
#include "ops.h"
#include "runtime.h"
#include "vec.cuh"

namespace lorakit {
namespace cuda {

struct DecodeTerm {
  const void* u;
  const void* B;
  DType udt, bdt;
  int r;
  float scale;
  bool vec;  // u f32, B 16-bit, r % 8 == 0, 16-byte aligned rows: 16-byte loads in the epilogue
};
struct DecodeTerms {
  DecodeTerm t[kDecodeMaxTerms];
  int count;
  DecodeDora dora;  // DoRA's per-feature scale and pre output (all null: plain LoRA)
};

// Σ_q u[row, q]·B[j, q] with 16-byte loads: 8 values of B's row and 2 × 4 of u's per step.
template <class H2>
__device__ __forceinline__ float lora_dot_vec(const DecodeTerm& tm, int64_t row, int64_t j) {
  const float4* up = reinterpret_cast<const float4*>(static_cast<const float*>(tm.u) + row * tm.r);
  const uint4* bp = reinterpret_cast<const uint4*>(static_cast<const unsigned short*>(tm.B) + j * tm.r);
  float s = 0.f;
  for (int q = 0; q < tm.r / 8; q++) {
    const uint4 braw = __ldg(bp + q);
    const H2* h = reinterpret_cast<const H2*>(&braw);
    const float4 u0 = __ldg(up + 2 * q), u1 = __ldg(up + 2 * q + 1);
    const float uv[8] = {u0.x, u0.y, u0.z, u0.w, u1.x, u1.y, u1.z, u1.w};
#pragma unroll
    for (int e = 0; e < 4; e++) {
      const float2 b = h2_to_float2<H2>(h[e]);
      s = fmaf(uv[2 * e], b.x, s);
      s = fmaf(uv[2 * e + 1], b.y, s);
    }
  }
  return s;
}

// pre[row, j] from the base sum v: + Σ scale·u[row]·B[j] over the terms.
__device__ __forceinline__ float decode_lora_terms(float v, int64_t row, int64_t j, const DecodeTerms& terms) {
  for (int t = 0; t < terms.count; t++) {
    const DecodeTerm& tm = terms.t[t];
    float s = 0.f;
    if (tm.vec && tm.bdt == DType::BF16) s = lora_dot_vec<__nv_bfloat162>(tm, row, j);
    else if (tm.vec) s = lora_dot_vec<__half2>(tm, row, j);
    else
      for (int q = 0; q < tm.r; q++) s = fmaf(load_as_f32(tm.u, tm.udt, row * tm.r + q), load_as_f32(tm.B, tm.bdt, j * tm.r + q), s);
    v = fmaf(tm.scale, s, v);
  }
  return v;
}

// Stores y[row, j] = k[j]·pre + bias[j] from the base sum v (pre = v + the LoRA terms; k = 1 without
// DoRA, else DoRA's k, given or dora_k of magnitude and norm), and pre itself
// where the training forward keeps it. y (and pre) written once, rounded once.
__device__ __forceinline__ float decode_k(const DecodeDora& d, int64_t j) {
  return d.k ? d.k[j] : d.norm ? dora_k(d.mag, d.mag_dt, j, d.norm[j]) : 1.f;
}
template <class T>
__device__ __forceinline__ void decode_store_k(float v, int64_t row, int64_t j, int64_t outf, const DecodeTerms& terms, float k,
                                               const void* bias, DType bias_dt, T* __restrict__ y) {
  v = decode_lora_terms(v, row, j, terms);
  if (terms.dora.pre) static_cast<T*>(terms.dora.pre)[row * outf + j] = from_f32<T>(v);
  v *= k;
  if (bias) v += load_as_f32(bias, bias_dt, j);
  y[row * outf + j] = from_f32<T>(v);
}
template <class T>
__device__ __forceinline__ void decode_store(float v, int64_t row, int64_t j, int64_t outf, const DecodeTerms& terms,
                                             const void* bias, DType bias_dt, T* __restrict__ y) {
  decode_store_k<T>(v, row, j, outf, terms, decode_k(terms.dora, j), bias, bias_dt, y);
}

// Split K: with few output features one block per SM cannot keep enough of W in flight, so K is
// split over gridDim.y blocks. Each writes its partial sums to `part`; the last block of a
// feature group to finish (a ticket counter) adds them in split order, which keeps the result
// independent of timing, and runs the epilogue. It also resets the counter.
struct SplitK {
  float* part;         // [splits][n][outf], null when gridDim.y == 1
  unsigned* counters;  // [gridDim.x], zero between launches
  int64_t k_per;       // K range per split
};
unsigned* decode_split_counters(int64_t groups);

// Called by every thread once its partial sums are in sk.part: true in the last block of the
// feature group to arrive (which then reads all partials), false in the others.
__device__ __forceinline__ bool split_k_last_arrival(const SplitK& sk) {
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&sk.counters[blockIdx.x], 1u) == gridDim.y - 1;
  __syncthreads();
  if (last) __threadfence();
  return last;
}

// With split K, a block's partial sums v[o] (where live[o]) go to sk.part at row prow[o] of `rows`;
// false in every block of the feature group but the last to arrive, which gets the sums over the
// splits in split order (and resets the group's counter). True at once without split K.
template <int kOut>
__device__ __forceinline__ bool split_k_gather(const SplitK& sk, float (&v)[kOut], const bool (&live)[kOut], const int (&prow)[kOut],
                                               const int64_t (&feat)[kOut], int rows, int64_t outf) {
  if (gridDim.y == 1) return true;
#pragma unroll
  for (int o = 0; o < kOut; o++)
    if (live[o]) sk.part[(int64_t(blockIdx.y) * rows + prow[o]) * outf + feat[o]] = v[o];
  if (!split_k_last_arrival(sk)) return false;
#pragma unroll
  for (int o = 0; o < kOut; o++) {
    if (!live[o]) continue;
    float s = 0.f;
    for (unsigned sp = 0; sp < gridDim.y; sp++) s += __ldcg(&sk.part[(int64_t(sp) * rows + prow[o]) * outf + feat[o]]);
    v[o] = s;
  }
  if (threadIdx.x == 0) sk.counters[blockIdx.x] = 0;
  return true;
}

// The tensor-core decode kernels' tail (decode_tc.cu, quant_linear.cu), blocks of Warps·32 threads
// owning Tiles·8 features from f0: each warp's acc[j] (mma.m16n8k16's C: rows g (0, 1) and g + 8
// (2, 3), features 8j + 2t (+1)) added in warp order through `red`; with split K, the partials of
// every split added in split order by the last block; then the epilogue and one store of y.
template <class T, int Warps, int Tiles>
__device__ __forceinline__ void decode_tc_finish(const float (&acc)[Tiles][4], float (&red)[Warps][16][Tiles * 8 + 1],
                                                 int64_t f0, int n, int64_t outf, const DecodeTerms& terms,
                                                 const void* bias, DType bias_dt, T* __restrict__ y, const SplitK& sk) {
  constexpr int kFeat = Tiles * 8, kOut = 16 * kFeat / (Warps * 32);  // outputs per thread
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int j = 0; j < Tiles; j++) {
    red[warp][g][j * 8 + 2 * t] = acc[j][0];
    red[warp][g][j * 8 + 2 * t + 1] = acc[j][1];
    red[warp][g + 8][j * 8 + 2 * t] = acc[j][2];
    red[warp][g + 8][j * 8 + 2 * t + 1] = acc[j][3];
  }
  __syncthreads();
  float v[kOut];
  int row[kOut];
  int64_t feat[kOut];
  bool live[kOut];
#pragma unroll
  for (int o = 0; o < kOut; o++) {
    const int e = threadIdx.x + o * Warps * 32;
    row[o] = e / kFeat;
    feat[o] = f0 + e % kFeat;
    live[o] = row[o] < n && feat[o] < outf;
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < Warps; w++) s += red[w][row[o]][e % kFeat];
    v[o] = s;
  }
  if (!split_k_gather<kOut>(sk, v, live, row, feat, n, outf)) return;
#pragma unroll
  for (int o = 0; o < kOut; o++)
    if (live[o])
      decode_store<T>(v[o], row[o], feat[o], outf, terms, bias, bias_dt, y);
}

// A split-K launch's partial-sum buffer and ticket counters (none when splits == 1). The buffer
// goes back to the allocator at scope exit, stream-ordered after the kernel that used it.
struct SplitKBuffers {
  SplitK sk;
  void* part = nullptr;
  size_t bytes = 0;
  SplitKBuffers(int64_t splits, int64_t groups, int n, int64_t outf, int64_t k_per) : sk{nullptr, nullptr, k_per} {
    if (splits <= 1) return;
    bytes = size_t(splits) * size_t(n) * size_t(outf) * sizeof(float);
    sk.counters = decode_split_counters(groups);
    part = alloc(bytes, false);
    sk.part = static_cast<float*>(part);
  }
  SplitKBuffers(const SplitKBuffers&) = delete;
  SplitKBuffers& operator=(const SplitKBuffers&) = delete;
  ~SplitKBuffers() {
    if (part) cuda::free(part, bytes);
  }
};

// Blocks of `threads` threads of kernel k resident on one SM at a time (at least 1).
template <class Kernel>
int resident_blocks_per_sm(Kernel k, int threads) {
  int v = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v, k, threads, 0) != cudaSuccess) {
    cudaGetLastError();
    v = 1;
  }
  return v < 1 ? 1 : v;
}

// The tensor-core decode (16-bit W, in % 8 == 0, aligned rows); false when it does not apply.
// after_shrink: see decode_forward (ops.h).
bool decode_tc_forward(const TensorRef& x, const TensorRef& W, const TensorRef* bias, const DecodeTerms& terms,
                       const TensorRef& y, bool after_shrink = false);

// Programmatic dependent launch (sm_90): the primary lets its dependent start; the dependent waits
// for the primary's completion (and its writes) before reading them. No-ops where not launched so.
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait_primary() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Whether this device takes programmatic dependent launches (cc 9.0 and later).
bool pdl_usable();

}  // namespace cuda
}  // namespace lorakit
