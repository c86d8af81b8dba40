// q6_k's codes (ggml block_q6_K: 128 bytes of low 4 bits, 64 of high 2 bits) of one super-block,
// less 32, in value order, with AVX2 byte ops: included inside an AVX2 (or later) target region by
// the k-quant GEMV kernels of the AVX2 and AVX-512 paths (the AVX-512 path requires only AVX-512F,
// which has no byte ops). The layout is ggml's dequantize_row_q6_K (ggml_blocks.cc deq_q6_k): for each
// 128-value half n and l < 32, value 128n + l takes ql[64n + l] & 15 and qh[32n + l] bits 0-1, + 32
// takes ql[64n + 32 + l] & 15 and bits 2-3, + 64 ql[64n + l] >> 4 and bits 4-5, + 96 ql[64n + 32 + l] >> 4
// and bits 6-7. 16-bit shifts place the high bits; the bits they move across a byte are the ones the
// masks clear.
#pragma once
#include <immintrin.h>
#include <cstdint>
#include "../core/ggml_blocks.h"

namespace lorakit {
namespace cpu {
namespace {

// out: 256 bytes, 32-byte aligned.
inline void q6k_codes(const BlockQ6_K* blk, int8_t* out) {
  const __m256i m4 = _mm256_set1_epi8(0x0f), m30 = _mm256_set1_epi8(0x30), c32 = _mm256_set1_epi8(32);
  for (int n = 0; n < 2; n++) {
    const __m256i la = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk->ql + 64 * n));
    const __m256i lb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk->ql + 64 * n + 32));
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk->qh + 32 * n));
    const __m256i q1 = _mm256_or_si256(_mm256_and_si256(la, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
    const __m256i q2 = _mm256_or_si256(_mm256_and_si256(lb, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
    const __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(la, 4), m4), _mm256_and_si256(qh, m30));
    const __m256i q4 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(lb, 4), m4), _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
    int8_t* o = out + 128 * n;
    _mm256_store_si256(reinterpret_cast<__m256i*>(o), _mm256_sub_epi8(q1, c32));
    _mm256_store_si256(reinterpret_cast<__m256i*>(o + 32), _mm256_sub_epi8(q2, c32));
    _mm256_store_si256(reinterpret_cast<__m256i*>(o + 64), _mm256_sub_epi8(q3, c32));
    _mm256_store_si256(reinterpret_cast<__m256i*>(o + 96), _mm256_sub_epi8(q4, c32));
  }
}

// The codes of the super-block a panel decoder walking a row is in, assembled again only when the
// block changes.
struct Q6KCodes {
  alignas(32) int8_t q[kQK_K];
  int64_t have = -1;
  // Super-block b of a row starting at row_data (its codes then in q).
  const BlockQ6_K* at(const uint8_t* row_data, int64_t b) {
    const BlockQ6_K* blk = reinterpret_cast<const BlockQ6_K*>(row_data + b * static_cast<int64_t>(sizeof(BlockQ6_K)));
    if (b != have) {
      q6k_codes(blk, q);
      have = b;
    }
    return blk;
  }
};

}  // namespace
}  // namespace cpu
}  // namespace lorakit
