// The NEON path (arm64: every AArch64 CPU has Advanced SIMD with fused multiply-add): a 12x8
// register tile (24 q-register accumulators, A read as 3 vectors and broadcast by lane, B as 2),
// GEMV kernels that stream W once with 16-bit weights widened in registers, 4x4 transposing packs,
// and the merge's fused pass on 6 rows × 16 columns. Compiled only for arm64 (CMakeLists.txt,
// binding.gyp). Its speed has not been measured (the project's machines are x86-64; this file is
// tested for correctness under qemu-user: scripts/check-arm64.sh).
#if defined(__aarch64__)
#include <arm_neon.h>
#include "kernels_generic.h"
#include "exact_rows.h"
#include "merge_rows_blocks.h"
#include "microkernel.h"

namespace lorakit {
namespace {

constexpr int NMR = 12, NNR = 8;  // MR divides gemm.cc's MC = 96, NR its NC = 256

void micro(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict acc, int64_t ldacc,
           int64_t mr, int64_t nr) {
  // Named accumulators (not an array) so that they stay in registers: 24 + 3 (A) + 2 (B) of 32.
#define LK_ZERO2(i) float32x4_t c##i##0 = vdupq_n_f32(0.f), c##i##1 = vdupq_n_f32(0.f)
  LK_ZERO2(0); LK_ZERO2(1); LK_ZERO2(2); LK_ZERO2(3); LK_ZERO2(4); LK_ZERO2(5);
  LK_ZERO2(6); LK_ZERO2(7); LK_ZERO2(8); LK_ZERO2(9); LK_ZERO2(10); LK_ZERO2(11);
#undef LK_ZERO2
  for (int64_t k = 0; k < kc; k++) {
    const float32x4_t b0 = vld1q_f32(b), b1 = vld1q_f32(b + 4);
    const float32x4_t a0 = vld1q_f32(a), a1 = vld1q_f32(a + 4), a2 = vld1q_f32(a + 8);
#define LK_ROW(i, av, lane)                      \
  c##i##0 = vfmaq_laneq_f32(c##i##0, b0, av, lane); \
  c##i##1 = vfmaq_laneq_f32(c##i##1, b1, av, lane)
    LK_ROW(0, a0, 0); LK_ROW(1, a0, 1); LK_ROW(2, a0, 2); LK_ROW(3, a0, 3);
    LK_ROW(4, a1, 0); LK_ROW(5, a1, 1); LK_ROW(6, a1, 2); LK_ROW(7, a1, 3);
    LK_ROW(8, a2, 0); LK_ROW(9, a2, 1); LK_ROW(10, a2, 2); LK_ROW(11, a2, 3);
#undef LK_ROW
    a += NMR;
    b += NNR;
  }
  float t[NMR][NNR];
#define LK_STORE2(i) vst1q_f32(t[i], c##i##0), vst1q_f32(t[i] + 4, c##i##1)
  LK_STORE2(0); LK_STORE2(1); LK_STORE2(2); LK_STORE2(3); LK_STORE2(4); LK_STORE2(5);
  LK_STORE2(6); LK_STORE2(7); LK_STORE2(8); LK_STORE2(9); LK_STORE2(10); LK_STORE2(11);
#undef LK_STORE2
  if (mr == NMR && nr == NNR) {
    for (int i = 0; i < NMR; i++) {
      float* row = acc + i * ldacc;
      vst1q_f32(row, vaddq_f32(vld1q_f32(row), vld1q_f32(t[i])));
      vst1q_f32(row + 4, vaddq_f32(vld1q_f32(row + 4), vld1q_f32(t[i] + 4)));
    }
    return;
  }
  for (int64_t i = 0; i < mr; i++)
    for (int64_t j = 0; j < nr; j++) acc[i * ldacc + j] += t[i][j];
}

// Four elements of a row of dtype T widened to f32 (bf16: the bits shifted up; f16: fcvtl).
template <DType T>
inline float32x4_t load4(const void* p, int64_t i) {
  if constexpr (T == DType::F32) {
    return vld1q_f32(static_cast<const float*>(p) + i);
  } else if constexpr (T == DType::BF16) {
    return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(static_cast<const uint16_t*>(p) + i), 16));
  } else {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(static_cast<const uint16_t*>(p) + i)));
  }
}

// Round-to-nearest-even f32 -> bf16 for 4 lanes, NaNs kept quiet (matches f32_to_bf16).
inline uint16x4_t to_bf16(float32x4_t v) {
  const uint32x4_t u = vreinterpretq_u32_f32(v);
  const uint32x4_t lsb = vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1));
  const uint32x4_t r = vshrq_n_u32(vaddq_u32(u, vaddq_u32(lsb, vdupq_n_u32(0x7fff))), 16);
  const uint32x4_t q = vorrq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(0x40));
  const uint32x4_t ordered = vceqq_f32(v, v);  // false for NaN
  return vmovn_u32(vbslq_u32(ordered, r, q));
}

// Four f32 lanes rounded once into T and stored at element i.
template <DType T>
inline void store4(void* p, int64_t i, float32x4_t v) {
  if constexpr (T == DType::F32) {
    vst1q_f32(static_cast<float*>(p) + i, v);
  } else if constexpr (T == DType::BF16) {
    vst1_u16(static_cast<uint16_t*>(p) + i, to_bf16(v));
  } else {  // fcvtn rounds to nearest even (FPCR's default mode), as f32_to_f16
    vst1_u16(static_cast<uint16_t*>(p) + i, vreinterpret_u16_f16(vcvt_f16_f32(v)));
  }
}

// Four rows at a time share each load of x; two accumulators per row hide the FMA latency.
template <DType T>
void dot_rows_t(int64_t k, const float* x, const void* w, int64_t ldw, int64_t rows, float* out) {
  int64_t j = 0;
  for (; j + 4 <= rows; j += 4) {
    float32x4_t s[4][2];
    for (int r = 0; r < 4; r++) s[r][0] = s[r][1] = vdupq_n_f32(0.f);
    int64_t p = 0;
    for (; p + 8 <= k; p += 8) {
      const float32x4_t x0 = vld1q_f32(x + p), x1 = vld1q_f32(x + p + 4);
#pragma GCC unroll 4
      for (int r = 0; r < 4; r++) {
        const int64_t o = (j + r) * ldw + p;
        s[r][0] = vfmaq_f32(s[r][0], x0, load4<T>(w, o));
        s[r][1] = vfmaq_f32(s[r][1], x1, load4<T>(w, o + 4));
      }
    }
    for (int r = 0; r < 4; r++) {
      float t = vaddvq_f32(vaddq_f32(s[r][0], s[r][1]));
      for (int64_t q = p; q < k; q++) t += x[q] * load_f32(w, T, (j + r) * ldw + q);
      out[j + r] += t;
    }
  }
  for (; j < rows; j++) {  // same summation order as above, so results do not depend on grouping
    float32x4_t s0 = vdupq_n_f32(0.f), s1 = vdupq_n_f32(0.f);
    int64_t p = 0;
    for (; p + 8 <= k; p += 8) {
      s0 = vfmaq_f32(s0, vld1q_f32(x + p), load4<T>(w, j * ldw + p));
      s1 = vfmaq_f32(s1, vld1q_f32(x + p + 4), load4<T>(w, j * ldw + p + 4));
    }
    float t = vaddvq_f32(vaddq_f32(s0, s1));
    for (; p < k; p++) t += x[p] * load_f32(w, T, j * ldw + p);
    out[j] += t;
  }
}

void dot_rows(int64_t k, const float* x, const void* w, DType wt, int64_t ldw, int64_t rows, float* out) {
  switch (wt) {
    case DType::F32: return dot_rows_t<DType::F32>(k, x, w, ldw, rows, out);
    case DType::BF16: return dot_rows_t<DType::BF16>(k, x, w, ldw, rows, out);
    case DType::F16: return dot_rows_t<DType::F16>(k, x, w, ldw, rows, out);
    default: return generic::dot_rows(k, x, w, wt, ldw, rows, out);
  }
}

// Four rows of W per sweep over out: out is loaded and stored once per four rows.
template <DType T>
void axpy_rows_t(int64_t k, const float* x, const void* w, int64_t ldw, int64_t cols, float* out) {
  int64_t p = 0;
  for (; p + 4 <= k; p += 4) {
    const float x0 = x[p], x1 = x[p + 1], x2 = x[p + 2], x3 = x[p + 3];
    int64_t j = 0;
    for (; j + 4 <= cols; j += 4) {
      float32x4_t o = vld1q_f32(out + j);
      o = vfmaq_n_f32(o, load4<T>(w, p * ldw + j), x0);
      o = vfmaq_n_f32(o, load4<T>(w, (p + 1) * ldw + j), x1);
      o = vfmaq_n_f32(o, load4<T>(w, (p + 2) * ldw + j), x2);
      o = vfmaq_n_f32(o, load4<T>(w, (p + 3) * ldw + j), x3);
      vst1q_f32(out + j, o);
    }
    for (; j < cols; j++)
      for (int q = 0; q < 4; q++) out[j] += x[p + q] * load_f32(w, T, (p + q) * ldw + j);
  }
  for (; p < k; p++) {
    int64_t j = 0;
    for (; j + 4 <= cols; j += 4) vst1q_f32(out + j, vfmaq_n_f32(vld1q_f32(out + j), load4<T>(w, p * ldw + j), x[p]));
    for (; j < cols; j++) out[j] += x[p] * load_f32(w, T, p * ldw + j);
  }
}

void axpy_rows(int64_t k, const float* x, const void* w, DType wt, int64_t ldw, int64_t cols, float* out) {
  switch (wt) {
    case DType::F32: return axpy_rows_t<DType::F32>(k, x, w, ldw, cols, out);
    case DType::BF16: return axpy_rows_t<DType::BF16>(k, x, w, ldw, cols, out);
    case DType::F16: return axpy_rows_t<DType::F16>(k, x, w, ldw, cols, out);
    default: return generic::axpy_rows(k, x, w, wt, ldw, cols, out);
  }
}

template <DType T>
void load_row_t(const void* src, float alpha, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(dst + i, vmulq_n_f32(load4<T>(src, i), alpha));
  for (; i < n; i++) dst[i] = alpha * load_f32(src, T, i);
}

void load_row(const void* src, DType st, float alpha, int64_t n, float* dst) {
  switch (st) {
    case DType::F32: return load_row_t<DType::F32>(src, alpha, n, dst);
    case DType::BF16: return load_row_t<DType::BF16>(src, alpha, n, dst);
    case DType::F16: return load_row_t<DType::F16>(src, alpha, n, dst);
    default: return generic::load_row(src, st, alpha, n, dst);
  }
}

// 4x4 blocks: four source rows of four k values, transposed in registers (trn1/trn2, then halves).
template <DType T>
void pack_t_t(const void* src, int64_t ld, int64_t cols, int64_t kc, float* dst, int64_t ldd) {
  int64_t c = 0;
  for (; c + 4 <= cols; c += 4) {
    int64_t k = 0;
    for (; k + 4 <= kc; k += 4) {
      const float32x4_t r0 = load4<T>(src, c * ld + k), r1 = load4<T>(src, (c + 1) * ld + k);
      const float32x4_t r2 = load4<T>(src, (c + 2) * ld + k), r3 = load4<T>(src, (c + 3) * ld + k);
      const float32x4x2_t t01 = vtrnq_f32(r0, r1), t23 = vtrnq_f32(r2, r3);
      float* d = dst + k * ldd + c;
      vst1q_f32(d, vcombine_f32(vget_low_f32(t01.val[0]), vget_low_f32(t23.val[0])));
      vst1q_f32(d + ldd, vcombine_f32(vget_low_f32(t01.val[1]), vget_low_f32(t23.val[1])));
      vst1q_f32(d + 2 * ldd, vcombine_f32(vget_high_f32(t01.val[0]), vget_high_f32(t23.val[0])));
      vst1q_f32(d + 3 * ldd, vcombine_f32(vget_high_f32(t01.val[1]), vget_high_f32(t23.val[1])));
    }
    for (; k < kc; k++)
      for (int64_t q = 0; q < 4; q++) dst[k * ldd + c + q] = load_f32(src, T, (c + q) * ld + k);
  }
  for (; c < cols; c++)
    for (int64_t k = 0; k < kc; k++) dst[k * ldd + c] = load_f32(src, T, c * ld + k);
}

void pack_t(const void* src, DType st, int64_t ld, int64_t cols, int64_t kc, float* dst, int64_t ldd) {
  switch (st) {
    case DType::F32: return pack_t_t<DType::F32>(src, ld, cols, kc, dst, ldd);
    case DType::BF16: return pack_t_t<DType::BF16>(src, ld, cols, kc, dst, ldd);
    case DType::F16: return pack_t_t<DType::F16>(src, ld, cols, kc, dst, ldd);
    default: return generic::pack_t(src, st, ld, cols, kc, dst, ldd);
  }
}

void store_row(const float* src, void* dst, DType dt, int64_t n) {
  int64_t i = 0;
  switch (dt) {
    case DType::F32:
      for (; i + 4 <= n; i += 4) store4<DType::F32>(dst, i, vld1q_f32(src + i));
      break;
    case DType::BF16:
      for (; i + 4 <= n; i += 4) store4<DType::BF16>(dst, i, vld1q_f32(src + i));
      break;
    case DType::F16:
      for (; i + 4 <= n; i += 4) store4<DType::F16>(dst, i, vld1q_f32(src + i));
      break;
    default: break;
  }
  for (; i < n; i++) store_f32(dst, dt, i, src[i]);
}

// MR rows × one 16-column panel per step: 4·MR accumulators start at W (widened in registers), take
// the r rank-1 updates (fused multiply-adds, in order of q) and are rounded once on store. MR = 6
// uses 24 accumulators and 4 Q vectors of the 32 registers; each Q load serves six rows.
template <DType T, int MR>
void merge_panels(int64_t r, const float* p, const float* Q, int64_t panels, const void* w, int64_t ldw, void* o,
                  int64_t ldo) {
  for (int64_t pj = 0; pj < panels; pj++) {
    const int64_t j = pj * 16;
    const float* qp = Q + j * r;
    float32x4_t c[MR][4];
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++)
      for (int h = 0; h < 4; h++) c[i][h] = load4<T>(w, i * ldw + j + 4 * h);
    int64_t q = 0;
    do {  // r >= 1
      const float* qq = qp + q * 16;
      const float32x4_t q0 = vld1q_f32(qq), q1 = vld1q_f32(qq + 4), q2 = vld1q_f32(qq + 8), q3 = vld1q_f32(qq + 12);
#pragma GCC unroll 8
      for (int i = 0; i < MR; i++) {
        const float v = p[i * r + q];
        c[i][0] = vfmaq_n_f32(c[i][0], q0, v);
        c[i][1] = vfmaq_n_f32(c[i][1], q1, v);
        c[i][2] = vfmaq_n_f32(c[i][2], q2, v);
        c[i][3] = vfmaq_n_f32(c[i][3], q3, v);
      }
    } while (++q < r);
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++)
      for (int h = 0; h < 4; h++) store4<T>(o, i * ldo + j + 4 * h, c[i][h]);
  }
}

// MR rows of a block: full panels in place, then the last n % 16 columns through the f32 tile
// (merge_rows_blocks.h).
template <DType T, int MR>
void merge_block(int64_t r, const float* p, const float* Q, int64_t n, const void* w, int64_t ldw, void* o,
                 int64_t ldo) {
  const int64_t full = n / 16 * 16;
  merge_panels<T, MR>(r, p, Q, full / 16, w, ldw, o, ldo);
  if (full == n) return;
  merge_tail_tile<T, MR>(n - full, elem_at<T>(w, full), ldw, elem_at<T>(o, full), ldo,
                         [&](float* t) { merge_panels<DType::F32, MR>(r, p, Q + full * r, 1, t, 16, t, 16); });
}

// W and out of one dtype take the fused pass; mixed dtypes (rare) the scalar one.
void merge_rows(int64_t r, const float* p, int64_t rows, const float* Q, int64_t n, const void* w, DType wt,
                int64_t ldw, void* o, DType ot, int64_t ldo) {
  const bool fused = for_each_merge_block<6>(wt, ot, rows, [&](auto t, auto mr, int64_t i) {
    constexpr DType T = decltype(t)::value;
    merge_block<T, decltype(mr)::value>(r, p + i * r, Q, n, elem_at<T>(w, i * ldw), ldw, elem_at<T>(o, i * ldo), ldo);
  });
  if (!fused) generic::merge_rows(r, p, rows, Q, n, w, wt, ldw, o, ot, ldo);
}

// 16 independent FMA chains (2 pipes × 4 cycles of latency on current cores, with room to spare),
// each starting from its own value so that the compiler cannot fold them into one.
double fma_peak(int64_t iters) {
  const float32x4_t m = vdupq_n_f32(0.999f), a = vdupq_n_f32(1e-3f);
  float32x4_t c[16];
  for (int i = 0; i < 16; i++) c[i] = vdupq_n_f32(1e-4f * static_cast<float>(i));
  for (int64_t it = 0; it < iters; it++) {
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) c[i] = vfmaq_f32(a, c[i], m);
  }
  float32x4_t s = c[0];
  for (int i = 1; i < 16; i++) s = vaddq_f32(s, c[i]);
  volatile float sink = vaddvq_f32(s);
  (void)sink;
  return 2.0 * 4 * 16 * static_cast<double>(iters);
}

// exact_rows: the scalar kernel (a NEON one is not written yet).
const KernelTable kTable = {"neon",   NMR,     NNR,     micro,   dot_rows, axpy_rows, load_row,          pack_t, store_row,
                            merge_rows, false, nullptr, fma_peak, nullptr, nullptr,  nullptr,   exact_rows_generic, nullptr, nullptr, 0};

}  // namespace

const KernelTable* neon_table() { return &kTable; }

}  // namespace lorakit
#endif
