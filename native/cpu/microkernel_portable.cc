// The portable path: plain C++ the compiler vectorises for the baseline ISA (SSE2 on x86-64, NEON
// on arm64). Used on CPUs without AVX2+FMA and forced with LORAKIT_CPU_PATH=portable.
#include "kernels_generic.h"
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

const KernelTable kTable = {"portable",          PMR,
                            PNR,                 micro,
                            generic::dot_rows,   generic::axpy_rows,
                            generic::load_row,   generic::store_row,
                            generic::rank_update, nullptr};

}  // namespace

const KernelTable* portable_table() { return &kTable; }

}  // namespace lorakit
