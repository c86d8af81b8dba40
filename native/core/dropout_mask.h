// The dropout keep-mask: a pure function of (seed, stream, element index), so the CPU and the
// CUDA kernels draw identical masks and backward can regenerate them instead of storing them.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define LORAKIT_HD __host__ __device__
#else
#define LORAKIT_HD
#endif

namespace lorakit {

// splitmix64 of a counter: 24 uniform bits compared with p.
LORAKIT_HD inline bool dropout_keep(uint64_t seed, uint64_t stream, uint64_t i, float p) {
  uint64_t z = seed + 0x9e3779b97f4a7c15ull * (stream + 1) + 0xbf58476d1ce4e5b9ull * i;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  float uni = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
  return uni >= p;
}

}  // namespace lorakit
