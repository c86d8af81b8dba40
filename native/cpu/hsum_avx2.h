// The sum of an AVX2 vector's 8 f32 lanes, in one fixed order: lanes 0-3 + 4-7, then the two
// halves of that, then the last pair. The AVX2 kernels' results depend on this order (a row's sum
// must not depend on which kernel or grouping produced it), so they all take this one.
#pragma once
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

namespace lorakit {

// static: each file's copy is compiled with this target only, whatever target region includes it.
__attribute__((target("avx2,fma,f16c"))) static inline float hsum_avx2(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

}  // namespace lorakit
#endif
