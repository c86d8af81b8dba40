// The AVX-512 decode GEMV's k-quant rows (q4_k, q6_k), R rows at a time (gemv_row_streams), rows
// innermost so that consecutive FMAs go to different accumulators, and the packed GEMM's k-quant
// panel decoders. Included by quant_gemv_avx512.cc inside its namespace (it supplies LK_Q,
// round_bf16, zero_acc, store_acc; quant_gemv.h GemvRowsArgs and kGemvPrefetchBytes; quant_q6k_codes.h).
// Values are the scalar decoder's products (ggml_blocks.cc deq_k / deq_q6_k); the AVX2 path's
// kernels are quant_gemv_kquant.h.
#pragma once

// Round to nearest even bf16 as dtype.h f32_to_bf16, NaN kept quiet (round_bf16 is for finite
// values): for tables and values from a file's d that may be inf or NaN.
LK_Q inline __m512 round_bf16_quiet(__m512 v) {
  const __m512i u = _mm512_castps_si512(v), hi = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  const __m512i rn = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_castsi512_ps(_mm512_and_si512(_mm512_mask_or_epi32(rn, nan, u, _mm512_set1_epi32(0x400000)), hi));
}

// q4_k rows (ggml super-blocks of 256: f16 d and dmin, 12 bytes of 6-bit sub-block scales and mins,
// 128 bytes of codes), R at a time. Each 32-value sub-block s gets a 16-entry table
// (d·sc_s)·q − dmin·m_s, ggml's products (ggml_blocks.cc deq_k: mul and sub rounded apart; the
// empty asm keeps the compiler from fusing them); then, as for q4_0, one zero-extension of 16 code
// bytes and two vpermps give 16 values of sub-block 2i (low nibbles) and 16 of 2i + 1 (high).
// At n = 1 on a Zen 4:
// 20 GB/s with f32 activations, 14 with bf16, against 9 and 5 for the generic k-quant loop
// (quant_gemv_kquant.h) it replaced here (bench/results/quant-kquant-gemv-2026-12-07-zen4.txt).
template <int NT>
struct Q4KRows : GemvRowsArgs {
  // bf16: 0 no rounding, 1 rounded to bf16 (finite d and dmin: every entry finite), 2 rounded with
  // NaN kept quiet (a file's d or dmin may be inf or NaN).
  LK_Q static __m512 table(float a, float b, int bf16) {
    __m512 prod = _mm512_mul_ps(_mm512_set1_ps(a), _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    __asm__("" : "+v"(prod));
    const __m512 t = _mm512_sub_ps(prod, _mm512_set1_ps(b));
    if (bf16 == 0) return t;
    return bf16 == 1 ? round_bf16(t) : round_bf16_quiet(t);
  }
  template <int R>
  LK_Q void rows(int64_t j, int64_t S) {
    const int64_t cols = W.spec.cols, nb = cols / kQK_K;
    const uint8_t* row[R];
    row_starts<R>(j, S, nb * static_cast<int64_t>(sizeof(BlockQ4_K)), row);
    __m512 acc[R][2 * NT];
    zero_acc<R, NT>(acc);
    alignas(64) float ab[R][16];  // per row: d·sc_0..7, dmin·m_0..7 of the current super-block
    int mode[R];                  // per row: table()'s bf16 argument for the current super-block
    for (int64_t b = 0; b < nb; b++) {
      const float* xb = x + b * kQK_K;
      for (int r = 0; r < R; r++) {
        const uint8_t* p = row[r] + b * sizeof(BlockQ4_K);
        for (int l = 0; l < 3; l++) _mm_prefetch(reinterpret_cast<const char*>(p) + kGemvPrefetchBytes + 64 * l, _MM_HINT_T0);
        // The 8 scales and 8 mins, then d·sc and dmin·m for all 16 in one multiply (the same products).
        alignas(16) uint8_t sm[16];
        ggml_scales_mins_k4(p + 4, sm);
        uint32_t dd;
        std::memcpy(&dd, p, 4);  // f16 d, then f16 dmin
        mode[r] = kquant_round_mode(bf16, static_cast<uint16_t>(dd), static_cast<uint16_t>(dd >> 16));
        const __m512 dm = _mm512_cvtph_ps(_mm256_castsi128_si256(_mm_set1_epi32(static_cast<int>(dd))));  // d, dmin, d, dmin, ...
        const __m512 dsel = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1), dm);
        _mm512_store_ps(ab[r], _mm512_mul_ps(dsel, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(sm))))));
      }
      // Rows innermost, so that consecutive FMAs go to different rows' accumulators.
      for (int i = 0; i < 4; i++) {
        __m512 tl[R], th[R];
        for (int r = 0; r < R; r++) {
          tl[r] = table(ab[r][2 * i], ab[r][8 + 2 * i], mode[r]);
          th[r] = table(ab[r][2 * i + 1], ab[r][8 + 2 * i + 1], mode[r]);
        }
        for (int h = 0; h < 2; h++)
          for (int r = 0; r < R; r++) {
            const uint8_t* qs = row[r] + b * sizeof(BlockQ4_K) + 16;
            const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs + 32 * i + 16 * h)));
            const __m512 wl = _mm512_permutexvar_ps(v, tl[r]), wh = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), th[r]);
            for (int t = 0; t < NT; t++) {
              const float* xt = xb + t * cols + 64 * i + 16 * h;
              acc[r][2 * t] = _mm512_fmadd_ps(wl, _mm512_loadu_ps(xt), acc[r][2 * t]);
              acc[r][2 * t + 1] = _mm512_fmadd_ps(wh, _mm512_loadu_ps(xt + 32), acc[r][2 * t + 1]);
            }
          }
      }
    }
    store_acc<R, NT>(acc, y, j, S, ldy);
  }
};

// q6_k rows (ggml super-blocks of 256: 128 bytes of low 4 bits, 64 of high 2 bits, 16 int8 scales,
// f16 d), R at a time. Per 128-value half the 6-bit codes are assembled 32 at a time (AVX2
// byte ops; 16-bit shifts place the high bits, bits shifted across a byte are masked off), less 32,
// into a small buffer; each 16 values are then one sign-extending load, a conversion and a multiply
// by (d·sc) for their group (ggml's (d·sc)·(q − 32)), and each token's FMA.
template <int NT>
struct Q6KRows : GemvRowsArgs {
  template <int R>
  LK_Q void rows(int64_t j, int64_t S) {
    const int64_t cols = W.spec.cols, nb = cols / kQK_K;
    const uint8_t* row[R];
    row_starts<R>(j, S, nb * static_cast<int64_t>(sizeof(BlockQ6_K)), row);
    __m512 acc[R][2 * NT];
    zero_acc<R, NT>(acc);
    alignas(64) int8_t q[R][kQK_K];  // per row: the super-block's codes less 32, in value order
    alignas(64) float a[R][16];      // per row: d·sc for each 16-value group
    int mode[R];                     // per row: 0 f32, 1 bf16 (finite d), 2 bf16 with NaN kept quiet
    for (int64_t b = 0; b < nb; b++) {
      const float* xb = x + b * kQK_K;
      for (int r = 0; r < R; r++) {
        const uint8_t* p = row[r] + b * sizeof(BlockQ6_K);
        for (int l = 0; l < 4; l++) _mm_prefetch(reinterpret_cast<const char*>(p) + kGemvPrefetchBytes + 64 * l, _MM_HINT_T0);
        const BlockQ6_K* blk = reinterpret_cast<const BlockQ6_K*>(p);
        q6k_codes(blk, q[r]);
        const float d = _cvtsh_ss(blk->d);
        _mm512_store_ps(a[r], _mm512_mul_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk->scales))))));
        mode[r] = kquant_round_mode(bf16, blk->d);
      }
      for (int g = 0; g < 16; g += 2)
        for (int r = 0; r < R; r++) {
          __m512 w0 = _mm512_mul_ps(_mm512_set1_ps(a[r][g]), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(q[r] + 16 * g)))));
          __m512 w1 = _mm512_mul_ps(_mm512_set1_ps(a[r][g + 1]), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(q[r] + 16 * g + 16)))));
          if (mode[r] == 1) {
            w0 = round_bf16(w0);
            w1 = round_bf16(w1);
          } else if (mode[r] == 2) {
            w0 = round_bf16_quiet(w0);
            w1 = round_bf16_quiet(w1);
          }
          for (int t = 0; t < NT; t++) {
            const float* xt = xb + t * cols + 16 * g;
            acc[r][2 * t] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xt), acc[r][2 * t]);
            acc[r][2 * t + 1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xt + 16), acc[r][2 * t + 1]);
          }
        }
    }
    store_acc<R, NT>(acc, y, j, S, ldy);
  }
};

// deq(W)[row, c0 .. c0 + len) of a q4_k W (the packed GEMM's W panels), c0 and len multiples of 32:
// each 32-value sub-block from its table (Q4KRows::table, the same products) and 16 code bytes.
LK_Q inline void decode_q4k_segment(const QuantWeight& W, const QuantLayout& L, int64_t row, int64_t c0, int64_t len, float* out) {
  const int64_t nb = W.spec.cols / kQK_K;
  const uint8_t* base = W.data + L.data_off + row * nb * static_cast<int64_t>(sizeof(BlockQ4_K));
  Q4KScales k;
  for (int64_t c = c0; c < c0 + len; c += 32) {
    const uint8_t* p = k.at(base, c / kQK_K);
    const int sb = static_cast<int>((c % kQK_K) / 32);  // sub-block: 2i low nibbles, 2i + 1 high ones
    const __m512 t = Q4KRows<1>::table(k.d * k.sm[sb], k.dmin * k.sm[8 + sb], 0);
    const uint8_t* qs = p + 16 + 32 * (sb / 2);
    for (int hh = 0; hh < 2; hh++) {
      __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs + 16 * hh)));
      if (sb & 1) v = _mm512_srli_epi32(v, 4);
      _mm512_storeu_ps(out + (c - c0) + 16 * hh, _mm512_permutexvar_ps(v, t));
    }
  }
}

// deq(W)[row, c0 .. c0 + len) of a q6_k W, c0 and len multiples of 16: each super-block's codes
// assembled once (q6k_codes), each 16 values (d·sc)·(q − 32) as in Q6KRows.
LK_Q inline void decode_q6k_segment(const QuantWeight& W, const QuantLayout& L, int64_t row, int64_t c0, int64_t len, float* out) {
  const int64_t nb = W.spec.cols / kQK_K;
  const uint8_t* base = W.data + L.data_off + row * nb * static_cast<int64_t>(sizeof(BlockQ6_K));
  Q6KCodes k;
  for (int64_t c = c0; c < c0 + len; c += 16) {
    const BlockQ6_K* blk = k.at(base, c / kQK_K);
    const int g = static_cast<int>((c % kQK_K) / 16);
    const __m512 a = _mm512_set1_ps(_cvtsh_ss(blk->d) * static_cast<float>(blk->scales[g]));
    _mm512_storeu_ps(out + (c - c0), _mm512_mul_ps(a, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(k.q + 16 * g))))));
  }
}
