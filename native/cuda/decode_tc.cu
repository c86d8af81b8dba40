// Tensor-core decode forward for 16-bit weights, n ≤ 16 rows: y = x·Wᵀ + bias + Σ scale·u·Bᵀ,
// streaming W once. The CUDA-core kernel (decode.cu) does 16 FMAs per weight at n = 16 and is
// compute-bound there; mma.sync m16n8k16 makes the product free, so only W's stream remains.
// x's rows are the mma's M (zero-padded to 16), W's features its N. Within each 32-wide K chunk
// lane (g, t) loads k = 8t..8t+7 of W's row and of x's rows g and g+8 as single 16-byte loads,
// and two mma steps take those 8 values as their k slots {2t, 2t+1} and {2t+8, 2t+9}: the same
// permutation of k on both operands leaves every dot product unchanged. DoRA's fresh norm (Norm):
// A's rows are a second 16-row mma tile against the same W fragments (decode_tc_finish_norm).
#include "decode_common.cuh"
#include "dora_norm.cuh"
#include "mma.cuh"
#include "runtime.h"

namespace lorakit {
namespace cuda {
namespace {

constexpr int kWarps = 8, kTiles = 4, kFeatures = kTiles * 8, kUnroll = 2;

__device__ __forceinline__ uint4 ldg16(const void* p, bool ok) {
  return ok ? __ldg(reinterpret_cast<const uint4*>(p)) : make_uint4(0, 0, 0, 0);
}

// DoRA's fresh norm (Norm): A's r ≤ 16 rows are a second mma row tile against the same W fragments,
// so M = W·Aᵀ for the block's features comes from the same pass over W; the finish adds the warps'
// (and splits') partial sums of both tiles, computes each feature's norm (dora_norm.cuh) and k,
// writes the norm, then y = k·pre + bias (and pre).
template <class T, int Warps, int Tiles>
__device__ __forceinline__ void decode_tc_finish_norm(const float (&acc)[Tiles][4], const float (&accm)[Tiles][4],
                                                      float (&red)[Warps][32][Tiles * 8 + 1], int64_t f0, int n, int64_t outf,
                                                      const DecodeTerms& terms, const void* bias, DType bias_dt,
                                                      T* __restrict__ y, const SplitK& sk) {
  constexpr int kFeat = Tiles * 8, kOut = 32 * kFeat / (Warps * 32);
  __shared__ float ms[16][kFeat];
  __shared__ float ks[kFeat];
  __shared__ float bs[kFeat][17];      // B's rows of the block's features, f32 (r ≤ 16; 17: no bank conflicts)
  __shared__ float gs[16 * 16];        // G = A·Aᵀ [r, r]
  __shared__ double bgs[kFeat][16];    // (B_o·G)_k
  const DecodeNorm& dn = terms.dora.fresh;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4, r = dn.r;
#pragma unroll
  for (int j = 0; j < Tiles; j++)
#pragma unroll
    for (int h = 0; h < 2; h++) {
      red[warp][g][j * 8 + 2 * t + h] = acc[j][h];
      red[warp][g + 8][j * 8 + 2 * t + h] = acc[j][2 + h];
      red[warp][16 + g][j * 8 + 2 * t + h] = accm[j][h];
      red[warp][24 + g][j * 8 + 2 * t + h] = accm[j][2 + h];
    }
  __syncthreads();
  float v[kOut];
  int row[kOut];
  int64_t feat[kOut];
  bool live[kOut];  // an x row below n or an A row below r
  int prow[kOut];   // its row in the split partials: x rows, then A's
#pragma unroll
  for (int o = 0; o < kOut; o++) {
    const int e = threadIdx.x + o * Warps * 32;
    row[o] = e / kFeat;
    feat[o] = f0 + e % kFeat;
    live[o] = feat[o] < outf && (row[o] < 16 ? row[o] < n : row[o] - 16 < r);
    prow[o] = row[o] < 16 ? row[o] : n + row[o] - 16;
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < Warps; w++) s += red[w][row[o]][e % kFeat];
    v[o] = s;
  }
  if (!split_k_gather<kOut>(sk, v, live, prow, feat, n + r, outf)) return;
#pragma unroll
  for (int o = 0; o < kOut; o++)
    if (row[o] >= 16 && live[o]) ms[row[o] - 16][feat[o] - f0] = v[o];
  for (int e = threadIdx.x; e < kFeat * 16; e += Warps * 32)
    if (e % 16 < r && f0 + e / 16 < outf) bs[e / 16][e % 16] = load_as_f32(dn.B, dn.b_dt, (f0 + e / 16) * r + e % 16);
  if (threadIdx.x < r * r) gs[threadIdx.x] = dn.gram[threadIdx.x];
  __syncthreads();
  // The norm's f64 work spread over the block: kFeat·r inner sums (B_o·G)_k, then kFeat threads
  // sum over k. One thread per feature doing all of it held 224 threads at the barrier and cost
  // a DoRA training forward at n = 16, d_out 14336, 46 of its 134 µs on an H100.
  for (int e = threadIdx.x; e < kFeat * 16; e += Warps * 32)
    if (e % 16 < r && f0 + e / 16 < outf)
      bgs[e / 16][e % 16] = dora_bg([&](int j) { return bs[e / 16][j]; }, [&](int i) { return gs[i]; }, r, e % 16);
  __syncthreads();
  if (threadIdx.x < kFeat && f0 + threadIdx.x < outf) {
    const int64_t f = f0 + threadIdx.x;
    const float nrm = dora_norm_from_bg(dn.wsq[f], [&](int k) { return ms[k][threadIdx.x]; }, [&](int k) { return bs[threadIdx.x][k]; },
                                        [&](int k) { return bgs[threadIdx.x][k]; }, r, dn.scale);
    terms.dora.norm[f] = nrm;
    ks[threadIdx.x] = dora_k(terms.dora.mag, terms.dora.mag_dt, f, nrm);
  }
  __syncthreads();
#pragma unroll
  for (int o = 0; o < kOut; o++)
    if (row[o] < 16 && live[o])
      decode_store_k<T>(v[o], row[o], feat[o], outf, terms, ks[feat[o] - f0], bias, bias_dt, y);
}

// Block: kFeatures output features over a K range; its 8 warps take interleaved 32-wide chunks
// of that range (so at any moment they read adjacent stretches of each W row), then add their
// partial sums in shared memory in warp order. Norm: see decode_tc_finish_norm. Register caps: the
// plain kernel 64 (4 blocks per SM), Norm 80 (3 blocks; at 90, 2 blocks kept half the plain kernel's
// loads in flight and the pass took twice as long on an H100; at 64, 240 bytes spilled). At 80 the
// compiler interleaves Norm's loads with the mma (SASS in gpu-dora-norm-diag-2026-12-07-h100.txt),
// which costs the A tile about 20 µs at d_out 14336. Tried and slower on an H200: x's and A's rows in
// twin 64-register blocks, and the K loop unrolled once (gpu-dora-norm-candidates-2026-12-07-h200.txt);
// on an H100, x's and A's rows staged in shared memory by cp.async (1.4x slower), and 2 feature tiles
// per block, which fit 80 registers but gained 1-3% at d_out 14336 and lost at 4096
// (gpu-dora-norm-tiles2-smem-2026-12-07-h100.txt).
template <class T, bool Norm>
__global__ void __launch_bounds__(kWarps * 32, Norm ? 3 : 4) decode_tc_kernel(const T* __restrict__ x, const T* __restrict__ W,
                                                                const void* bias, DType bias_dt, T* __restrict__ y, int n,
                                                                int64_t in, int64_t outf, DecodeTerms terms, SplitK sk) {
  __shared__ float red[kWarps][Norm ? 32 : 16][kFeatures + 1];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
  const int64_t f0 = int64_t(blockIdx.x) * kFeatures;
  const int64_t kb = int64_t(blockIdx.y) * sk.k_per, ke = kb + sk.k_per < in ? kb + sk.k_per : in;
  const T* wrow[kTiles];
  bool wok[kTiles];
#pragma unroll
  for (int j = 0; j < kTiles; j++) {
    const int64_t f = f0 + j * 8 + g;
    wok[j] = f < outf;
    wrow[j] = W + (wok[j] ? f : 0) * in;
  }
  const T* x0 = x + int64_t(g < n ? g : 0) * in;
  const T* x1 = x + int64_t(g + 8 < n ? g + 8 : 0) * in;
  const int r = Norm ? terms.dora.fresh.r : 0;
  const T* A = static_cast<const T*>(terms.dora.fresh.A);
  const T* a0 = Norm ? A + int64_t(g < r ? g : 0) * in : x0;
  const T* a1 = Norm ? A + int64_t(g + 8 < r ? g + 8 : 0) * in : x1;
  float acc[kTiles][4] = {}, accm[kTiles][4] = {};
  for (int64_t c = kb + int64_t(warp) * 32; c < ke; c += int64_t(kWarps) * 32 * kUnroll) {
    uint4 wv[kUnroll][kTiles], xa[kUnroll], xb[kUnroll], aa[kUnroll], ab[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; u++) {  // every load of the step before any use
      const int64_t k = c + int64_t(u) * kWarps * 32 + 8 * t;
      const bool ok = k < ke;
#pragma unroll
      for (int j = 0; j < kTiles; j++) wv[u][j] = ldg16(wrow[j] + k, ok && wok[j]);
      xa[u] = ldg16(x0 + k, ok && g < n);
      xb[u] = ldg16(x1 + k, ok && g + 8 < n);
      if constexpr (Norm) {
        aa[u] = ldg16(a0 + k, ok && g < r);
        ab[u] = ldg16(a1 + k, ok && g + 8 < r);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; u++)
#pragma unroll
      for (int j = 0; j < kTiles; j++) {
        Mma<T>::run(acc[j], xa[u].x, xb[u].x, xa[u].y, xb[u].y, wv[u][j].x, wv[u][j].y);
        Mma<T>::run(acc[j], xa[u].z, xb[u].z, xa[u].w, xb[u].w, wv[u][j].z, wv[u][j].w);
        if constexpr (Norm) {
          Mma<T>::run(accm[j], aa[u].x, ab[u].x, aa[u].y, ab[u].y, wv[u][j].x, wv[u][j].y);
          Mma<T>::run(accm[j], aa[u].z, ab[u].z, aa[u].w, ab[u].w, wv[u][j].z, wv[u][j].w);
        }
      }
  }
  pdl_wait_primary();  // u (the shrink's output, read by the epilogue) is complete from here
  if constexpr (Norm) decode_tc_finish_norm<T, kWarps, kTiles>(acc, accm, red, f0, n, outf, terms, bias, bias_dt, y, sk);
  else decode_tc_finish<T, kWarps, kTiles>(acc, red, f0, n, outf, terms, bias, bias_dt, y, sk);
}

template <class T, bool Norm>
void launch_tc(const TensorRef& x, const TensorRef& W, const TensorRef* bias, const DecodeTerms& terms, const TensorRef& y,
               bool after_shrink);
// Norm (DoRA's fresh norm) when terms ask for it.
template <class T>
void launch_tc(const TensorRef& x, const TensorRef& W, const TensorRef* bias, const DecodeTerms& terms, const TensorRef& y,
               bool after_shrink) {
  if (terms.dora.fresh.A) return launch_tc<T, true>(x, W, bias, terms, y, after_shrink);
  launch_tc<T, false>(x, W, bias, terms, y, after_shrink);
}

template <class T, bool Norm>
void launch_tc(const TensorRef& x, const TensorRef& W, const TensorRef* bias, const DecodeTerms& terms, const TensorRef& y,
               bool after_shrink) {
  const int64_t in = W.dim(1), outf = W.dim(0);
  const int n = static_cast<int>(x.numel() / in);
  const int64_t groups = (outf + kFeatures - 1) / kFeatures;
  static const int per_sm = resident_blocks_per_sm(decode_tc_kernel<T, Norm>, kWarps * 32);
  const int64_t resident = int64_t(per_sm) * sm_count();
  // K splits: the fewest whose waves of resident blocks come within 5% of the best, in units of
  // one pass of the 8 warps' unrolled chunks.
  constexpr int64_t kStep = int64_t(kWarps) * 32 * kUnroll;
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
  SplitKBuffers split(splits, groups, Norm ? n + terms.dora.fresh.r : n, outf, k_per);  // Norm: M's partials too
  // After the shrink: W streams while the shrink runs; the kernel waits for it before the epilogue.
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(unsigned(groups), unsigned(splits));
  cfg.blockDim = dim3(kWarps * 32);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream();
  cfg.attrs = attr;
  cfg.numAttrs = after_shrink && pdl_usable() ? 1 : 0;
  const void* b = bias ? bias->data : nullptr;
  const DType bdt = bias ? bias->dtype : DType::F32;
  LK_CUDA(cudaLaunchKernelEx(&cfg, decode_tc_kernel<T, Norm>, x.as<T>(), W.as<T>(), b, bdt, y.as<T>(), n, in, outf, terms, split.sk),
          "decode tc launch");
}

}  // namespace

bool pdl_usable() {
  static const bool ok = [] {
    int major = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return major >= 9;
  }();
  return ok;
}

bool decode_tc_applicable(const TensorRef& x, const TensorRef& W) {
  auto aligned16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return W.dim(1) % 8 == 0 && aligned16(W.data) && aligned16(x.data) && W.dtype == x.dtype &&
         (W.dtype == DType::BF16 || W.dtype == DType::F16);
}

bool decode_tc_forward(const TensorRef& x, const TensorRef& W, const TensorRef* bias, const DecodeTerms& terms,
                       const TensorRef& y, bool after_shrink) {
  if (!decode_tc_applicable(x, W)) return false;
  if (W.dtype == DType::BF16) launch_tc<__nv_bfloat16>(x, W, bias, terms, y, after_shrink);
  else if (W.dtype == DType::F16) launch_tc<__half>(x, W, bias, terms, y, after_shrink);
  else return false;
  return true;
}

}  // namespace cuda
}  // namespace lorakit
