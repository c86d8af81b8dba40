// q4_0 block scales for the AVX-512 decode GEMVs (quant_gemv_avx512.cc, quant_gemv_avx512bf16.cc):
// the f16 d of 8 consecutive blocks (ggml block_q4_0: d at byte 18·k of the group) converted
// together, d_k = f16_to_f32 (F16C, exact). The per-block alternative (vpbroadcastw + vcvtph2ps)
// costs three shuffle-pipe uops per 32 weights, the pipes the lookups need (q4_0 ran at 5.7 cycles
// per 64 weights against nf4's 4.4 on Zen 5); scalar loads of d, or gathers, were slower still.
// The kernels convert chunk c + 1 while chunk c runs: loads that read a vector store just written
// stall on store forwarding (measured 14% slower than one chunk ahead).
#pragma once
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include <cstdint>
#include "../core/ggml_blocks.h"

namespace lorakit {
namespace cpu {

constexpr int64_t kQ4ScaleChunk = 8;  // blocks per conversion: their d lie in the chunk's first 128 bytes

// d of blocks [g, g + 8) of the block row at p (8 whole blocks from g), as f32 into out[0..7].
// Block k's d is the low (k even) or high (k odd) half of dword (18·k) / 4 of the chunk: one
// two-register permute, a shift of the odd halves, a narrowing and one conversion.
__attribute__((target("avx512f,avx2,fma,f16c"))) inline void q4_scales8(const uint8_t* p, int64_t g, float* out) {
  static_assert(sizeof(BlockQ4_0) == 18, "block_q4_0 is 18 bytes");
  const uint8_t* c = p + g * static_cast<int64_t>(sizeof(BlockQ4_0));
  const __m512i dw = _mm512_permutex2var_epi32(_mm512_loadu_si512(c), _mm512_setr_epi32(0, 4, 9, 13, 18, 22, 27, 31, 0, 0, 0, 0, 0, 0, 0, 0),
                                               _mm512_loadu_si512(c + 64));
  const __m512i h = _mm512_srlv_epi32(dw, _mm512_setr_epi32(0, 16, 0, 16, 0, 16, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0));
  _mm256_storeu_ps(out, _mm256_cvtph_ps(_mm256_castsi256_si128(_mm512_cvtepi32_epi16(h))));
}

// A block's d on its own (the rows' last groups % 8 blocks).
__attribute__((target("f16c"))) inline float q4_scale(const uint8_t* p, int64_t g) {
  uint16_t h;
  __builtin_memcpy(&h, p + g * static_cast<int64_t>(sizeof(BlockQ4_0)), 2);
  return _cvtsh_ss(h);
}

}  // namespace cpu
}  // namespace lorakit
#endif
