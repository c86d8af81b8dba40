// The register-blocked inner kernel of the GEMM, selected once at load time for the CPU.
#pragma once
#include <cstdint>

namespace lorakit {

constexpr int64_t MR = 6;
constexpr int64_t NR = 16;

// acc[i*ldacc + j] += sum_k a[k*MR + i] * b[k*NR + j] for i < mr, j < nr.
using MicrokernelFn = void (*)(int64_t kc, const float* a, const float* b, float* acc, int64_t ldacc,
                               int64_t mr, int64_t nr);

struct KernelTable {
  const char* name;
  MicrokernelFn microkernel;
};

const KernelTable& kernel_table();

}  // namespace lorakit
