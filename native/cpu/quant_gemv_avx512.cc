// The AVX-512 decode GEMV over a quantized W (quant_gemv.h): each 16 bytes of 4-bit codes become
// 32 f32 weights in two registers by one zero-extension, a shift, a mask and two vpermps lookups
// into a 16-entry table already multiplied by the block's scale (nf4 / fp4: bnb's code book ×
// absmax; q4_0: ggml's (q − 8) × d); int8 and q8_0 widen 16 int8 at a time and scale per row / per
// block; q4_k / q6_k: quant_gemv_kquant.h. Every token's accumulators stay in registers; x (≤ 8
// rows) is read from L1/L2. (A 64-byte-load variant, nibbles split by 32-bit shifts and the block
// scale applied to the chunk sums, measured 15-25% slower on a W beyond the LLC: not used.)
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

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma,f16c")
#pragma GCC optimize("fp-contract=off")
#define LK_KQ_ZMM 1
#include "quant_gemv_kquant.h"
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

// 4-bit formats. Group g of a row (32 values) has its 16 bytes at bytes(g); block b (gpb groups)
// has its scale at scale(b). hi_first: the high nibble holds the group's first operand (nf4/fp4,
// x interleaved), else the low nibble does (q4_0: low nibbles are values 0..15, high ones 16..31).
template <int NT, class Bytes, class Scale>
LK_Q void row_4bit(int64_t groups, int64_t gpb, __m512 table, bool hi_first, bool bf16, Bytes bytes, Scale scale,
                   const float* x, int64_t ldx, float* y, int64_t ldy) {
  __m512 acc[2 * NT], acc2[2 * NT];
  for (int i = 0; i < 2 * NT; i++) acc[i] = acc2[i] = _mm512_setzero_ps();
  auto step = [&](int64_t g, __m512 t, __m512* a) LK_Q {
    // vpermps reads the low 4 bits of each index: v itself selects by the low nibble.
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes(g))));
    const __m512 wh = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), t), wl = _mm512_permutexvar_ps(v, t);
    if (hi_first) fma_group<NT>(wh, wl, x + g * 32, ldx, a);
    else fma_group<NT>(wl, wh, x + g * 32, ldx, a);
  };
  // The block's table once per block (gpb groups, a power of two); with few tokens a second set
  // of accumulators (odd groups) hides the FMA latency. Both sets stay in registers: every call of
  // step names its set at compile time.
  const int64_t shift = __builtin_ctzll(static_cast<uint64_t>(gpb));
  auto table_of = [&](int64_t b) LK_Q {
    const __m512 t = _mm512_mul_ps(table, _mm512_set1_ps(scale(b)));
    return bf16 ? round_bf16(t) : t;
  };
  int64_t g = 0;
  if (NT <= 2) {
    __m512 t = table_of(0);
    for (int64_t cur = 0; g + 1 < groups; g += 2) {
      if ((g >> shift) != cur) t = table_of(cur = g >> shift);
      const __m512 t1 = gpb == 1 ? table_of(g + 1) : t;
      step(g, t, acc);
      step(g + 1, t1, acc2);
    }
  }
  for (; g < groups; g++) step(g, table_of(g >> shift), acc);
  for (int i = 0; i < NT; i++)
    y[i * ldy] = hsum(_mm512_add_ps(_mm512_add_ps(acc[2 * i], acc[2 * i + 1]), _mm512_add_ps(acc2[2 * i], acc2[2 * i + 1])));
}

// int8 values: 32 per group at q(g), scale per group scale(g) (the row's, or a q8_0 block's).
template <int NT, class Q, class Scale>
LK_Q void row_8bit(int64_t groups, Q q, Scale scale, const float* x, int64_t ldx, float* y, int64_t ldy) {
  __m512 acc[2 * NT];
  for (int i = 0; i < 2 * NT; i++) acc[i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; g++) {
    const int8_t* p = q(g);
    const __m512 s = _mm512_set1_ps(scale(g));
    const __m512 wa = _mm512_mul_ps(s, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))));
    const __m512 wb = _mm512_mul_ps(s, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)))));
    fma_group<NT>(wa, wb, x + g * 32, ldx, acc);
  }
  for (int i = 0; i < NT; i++) y[i * ldy] = hsum(_mm512_add_ps(acc[2 * i], acc[2 * i + 1]));
}

template <int NT>
LK_Q void gemv_nt(const QuantWeight& W, const float* x, int64_t j0, int64_t j1, float* y, int64_t ldy, bool bf16) {
  const QuantSpec& s = W.spec;
  const QuantLayout L = quant_layout(s);
  const int64_t cols = s.cols, groups = cols / 32;
  const uint8_t* data = W.data + L.data_off;
  if (s.format == QuantFormat::NF4 || s.format == QuantFormat::FP4) {
    const __m512 table = _mm512_loadu_ps(s.format == QuantFormat::NF4 ? kNF4Code : kFP4Code);
    const int64_t per_row = cols / s.block, gpb = s.block / 32;
    std::vector<float> amax(s.double_quant ? static_cast<size_t>(per_row) : 0);
    for (int64_t j = j0; j < j1; j++) {
      const float* a = reinterpret_cast<const float*>(W.data + L.scale_off) + j * per_row;
      if (s.double_quant) {
        dq_absmax(W, j * per_row, per_row, amax.data());
        a = amax.data();
      }
      const uint8_t* row = data + j * cols / 2;
      row_4bit<NT>(groups, gpb, table, true, bf16, [&](int64_t g) { return row + g * 16; }, [&](int64_t b) { return a[b]; }, x, cols,
                   y + j, ldy);
    }
  } else if (s.format == QuantFormat::Q4_0) {
    alignas(64) static const float q4_table[16] = {-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7};
    const __m512 table = _mm512_load_ps(q4_table);
    for (int64_t j = j0; j < j1; j++) {
      const uint8_t* row = data + j * groups * sizeof(BlockQ4_0);
      auto scale = [&](int64_t g) LK_Q {
        uint16_t h;
        std::memcpy(&h, row + g * sizeof(BlockQ4_0), 2);
        return _cvtsh_ss(h);  // F16C: exact, as dtype.h f16_to_f32
      };
      row_4bit<NT>(groups, 1, table, false, bf16, [&](int64_t g) { return row + g * sizeof(BlockQ4_0) + 2; }, scale, x, cols, y + j, ldy);
    }
  } else if (s.format == QuantFormat::INT8) {
    const float* rs = reinterpret_cast<const float*>(W.data + L.scale_off);
    for (int64_t j = j0; j < j1; j++) {
      const int8_t* row = reinterpret_cast<const int8_t*>(data) + j * cols;
      const float sc = rs[j];
      row_8bit<NT>(groups, [&](int64_t g) { return row + g * 32; }, [&](int64_t) { return sc; }, x, cols, y + j, ldy);
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
                   x, cols, y + j, ldy);
    }
  }
}

void gemv(const QuantWeight& W, const float* x, int64_t n, int64_t j0, int64_t j1, float* y, int64_t ldy, bool bf16) {
  switch (n) {
    case 1: return gemv_nt<1>(W, x, j0, j1, y, ldy, bf16);
    case 2: return gemv_nt<2>(W, x, j0, j1, y, ldy, bf16);
    case 3: return gemv_nt<3>(W, x, j0, j1, y, ldy, bf16);
    case 4: return gemv_nt<4>(W, x, j0, j1, y, ldy, bf16);
    case 5: return gemv_nt<5>(W, x, j0, j1, y, ldy, bf16);
    case 6: return gemv_nt<6>(W, x, j0, j1, y, ldy, bf16);
    case 7: return gemv_nt<7>(W, x, j0, j1, y, ldy, bf16);
    default: return gemv_nt<8>(W, x, j0, j1, y, ldy, bf16);
  }
}

// deq(W)[row, c0 .. c0 + len) in natural order; c0 and len multiples of 32 (else the scalar decoder,
// as for q4_k and q6_k). The products are those of the scalar decoders: code·absmax, q·d, q·s.
void decode(const QuantWeight& W, int64_t row, int64_t c0, int64_t len, float* out) {
  decode_avx512(W, row, c0, len, out);
}

}  // namespace

LK_Q void decode_avx512(const QuantWeight& W, int64_t row, int64_t c0, int64_t len, float* out) {
  const QuantSpec& s = W.spec;
  if (c0 % 32 != 0 || len % 32 != 0 || s.format == QuantFormat::Q4_K || s.format == QuantFormat::Q6_K)
    return dequantize_segment(W, row, c0, len, out);
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
// 16 low nibbles, then the 16 high ones.
#define LK_Q16 __attribute__((target("avx512f,avx512bw,avx2,fma,f16c")))
LK_Q16 static inline __m512i bf16_words(__m512 scaled) {
  return _mm512_castsi256_si512(_mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(round_bf16(scaled)), 16)));
}
LK_Q16 static void decode16(const QuantWeight& W, int64_t row, int64_t c0, int64_t len, uint16_t* out) {
  const QuantSpec& s = W.spec;
  if (c0 % 32 != 0 || len % 32 != 0) {  // not reached by the GEMM's panels (kc even, k0 a multiple of 32)
    thread_local std::vector<float> buf;
    buf.resize(static_cast<size_t>(len));
    decode_avx512(W, row, c0, len, buf.data());
    for (int64_t i = 0; i < len; i++) out[i] = f32_to_bf16(buf[i]);
    return;
  }
  const QuantLayout L = quant_layout(s);
  const int64_t cols = s.cols;
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
  return f == QuantFormat::NF4 || f == QuantFormat::FP4 || f == QuantFormat::Q4_0 ? decode16 : nullptr;
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
    case QuantFormat::INT8:  // rows of any width: groups of 32 only when they tile the row
    case QuantFormat::Q8_0: g.fn = bf16 || s.cols % 32 != 0 ? nullptr : gemv; return g;  // bf16: the generic path rounds
    case QuantFormat::Q4_K:
    case QuantFormat::Q6_K: g.fn = quant_gemv_kquant_avx512(); return g;
    default: return g;
  }
}

QuantGemvFn quant_gemv_kquant_avx512() { return __builtin_cpu_supports("avx512f") ? kq::gemv : nullptr; }

}  // namespace cpu
}  // namespace lorakit
#else
#include "quant_gemv.h"
namespace lorakit {
namespace cpu {
QuantGemv quant_gemv_avx512(const QuantSpec&, bool) { return {}; }
QuantGemvFn quant_gemv_kquant_avx512() { return nullptr; }
QuantDecodeFn quant_decode_avx512() { return nullptr; }
QuantDecode16Fn quant_decode16_avx512(QuantFormat) { return nullptr; }
}  // namespace cpu
}  // namespace lorakit
#endif
