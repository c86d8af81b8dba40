// The AVX-512 decode GEMV over a quantized W (quant_gemv.h), y[i, j] = Σ_k x[i, k]·deq(W)[j, k]
// (peft: x @ dequantize(W).T): each 16 bytes of 4-bit codes become 32 f32 weights in two registers
// by one zero-extension, a shift and two vpermps lookups into a 16-entry table already multiplied
// by the block's scale (nf4 / fp4: bnb's code book × absmax; q4_0: ggml's (q − 8) × d), the
// products of the scalar decoder; int8 and q8_0 widen 16 int8 at a time and scale per row / per
// block; q4_k / q6_k: quant_gemv_kquant_avx512.h; bf16 activations on CPUs with a bf16 unit:
// quant_gemv_avx512bf16.cc. At n = 1 four rows a quarter of the thread's range apart advance
// together (gemv_row_streams): four read streams per core keep enough misses in flight on a W
// beyond the LLC, which one row at a time did not (35% of the read bandwidth; adjacent rows
// interleaved in one page were slower still), and 8 accumulators hide the FMA latency. x (≤ 8 rows)
// is read from L1/L2. Zen 5 (measured by throughput loops): widenings, vpermps, vpermw and
// vpbroadcastw issue on two pipes, one of them also an FMA pipe; shifts on two others. Per 32
// weights the kernel needs three shuffles (a widening, two vpermps) and 2 FMAs plus the table's
// multiply: about 3.5 cycles per 64 weights at best, 4.4 measured in L2 for nf4 and, with q4_0's
// d converted 8 blocks at a time (quant_gemv_q4_scales.h), 4.6 for q4_0 (5.7 before). Slower:
// a 64-byte-load variant splitting nibbles by shifts (with unscaled lookups and a per-lane scale,
// or vpermt2ps over two blocks' tables), vpsrlvd or vpmulhuw for the shift, q4_0 as 2^23 + q by
// vpternlogd and a subtraction (no lookups), and a per-block fold d·Σ(q − 8)·x.
// Formats: core/quant_formats.h (bnb functional.quantize_4bit, LLM.int8, ggml-common.h).
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <cstring>
#include <vector>
#include "../core/dtype.h"
#include "../core/ggml_blocks.h"
#include "quant.h"
#include "quant_gemv.h"
#include "quant_gemv_q4_scales.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma,f16c")
#include "quant_q6k_codes.h"
#pragma GCC pop_options

#define LK_Q __attribute__((target("avx512f,avx2,fma,f16c")))

namespace lorakit {
namespace cpu {
LK_Q void decode_avx512(const QuantWeight& W, int64_t row, int64_t c0, int64_t len, float* out);
namespace {

LK_Q inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

// Round to nearest even bf16, kept as f32 (finite values: the scaled code tables).
LK_Q inline __m512 round_bf16(__m512 v) {
  const __m512i b = _mm512_castps_si512(v);
  const __m512i bias = _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1)));
  return _mm512_castsi512_ps(_mm512_and_si512(_mm512_add_epi32(b, bias), _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
}

// Accumulates 32 weights (wa for x[0..15] of the group, wb for x[16..31]) against NT token rows.
template <int NT>
LK_Q inline void fma_group(__m512 wa, __m512 wb, const float* x, int64_t ldx, __m512* acc) {
  for (int i = 0; i < NT; i++) {
    acc[2 * i] = _mm512_fmadd_ps(wa, _mm512_loadu_ps(x + i * ldx), acc[2 * i]);
    acc[2 * i + 1] = _mm512_fmadd_ps(wb, _mm512_loadu_ps(x + i * ldx + 16), acc[2 * i + 1]);
  }
}

// nf4 / fp4, R rows at once (rows r = 0 .. R − 1 of a gemv_row_streams step; row r's outputs at
// y + r·S). Group g of row r (32 values) has its 16 bytes at bytes(r, g), the high nibble the
// group's first operand (x in Pairs32); block b (gpb groups, a power of two) has its scale
// broadcast in scale(r, b). Each row's table is scaled once per block; R·2·NT independent
// accumulators hide the FMA latency. Every fourth group prefetches ahead (once per 64 bytes).
template <int NT, int R, class Bytes, class Scale>
LK_Q void rows_4bit(int64_t groups, int64_t gpb, __m512 table, bool bf16, Bytes bytes, Scale scale, const float* x,
                    int64_t ldx, float* y, int64_t S, int64_t ldy) {
  __m512 acc[R][2 * NT];
  for (int r = 0; r < R; r++)
    for (int i = 0; i < 2 * NT; i++) acc[r][i] = _mm512_setzero_ps();
  // One flat loop over the groups (a loop per block cost a dozen scalar instructions per block of
  // 64 values, measurable at n = 1); the tables change where a block starts.
  const int64_t shift = __builtin_ctzll(static_cast<uint64_t>(gpb));
  __m512 t[R];
  for (int64_t g = 0; g < groups; g++) {
    if ((g & (gpb - 1)) == 0)
      for (int r = 0; r < R; r++) {
        t[r] = _mm512_mul_ps(table, scale(r, g >> shift));
        if (bf16) t[r] = round_bf16(t[r]);
      }
    for (int r = 0; r < R; r++) {
      const uint8_t* p = bytes(r, g);
      if ((g & 3) == 0) _mm_prefetch(reinterpret_cast<const char*>(p) + kGemvPrefetchBytes, _MM_HINT_T0);
      // vpermps reads the low 4 bits of each index: v itself selects by the low nibble.
      const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      const __m512 wh = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), t[r]), wl = _mm512_permutexvar_ps(v, t[r]);
      fma_group<NT>(wh, wl, x + g * 32, ldx, acc[r]);
    }
  }
  for (int r = 0; r < R; r++)
    for (int i = 0; i < NT; i++) y[r * S + i * ldy] = hsum(_mm512_add_ps(acc[r][2 * i], acc[r][2 * i + 1]));
}

// Rows of nf4 / fp4 (R at a time, gemv_row_streams): bnb's layout, two codes per byte, the first
// in the high nibble, one absmax per block (reconstructed first with double quant).
template <int NT>
struct Nf4Rows {
  const QuantWeight& W;
  const QuantLayout& L;
  __m512 table;
  const float* x;
  float* y;
  int64_t ldy;
  bool bf16;
  std::vector<float>& amax;  // R rows of per_row reconstructed absmax (double quant)
  template <int R>
  LK_Q void rows(int64_t j, int64_t S) {
    const QuantSpec& s = W.spec;
    const int64_t cols = s.cols;
    const uint8_t* row[R];
    const float* a[R];
    nf4_stream_rows<R>(W, L, j, S, amax, row, a);
    rows_4bit<NT, R>(cols / 32, s.block / 32, table, bf16, [&](int r, int64_t g) { return row[r] + g * 16; },
                              [&](int r, int64_t b) LK_Q { return _mm512_set1_ps(a[r][b]); }, x, cols, y + j, S, ldy);
  }
};

// One q4_0 block g of R rows (row r's d at d[r · kQ4ScaleChunk]): the table (q − 8)·d (ggml's
// product), one zero-extension of the 16 bytes (low nibbles are values 0..15, high ones 16..31:
// vpermps reads the low 4 bits of each index), a shift, two vpermps and 2·NT FMAs per row.
template <int NT, int R>
LK_Q inline void q4_block(const uint8_t* const (&row)[R], int64_t g, const float* d, __m512 table, bool bf16, const float* x,
                          int64_t ldx, __m512 (&acc)[R][2 * NT]) {
  for (int r = 0; r < R; r++) {
    const uint8_t* p = row[r] + g * sizeof(BlockQ4_0);
    if ((g & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(p) + kGemvPrefetchBytes, _MM_HINT_T0);
    __m512 t = _mm512_mul_ps(table, _mm512_set1_ps(d[r * kQ4ScaleChunk]));
    if (bf16) t = round_bf16(t);
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2)));
    fma_group<NT>(_mm512_permutexvar_ps(v, t), _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), t), x + g * 32, ldx, acc[r]);
  }
}

// The accumulators of a row-stream kernel: R rows × 2·NT vectors, summed per row and token into
// y[j + r·S + i·ldy].
template <int R, int NT>
LK_Q inline void zero_acc(__m512 (&acc)[R][2 * NT]) {
  for (int r = 0; r < R; r++)
    for (int i = 0; i < 2 * NT; i++) acc[r][i] = _mm512_setzero_ps();
}
template <int R, int NT>
LK_Q inline void store_acc(const __m512 (&acc)[R][2 * NT], float* y, int64_t j, int64_t S, int64_t ldy) {
  for (int r = 0; r < R; r++)
    for (int i = 0; i < NT; i++) y[j + r * S + i * ldy] = hsum(_mm512_add_ps(acc[r][2 * i], acc[r][2 * i + 1]));
}

// Rows of q4_0 (ggml blocks of 32: f16 d, then 16 bytes), R at a time. The d of each 8 blocks
// are converted together one chunk ahead (quant_gemv_q4_scales.h), the last groups % 8 one by
// one. n = 1, one thread, W in L2: 1.31 ns per 64 weights (1.65 with a vpbroadcastw +
// vcvtph2ps per block).
template <int NT>
struct Q4Rows : GemvRowsArgs {
  template <int R>
  LK_Q void rows(int64_t j, int64_t S) {
    alignas(64) static const float q4_table[16] = {-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7};
    const __m512 table = _mm512_load_ps(q4_table);
    const int64_t cols = W.spec.cols, groups = cols / 32;
    const uint8_t* row[R];
    row_starts<R>(j, S, groups * static_cast<int64_t>(sizeof(BlockQ4_0)), row);
    __m512 acc[R][2 * NT];
    zero_acc<R, NT>(acc);
    q4_blocks_with_scales<1>(row, groups, [&](int64_t g, const float* d) LK_Q {
      q4_block<NT, R>(row, g, d, table, bf16, x, cols, acc);
    });
    store_acc<R, NT>(acc, y, j, S, ldy);
  }
};

#include "quant_gemv_kquant_avx512.h"

// Row streams per token count: enough to keep the misses in flight at n = 1 (4), fewer as the
// accumulators multiply with the tokens.
template <int NT>
constexpr int kStreams = NT == 1 ? 4 : NT == 2 ? 2 : 1;

// int8 values: 32 per group at q(g), scale per group scale(g) (the row's, or a q8_0 block's); bf16:
// each q·scale rounded to bf16 before its product (deq(W) in the compute dtype, as the portable path).
template <int NT, class Q, class Scale>
LK_Q void row_8bit(int64_t groups, Q q, Scale scale, bool bf16, const float* x, int64_t ldx, float* y, int64_t ldy) {
  __m512 acc[2 * NT];
  for (int i = 0; i < 2 * NT; i++) acc[i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; g++) {
    const int8_t* p = q(g);
    const __m512 s = _mm512_set1_ps(scale(g));
    const __m512 wa = _mm512_mul_ps(s, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))));
    const __m512 wb = _mm512_mul_ps(s, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)))));
    if (bf16) fma_group<NT>(round_bf16(wa), round_bf16(wb), x + g * 32, ldx, acc);
    else fma_group<NT>(wa, wb, x + g * 32, ldx, acc);
  }
  for (int i = 0; i < NT; i++) y[i * ldy] = hsum(_mm512_add_ps(acc[2 * i], acc[2 * i + 1]));
}

template <int NT>
LK_Q void gemv_nt(const QuantWeight& W, const float* x, int64_t j0, int64_t j1, float* y, int64_t ldy, bool bf16) {
  const QuantSpec& s = W.spec;
  const QuantLayout L = quant_layout(s);
  const int64_t cols = s.cols, groups = cols / 32;
  const uint8_t* data = W.data + L.data_off;
  constexpr int R = kStreams<NT>;
  if (s.format == QuantFormat::NF4 || s.format == QuantFormat::FP4) {
    std::vector<float> amax(s.double_quant ? static_cast<size_t>(R * cols / s.block) : 0);
    gemv_row_streams<R>(j0, j1, Nf4Rows<NT>{W, L, _mm512_loadu_ps(s.format == QuantFormat::NF4 ? kNF4Code : kFP4Code), x, y, ldy, bf16, amax});
  } else if (s.format == QuantFormat::Q4_0) {
    gemv_row_streams<R>(j0, j1, Q4Rows<NT>{{W, L, x, y, ldy, bf16}});
  } else if (s.format == QuantFormat::Q4_K) {
    gemv_row_streams<R>(j0, j1, Q4KRows<NT>{{W, L, x, y, ldy, bf16}});
  } else if (s.format == QuantFormat::Q6_K) {
    gemv_row_streams<R>(j0, j1, Q6KRows<NT>{{W, L, x, y, ldy, bf16}});
  } else if (s.format == QuantFormat::INT8) {
    const float* rs = reinterpret_cast<const float*>(W.data + L.scale_off);
    for (int64_t j = j0; j < j1; j++) {
      const int8_t* row = reinterpret_cast<const int8_t*>(data) + j * cols;
      const float sc = rs[j];
      row_8bit<NT>(groups, [&](int64_t g) { return row + g * 32; }, [&](int64_t) { return sc; }, bf16, x, cols, y + j, ldy);
    }
  } else {  // Q8_0
    for (int64_t j = j0; j < j1; j++) {
      const uint8_t* row = data + j * groups * sizeof(BlockQ8_0);
      auto scale = [&](int64_t g) LK_Q {
        uint16_t h;
        std::memcpy(&h, row + g * sizeof(BlockQ8_0), 2);
        return _cvtsh_ss(h);  // F16C: exact, as dtype.h f16_to_f32
      };
      row_8bit<NT>(groups, [&](int64_t g) { return reinterpret_cast<const int8_t*>(row + g * sizeof(BlockQ8_0) + 2); }, scale,
                   bf16, x, cols, y + j, ldy);
    }
  }
}

void gemv(const QuantWeight& W, const void* xv, int64_t n, int64_t j0, int64_t j1, float* y, int64_t ldy, bool bf16) {
  const float* x = static_cast<const float*>(xv);
  with_token_count(n, [&](auto nt) { gemv_nt<decltype(nt)::value>(W, x, j0, j1, y, ldy, bf16); });
}

// deq(W)[row, c0 .. c0 + len) in natural order; c0 and len multiples of 32 (16 for q6_k; else the
// scalar decoder). The products are those of the scalar decoders: code·absmax, q·d, q·s, and the
// k-quants' (quant_gemv_kquant_avx512.h).
void decode(const QuantWeight& W, int64_t row, int64_t c0, int64_t len, float* out) {
  decode_avx512(W, row, c0, len, out);
}

}  // namespace

LK_Q void decode_avx512(const QuantWeight& W, int64_t row, int64_t c0, int64_t len, float* out) {
  const QuantSpec& s = W.spec;
  if (s.format == QuantFormat::Q6_K && c0 % 16 == 0 && len % 16 == 0) return decode_q6k_segment(W, quant_layout(s), row, c0, len, out);
  if (c0 % 32 != 0 || len % 32 != 0 || s.format == QuantFormat::Q6_K) return dequantize_segment(W, row, c0, len, out);
  if (s.format == QuantFormat::Q4_K) return decode_q4k_segment(W, quant_layout(s), row, c0, len, out);
  const QuantLayout L = quant_layout(s);
  const int64_t cols = s.cols;
  if (s.format == QuantFormat::Q4_0 || s.format == QuantFormat::Q8_0) {  // blocks of 32: d, then the values
    const bool q4 = s.format == QuantFormat::Q4_0;
    const size_t bytes = q4 ? sizeof(BlockQ4_0) : sizeof(BlockQ8_0);
    const uint8_t* blk = W.data + L.data_off + (row * cols + c0) / 32 * bytes;
    const __m512 table = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t c = 0; c < len; c += 32, blk += bytes) {
      uint16_t h;
      std::memcpy(&h, blk, 2);
      const __m512 d = _mm512_set1_ps(_cvtsh_ss(h));
      if (q4) {  // low nibbles are values 0..15, high nibbles 16..31 (vpermps reads the low 4 bits)
        const __m512 t = _mm512_mul_ps(table, d);
        const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2)));
        _mm512_storeu_ps(out + c, _mm512_permutexvar_ps(v, t));
        _mm512_storeu_ps(out + c + 16, _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), t));
      } else {
        for (int half = 0; half < 2; half++) {
          const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2 + 16 * half));
          _mm512_storeu_ps(out + c + 16 * half, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), d));
        }
      }
    }
    return;
  }
  if (s.format == QuantFormat::INT8) {
    const __m512 sc = _mm512_set1_ps(reinterpret_cast<const float*>(W.data + L.scale_off)[row]);
    const int8_t* q = reinterpret_cast<const int8_t*>(W.data + L.data_off) + row * cols + c0;
    for (int64_t c = 0; c < len; c += 16)
      _mm512_storeu_ps(out + c, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + c)))), sc));
    return;
  }
  const __m512 table = _mm512_loadu_ps(s.format == QuantFormat::NF4 ? kNF4Code : kFP4Code);
  const __m512i sel_a = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i sel_b = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const uint8_t* packed = W.data + L.data_off + (row * cols + c0) / 2;
  const float* amax = reinterpret_cast<const float*>(W.data + L.scale_off);
  int64_t cur = -1;
  __m512 t = table;
  const int64_t e0 = row * cols + c0, shift = __builtin_ctzll(static_cast<uint64_t>(s.block));  // block: a power of two
  for (int64_t c = 0; c < len; c += 32) {
    const int64_t b = (e0 + c) >> shift;
    if (b != cur) {
      float a;
      if (s.double_quant) dq_absmax(W, b, 1, &a);
      else a = amax[b];
      t = _mm512_mul_ps(table, _mm512_set1_ps(a));
      cur = b;
    }
    // vpermps reads the low 4 bits of each index: v itself selects by the low nibble.
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(packed + c / 2)));
    const __m512i hi = _mm512_srli_epi32(v, 4);
    _mm512_storeu_ps(out + c, _mm512_permutexvar_ps(_mm512_permutex2var_epi32(hi, sel_a, v), t));
    _mm512_storeu_ps(out + c + 16, _mm512_permutexvar_ps(_mm512_permutex2var_epi32(hi, sel_b, v), t));
  }
}

// deq(W) rounded to bf16 bits: the block's scaled table (the f32 products of decode) rounded and
// narrowed to 16 bf16 words, 32 values looked up at once by vpermw (it reads the low 5 bits of
// each 16-bit index). nf4 / fp4: byte k gives words 2k (high nibble) and 2k + 1 (low); q4_0: the
// 16 low nibbles, then the 16 high ones; int8 / q8_0: decode's f32 products, rounded 16 at a time.
#define LK_Q16 __attribute__((target("avx512f,avx512bw,avx2,fma,f16c")))
LK_Q16 static inline __m512i bf16_words(__m512 scaled) {
  return _mm512_castsi256_si512(_mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(round_bf16(scaled)), 16)));
}
// The k-quants rounded to bf16 words (NaN kept quiet, as store_row / f32_to_bf16 would round their
// f32 decode), c0 and len multiples of 32. q4_k: each sub-block's 16-entry table (Q4KRows::table)
// rounded, then one vpermw over 32 code bytes widened to words; q6_k: decode_q6k_segment's products,
// rounded 16 at a time.
LK_Q16 static inline __m512i bf16_words_quiet(__m512 v) {
  return _mm512_castsi256_si512(_mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(round_bf16_quiet(v)), 16)));
}
LK_Q16 static void decode16_q4k(const QuantWeight& W, const QuantLayout& L, int64_t row, int64_t c0, int64_t len, uint16_t* out) {
  const int64_t nb = W.spec.cols / kQK_K;
  const uint8_t* base = W.data + L.data_off + row * nb * static_cast<int64_t>(sizeof(BlockQ4_K));
  Q4KScales k;
  for (int64_t c = c0; c < c0 + len; c += 32) {
    const uint8_t* p = k.at(base, c / kQK_K);
    const int sb = static_cast<int>((c % kQK_K) / 32);  // sub-block: 2i low nibbles, 2i + 1 high ones
    const __m512i t = bf16_words_quiet(Q4KRows<1>::table(k.d * k.sm[sb], k.dmin * k.sm[8 + sb], 0));
    __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16 + 32 * (sb / 2))));
    if (sb & 1) v = _mm512_srli_epi16(v, 4);  // vpermw reads the low 5 bits: the low nibble needs a mask
    else v = _mm512_and_si512(v, _mm512_set1_epi16(15));
    _mm512_storeu_si512(out + (c - c0), _mm512_permutexvar_epi16(v, t));
  }
}
LK_Q16 static void decode16_q6k(const QuantWeight& W, const QuantLayout& L, int64_t row, int64_t c0, int64_t len, uint16_t* out) {
  thread_local std::vector<float> buf;
  for (int64_t c = 0; c < len; c += 256) {  // through decode_q6k_segment's f32 products, a super-block at a time
    const int64_t n = std::min<int64_t>(256, len - c);
    buf.resize(256);
    decode_q6k_segment(W, L, row, c0 + c, n, buf.data());
    for (int64_t k = 0; k < n; k += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + c + k), _mm512_castsi512_si256(bf16_words_quiet(_mm512_loadu_ps(buf.data() + k))));
  }
}

LK_Q16 static void decode16(const QuantWeight& W, int64_t row, int64_t c0, int64_t len, uint16_t* out) {
  const QuantSpec& s = W.spec;
  if (c0 % 32 == 0 && len % 32 == 0 && s.format == QuantFormat::Q4_K) return decode16_q4k(W, quant_layout(s), row, c0, len, out);
  if (c0 % 32 == 0 && len % 32 == 0 && s.format == QuantFormat::Q6_K) return decode16_q6k(W, quant_layout(s), row, c0, len, out);
  if (c0 % 32 != 0 || len % 32 != 0) {  // not reached by the GEMM's panels (kc even, k0 a multiple of 32)
    thread_local std::vector<float> buf;
    buf.resize(static_cast<size_t>(len));
    decode_avx512(W, row, c0, len, buf.data());
    for (int64_t i = 0; i < len; i++) out[i] = f32_to_bf16(buf[i]);
    return;
  }
  const QuantLayout L = quant_layout(s);
  const int64_t cols = s.cols;
  auto store16 = [](uint16_t* o, __m512 v) LK_Q16 { _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), _mm512_castsi512_si256(bf16_words(v))); };
  if (s.format == QuantFormat::INT8) {  // q·(row scale), rounded
    const __m512 sc = _mm512_set1_ps(reinterpret_cast<const float*>(W.data + L.scale_off)[row]);
    const int8_t* q = reinterpret_cast<const int8_t*>(W.data + L.data_off) + row * cols + c0;
    for (int64_t c = 0; c < len; c += 16)
      store16(out + c, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + c)))), sc));
    return;
  }
  if (s.format == QuantFormat::Q8_0) {  // (q − 0)·d per block of 32, rounded
    const uint8_t* blk = W.data + L.data_off + (row * cols + c0) / 32 * sizeof(BlockQ8_0);
    for (int64_t c = 0; c < len; c += 32, blk += sizeof(BlockQ8_0)) {
      uint16_t h;
      std::memcpy(&h, blk, 2);
      const __m512 d = _mm512_set1_ps(_cvtsh_ss(h));
      for (int half = 0; half < 2; half++)
        store16(out + c + 16 * half,
                _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2 + 16 * half)))), d));
    }
    return;
  }
  if (s.format == QuantFormat::Q4_0) {
    const uint8_t* blk = W.data + L.data_off + (row * cols + c0) / 32 * sizeof(BlockQ4_0);
    const __m512 table = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t c = 0; c < len; c += 32, blk += sizeof(BlockQ4_0)) {
      uint16_t h;
      std::memcpy(&h, blk, 2);
      const __m512i t = bf16_words(_mm512_mul_ps(table, _mm512_set1_ps(_cvtsh_ss(h))));
      const __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2)));
      const __m512i idx = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(v, _mm256_set1_epi16(15))), _mm256_srli_epi16(v, 4), 1);
      _mm512_storeu_si512(out + c, _mm512_permutexvar_epi16(idx, t));
    }
    return;
  }
  const __m512 table = _mm512_loadu_ps(s.format == QuantFormat::NF4 ? kNF4Code : kFP4Code);
  const uint8_t* packed = W.data + L.data_off + (row * cols + c0) / 2;
  const float* amax = reinterpret_cast<const float*>(W.data + L.scale_off);
  const int64_t e0 = row * cols + c0, shift = __builtin_ctzll(static_cast<uint64_t>(s.block));  // block: a power of two
  int64_t cur = -1;
  __m512i t = _mm512_setzero_si512();
  for (int64_t c = 0; c < len; c += 32) {
    const int64_t b = (e0 + c) >> shift;
    if (b != cur) {
      float a;
      if (s.double_quant) dq_absmax(W, b, 1, &a);
      else a = amax[b];
      t = bf16_words(_mm512_mul_ps(table, _mm512_set1_ps(a)));
      cur = b;
    }
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(packed + c / 2)));
    const __m512i idx = _mm512_or_si512(_mm512_srli_epi32(v, 4), _mm512_slli_epi32(_mm512_and_si512(v, _mm512_set1_epi32(15)), 16));
    _mm512_storeu_si512(out + c, _mm512_permutexvar_epi16(idx, t));
  }
}

QuantDecode16Fn quant_decode16_avx512(QuantFormat f) {
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw")) return nullptr;
  return f == QuantFormat::NF4 || f == QuantFormat::FP4 || f == QuantFormat::Q4_0 || f == QuantFormat::INT8 || f == QuantFormat::Q8_0 ||
                 f == QuantFormat::Q4_K || f == QuantFormat::Q6_K
             ? decode16
             : nullptr;
}

QuantDecodeFn quant_decode_avx512() { return __builtin_cpu_supports("avx512f") ? decode : nullptr; }

QuantGemv quant_gemv_avx512(const QuantSpec& s, bool bf16) {
  QuantGemv g;
  if (!__builtin_cpu_supports("avx512f")) return g;
  switch (s.format) {
    case QuantFormat::NF4:
    case QuantFormat::FP4:
      g.fn = gemv;
      g.order = GemvXOrder::Pairs32;
      return g;
    case QuantFormat::Q4_0: g.fn = gemv; return g;
    case QuantFormat::INT8:
    case QuantFormat::Q8_0: g.fn = gemv_8bit_covered(s) ? gemv : nullptr; return g;
    case QuantFormat::Q4_K:
    case QuantFormat::Q6_K: g.fn = gemv; return g;
    default: return g;
  }
}

}  // namespace cpu
}  // namespace lorakit
#else
#include "quant_gemv.h"
namespace lorakit {
namespace cpu {
QuantGemv quant_gemv_avx512(const QuantSpec&, bool) { return {}; }
QuantDecodeFn quant_decode_avx512() { return nullptr; }
QuantDecode16Fn quant_decode16_avx512(QuantFormat) { return nullptr; }
}  // namespace cpu
}  // namespace lorakit
#endif
