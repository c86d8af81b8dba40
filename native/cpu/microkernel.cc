// Runtime dispatch: the same portable source is compiled for several ISAs with GCC target
// attributes, and the best one the CPU supports is chosen once. LORAKIT_CPU_PATH forces a path.
#include "microkernel.h"
#include <cstdlib>
#include <cstring>

namespace lorakit {
namespace {

template <int DUMMY>
inline void micro_body(int64_t kc, const float* __restrict a, const float* __restrict b,
                       float* __restrict acc, int64_t ldacc, int64_t mr, int64_t nr) {
  float c[MR][NR] = {};
  for (int64_t k = 0; k < kc; k++) {
    const float* bk = b + k * NR;
    const float* ak = a + k * MR;
    for (int i = 0; i < MR; i++) {
      float av = ak[i];
      for (int j = 0; j < NR; j++) c[i][j] += av * bk[j];
    }
  }
  for (int64_t i = 0; i < mr; i++)
    for (int64_t j = 0; j < nr; j++) acc[i * ldacc + j] += c[i][j];
}

void micro_portable(int64_t kc, const float* a, const float* b, float* acc, int64_t ldacc, int64_t mr,
                    int64_t nr) {
  micro_body<0>(kc, a, b, acc, ldacc, mr, nr);
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,fma"))) void micro_avx2(int64_t kc, const float* a, const float* b, float* acc,
                                                    int64_t ldacc, int64_t mr, int64_t nr) {
  micro_body<1>(kc, a, b, acc, ldacc, mr, nr);
}
__attribute__((target("avx512f,avx512vl,fma"))) void micro_avx512(int64_t kc, const float* a,
                                                                  const float* b, float* acc,
                                                                  int64_t ldacc, int64_t mr, int64_t nr) {
  micro_body<2>(kc, a, b, acc, ldacc, mr, nr);
}
#endif

KernelTable choose() {
  const char* force = std::getenv("LORAKIT_CPU_PATH");
  bool any = !force || !*force;
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  bool has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
  bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (has512 && (any || std::strcmp(force, "avx512") == 0)) return {"avx512", micro_avx512};
  if (has2 && (any || std::strcmp(force, "avx2") == 0 || std::strcmp(force, "avx512") == 0))
    return {"avx2", micro_avx2};
#endif
  return {"portable", micro_portable};
}

}  // namespace

const KernelTable& kernel_table() {
  static const KernelTable t = choose();
  return t;
}

}  // namespace lorakit
