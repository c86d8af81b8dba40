// Quantized bases: encoding and decoding on the CPU (formats and layouts: core/quant_formats.h).
// The bytes are defined exactly here, so that the CUDA kernels (cuda/quant*.cu) can write the same
// ones: every float op below is one IEEE f32 op in the order written, never contracted into an FMA.
//   int8 (LLM.int8 weight storage, bnb int8_vectorwise_quant): per row a = max|x| (f32);
//        scale s = a / 127.0f;  q = a == 0 ? 0 : clamp(roundf((x · 127.0f) / a), −127, 127)
//        (x·127 rounded to f32 first, then the f32 division; roundf = half away from zero);
//        x ≈ (float)q · s.
//   nf4 / fp4 (bnb quantize_4bit / kQuantizeBlockwise): per block a = max|x|, inv = 1.0f / a,
//        q = quantize_{nf4,fp4}_value(x · inv), the first value of a pair in the high nibble;
//        x ≈ code[q] · a.
//   double quant (bnb_4bit_use_double_quant): offset = (float)(Σ a_b in f64, index order / nblocks
//        in f64); v = a − offset (f32); per 256 blocks a2 = max|v|; q_b = the index k minimising
//        fabsf(map[k] − v·(1.0f / a2)) (f32, ties to the lower index; a2 == 0: the index of 0.0);
//        a ≈ map[q]·a2 + offset (a product, then a sum).
//   q8_0, q4_0, q4_k, q6_k: ggml's quantize_row_*_ref / dequantize_row_* (cpu/ggml_blocks.cc).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>
#include "../core/thread_pool.h"
#include "ops.h"
#include "quant.h"

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace lorakit {
namespace cpu {
namespace {

const float* dynamic_map() {
  static const std::vector<float> map = [] {
    std::vector<float> m(256);
    quant_dynamic_map(m.data());
    return m;
  }();
  return map.data();
}

// The index of the map entry nearest to t (ties to the lower index): binary search for the first
// entry >= t, then the closer of it and its predecessor (the map is sorted and has no repeats).
uint8_t nearest_map_index(const float* map, float t) {
  const int64_t hi = std::lower_bound(map, map + 256, t) - map;
  if (hi == 0) return 0;
  if (hi == 256) return 255;
  const float dl = std::fabs(map[hi - 1] - t), dh = std::fabs(map[hi] - t);
  return static_cast<uint8_t>(dl <= dh ? hi - 1 : hi);
}

float* f32_at(uint8_t* base, size_t off) { return reinterpret_cast<float*>(base + off); }
const float* f32_at(const uint8_t* base, size_t off) { return reinterpret_cast<const float*>(base + off); }

// Row r of w as f32 into dst (cols values).
void load_row_f32(const TensorRef& w, int64_t r, int64_t cols, float* dst) {
  if (w.dtype == DType::F32) {
    std::memcpy(dst, static_cast<const float*>(w.data) + r * cols, static_cast<size_t>(cols) * 4);
    return;
  }
  for (int64_t c = 0; c < cols; c++) dst[c] = load_f32(w.data, w.dtype, r * cols + c);
}

void quantize_int8_row(const float* x, int64_t cols, float* scale, int8_t* q) {
  float a = 0.f;
  for (int64_t c = 0; c < cols; c++) a = std::max(a, std::fabs(x[c]));
  *scale = a / 127.0f;
  for (int64_t c = 0; c < cols; c++) {
    if (a == 0.f) {
      q[c] = 0;
      continue;
    }
    const float t = x[c] * 127.0f;
    const float v = std::round(t / a);
    q[c] = static_cast<int8_t>(std::min(127.f, std::max(-127.f, v)));
  }
}

// One row of nf4/fp4: absmax per block into amax, codes into packed (cols / 2 bytes).
void quantize_4bit_row(const float* x, int64_t cols, int32_t block, bool nf4, float* amax, uint8_t* packed) {
  for (int64_t b0 = 0; b0 < cols; b0 += block) {
    float a = 0.f;
    for (int64_t c = b0; c < b0 + block; c++) a = std::max(a, std::fabs(x[c]));
    amax[b0 / block] = a;
    const float inv = 1.0f / a;
    for (int64_t c = b0; c < b0 + block; c += 2) {
      const float v0 = x[c] * inv, v1 = x[c + 1] * inv;
      const uint8_t q0 = nf4 ? quantize_nf4_value(v0) : quantize_fp4_value(v0);
      const uint8_t q1 = nf4 ? quantize_nf4_value(v1) : quantize_fp4_value(v1);
      packed[c / 2] = static_cast<uint8_t>((q0 << 4) | q1);
    }
  }
}

// The double-quant sections (offset, absmax2, qabsmax) from the per-block absmax list.
void double_quantize(const float* amax, const QuantLayout& L, uint8_t* out) {
  const int64_t nb = L.nblocks;
  double sum = 0.0;
  for (int64_t b = 0; b < nb; b++) sum += static_cast<double>(amax[b]);
  const float offset = static_cast<float>(sum / static_cast<double>(nb));
  *f32_at(out, L.offset_off) = offset;
  float* amax2 = f32_at(out, L.scale2_off);
  uint8_t* qa = out + L.qscale_off;
  const float* map = dynamic_map();
  const uint8_t zero = nearest_map_index(map, 0.0f);
  parallel_for(L.nblocks2, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; j++) {
      const int64_t b0 = j * kDoubleQuantBlock, b1 = std::min(nb, b0 + kDoubleQuantBlock);
      float m = 0.f;
      for (int64_t b = b0; b < b1; b++) m = std::max(m, std::fabs(amax[b] - offset));
      amax2[j] = m;
      const float inv = 1.0f / m;
      for (int64_t b = b0; b < b1; b++) qa[b] = m == 0.f ? zero : nearest_map_index(map, (amax[b] - offset) * inv);
    }
  });
}

}  // namespace

void dq_absmax(const QuantWeight& W, int64_t b0, int64_t nb, float* out) {
  const QuantLayout L = quant_layout(W.spec);
  const float offset = *f32_at(W.data, L.offset_off);
  const float* amax2 = f32_at(W.data, L.scale2_off);
  const uint8_t* qa = W.data + L.qscale_off;
  const float* map = dynamic_map();
  for (int64_t b = b0; b < b0 + nb; b++) {
    const float p = map[qa[b]] * amax2[b / kDoubleQuantBlock];
    out[b - b0] = p + offset;
  }
}

void quantize(const TensorRef& w, const QuantSpec& s, uint8_t* out) {
  const QuantLayout L = quant_layout(s);
  std::memset(out, 0, L.nbytes);  // section padding is part of the bytes, so it is defined (zero)
  const int64_t rows = s.rows, cols = s.cols;
  if (quant_is_ggml(s.format)) {
    const GgmlType t = quant_ggml_type(s.format);
    const GgmlTypeSize ts = ggml_type_size(t);
    const int64_t row_bytes = cols / ts.block * ts.bytes;
    parallel_for(rows, [&](int64_t r0, int64_t r1) {
      std::vector<float> row(cols);
      for (int64_t r = r0; r < r1; r++) {
        load_row_f32(w, r, cols, row.data());
        ggml_quantize(t, row.data(), out + L.data_off + r * row_bytes, cols);
      }
    });
    return;
  }
  if (s.format == QuantFormat::INT8) {
    parallel_for(rows, [&](int64_t r0, int64_t r1) {
      std::vector<float> row(cols);
      for (int64_t r = r0; r < r1; r++) {
        load_row_f32(w, r, cols, row.data());
        quantize_int8_row(row.data(), cols, f32_at(out, L.scale_off) + r,
                          reinterpret_cast<int8_t*>(out + L.data_off) + r * cols);
      }
    });
    return;
  }
  const bool nf4 = s.format == QuantFormat::NF4;
  const int64_t per_row = cols / s.block;
  std::vector<float> dq_amax(s.double_quant ? static_cast<size_t>(L.nblocks) : 0);
  float* amax = s.double_quant ? dq_amax.data() : f32_at(out, L.scale_off);
  parallel_for(rows, [&](int64_t r0, int64_t r1) {
    std::vector<float> row(cols);
    for (int64_t r = r0; r < r1; r++) {
      load_row_f32(w, r, cols, row.data());
      quantize_4bit_row(row.data(), cols, s.block, nf4, amax + r * per_row, out + L.data_off + r * cols / 2);
    }
  });
  if (s.double_quant) double_quantize(amax, L, out);
}

void dequantize_rows(const QuantWeight& W, int64_t r0, int64_t nrows, float* out) {
  const QuantSpec& s = W.spec;
  const QuantLayout L = quant_layout(s);
  const int64_t cols = s.cols;
  if (quant_is_ggml(s.format)) {
    const GgmlType t = quant_ggml_type(s.format);
    const GgmlTypeSize ts = ggml_type_size(t);
    ggml_dequantize(t, W.data + L.data_off + r0 * (cols / ts.block * ts.bytes), out, nrows * cols);
    return;
  }
  if (s.format == QuantFormat::INT8) {
    const float* scale = f32_at(W.data, L.scale_off);
    const int8_t* q = reinterpret_cast<const int8_t*>(W.data + L.data_off);
    for (int64_t r = 0; r < nrows; r++) {
      const float sc = scale[r0 + r];
      const int8_t* qr = q + (r0 + r) * cols;
      float* o = out + r * cols;
      for (int64_t c = 0; c < cols; c++) o[c] = static_cast<float>(qr[c]) * sc;
    }
    return;
  }
  const float* code = s.format == QuantFormat::NF4 ? kNF4Code : kFP4Code;
  const int64_t per_row = cols / s.block, half = s.block / 2;
  std::vector<float> amax(static_cast<size_t>(nrows * per_row));
  if (s.double_quant) dq_absmax(W, r0 * per_row, nrows * per_row, amax.data());
  else std::memcpy(amax.data(), f32_at(W.data, L.scale_off) + r0 * per_row, amax.size() * 4);
  const uint8_t* packed = W.data + L.data_off + r0 * cols / 2;
  for (int64_t b = 0; b < nrows * per_row; b++) {
    const float a = amax[b];
    const uint8_t* p = packed + b * half;
    float* o = out + b * s.block;
    for (int64_t i = 0; i < half; i++) {
      o[2 * i] = code[p[i] >> 4] * a;
      o[2 * i + 1] = code[p[i] & 15] * a;
    }
  }
}

float block_absmax(const QuantWeight& W, const QuantLayout& L, int64_t b) {
  if (!W.spec.double_quant) return f32_at(W.data, L.scale_off)[b];
  float a;
  dq_absmax(W, b, 1, &a);
  return a;
}

void dequantize_segment(const QuantWeight& W, int64_t row, int64_t c0, int64_t len, float* out) {
  const QuantSpec& s = W.spec;
  const QuantLayout L = quant_layout(s);
  const int64_t cols = s.cols;
  if (quant_is_ggml(s.format)) {  // the whole blocks covering the range, then the range
    const GgmlType t = quant_ggml_type(s.format);
    const GgmlTypeSize ts = ggml_type_size(t);
    const int64_t b0 = c0 / ts.block, b1 = (c0 + len + ts.block - 1) / ts.block;
    const uint8_t* src = W.data + L.data_off + (row * cols / ts.block + b0) * ts.bytes;
    if (b0 * ts.block == c0 && b1 * ts.block == c0 + len) return ggml_dequantize(t, src, out, len);
    thread_local std::vector<float> tmp;
    tmp.resize(static_cast<size_t>((b1 - b0) * ts.block));
    ggml_dequantize(t, src, tmp.data(), (b1 - b0) * ts.block);
    std::memcpy(out, tmp.data() + (c0 - b0 * ts.block), static_cast<size_t>(len) * 4);
    return;
  }
  if (s.format == QuantFormat::INT8) {
    const float sc = f32_at(W.data, L.scale_off)[row];
    const int8_t* q = reinterpret_cast<const int8_t*>(W.data + L.data_off) + row * cols + c0;
    for (int64_t c = 0; c < len; c++) out[c] = static_cast<float>(q[c]) * sc;
    return;
  }
  const float* code = s.format == QuantFormat::NF4 ? kNF4Code : kFP4Code;
  const uint8_t* packed = W.data + L.data_off;
  for (int64_t c = c0; c < c0 + len;) {  // block by block
    const int64_t e = row * cols + c, b = e / s.block, end = std::min(c0 + len, c + (b + 1) * s.block - e);
    const float a = block_absmax(W, L, b);
    for (; c < end; c += 2) {
      const uint8_t byte = packed[(row * cols + c) / 2];
      out[c - c0] = code[byte >> 4] * a;
      out[c - c0 + 1] = code[byte & 15] * a;
    }
  }
}

void dequantize(const QuantWeight& W, const TensorRef& out) {
  const int64_t rows = W.spec.rows, cols = W.spec.cols;
  const int64_t chunk = std::max<int64_t>(1, 4096 / cols);
  parallel_for((rows + chunk - 1) / chunk, [&](int64_t t0, int64_t t1) {
    std::vector<float> tmp(out.dtype == DType::F32 ? 0 : static_cast<size_t>(chunk * cols));
    for (int64_t t = t0; t < t1; t++) {
      const int64_t r0 = t * chunk, nr = std::min(chunk, rows - r0);
      if (out.dtype == DType::F32) {
        dequantize_rows(W, r0, nr, out.as<float>() + r0 * cols);
        continue;
      }
      dequantize_rows(W, r0, nr, tmp.data());
      for (int64_t i = 0; i < nr * cols; i++) store_f32(out.data, out.dtype, r0 * cols + i, tmp[i]);
    }
  });
}

}  // namespace cpu
}  // namespace lorakit
