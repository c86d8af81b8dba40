// One-pass LoRA GEMM for Hopper: C = A0·op(B0) + Σ s_i·A_i·op(B_i) (+ bias), 16-bit operands,
// f32 accumulation, C written once (optionally each column scaled first: DoRA's k).
//
// Why hand-written: cuBLASLt has no hook for a second, low-rank operand pair in its main loop, so
// with it the LoRA term costs a second GEMM that reads and writes C again. Here the adapters'
// K blocks (u·Bᵀ in the forward, g·A for dx) follow the base's blocks into the same accumulators,
// a K-extension [A0 | A_1 | …]·[B0 | B_1 | …]ᵀ without copying anything into a concatenated buffer.
//
// Design (the usual Hopper shape): 128×256 output tiles, one producer warpgroup issuing TMA loads
// into a 4-stage ring of 128-byte-swizzled tiles (mbarriers), two consumer warpgroups each issuing
// m64n256k16 wgmma on 64 rows. B may be K-major (W [out, in] in the forward) or MN-major (W in the
// backward's dx = dy·W); the adapters' scales are applied to the accumulators between segments
// (acc ·= s_prev/s_i), so no scaled copy of a factor is made. The epilogue adds the bias in f32,
// rounds once and stores through shared memory in 16-byte rows. By default clusters of two CTAs
// share each B tile through TMA multicast (LORAKIT_SM90_CLUSTER=1 turns that off; on the H200 the
// two measured the same within noise). Not persistent: each tile pays its pipeline fill and its
// epilogue, which is where cuBLASLt's base GEMM stays 8-20% ahead (see bench/gpu_sm90.js).
// Over a quantized base (nf4/fp4), sm90_quant_lora_gemm runs gemm_sm90_quant.cuh's kernel: the
// same tiles and ring, computed transposed with W's codes decoded into wgmma's register operand.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <string>
#include <type_traits>
#include "common.cuh"
#include "ops.h"
#include "quant_codec.cuh"
#include "wgmma.cuh"

namespace lorakit {
namespace cuda {
namespace {

constexpr int kBM = 128, kBN = 256, kBK = 64, kStages = 4;
constexpr int kThreads = 384;  // producer warpgroup + two consumer warpgroups
constexpr int kABytes = kBM * kBK * 2, kBBytes = kBN * kBK * 2, kStageBytes = kABytes + kBBytes;
constexpr int kSmemBytes = 1024 + kStages * kStageBytes + 2 * kStages * 8;
// The plain kernel also keeps its tile's column scales and bias (f32, kBN each) after the barriers:
// loaded while the ring fills, so the epilogue reads shared memory. Read from global memory in the
// epilogue (64 loads a thread behind a branch each) they made DoRA's eval launch at n = 4096,
// d_out 4096 take 268-274 µs against 238-241 without col_scale; staged, 235-238 for both (H100 ncu,
// bench/results/gpu-sm90-epilogue-2026-12-07-h100.txt).
constexpr int kEpiBytes = 2 * kBN * 4;
constexpr int kLoraSmemBytes = kSmemBytes + kEpiBytes;
constexpr int kStagePitch = kBN + 8;  // epilogue staging row, in elements (conflict-free pair writes)
static_assert(kBM * kStagePitch * 2 <= kStages * kStageBytes, "epilogue staging must fit in the ring");

std::atomic<uint64_t> g_launches{0};

struct Params {
  CUtensorMap a[kSm90MaxOperands];
  CUtensorMap b[kSm90MaxOperands];
  int blocks[kSm90MaxOperands];      // K blocks of 64
  int last_steps[kSm90MaxOperands];  // k16 steps in each operand's last block (1..4)
  float ratio[kSm90MaxOperands];     // accumulator multiplier before the operand's blocks
  float final_scale;
  int count;
  int M, N, tiles_m, tiles_n;
  int group;  // row tiles per group in the tile order
  const void* bias;
  const float* col_scale;  // f32 [N] or null: DoRA's per-output scale, before the bias
  void* C;
  QuantDev qb;  // the quantized kernel's W (gemm_sm90_quant.cuh; a[0] maps its codes)
};

#ifdef LK_SM90A
// Tile order: groups of `group` row tiles sweep the column tiles together, so tiles of both
// operands are reused from L2.
__device__ __forceinline__ void tile_of(int id, int tiles_m, int tiles_n, int group_rows, int& tm, int& tn) {
  const int per_group = group_rows * tiles_n;
  const int group = id / per_group, first = group * group_rows;
  const int rows = min(tiles_m - first, group_rows);
  tm = first + (id % per_group) % rows;
  tn = (id % per_group) / rows;
}

__device__ __forceinline__ int warp_in_group() { return int(threadIdx.x % 128) / 32; }

template <bool F16, bool BKMajor>
__device__ __forceinline__ void mma_step(float (&d)[128], uint32_t a_base, uint32_t b_base, int k) {
  const uint64_t da = sm90::smem_desc(a_base + k * 32, 16, 1024);
  const uint64_t db = BKMajor ? sm90::smem_desc(b_base + k * 32, 16, 1024)
                              : sm90::smem_desc(b_base + k * 16 * 128, 64 * 128, 1024);
  sm90::wgmma_m64n256k16<F16, BKMajor ? 0 : 1>(d, da, db);
}

template <bool F16, bool BKMajor, int Steps>
__device__ __forceinline__ void mma_steps(float (&d)[128], uint32_t a_base, uint32_t b_base) {
  sm90::wgmma_fence();
#pragma unroll
  for (int k = 0; k < Steps; k++) mma_step<F16, BKMajor>(d, a_base, b_base, k);
}

// A consumer warp frees a stage. With a cluster, the stage of every CTA: each producer multicasts
// its share of B into all of them, so it may refill a stage only when every CTA has freed it.
template <int Cluster>
__device__ __forceinline__ void release(uint64_t* empty, int s) {
  if constexpr (Cluster == 1) {
    sm90::mbar_arrive(&empty[s]);
  } else {
    const uint32_t self = sm90::cluster_rank();
    sm90::mbar_arrive(&empty[s]);
#pragma unroll
    for (int c = 0; c < Cluster; c++)
      if (uint32_t(c) != self) sm90::mbar_arrive_cluster(&empty[s], c);
  }
}

// The consumer's loop over one operand's K blocks. `it` counts blocks over all operands (the
// ring position); `pending` is the stage whose wgmma may still be reading it.
template <bool F16, bool BKMajor, int Cluster>
__device__ __forceinline__ void consume(float (&d)[128], uint8_t* smem, uint64_t* full, uint64_t* empty, int blocks,
                                        int last_steps, int cw, int lane, int& it, int& pending) {
  for (int kb = 0; kb < blocks; kb++, it++) {
    const int s = it % kStages;
    sm90::mbar_wait(&full[s], (it / kStages) & 1);
    const uint32_t a_base = sm90::smem_addr(smem + s * kStageBytes) + cw * 64 * 128;
    const uint32_t b_base = sm90::smem_addr(smem + s * kStageBytes + kABytes);
    // Straight-line wgmma sequences after their fence: a branch in between makes ptxas add fences.
    switch (kb < blocks - 1 ? 4 : last_steps) {
      case 1: mma_steps<F16, BKMajor, 1>(d, a_base, b_base); break;
      case 2: mma_steps<F16, BKMajor, 2>(d, a_base, b_base); break;
      case 3: mma_steps<F16, BKMajor, 3>(d, a_base, b_base); break;
      default: mma_steps<F16, BKMajor, 4>(d, a_base, b_base);
    }
    sm90::wgmma_commit();
    sm90::wgmma_wait<1>();  // the previous block's wgmma are done: its stage can be refilled
    if (pending >= 0 && lane == 0) release<Cluster>(empty, pending);
    pending = s;
  }
}

// The two consumer warpgroups: the K loop over every operand, then the epilogue (scale, bias,
// one rounding, staged through shared memory into 16-byte row stores).
template <class T, bool B0KMajor, bool BLoraKMajor, int Cluster>
__device__ __forceinline__ void consumer_tile(const Params& p, uint8_t* smem, uint64_t* full, uint64_t* empty, int cw,
                                              int lane, int m0, int n0) {
  // The epilogue's per-column factors, one column per consumer thread: s = final_scale·col_scale
  // and the bias, read after the loop (its closing barrier orders these writes before the reads).
  float* epi_s = reinterpret_cast<float*>(empty + kStages);
  float* epi_b = epi_s + kBN;
  {
    const int t = cw * 128 + int(threadIdx.x % 128), c = n0 + t;
    const bool in = c < p.N;
    epi_s[t] = p.col_scale && in ? p.final_scale * p.col_scale[c] : p.final_scale;
    epi_b[t] = p.bias && in ? to_f32(static_cast<const T*>(p.bias)[c]) : 0.f;
  }
  float d[128];
#pragma unroll
  for (int i = 0; i < 128; i++) d[i] = 0.f;
  int it = 0, pending = -1;  // pending: the stage whose wgmma may still read it
  constexpr bool f16 = std::is_same<T, __half>::value;
  for (int op = 0; op < p.count; op++) {
    if (p.ratio[op] != 1.f) {  // the next operand has another scale: rescale what is accumulated
      sm90::wgmma_wait<0>();
      sm90::fence_accumulators(d);
      if (pending >= 0 && lane == 0) release<Cluster>(empty, pending);
      pending = -1;
      const float r = p.ratio[op];
#pragma unroll
      for (int i = 0; i < 128; i++) d[i] *= r;
    }
    if (op == 0) consume<f16, B0KMajor, Cluster>(d, smem, full, empty, p.blocks[op], p.last_steps[op], cw, lane, it, pending);
    else consume<f16, BLoraKMajor, Cluster>(d, smem, full, empty, p.blocks[op], p.last_steps[op], cw, lane, it, pending);
  }
  sm90::wgmma_wait<0>();
  sm90::fence_accumulators(d);
  if (pending >= 0 && lane == 0) release<Cluster>(empty, pending);

  // The ring is free for staging: every load was consumed, and both warpgroups have passed their
  // last wgmma at the barrier.
  sm90::named_barrier(1, 256);
  using T2 = typename std::conditional<std::is_same<T, __half>::value, __half2, __nv_bfloat162>::type;
  T* stage = reinterpret_cast<T*>(smem);
  const int w = warp_in_group();
  const int r0 = cw * 64 + w * 16 + lane / 4;
#pragma unroll
  for (int j = 0; j < 32; j++) {
    const int col = 8 * j + 2 * (lane % 4);
    const float2 sc = *reinterpret_cast<const float2*>(epi_s + col), bc = *reinterpret_cast<const float2*>(epi_b + col);
    const float s0 = sc.x, s1 = sc.y, b0 = bc.x, b1 = bc.y;
    T2 lo, hi;
    lo.x = from_f32<T>(d[4 * j] * s0 + b0);
    lo.y = from_f32<T>(d[4 * j + 1] * s1 + b1);
    hi.x = from_f32<T>(d[4 * j + 2] * s0 + b0);
    hi.y = from_f32<T>(d[4 * j + 3] * s1 + b1);
    *reinterpret_cast<T2*>(stage + r0 * kStagePitch + col) = lo;
    *reinterpret_cast<T2*>(stage + (r0 + 8) * kStagePitch + col) = hi;
  }
  sm90::named_barrier(1, 256);
  T* C = static_cast<T*>(p.C);
  for (int idx = cw * 128 + int(threadIdx.x % 128); idx < kBM * (kBN / 8); idx += 256) {
    const int row = idx / (kBN / 8), chunk = idx % (kBN / 8);
    const int gr = m0 + row, gc = n0 + chunk * 8;
    if (gr < p.M && gc < p.N)
      *reinterpret_cast<uint4*>(C + int64_t(gr) * p.N + gc) = *reinterpret_cast<const uint4*>(stage + row * kStagePitch + chunk * 8);
  }
}
#endif

#include "gemm_sm90_quant.cuh"

// Cluster = 2: two CTAs on vertically adjacent tiles (same columns) share B: each loads half of
// the B tile and multicasts it to both, halving B's traffic from L2.
template <class T, bool B0KMajor, bool BLoraKMajor, int Cluster>
__global__ void __launch_bounds__(kThreads, 1) lora_gemm_sm90(const __grid_constant__ Params p) {
#ifdef LK_SM90A
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + kStages * kStageBytes);
  uint64_t* empty = full + kStages;
  const int wg = threadIdx.x / 128, lane = threadIdx.x % 32;
  const int rank = Cluster == 1 ? 0 : int(sm90::cluster_rank());
  int tm, tn;
  tile_of(blockIdx.x / Cluster, (p.tiles_m + Cluster - 1) / Cluster, p.tiles_n, p.group, tm, tn);
  tm = tm * Cluster + rank;
  const int m0 = tm * kBM, n0 = tn * kBN;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; s++) {
      sm90::mbar_init(&full[s], 1);
      sm90::mbar_init(&empty[s], 8 * Cluster);  // one arrival per consumer warp of each CTA
    }
    sm90::mbar_init_fence();
  }
  if constexpr (Cluster == 1) __syncthreads();
  else sm90::cluster_sync();  // the peer's barriers exist before anything arrives on them

  if (wg == 0) {  // producer
    sm90::regs_decrease<40>();
    if (threadIdx.x == 0) {
      constexpr int kBRows = kBN / Cluster;  // this CTA's share of a K-major B tile
      int it = 0;
      for (int op = 0; op < p.count; op++) {
        const bool kmajor = op == 0 ? B0KMajor : BLoraKMajor;
        for (int kb = 0; kb < p.blocks[op]; kb++, it++) {
          const int s = it % kStages;
          sm90::mbar_wait(&empty[s], ((it / kStages) & 1) ^ 1);
          uint8_t* sa = smem + s * kStageBytes;
          uint8_t* sb = sa + kABytes;
          sm90::mbar_expect_tx(&full[s], kStageBytes);
          sm90::tma_load_2d(sa, &p.a[op], &full[s], kb * kBK, m0 < p.M ? m0 : 0);  // a cluster's spare tile reads row 0
          if constexpr (Cluster == 1) {
            if (kmajor) {
              sm90::tma_load_2d(sb, &p.b[op], &full[s], kb * kBK, n0);
            } else {
              for (int c = 0; c < kBN / 64; c++) sm90::tma_load_2d(sb + c * 64 * 128, &p.b[op], &full[s], n0 + c * 64, kb * kBK);
            }
          } else {
            constexpr uint16_t kAll = (1u << Cluster) - 1;
            if (kmajor) {
              sm90::tma_load_2d_multicast(sb + rank * kBRows * 128, &p.b[op], &full[s], kb * kBK, n0 + rank * kBRows, kAll);
            } else {
              for (int c = rank * (kBN / 64 / Cluster); c < (rank + 1) * (kBN / 64 / Cluster); c++)
                sm90::tma_load_2d_multicast(sb + c * 64 * 128, &p.b[op], &full[s], n0 + c * 64, kb * kBK, kAll);
            }
          }
        }
      }
    }
  } else {
    sm90::regs_increase<232>();
    consumer_tile<T, B0KMajor, BLoraKMajor, Cluster>(p, smem, full, empty, wg - 1, lane, m0, n0);
  }
  if constexpr (Cluster > 1) sm90::cluster_sync();  // no CTA leaves while a peer may still signal it
#endif
}

PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      f = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

// A row-major [rows, cols] 16-bit matrix, loaded in boxes of box_cols × box_rows (cols innermost).
CUtensorMap tensor_map(const void* ptr, DType dt, int64_t rows, int64_t cols, uint32_t box_cols, uint32_t box_rows) {
  CUtensorMap m;
  cuuint64_t dims[2] = {cuuint64_t(cols), cuuint64_t(rows)};
  cuuint64_t strides[1] = {cuuint64_t(cols) * 2};
  cuuint32_t box[2] = {box_cols, box_rows};
  cuuint32_t elem[2] = {1, 1};
  CUresult r = encode_fn()(&m, dt == DType::BF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2,
                           const_cast<void*>(ptr), dims, strides, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE,
                           CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    throw_state("cuda: cuTensorMapEncodeTiled failed (" + std::to_string(int(r)) + ") for a " + std::to_string(rows) + "x" +
                std::to_string(cols) + " matrix");
  return m;
}

// A row-major [rows, cols] matrix of 4-bit codes (cols / 2 bytes a row), loaded 128 rows × 32 bytes
// unswizzled: gemm_sm90_quant.cuh's op 0 A tile.
CUtensorMap code_map(const uint8_t* data, int64_t rows, int64_t cols) {
  CUtensorMap m;
  cuuint64_t dims[2] = {cuuint64_t(cols / 2), cuuint64_t(rows)};
  cuuint64_t strides[1] = {cuuint64_t(cols / 2)};
  cuuint32_t box[2] = {uint32_t(kBK / 2), uint32_t(kBM)};
  cuuint32_t elem[2] = {1, 1};
  CUresult r = encode_fn()(&m, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<uint8_t*>(data), dims, strides, box, elem,
                           CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                           CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    throw_state("cuda: cuTensorMapEncodeTiled failed (" + std::to_string(int(r)) + ") for a " + std::to_string(rows) + "x" +
                std::to_string(cols) + " 4-bit weight");
  return m;
}

// One launch of a clustered kernel over the tile grid (pairs of row tiles when Cluster is 2).
template <class Kernel>
void launch_tiles(Kernel kernel, int smem_bytes, int cluster, const Params& p, const char* what) {
  const int pairs_m = (p.tiles_m + cluster - 1) / cluster;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(unsigned(pairs_m * cluster * p.tiles_n));
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = smem_bytes;
  cfg.stream = stream();
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = cluster;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  LK_CUDA(cudaLaunchKernelEx(&cfg, kernel, p), what);
  g_launches++;
}

template <class T, bool B0K, bool BLK, int Cluster>
void launch(const Params& p) {
  auto kernel = lora_gemm_sm90<T, B0K, BLK, Cluster>;
  static std::once_flag once;
  std::call_once(once, [&] { cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kLoraSmemBytes); });
  launch_tiles(kernel, kLoraSmemBytes, Cluster, p, "lora_gemm_sm90 launch");
}

template <class T, int TN, int Cluster>
void launch_quant(const Params& p) {
  auto kernel = quant_lora_gemm_sm90<T, TN, Cluster>;
  static std::once_flag once;
  std::call_once(once, [&] { cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kQuantSmemBytes); });
  launch_tiles(kernel, kQuantSmemBytes, Cluster, p, "quant_lora_gemm_sm90 launch");
}

template <class T>
void launch_quant_for(int tn, int cluster, const Params& p) {
  if (tn == 256) {
    if (cluster == 2) launch_quant<T, 256, 2>(p);
    else launch_quant<T, 256, 1>(p);
  } else {
    if (cluster == 2) launch_quant<T, 128, 2>(p);
    else launch_quant<T, 128, 1>(p);
  }
}

template <class T, int Cluster>
void launch_for(bool b0k, bool blk, const Params& p) {
  if (b0k && blk) launch<T, true, true, Cluster>(p);
  else if (b0k) launch<T, true, false, Cluster>(p);
  else if (blk) launch<T, false, true, Cluster>(p);
  else launch<T, false, false, Cluster>(p);
}

// LORAKIT_SM90_CLUSTER=1|2 and LORAKIT_SM90_GROUP=<row tiles> (benchmarks); defaults below.
int env_int(const char* name, int fallback, int lo, int hi) {
  const char* e = std::getenv(name);
  if (!e) return fallback;
  const int v = std::atoi(e);
  return v >= lo && v <= hi ? v : fallback;
}
int cluster_size() {
  static const int c = env_int("LORAKIT_SM90_CLUSTER", 2, 1, 2);
  return c;
}
int group_rows() {
  static const int g = env_int("LORAKIT_SM90_GROUP", 8, 1, 1 << 20);
  return g;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

bool sm90_gemm_usable() {
  static const bool usable = [] {
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    cudaFuncAttributes attr;
    const bool image = cudaFuncGetAttributes(&attr, lora_gemm_sm90<__nv_bfloat16, true, true, 1>) == cudaSuccess;
    cudaGetLastError();
    return major == 9 && minor == 0 && image && encode_fn() != nullptr;
  }();
  return usable;
}

bool sm90_gemm_supports(DType dt, int64_t M, int64_t N, const std::vector<Sm90Operand>& ops, const void* bias, const void* C) {
  if (dt != DType::BF16 && dt != DType::F16) return false;
  if (ops.empty() || ops.size() > size_t(kSm90MaxOperands) || M <= 0 || N <= 0 || N % 8 || !aligned16(C)) return false;
  if (M >= (int64_t(1) << 31) || N >= (int64_t(1) << 31) || (bias && reinterpret_cast<uintptr_t>(bias) % 4)) return false;
  for (size_t i = 0; i < ops.size(); i++) {
    const auto& o = ops[i];
    if (i > 0 && !(o.scale != 0.f && std::isfinite(o.scale))) return false;
    if (o.k <= 0 || o.k % 8 || o.k >= (int64_t(1) << 31) || !aligned16(o.A) || !aligned16(o.B)) return false;
    if (i > 1 && o.b_kmajor != ops[1].b_kmajor) return false;
  }
  return sm90_gemm_usable();
}

namespace {
// The launch parameters; with q, operand 0's A is W's codes (gemm_sm90_quant.cuh).
Params make_params(DType dt, int64_t M, int64_t N, const std::vector<Sm90Operand>& ops, const void* bias, void* C,
                   const float* col_scale, int cluster, const QuantDev* q = nullptr, int b_rows = kBN) {
  Params p{};
  p.count = int(ops.size());
  float current = 1.f;
  for (int i = 0; i < p.count; i++) {
    const auto& o = ops[i];
    p.a[i] = i == 0 && q ? code_map(q->data, q->rows, q->cols) : tensor_map(o.A, dt, M, o.k, kBK, kBM);
    p.b[i] = o.b_kmajor ? tensor_map(o.B, dt, N, o.k, kBK, b_rows / cluster) : tensor_map(o.B, dt, o.k, N, 64, kBK);
    p.blocks[i] = int((o.k + kBK - 1) / kBK);
    p.last_steps[i] = int(((o.k - int64_t(p.blocks[i] - 1) * kBK) + 15) / 16);
    const float s = i == 0 ? 1.f : o.scale;
    p.ratio[i] = current / s;
    current = s;
  }
  p.final_scale = current;
  p.M = int(M);
  p.N = int(N);
  p.tiles_m = int((M + kBM - 1) / kBM);
  p.tiles_n = int((N + b_rows - 1) / b_rows);
  p.group = group_rows();
  p.bias = bias;
  p.col_scale = col_scale;
  p.C = C;
  if (q) p.qb = *q;
  return p;
}
}  // namespace

void sm90_lora_gemm(DType dt, int64_t M, int64_t N, const std::vector<Sm90Operand>& ops, const void* bias, void* C,
                    const float* col_scale) {
  if (!sm90_gemm_supports(dt, M, N, ops, bias, C)) throw_state("cuda: the sm_90 LoRA GEMM does not take these operands");
  const int cluster = cluster_size();
  const Params p = make_params(dt, M, N, ops, bias, C, col_scale, cluster);
  const bool b0k = ops[0].b_kmajor, blk = ops.size() > 1 ? ops[1].b_kmajor : true;
  if (dt == DType::BF16) {
    if (cluster == 2) launch_for<__nv_bfloat16, 2>(b0k, blk, p);
    else launch_for<__nv_bfloat16, 1>(b0k, blk, p);
  } else {
    if (cluster == 2) launch_for<__half, 2>(b0k, blk, p);
    else launch_for<__half, 1>(b0k, blk, p);
  }
}

bool sm90_quant_gemm_supports(DType dt, int64_t M, const QuantDev& q, const std::vector<Sm90Operand>& ops, const void* bias,
                              const void* C) {
  if (q.fmt != QuantFormat::NF4 && q.fmt != QuantFormat::FP4) return false;
  if (q.block < 32 || q.block % 32 || q.cols % 32 || ops.empty() || ops[0].B != q.data || ops[0].k != q.cols || !ops[0].b_kmajor)
    return false;
  for (size_t i = 1; i < ops.size(); i++)
    if (!ops[i].b_kmajor) return false;
  return sm90_gemm_supports(dt, M, q.rows, ops, bias, C);
}

void sm90_quant_lora_gemm(DType dt, int64_t M, const QuantDev& q, const std::vector<Sm90Operand>& ops, const void* bias, void* C) {
  if (!sm90_quant_gemm_supports(dt, M, q, ops, bias, C))
    throw_state("cuda: the sm_90 quantized LoRA GEMM does not take these operands");
  // yᵀ = deq(W)·xᵀ + Σ s_i·B_i·u_iᵀ: each operand pair swapped (all K-major), C still y [M, q.rows].
  std::vector<Sm90Operand> t(ops.size());
  for (size_t i = 0; i < ops.size(); i++) t[i] = {ops[i].B, ops[i].A, ops[i].k, ops[i].scale, true};
  // x's tile: 256 rows, or 128 where even the 128-row tiles fit in one wave (at n = 512, d_out = 4096
  // on the H100: 0.86x the time of 256; at n = 1024: 1.6x). LORAKIT_SM90_QUANT_TN=128|256 and
  // LORAKIT_SM90_QUANT_CLUSTER=1|2 force a shape (benchmarks; read on every call).
  const int64_t tiles128 = (q.rows + kBM - 1) / kBM * ((M + 127) / 128);
  const int tn = env_int("LORAKIT_SM90_QUANT_TN", tiles128 <= sm_count() ? 128 : 256, 128, 256) == 128 ? 128 : 256;
  const int cluster = env_int("LORAKIT_SM90_QUANT_CLUSTER", cluster_size(), 1, 2);
  const Params p = make_params(dt, q.rows, M, t, bias, C, nullptr, cluster, &q, tn);
  if (dt == DType::BF16) launch_quant_for<__nv_bfloat16>(tn, cluster, p);
  else launch_quant_for<__half>(tn, cluster, p);
}

uint64_t sm90_gemm_launches() { return g_launches.load(); }

}  // namespace cuda
}  // namespace lorakit
