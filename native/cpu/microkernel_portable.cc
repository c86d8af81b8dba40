// The portable path: plain C++ the compiler vectorises for the baseline ISA (SSE2 on x86-64, NEON
// on arm64). Used on CPUs without AVX2+FMA and forced with LORAKIT_CPU_PATH=portable.
#include "kernels_generic.h"
#include "exact_rows.h"
#include "microkernel.h"

namespace lorakit {
namespace {

constexpr int PMR = 6, PNR = 16;

void micro(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict acc, int64_t ldacc,
           int64_t mr, int64_t nr) {
  float c[PMR][PNR] = {};
  for (int64_t k = 0; k < kc; k++) {
    const float* bk = b + k * PNR;
    const float* ak = a + k * PMR;
    for (int i = 0; i < PMR; i++) {
      float av = ak[i];
      for (int j = 0; j < PNR; j++) c[i][j] += av * bk[j];
    }
  }
  for (int64_t i = 0; i < mr; i++)
    for (int64_t j = 0; j < nr; j++) acc[i * ldacc + j] += c[i][j];
}

// 16 independent accumulator lanes per step, vectorised by the compiler for the baseline ISA. Each
// lane starts from its own value: identical lanes are one lane to the compiler (GCC 12 folded them
// and the "peak" counted 128 multiply-adds per step where it ran two).
double fma_peak(int64_t iters) {
  float acc[8][16];
  float m[16], a[16];
  for (int j = 0; j < 16; j++) m[j] = 0.999f, a[j] = 1e-3f;
  for (int i = 0; i < 8; i++)
    for (int j = 0; j < 16; j++) acc[i][j] = 1e-5f * static_cast<float>(i * 16 + j);
  for (int64_t it = 0; it < iters; it++)
    for (int i = 0; i < 8; i++)
      for (int j = 0; j < 16; j++) acc[i][j] = acc[i][j] * m[j] + a[j];
  volatile float sink = acc[0][0] + acc[7][15];
  (void)sink;
  return 2.0 * 8 * 16 * static_cast<double>(iters);
}

const KernelTable kTable = {"portable",          PMR,
                            PNR,                 micro,
                            generic::dot_rows,   generic::axpy_rows,
                            generic::load_row,   generic::pack_t,      generic::store_row,
                            generic::merge_rows, false, nullptr, fma_peak, nullptr, nullptr, nullptr, exact_rows_generic,
                            nullptr,             nullptr,              0};

}  // namespace

const KernelTable* portable_table() { return &kTable; }

}  // namespace lorakit
