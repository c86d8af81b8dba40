// The data caches of the CPU the process runs on (per core for L1d and L2), read once: Linux sysfs
// (cpu0's cache/index*), else the C library's sysconf (glibc asks cpuid), else typical sizes.
// The GEMM derives its block sizes from these (gemm.cc) instead of constants fitted to one machine.
#pragma once
#include <cstdint>

namespace lorakit {

struct CacheSizes {
  int64_t l1d = 0, l2 = 0, l3 = 0;  // bytes
  const char* source = "";          // where the first level found came from: "sysfs", "sysconf" or "default"
};

const CacheSizes& cache_sizes();

}  // namespace lorakit
