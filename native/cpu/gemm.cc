// Hand-written because no BLAS is assumed on users' machines (the package builds from source with
// only a C++ compiler), and because the LoRA passes need things BLAS lacks: mixed f32/f16/bf16
// operands converted while packing, several K segments accumulated into one output tile, and a
// single rounding on store. Structure follows the BLIS/GotoBLAS design: pack an MC×KC block of A
// and a KC×NC block of B into contiguous panels, then run an MR×NR register microkernel.
#include "gemm.h"
#include <algorithm>
#include <cstring>
#include <memory>
#include "../core/thread_pool.h"
#include "microkernel.h"

namespace lorakit {
namespace {

constexpr int64_t MC = 96;   // multiple of MR
constexpr int64_t NC = 256;  // multiple of NR
constexpr int64_t KC = 256;

struct Scratch {
  std::unique_ptr<float[]> a, b, acc;
  Scratch()
      : a(new float[MC * KC]), b(new float[KC * NC]), acc(new float[MC * NC]) {}
};

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// Packs rows [i0, i0+mc) × k-range of A into MR-row panels: panel p holds kc columns of MR values.
void pack_a(const MatView& a, int64_t i0, int64_t mc, int64_t k0, int64_t kc, float alpha, float* dst) {
  for (int64_t p = 0; p < mc; p += MR) {
    int64_t rows = std::min<int64_t>(MR, mc - p);
    float* panel = dst + p * kc;
    if (a.dtype == DType::F32 && a.cs == 1) {
      for (int64_t r = 0; r < rows; r++) {
        const float* src = static_cast<const float*>(a.data) + (i0 + p + r) * a.rs + k0;
        for (int64_t k = 0; k < kc; k++) panel[k * MR + r] = alpha * src[k];
      }
    } else {
      for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < kc; k++) panel[k * MR + r] = alpha * a.at(i0 + p + r, k0 + k);
    }
    for (int64_t r = rows; r < MR; r++)
      for (int64_t k = 0; k < kc; k++) panel[k * MR + r] = 0.f;
  }
}

// Packs k-range × columns [j0, j0+nc) of B into NR-column panels.
void pack_b(const MatView& b, int64_t k0, int64_t kc, int64_t j0, int64_t nc, float* dst) {
  for (int64_t q = 0; q < nc; q += NR) {
    int64_t cols = std::min<int64_t>(NR, nc - q);
    float* panel = dst + q * kc;
    if (b.dtype == DType::F32 && b.cs == 1 && cols == NR) {
      for (int64_t k = 0; k < kc; k++) {
        const float* src = static_cast<const float*>(b.data) + (k0 + k) * b.rs + j0 + q;
        std::memcpy(panel + k * NR, src, NR * sizeof(float));
      }
    } else if (b.dtype == DType::F32 && b.rs == 1) {
      for (int64_t c = 0; c < cols; c++) {
        const float* src = static_cast<const float*>(b.data) + (j0 + q + c) * b.cs + k0;
        for (int64_t k = 0; k < kc; k++) panel[k * NR + c] = src[k];
      }
      for (int64_t c = cols; c < NR; c++)
        for (int64_t k = 0; k < kc; k++) panel[k * NR + c] = 0.f;
    } else {
      for (int64_t c = 0; c < cols; c++)
        for (int64_t k = 0; k < kc; k++) panel[k * NR + c] = b.at(k0 + k, j0 + q + c);
      for (int64_t c = cols; c < NR; c++)
        for (int64_t k = 0; k < kc; k++) panel[k * NR + c] = 0.f;
    }
  }
}

void compute_tile(int64_t i0, int64_t mc, int64_t j0, int64_t nc, const std::vector<KSegment>& segs,
                  const GemmOutput& out) {
  Scratch& s = scratch();
  float* acc = s.acc.get();  // mc × nc with leading dimension NC
  for (int64_t i = 0; i < mc; i++) std::fill(acc + i * NC, acc + i * NC + nc, 0.f);
  const KernelTable& kt = kernel_table();
  for (const KSegment& seg : segs) {
    for (int64_t k0 = 0; k0 < seg.k; k0 += KC) {
      int64_t kc = std::min(KC, seg.k - k0);
      pack_b(seg.b, k0, kc, j0, nc, s.b.get());
      pack_a(seg.a, i0, mc, k0, kc, seg.alpha, s.a.get());
      for (int64_t q = 0; q < nc; q += NR) {
        for (int64_t p = 0; p < mc; p += MR) {
          kt.microkernel(kc, s.a.get() + p * kc, s.b.get() + q * kc, acc + p * NC + q, NC,
                         std::min<int64_t>(MR, mc - p), std::min<int64_t>(NR, nc - q));
        }
      }
    }
  }
  // Epilogue: beta*C + bias, one rounding into the output dtype.
  for (int64_t i = 0; i < mc; i++) {
    float* row = acc + i * NC;
    int64_t base = (i0 + i) * out.ldc + j0;
    if (out.beta != 0.f)
      for (int64_t j = 0; j < nc; j++) row[j] += out.beta * load_f32(out.data, out.dtype, base + j);
    if (out.bias)
      for (int64_t j = 0; j < nc; j++) row[j] += load_f32(out.bias, out.bias_dtype, j0 + j);
    if (out.dtype == DType::F32) {
      std::memcpy(static_cast<float*>(out.data) + base, row, nc * sizeof(float));
    } else {
      for (int64_t j = 0; j < nc; j++) store_f32(out.data, out.dtype, base + j, row[j]);
    }
  }
}

}  // namespace

void gemm(int64_t m, int64_t n, const std::vector<KSegment>& segs, const GemmOutput& out) {
  if (m <= 0 || n <= 0) return;
  int64_t tm = (m + MC - 1) / MC, tn = (n + NC - 1) / NC;
  // Each task owns one output tile and all of K: deterministic, and C is written exactly once.
  parallel_for(tm * tn, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; t++) {
      int64_t ti = t / tn, tj = t % tn;
      int64_t i0 = ti * MC, j0 = tj * NC;
      compute_tile(i0, std::min(MC, m - i0), j0, std::min(NC, n - j0), segs, out);
    }
  });
}

}  // namespace lorakit
