// gemm_sm90.cu's kernel over a quantized base (nf4/fp4, peft's lora.Linear over bnb Linear4bit),
// computed transposed so that W is wgmma's register operand:
//   yᵀ [out, n] = deq(W)·xᵀ + Σ s_i·B_i·u_iᵀ (+ bias per row),   deq(W)[o, k] = code[q]·absmax
// (the cpu's f32 product, rounded once to x's dtype). Tiles: 128 rows of W (two consumer warpgroups
// of 64) × TN = 256 rows of x (128 where 256 would leave SMs idle), K blocks of 64. The producer
// warpgroup TMA-loads W's 4-bit codes (128 × 32 bytes) and x's tile (128-byte swizzled, wgmma's B;
// with Cluster = 2, two CTAs on adjacent W tiles each load half of it for both), and writes the
// block's absmax values (one per 32 values) into a ring. Each consumer thread decodes its own A
// fragments (16 registers a block; the codes read one block ahead) while the previous block's
// wgmma run, so W is never stored decoded: no shared-memory round trip, and each decoded weight
// feeds TN products. The adapters follow as a K-extension from shared memory (B_i as A, u_i as
// B). The epilogue transposes through shared memory. On the H100 (bench/results/gpu-quant-
// 2026-12-06-11-36-27.md) a 128-row x tile halves the products per K block but cuts its time only
// from about 1.2 to 0.9 µs: the per-block decode (two dependent shared-memory round trips, 32 code
// lookups a thread), not the tensor cores, sets the pace; 1.26-1.33x the bf16 forward at n = 4096.
// Included by gemm_sm90.cu (after Params, consume, release, tile_of), inside its namespace.
#pragma once

constexpr int kQuantCodeBytes = kBM * kBK / 2;  // op 0's A tile: 128 rows × 32 bytes of codes
constexpr int kAbsAhead = 3;                   // absmax loads in flight ahead of their block
constexpr int kQuantPitch = kBM + 8;            // epilogue staging: one x row's 128 outputs (16-byte rows)
constexpr int kQuantSmemBytes = kSmemBytes + kStages * kBM * 2 * 4;  // + the absmax ring
static_assert(kBN * kQuantPitch * 2 <= kStages * kStageBytes, "the transposed staging must fit in the ring");
static_assert(kQuantSmemBytes + 64 <= 227 * 1024, "the quantized kernel's shared memory must fit an sm_90 block");

#ifdef LK_SM90A
__shared__ float g_quant_code[16];  // the format's code book (16 words in 16 banks: lookups never conflict)

// Two consecutive values of a W row from one byte of codes (the lower k in the high nibble), as
// code·absmax in f32 rounded once to T, packed with the lower k in the low half.
template <class T>
__device__ __forceinline__ uint32_t decode_pair(uint32_t byte, float a) {
  const float lo = __fmul_rn(g_quant_code[(byte >> 4) & 15], a), hi = __fmul_rn(g_quant_code[byte & 15], a);
  if constexpr (std::is_same<T, __half>::value) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
}

// One K block's codes of W rows r and r + 8 of the tile (32 bytes each) and their absmax pairs.
struct BlockCodes {
  uint4 a0, a1, b0, b1;
  float2 sa, sb;
};
__device__ __forceinline__ void load_codes(uint32_t codes, uint32_t absm, int r, BlockCodes& c) {
  c.a0 = sm90::lds_v4(codes + r * 32);
  c.a1 = sm90::lds_v4(codes + r * 32 + 16);
  c.b0 = sm90::lds_v4(codes + (r + 8) * 32);
  c.b1 = sm90::lds_v4(codes + (r + 8) * 32 + 16);
  c.sa = sm90::lds_v2_f32(absm + r * 8);
  c.sb = sm90::lds_v2_f32(absm + (r + 8) * 8);
}

// This thread's A fragments of the block (mma.m16n8k16's A layout per warp): rows r and r + 8,
// k = 16j + 2t (+1) and 16j + 8 + 2t (+1) for step j, t = lane % 4: byte t of words 2j and 2j + 1 of
// each row's codes. f[j] = {W[r][k..], W[r+8][k..], W[r][k+8..], W[r+8][k+8..]}.
template <class T>
__device__ __forceinline__ void decode_codes(const BlockCodes& c, int shift, uint32_t (&f)[4][4]) {
  const uint32_t wa[8] = {c.a0.x, c.a0.y, c.a0.z, c.a0.w, c.a1.x, c.a1.y, c.a1.z, c.a1.w};
  const uint32_t wb[8] = {c.b0.x, c.b0.y, c.b0.z, c.b0.w, c.b1.x, c.b1.y, c.b1.z, c.b1.w};
#pragma unroll
  for (int j = 0; j < 4; j++) {
    const float ma = j < 2 ? c.sa.x : c.sa.y, mb = j < 2 ? c.sb.x : c.sb.y;  // k < 32: the first absmax
    f[j][0] = decode_pair<T>(wa[2 * j] >> shift, ma);
    f[j][1] = decode_pair<T>(wb[2 * j] >> shift, mb);
    f[j][2] = decode_pair<T>(wa[2 * j + 1] >> shift, ma);
    f[j][3] = decode_pair<T>(wb[2 * j + 1] >> shift, mb);
  }
}

template <bool F16, int TN>
__device__ __forceinline__ void wgmma_rs(float (&d)[TN / 2], const uint32_t (&a)[4], uint64_t db) {
  if constexpr (TN == 256) sm90::wgmma_m64n256k16_rs<F16>(d, a, db);
  else sm90::wgmma_m64n128k16_rs<F16>(d, a, db);
}

// An adapter block's first Steps k16 steps, A and B from shared memory (straight-line after the fence).
template <bool F16, int TN, int Steps>
__device__ __forceinline__ void wgmma_ss_steps(float (&d)[TN / 2], uint32_t a_base, uint32_t b_base) {
  sm90::wgmma_fence();
#pragma unroll
  for (int k = 0; k < Steps; k++) {
    const uint64_t da = sm90::smem_desc(a_base + k * 32, 16, 1024), db = sm90::smem_desc(b_base + k * 32, 16, 1024);
    if constexpr (TN == 256) sm90::wgmma_m64n256k16<F16, 0>(d, da, db);
    else sm90::wgmma_m64n128k16<F16>(d, da, db);
  }
}

// The producer warpgroup: thread 0 issues the TMA loads (op 0: W's codes and x; then each adapter's
// B_i and u_i; x and u_i multicast by halves in a cluster); thread t writes row t's absmax values
// of op 0's blocks (0 past W's rows or K, so the zero-filled codes there decode to 0) into the
// ring, loaded kAbsAhead blocks ahead (their global latency off the stage's critical path) and with
// no 64-bit division per block. Full barriers count 1 + 4 arrivals: thread 0's expect_tx, then
// each producer warp.
template <int TN, int Cluster>
__device__ __forceinline__ void quant_producer(const Params& p, uint8_t* smem, uint64_t* full, uint64_t* empty, float* absm,
                                               int m0, int n0) {
  const int t = int(threadIdx.x);
  const QuantDev& q = p.qb;
  const int64_t in = q.cols, row = m0 + t;
  const bool rok = row < p.M;
  const int nb = p.blocks[0], am0 = m0 < p.M ? m0 : 0;  // a cluster's spare tile reads row 0 (absmax 0)
  const int rank = Cluster == 1 ? 0 : int(sm90::cluster_rank());
  constexpr int kXRows = TN / Cluster;  // this CTA's share of x's tile
  // Row·in + k = blk·block + off for k = 64·next (blocks hold a multiple of 32 values, so each
  // 32-value half of a K block lies in one block).
  int64_t blk = rok ? row * in / q.block : 0;
  int off = rok ? int(row * in % q.block) : 0, next = 0;
  auto absmax_next = [&](float2& a) {
    const int64_t k = int64_t(next++) * kBK;
    a.x = rok && k < in ? quant_absmax(q, blk) : 0.f;
    a.y = rok && k + 32 < in ? quant_absmax(q, off + 32 >= q.block ? blk + 1 : blk) : 0.f;
    for (off += kBK; off >= q.block; off -= q.block) blk++;
  };
  static_assert(kAbsAhead == 3, "the rotation below holds three blocks");
  float2 am = make_float2(0.f, 0.f), am1 = am, am2 = am, am3 = am;  // blocks kb, kb + 1, kb + 2, kb + 3
  absmax_next(am1);
  if (nb > 1) absmax_next(am2);
  if (nb > 2) absmax_next(am3);
  int it = 0;
  for (int op = 0; op < p.count; op++) {
    for (int kb = 0; kb < p.blocks[op]; kb++, it++) {
      const int s = it % kStages;
      if (op == 0) {
        am = am1;
        am1 = am2;
        am2 = am3;
        if (kb + kAbsAhead < nb) absmax_next(am3);
      }
      sm90::mbar_wait(&empty[s], ((it / kStages) & 1) ^ 1);
      uint8_t* sa = smem + s * kStageBytes;
      if (t == 0) {
        sm90::mbar_expect_tx(&full[s], (op == 0 ? kQuantCodeBytes : kABytes) + TN * 128);
        sm90::tma_load_2d(sa, &p.a[op], &full[s], op == 0 ? kb * (kBK / 2) : kb * kBK, am0);
        if constexpr (Cluster == 1)
          sm90::tma_load_2d(sa + kABytes, &p.b[op], &full[s], kb * kBK, n0);
        else
          sm90::tma_load_2d_multicast(sa + kABytes + rank * kXRows * 128, &p.b[op], &full[s], kb * kBK, n0 + rank * kXRows,
                                      (1u << Cluster) - 1);
      }
      if (op == 0) *reinterpret_cast<float2*>(absm + (s * kBM + t) * 2) = am;
      __syncwarp();  // the warp's absmax stores before its one arrival
      if (t % 32 == 0) sm90::mbar_arrive(&full[s]);
    }
  }
}

// A consumer warpgroup: op 0 with A decoded into registers one block ahead (two sets, alternating:
// a set is rewritten only after the wgmma that read it are waited for), then the adapters from
// shared memory, then the transposed epilogue: yᵀ's tile staged as [x row][128 outputs]. (Reading
// the next block's codes before the wgmma issue measured 4-7% slower on the H100.)
template <class T, int TN, int Cluster>
__device__ __forceinline__ void quant_consumer(const Params& p, uint8_t* smem, uint64_t* full, uint64_t* empty,
                                               const float* absm, int cw, int lane, int m0, int n0) {
  constexpr bool f16 = std::is_same<T, __half>::value;
  constexpr int kAcc = TN / 2;
  float d[kAcc];
#pragma unroll
  for (int i = 0; i < kAcc; i++) d[i] = 0.f;
  const int w = warp_in_group(), r = cw * 64 + w * 16 + lane / 4, shift = 8 * (lane % 4);
  const uint32_t smem_s = sm90::smem_addr(smem), absm_s = sm90::smem_addr(absm);
  const int nb = p.blocks[0];
  uint32_t fa[4][4], fb[4][4];
  BlockCodes codes;
  auto fetch = [&](int i) {  // block i's codes, once they have landed
    const int s = i % kStages;
    sm90::mbar_wait(&full[s], (i / kStages) & 1);
    load_codes(smem_s + s * kStageBytes, absm_s + s * kBM * 8, r, codes);
  };
  auto mma = [&](int i, uint32_t (&f)[4][4], uint32_t (&other)[4][4]) {
    const uint32_t b_base = smem_s + (i % kStages) * kStageBytes + kABytes;
    sm90::wgmma_fence();
#pragma unroll
    for (int j = 0; j < 4; j++) wgmma_rs<f16, TN>(d, f[j], sm90::smem_desc(b_base + j * 32, 16, 1024));
    sm90::wgmma_commit();
    sm90::wgmma_wait<1>();  // block i - 1's wgmma are done: `other` and its stage are free
    sm90::fence_operands(other);
    if (i > 0 && lane == 0) release<Cluster>(empty, (i - 1) % kStages);
  };
  fetch(0);
  decode_codes<T>(codes, shift, fa);
  for (int kb = 0; kb < nb; kb += 2) {
    mma(kb, fa, fb);
    if (kb + 1 >= nb) break;
    fetch(kb + 1);
    decode_codes<T>(codes, shift, fb);
    mma(kb + 1, fb, fa);
    if (kb + 2 >= nb) break;
    fetch(kb + 2);
    decode_codes<T>(codes, shift, fa);
  }
  sm90::wgmma_wait<0>();
  sm90::fence_operands(fa);
  sm90::fence_operands(fb);
  sm90::fence_acc(d);
  int it = nb, pending = (nb - 1) % kStages;  // pending: the stage whose wgmma may still read it
  for (int op = 1; op < p.count; op++) {
    if (p.ratio[op] != 1.f) {  // the next operand has another scale: rescale what is accumulated
      sm90::wgmma_wait<0>();
      sm90::fence_acc(d);
      if (pending >= 0 && lane == 0) release<Cluster>(empty, pending);
      pending = -1;
      const float ratio = p.ratio[op];
#pragma unroll
      for (int i = 0; i < kAcc; i++) d[i] *= ratio;
    }
    for (int kb = 0; kb < p.blocks[op]; kb++, it++) {
      const int s = it % kStages;
      sm90::mbar_wait(&full[s], (it / kStages) & 1);
      const uint32_t a_base = smem_s + s * kStageBytes + cw * 64 * 128, b_base = smem_s + s * kStageBytes + kABytes;
      switch (kb < p.blocks[op] - 1 ? 4 : p.last_steps[op]) {
        case 1: wgmma_ss_steps<f16, TN, 1>(d, a_base, b_base); break;
        case 2: wgmma_ss_steps<f16, TN, 2>(d, a_base, b_base); break;
        case 3: wgmma_ss_steps<f16, TN, 3>(d, a_base, b_base); break;
        default: wgmma_ss_steps<f16, TN, 4>(d, a_base, b_base);
      }
      sm90::wgmma_commit();
      sm90::wgmma_wait<1>();
      if (pending >= 0 && lane == 0) release<Cluster>(empty, pending);
      pending = s;
    }
  }
  sm90::wgmma_wait<0>();
  sm90::fence_acc(d);
  if (pending >= 0 && lane == 0) release<Cluster>(empty, pending);

  sm90::named_barrier(1, 256);  // both warpgroups are past their last wgmma: the ring is free
  T* stage = reinterpret_cast<T*>(smem);
  const T* bias = static_cast<const T*>(p.bias);
  const float fs = p.final_scale;
  const float b0 = bias && m0 + r < p.M ? to_f32(bias[m0 + r]) : 0.f;
  const float b1 = bias && m0 + r + 8 < p.M ? to_f32(bias[m0 + r + 8]) : 0.f;
#pragma unroll
  for (int j = 0; j < TN / 8; j++) {  // d[4j + i]: output row r (+8 for i ≥ 2), x row 8j + 2·(lane % 4) (+1 for odd i)
    const int c = 8 * j + 2 * (lane % 4);
    stage[c * kQuantPitch + r] = from_f32<T>(d[4 * j] * fs + b0);
    stage[(c + 1) * kQuantPitch + r] = from_f32<T>(d[4 * j + 1] * fs + b0);
    stage[c * kQuantPitch + r + 8] = from_f32<T>(d[4 * j + 2] * fs + b1);
    stage[(c + 1) * kQuantPitch + r + 8] = from_f32<T>(d[4 * j + 3] * fs + b1);
  }
  sm90::named_barrier(1, 256);
  T* C = static_cast<T*>(p.C);
  for (int idx = cw * 128 + int(threadIdx.x % 128); idx < TN * (kBM / 8); idx += 256) {
    const int xr = idx / (kBM / 8), chunk = idx % (kBM / 8);
    const int gr = n0 + xr, gc = m0 + chunk * 8;
    if (gr < p.N && gc < p.M)
      *reinterpret_cast<uint4*>(C + int64_t(gr) * p.M + gc) = *reinterpret_cast<const uint4*>(stage + xr * kQuantPitch + chunk * 8);
  }
}
#endif

// Cluster = 2: CTAs on vertically adjacent W tiles (the same x rows) share x's tile.
template <class T, int TN, int Cluster>
__global__ void __launch_bounds__(kThreads, 1) quant_lora_gemm_sm90(const __grid_constant__ Params p) {
#ifdef LK_SM90A
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + kStages * kStageBytes);
  uint64_t* empty = full + kStages;
  float* absm = reinterpret_cast<float*>(empty + kStages);
  const int wg = threadIdx.x / 128, lane = threadIdx.x % 32;
  const int rank = Cluster == 1 ? 0 : int(sm90::cluster_rank());
  int tm, tn;
  tile_of(blockIdx.x / Cluster, (p.tiles_m + Cluster - 1) / Cluster, p.tiles_n, p.group, tm, tn);
  const int m0 = (tm * Cluster + rank) * kBM, n0 = tn * TN;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; s++) {
      sm90::mbar_init(&full[s], 5);
      sm90::mbar_init(&empty[s], 8 * Cluster);  // one arrival per consumer warp of each CTA
    }
    sm90::mbar_init_fence();
  }
  if (threadIdx.x < 16) g_quant_code[threadIdx.x] = kQuantCode4[p.qb.fmt == QuantFormat::FP4 ? 1 : 0][threadIdx.x];
  if constexpr (Cluster == 1) __syncthreads();
  else sm90::cluster_sync();  // the peer's barriers exist before anything arrives on them
  if (wg == 0) {
    sm90::regs_decrease<56>();
    quant_producer<TN, Cluster>(p, smem, full, empty, absm, m0, n0);
  } else {
    sm90::regs_increase<224>();
    quant_consumer<T, TN, Cluster>(p, smem, full, empty, absm, wg - 1, lane, m0, n0);
  }
  if constexpr (Cluster > 1) sm90::cluster_sync();  // no CTA leaves while a peer may still signal it
#endif
}
