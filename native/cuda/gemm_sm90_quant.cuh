// gemm_sm90.cu's kernel over a quantized base (nf4/fp4, peft's lora.Linear over bnb Linear4bit),
// computed transposed so that W is wgmma's register operand:
//   yᵀ [out, n] = deq(W)·xᵀ + Σ s_i·B_i·u_iᵀ (+ bias per row),   deq(W)[o, k] = code[q]·absmax
// (the cpu's f32 product, rounded once to x's dtype). Tiles: 128 rows of W (two consumer warpgroups
// of 64) × 256 rows of x, K blocks of 64. The producer warpgroup TMA-loads W's 4-bit codes (128 ×
// 32 bytes) and x's tile (128-byte swizzled, wgmma's B), and writes the block's absmax values (one
// per 32 values) into a ring; each consumer thread decodes its own A fragments (16 registers a
// block) from the codes while the previous block's wgmma run, so W is never stored decoded: no
// shared-memory round trip, and each decoded weight feeds 256 products. The adapters follow as a
// K-extension from shared memory (B_i as A, u_i as B). The epilogue transposes through shared memory.
// Included by gemm_sm90.cu (after Params, consume, release, tile_of), inside its namespace.
#pragma once

constexpr int kQuantCodeBytes = kBM * kBK / 2;  // op 0's A tile: 128 rows × 32 bytes of codes
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

// This thread's A fragments of one K block (mma.m16n8k16's A layout per warp): rows r and r + 8 of
// the tile, k = 16j + 2t (+1) and 16j + 8 + 2t (+1) for step j, t = lane % 4: byte t of words 2j and
// 2j + 1 of each row's 32 bytes of codes. f[j] = {W[r][k..], W[r+8][k..], W[r][k+8..], W[r+8][k+8..]}.
template <class T>
__device__ __forceinline__ void decode_block(uint32_t codes, uint32_t absm, int r, int shift, uint32_t (&f)[4][4]) {
  const uint4 a0 = sm90::lds_v4(codes + r * 32), a1 = sm90::lds_v4(codes + r * 32 + 16);
  const uint4 b0 = sm90::lds_v4(codes + (r + 8) * 32), b1 = sm90::lds_v4(codes + (r + 8) * 32 + 16);
  const float2 sa = sm90::lds_v2_f32(absm + r * 8), sb = sm90::lds_v2_f32(absm + (r + 8) * 8);
  const uint32_t wa[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
  const uint32_t wb[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
  for (int j = 0; j < 4; j++) {
    const float ma = j < 2 ? sa.x : sa.y, mb = j < 2 ? sb.x : sb.y;  // k < 32: the block's first absmax
    f[j][0] = decode_pair<T>(wa[2 * j] >> shift, ma);
    f[j][1] = decode_pair<T>(wb[2 * j] >> shift, mb);
    f[j][2] = decode_pair<T>(wa[2 * j + 1] >> shift, ma);
    f[j][3] = decode_pair<T>(wb[2 * j + 1] >> shift, mb);
  }
}

// The producer warpgroup: thread 0 issues the TMA loads (op 0: W's codes and x; then each adapter's
// B_i and u_i); thread t writes row t's absmax values of op 0's blocks (0 past W's rows or K, so
// the zero-filled codes there decode to 0) into the ring, read one block ahead. Full barriers
// count 1 + 4 arrivals: thread 0's expect_tx, then each producer warp.
__device__ __forceinline__ void quant_producer(const Params& p, uint8_t* smem, uint64_t* full, uint64_t* empty, float* absm,
                                               int m0, int n0) {
  const int t = int(threadIdx.x);
  const QuantDev& q = p.qb;
  const int64_t in = q.cols, row = m0 + t;
  const bool rok = row < p.M;
  const int nb = p.blocks[0];
  auto absmax = [&](int kb, float2& a) {
    const int64_t k = int64_t(kb) * kBK, e = (rok ? row : 0) * in + k;
    a.x = rok && k < in ? quant_absmax(q, e / q.block) : 0.f;
    a.y = rok && k + 32 < in ? quant_absmax(q, (e + 32) / q.block) : 0.f;
  };
  float2 am = make_float2(0.f, 0.f), am_next;
  absmax(0, am_next);
  int it = 0;
  for (int op = 0; op < p.count; op++) {
    for (int kb = 0; kb < p.blocks[op]; kb++, it++) {
      const int s = it % kStages;
      if (op == 0) {
        am = am_next;
        if (kb + 1 < nb) absmax(kb + 1, am_next);
      }
      sm90::mbar_wait(&empty[s], ((it / kStages) & 1) ^ 1);
      uint8_t* sa = smem + s * kStageBytes;
      if (t == 0) {
        sm90::mbar_expect_tx(&full[s], op == 0 ? kQuantCodeBytes + kBBytes : kStageBytes);
        sm90::tma_load_2d(sa, &p.a[op], &full[s], op == 0 ? kb * (kBK / 2) : kb * kBK, m0);
        sm90::tma_load_2d(sa + kABytes, &p.b[op], &full[s], kb * kBK, n0);
      }
      if (op == 0) *reinterpret_cast<float2*>(absm + (s * kBM + t) * 2) = am;
      __syncwarp();  // the warp's absmax stores before its one arrival
      if (t % 32 == 0) sm90::mbar_arrive(&full[s]);
    }
  }
}

// A consumer warpgroup: op 0 with A decoded into registers one block ahead (two sets, alternating:
// a set is rewritten only after the wgmma that read it are waited for), then the adapters from
// shared memory (consume), then the transposed epilogue: yᵀ's tile staged as [x row][128 outputs].
template <class T>
__device__ __forceinline__ void quant_consumer(const Params& p, uint8_t* smem, uint64_t* full, uint64_t* empty,
                                               const float* absm, int cw, int lane, int m0, int n0) {
  constexpr bool f16 = std::is_same<T, __half>::value;
  float d[128];
#pragma unroll
  for (int i = 0; i < 128; i++) d[i] = 0.f;
  const int w = warp_in_group(), r = cw * 64 + w * 16 + lane / 4, shift = 8 * (lane % 4);
  const uint32_t smem_s = sm90::smem_addr(smem), absm_s = sm90::smem_addr(absm);
  const int nb = p.blocks[0];
  int it = 0, pending = -1;
  uint32_t fa[4][4], fb[4][4];
  auto decode = [&](uint32_t (&f)[4][4]) {
    const int s = it % kStages;
    sm90::mbar_wait(&full[s], (it / kStages) & 1);
    decode_block<T>(smem_s + s * kStageBytes, absm_s + s * kBM * 8, r, shift, f);
  };
  auto mma = [&](uint32_t (&f)[4][4], uint32_t (&other)[4][4]) {
    const uint32_t b_base = smem_s + (it % kStages) * kStageBytes + kABytes;
    sm90::wgmma_fence();
#pragma unroll
    for (int j = 0; j < 4; j++) sm90::wgmma_m64n256k16_rs<f16>(d, f[j], sm90::smem_desc(b_base + j * 32, 16, 1024));
    sm90::wgmma_commit();
    sm90::wgmma_wait<1>();  // the previous block's wgmma are done: `other` and its stage are free
    sm90::fence_operands(other);
    if (pending >= 0 && lane == 0) release<1>(empty, pending);
    pending = it % kStages;
    it++;
  };
  decode(fa);
  for (int kb = 0; kb < nb; kb += 2) {
    mma(fa, fb);
    if (kb + 1 >= nb) break;
    decode(fb);
    mma(fb, fa);
    if (kb + 2 < nb) decode(fa);
  }
  sm90::wgmma_wait<0>();
  sm90::fence_operands(fa);
  sm90::fence_operands(fb);
  sm90::fence_accumulators(d);
  for (int op = 1; op < p.count; op++) {
    if (p.ratio[op] != 1.f) {  // the next operand has another scale: rescale what is accumulated
      sm90::wgmma_wait<0>();
      sm90::fence_accumulators(d);
      const float ratio = p.ratio[op];
#pragma unroll
      for (int i = 0; i < 128; i++) d[i] *= ratio;
    }
    consume<f16, true, 1>(d, smem, full, empty, p.blocks[op], p.last_steps[op], cw, lane, it, pending);
  }
  sm90::wgmma_wait<0>();
  sm90::fence_accumulators(d);
  if (pending >= 0 && lane == 0) release<1>(empty, pending);

  sm90::named_barrier(1, 256);  // both warpgroups are past their last wgmma: the ring is free
  T* stage = reinterpret_cast<T*>(smem);
  const T* bias = static_cast<const T*>(p.bias);
  const float fs = p.final_scale;
  const float b0 = bias && m0 + r < p.M ? to_f32(bias[m0 + r]) : 0.f;
  const float b1 = bias && m0 + r + 8 < p.M ? to_f32(bias[m0 + r + 8]) : 0.f;
#pragma unroll
  for (int j = 0; j < 32; j++) {  // d[4j + i]: output row r (+8 for i ≥ 2), x row 8j + 2·(lane % 4) (+1 for odd i)
    const int c = 8 * j + 2 * (lane % 4);
    stage[c * kQuantPitch + r] = from_f32<T>(d[4 * j] * fs + b0);
    stage[(c + 1) * kQuantPitch + r] = from_f32<T>(d[4 * j + 1] * fs + b0);
    stage[c * kQuantPitch + r + 8] = from_f32<T>(d[4 * j + 2] * fs + b1);
    stage[(c + 1) * kQuantPitch + r + 8] = from_f32<T>(d[4 * j + 3] * fs + b1);
  }
  sm90::named_barrier(1, 256);
  T* C = static_cast<T*>(p.C);
  for (int idx = cw * 128 + int(threadIdx.x % 128); idx < kBN * (kBM / 8); idx += 256) {
    const int xr = idx / (kBM / 8), chunk = idx % (kBM / 8);
    const int gr = n0 + xr, gc = m0 + chunk * 8;
    if (gr < p.N && gc < p.M)
      *reinterpret_cast<uint4*>(C + int64_t(gr) * p.M + gc) = *reinterpret_cast<const uint4*>(stage + xr * kQuantPitch + chunk * 8);
  }
}
#endif

template <class T>
__global__ void __launch_bounds__(kThreads, 1) quant_lora_gemm_sm90(const __grid_constant__ Params p) {
#ifdef LK_SM90A
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + kStages * kStageBytes);
  uint64_t* empty = full + kStages;
  float* absm = reinterpret_cast<float*>(empty + kStages);
  const int wg = threadIdx.x / 128, lane = threadIdx.x % 32;
  int tm, tn;
  tile_of(blockIdx.x, p.tiles_m, p.tiles_n, p.group, tm, tn);
  const int m0 = tm * kBM, n0 = tn * kBN;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; s++) {
      sm90::mbar_init(&full[s], 5);
      sm90::mbar_init(&empty[s], 8);  // one arrival per consumer warp
    }
    sm90::mbar_init_fence();
  }
  if (threadIdx.x < 16) g_quant_code[threadIdx.x] = kQuantCode4[p.qb.fmt == QuantFormat::FP4 ? 1 : 0][threadIdx.x];
  __syncthreads();
  if (wg == 0) {
    sm90::regs_decrease<56>();
    quant_producer(p, smem, full, empty, absm, m0, n0);
  } else {
    sm90::regs_increase<224>();
    quant_consumer<T>(p, smem, full, empty, absm, wg - 1, lane, m0, n0);
  }
#endif
}
