// Quantized base weights: the formats, their code books and their byte layouts. One definition for
// every backend (cpu/quant_*.cc, cuda/quant*.cu) and the bindings; a W [rows = out, cols = in] is
// quantized along its rows (blocks run along the input dimension, as bitsandbytes and ggml do).
//
// Where each format comes from:
//   int8      LLM.int8's weight storage (bitsandbytes Int8Params / int8_vectorwise_quant): per row
//             s = absmax(row) / 127, q = round(x · 127 / absmax) ∈ [−127, 127], x ≈ q · s.
//   nf4, fp4  bitsandbytes' 4-bit formats (functional.quantize_4bit, csrc kQuantizeBlockwise): per
//             block of `block` values along the row, absmax a; q = code index of x·(1/a) chosen by
//             the decision trees dQuantizeNF4 / dQuantizeFP4; x ≈ code[q] · a. Two values per byte,
//             the first in the high nibble. Code books: kNF4Code / kFP4Code below (dDequantizeNF4,
//             dDequantizeFP4Tree). doubleQuant (bnb_4bit_use_double_quant): offset = mean(a);
//             a − offset quantized blockwise (256 per block) to 8 bits with bnb's signed dynamic
//             map (create_dynamic_map), each block with its f32 absmax.
//   q8_0, q4_0, q4_k, q6_k
//             ggml's block formats (ggml-common.h, core/ggml_blocks.h; quantize_row_*_ref): the
//             bytes of a GGUF tensor of that type, rows × (cols / block) blocks, used as they are.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include "ggml_blocks.h"

// The decision trees below are the same code on the host and in CUDA kernels (one definition: the cpu
// and cuda backends must write the same bytes).
#if defined(__CUDACC__)
#define LK_QUANT_HD __host__ __device__
#else
#define LK_QUANT_HD
#endif

namespace lorakit {

enum class QuantFormat : int32_t { INT8 = 0, NF4 = 1, FP4 = 2, Q8_0 = 3, Q4_0 = 4, Q4_K = 5, Q6_K = 6 };

inline const char* quant_format_name(QuantFormat f) {
  switch (f) {
    case QuantFormat::INT8: return "int8";
    case QuantFormat::NF4: return "nf4";
    case QuantFormat::FP4: return "fp4";
    case QuantFormat::Q8_0: return "q8_0";
    case QuantFormat::Q4_0: return "q4_0";
    case QuantFormat::Q4_K: return "q4_k";
    case QuantFormat::Q6_K: return "q6_k";
  }
  return "?";
}

inline bool quant_format_from_name(const std::string& s, QuantFormat* out) {
  for (int i = 0; i <= 6; i++) {
    if (s == quant_format_name(static_cast<QuantFormat>(i))) {
      *out = static_cast<QuantFormat>(i);
      return true;
    }
  }
  return false;
}

inline bool quant_is_ggml(QuantFormat f) { return f == QuantFormat::Q8_0 || f == QuantFormat::Q4_0 || f == QuantFormat::Q4_K || f == QuantFormat::Q6_K; }
inline bool quant_is_4bit_bnb(QuantFormat f) { return f == QuantFormat::NF4 || f == QuantFormat::FP4; }

inline GgmlType quant_ggml_type(QuantFormat f) {
  switch (f) {
    case QuantFormat::Q8_0: return GgmlType::Q8_0;
    case QuantFormat::Q4_0: return GgmlType::Q4_0;
    case QuantFormat::Q4_K: return GgmlType::Q4_K;
    case QuantFormat::Q6_K: return GgmlType::Q6_K;
    default: return GgmlType::F32;
  }
}

// A quantized W [rows, cols]. block: values per block along a row (nf4/fp4: the bnb blocksize,
// default 64; ggml: fixed by the type, 32 or 256; int8: cols). double_quant: nf4/fp4 only.
struct QuantSpec {
  QuantFormat format = QuantFormat::NF4;
  int64_t rows = 0, cols = 0;
  int32_t block = 64;
  bool double_quant = false;
};

constexpr int32_t kDoubleQuantBlock = 256;  // bnb quantize_blockwise(absmax − offset, blocksize=256)
constexpr size_t kQuantAlign = 16;          // every section starts 16-byte aligned

// Byte offsets of a spec's sections inside its one buffer (absent sections have bytes 0).
//   int8:          [row scales f32 × rows][q int8 × rows·cols]
//   nf4/fp4:       [absmax f32 × nblocks][packed u8 × rows·cols/2]
//   nf4/fp4 + dq:  [offset f32][absmax2 f32 × nblocks2][qabsmax u8 × nblocks][packed u8 × rows·cols/2]
//   ggml:          [blocks × rows·cols/block]  (the GGUF tensor data)
struct QuantLayout {
  int64_t nblocks = 0;   // absmax blocks (nf4/fp4), rows (int8), ggml blocks
  int64_t nblocks2 = 0;  // double-quant blocks of the absmax list
  size_t scale_off = 0, scale_bytes = 0;    // f32: int8 row scales, nf4/fp4 absmax (no dq)
  size_t offset_off = 0, offset_bytes = 0;  // f32 offset (dq)
  size_t scale2_off = 0, scale2_bytes = 0;  // f32 absmax2 (dq)
  size_t qscale_off = 0, qscale_bytes = 0;  // u8 qabsmax (dq)
  size_t data_off = 0, data_bytes = 0;      // the quantized values
  size_t nbytes = 0;                        // whole buffer, a multiple of kQuantAlign
};

inline size_t quant_align_up(size_t n) { return (n + kQuantAlign - 1) / kQuantAlign * kQuantAlign; }

// The block size a format uses when the caller gives none (0).
inline int32_t quant_default_block(QuantFormat f, int64_t cols) {
  if (f == QuantFormat::INT8) return static_cast<int32_t>(cols);
  if (quant_is_ggml(f)) return ggml_type_size(quant_ggml_type(f)).block;
  return 64;
}

// An empty string when the spec is usable, else why not (the bindings prefix the argument name).
inline std::string quant_spec_problem(const QuantSpec& s) {
  if (s.rows < 1 || s.cols < 1) return "rows and cols must be >= 1";
  if (s.double_quant && !quant_is_4bit_bnb(s.format)) return "doubleQuant is for nf4 and fp4 only";
  if (s.format == QuantFormat::INT8) {
    if (s.block != s.cols) return "int8 has one scale per row (block must equal cols)";
    return "";
  }
  if (quant_is_ggml(s.format)) {
    const int32_t b = ggml_type_size(quant_ggml_type(s.format)).block;
    if (s.block != b) return std::string(quant_format_name(s.format)) + " blocks hold " + std::to_string(b) + " values";
  } else {
    const int32_t b = s.block;
    if (b < 32 || b > 4096 || (b & (b - 1)) != 0) return "block must be a power of two from 32 to 4096";
  }
  if (s.cols % s.block != 0)
    return "the input dimension " + std::to_string(s.cols) + " is not a multiple of the block size " + std::to_string(s.block) +
           " (pad the weight's columns with zeros, or pick a block size that divides it)";
  return "";
}

// The layout of a valid spec (quant_spec_problem(s) empty).
inline QuantLayout quant_layout(const QuantSpec& s) {
  QuantLayout L;
  const size_t n = static_cast<size_t>(s.rows) * static_cast<size_t>(s.cols);
  size_t at = 0;
  auto section = [&](size_t bytes, size_t* off, size_t* len) {
    *off = at;
    *len = bytes;
    at = quant_align_up(at + bytes);
  };
  if (s.format == QuantFormat::INT8) {
    L.nblocks = s.rows;
    section(static_cast<size_t>(s.rows) * 4, &L.scale_off, &L.scale_bytes);
    section(n, &L.data_off, &L.data_bytes);
  } else if (quant_is_ggml(s.format)) {
    const GgmlTypeSize t = ggml_type_size(quant_ggml_type(s.format));
    L.nblocks = static_cast<int64_t>(n / t.block);
    section(static_cast<size_t>(L.nblocks) * t.bytes, &L.data_off, &L.data_bytes);
  } else {
    L.nblocks = static_cast<int64_t>(n / s.block);
    if (s.double_quant) {
      L.nblocks2 = (L.nblocks + kDoubleQuantBlock - 1) / kDoubleQuantBlock;
      section(4, &L.offset_off, &L.offset_bytes);
      section(static_cast<size_t>(L.nblocks2) * 4, &L.scale2_off, &L.scale2_bytes);
      section(static_cast<size_t>(L.nblocks), &L.qscale_off, &L.qscale_bytes);
    } else {
      section(static_cast<size_t>(L.nblocks) * 4, &L.scale_off, &L.scale_bytes);
    }
    section(n / 2, &L.data_off, &L.data_bytes);
  }
  L.nbytes = at;
  return L;
}

// bitsandbytes' NF4 code book (dDequantizeNF4), index = the 4-bit code.
constexpr float kNF4Code[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
    -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
    0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
    0.7229568362236023f, 1.0f};

// bitsandbytes' FP4 code book (dDequantizeFP4Tree: sign bit 8, then the e2m1 magnitudes / 12).
constexpr float kFP4Code[16] = {
    0.0f, 5.208333333e-03f, 0.66666667f, 1.0f, 0.33333333f, 0.5f, 0.16666667f, 0.25f,
    -0.0f, -5.208333333e-03f, -0.66666667f, -1.0f, -0.33333333f, -0.5f, -0.16666667f, -0.25f};

// dQuantizeNF4: the code of v = x·(1/absmax). NaN (0·∞ from an all-zero block) falls through to
// code 0 (−1.0), as in bnb: it decodes to −absmax, which is 0 for a zero block (a small residual under
// double quant, as bnb's).
LK_QUANT_HD inline uint8_t quantize_nf4_value(float x) {
  if (x > 0.03979014977812767f) {
    if (x > 0.3893125355243683f) {
      if (x > 0.6427869200706482f) return x > 0.8614784181118011f ? 15 : 14;
      return x > 0.5016634166240692f ? 13 : 12;
    }
    if (x > 0.2035212516784668f) return x > 0.2920137718319893f ? 11 : 10;
    return x > 0.1202552504837513f ? 9 : 8;
  }
  if (x > -0.33967943489551544f) {
    if (x > -0.13791173323988914f) return x > -0.045525018125772476f ? 7 : 6;
    return x > -0.23460740596055984f ? 5 : 4;
  }
  if (x > -0.6106329262256622f) return x > -0.4599952697753906f ? 3 : 2;
  return x > -0.8480964004993439f ? 1 : 0;
}

// dQuantizeFP4: the code of v = x·(1/absmax) (NaN maps to 0).
LK_QUANT_HD inline uint8_t quantize_fp4_value(float x) {
  const uint8_t sign = x < 0 ? 8 : 0;
  x = x < 0 ? -x : x;
  if (x > 0.29166667f) {
    if (x > 0.583333f) return (x > 0.8333333f ? 3 : 2) + sign;
    return (x > 0.4166667f ? 5 : 4) + sign;
  }
  if (x > 0.0859375f) return (x > 0.20833333f ? 7 : 6) + sign;
  return (x > 0.00260417f ? 1 : 0) + sign;
}

// bnb's signed dynamic 8-bit map (create_dynamic_map(signed=True, max_exponent_bits=7,
// total_bits=8)), sorted ascending: the code book of the double-quantised absmax values. Filled
// once by quant_dynamic_map() (cpu) and copied to the device by the cuda backend.
// Its construction mirrors bnb's: for i in 0..6, fraction_items = 2^i + 1, boundaries =
// linspace(0.1, 1, fraction_items) in f32, means of neighbours ·(±10^(i−6)); then 0 and 1.0:
// 254 + 2 = 256 values, sorted. A value v ∈ [−1, 1] is stored as the index of its nearest entry
// (ties to the lower index), as bnb's dQuantize.
void quant_dynamic_map(float out[256]);

}  // namespace lorakit
