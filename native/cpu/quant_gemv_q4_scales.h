// q4_0 block scales for the AVX-512 decode GEMVs (quant_gemv_avx512.cc, quant_gemv_avx512bf16.cc):
// the f16 d of 8 consecutive blocks (ggml block_q4_0: d at byte 18·k of the group) converted
// together, d_k = f16_to_f32 (F16C, exact). The per-block alternative (vpbroadcastw + vcvtph2ps)
// costs three shuffle-pipe uops per 32 weights, the pipes the lookups need (q4_0 ran at 5.7 cycles
// per 64 weights against nf4's 4.4 on Zen 5); scalar loads of d, or gathers, were slower still.
// The kernels convert chunk c + 1 while chunk c runs (q4_blocks_with_scales): loads that read a
// vector store just written stall on store forwarding (measured 14% slower than one chunk ahead).
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

// The blocks of R rows (each a row of `groups` blocks from row[r]) in order, STEP at a time (1, or
// the bf16 kernel's pairs: 2; groups a multiple of STEP), with their d: step(g, d) runs blocks
// [g, g + STEP), block g + k's d of row r at d[r · kQ4ScaleChunk + k]. Whole chunks of 8 blocks take
// q4_scales8, chunk c + 1 converted before chunk c runs; the last groups % 8 blocks q4_scale.
// Always inlined, so that it takes the target of its caller, where step (a lambda with the
// kernel's target) is inlined in turn.
template <int STEP, int R, class Step>
__attribute__((always_inline)) inline void q4_blocks_with_scales(const uint8_t* const (&row)[R], int64_t groups, Step&& step) {
  const int64_t chunks = groups / kQ4ScaleChunk;
  alignas(64) float d[2][R][kQ4ScaleChunk];  // chunk c's d in d[c & 1]
  if (chunks > 0)
    for (int r = 0; r < R; r++) q4_scales8(row[r], 0, d[0][r]);
  for (int64_t c = 0; c < chunks; c++) {
    if (c + 1 < chunks)
      for (int r = 0; r < R; r++) q4_scales8(row[r], (c + 1) * kQ4ScaleChunk, d[(c + 1) & 1][r]);
    for (int64_t b = 0; b < kQ4ScaleChunk; b += STEP) step(c * kQ4ScaleChunk + b, &d[c & 1][0][b]);
  }
  for (int64_t g = chunks * kQ4ScaleChunk; g < groups; g += STEP) {
    for (int r = 0; r < R; r++)
      for (int k = 0; k < STEP; k++) d[0][r][k] = q4_scale(row[r], g + k);
    step(g, &d[0][0][0]);
  }
}

}  // namespace cpu
}  // namespace lorakit
#endif
