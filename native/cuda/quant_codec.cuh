// Device-side reading of a quantized base (core/quant_formats.h): a spec's section pointers and
// the per-format decoders shared by quant.cu (dequantize) and quant_linear.cu (decode GEMV, chunked
// dequantisation for the GEMMs). Every decoder computes exactly what the cpu backend does, one f32
// rounding per operation in the same order (explicit __fmul_rn/__fadd_rn, so nvcc cannot contract
// them into FMAs): dequantize writes the same values on both backends.
//   int8:     x = q·s                        nf4/fp4: x = code[q]·absmax
//   nf4/fp4 + double quant: absmax = map[qabsmax]·absmax2 + offset
//   q8_0: x = q·d   q4_0: x = (q − 8)·d   q4_k: x = (d·sc)·q − dmin·m   q6_k: x = (d·sc)·(q − 32)
#pragma once
#include <cstdint>
#include <vector>
#include "../core/quant_formats.h"
#include "common.cuh"

namespace lorakit {
namespace cuda {

// A quantized W's sections as device pointers (null where the layout has none).
struct QuantDev {
  QuantFormat fmt;
  int64_t rows, cols;
  int32_t block;
  bool dq;
  const float* scale;     // int8 row scales; nf4/fp4 absmax (no double quant)
  const float* offset;    // double quant: the mean of the absmax list
  const float* scale2;    // double quant: absmax2 per 256 absmax values
  const uint8_t* qscale;  // double quant: the 8-bit absmax codes
  const uint8_t* data;    // the quantized values (ggml: the blocks)
  const float* dyn_map;   // bnb's dynamic map (256 entries, device memory) for double quant
};

// The device copy of bnb's dynamic map (core/quant_formats.cc), made once per process.
const float* quant_dyn_map_device();

inline QuantDev quant_dev(const QuantSpec& spec, const uint8_t* base) {
  const QuantLayout L = quant_layout(spec);
  QuantDev q{};
  q.fmt = spec.format;
  q.rows = spec.rows;
  q.cols = spec.cols;
  q.block = spec.block;
  q.dq = spec.double_quant;
  auto f = [&](size_t off, size_t bytes) { return bytes ? reinterpret_cast<const float*>(base + off) : nullptr; };
  q.scale = f(L.scale_off, L.scale_bytes);
  q.offset = f(L.offset_off, L.offset_bytes);
  q.scale2 = f(L.scale2_off, L.scale2_bytes);
  q.qscale = L.qscale_bytes ? base + L.qscale_off : nullptr;
  q.data = base + L.data_off;
  q.dyn_map = spec.double_quant ? quant_dyn_map_device() : nullptr;
  return q;
}

// The 4-bit code books (bnb's dDequantizeNF4 / dDequantizeFP4Tree), index 0: nf4, 1: fp4. Kernels
// copy the one they use to shared memory (16 words in 16 banks: conflict-free lookups).
static __constant__ float kQuantCode4[2][16] = {
    {kNF4Code[0], kNF4Code[1], kNF4Code[2], kNF4Code[3], kNF4Code[4], kNF4Code[5], kNF4Code[6], kNF4Code[7],
     kNF4Code[8], kNF4Code[9], kNF4Code[10], kNF4Code[11], kNF4Code[12], kNF4Code[13], kNF4Code[14], kNF4Code[15]},
    {kFP4Code[0], kFP4Code[1], kFP4Code[2], kFP4Code[3], kFP4Code[4], kFP4Code[5], kFP4Code[6], kFP4Code[7],
     kFP4Code[8], kFP4Code[9], kFP4Code[10], kFP4Code[11], kFP4Code[12], kFP4Code[13], kFP4Code[14], kFP4Code[15]}};

// Block b's absmax of an nf4/fp4 weight (reconstructed from its 8-bit code under double quant).
__device__ __forceinline__ float quant_absmax(const QuantDev& q, int64_t b) {
  if (!q.dq) return q.scale[b];
  return __fadd_rn(__fmul_rn(q.dyn_map[q.qscale[b]], q.scale2[b / kDoubleQuantBlock]), q.offset[0]);
}

__device__ __forceinline__ float half_at(const uint8_t* p) {
  return __half2float(*reinterpret_cast<const __half*>(p));  // ggml's d: 2-byte aligned in every block
}

// The 6-bit scale and min of sub-block j of a Q4_K super-block (ggml's get_scale_min_k4).
__device__ __forceinline__ void scale_min_k4_dev(int j, const uint8_t* s, int& sc, int& m) {
  if (j < 4) {
    sc = s[j] & 63;
    m = s[j + 4] & 63;
  } else {
    sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// w[0..7] = deq(W)[row, k..k+7] (k % 8 == 0, cols % 8 == 0). code: the format's 4-bit code book
// (shared memory) for nf4/fp4, unused otherwise.
__device__ __forceinline__ void quant_deq8(const QuantDev& q, const float* code, int64_t row, int64_t k, float (&w)[8]) {
  const int64_t e = row * q.cols + k;
  switch (q.fmt) {
    case QuantFormat::INT8: {
      const float s = q.scale[row];
      const uint2 raw = *reinterpret_cast<const uint2*>(q.data + e);
      const int8_t* v = reinterpret_cast<const int8_t*>(&raw);
#pragma unroll
      for (int i = 0; i < 8; i++) w[i] = __fmul_rn(static_cast<float>(v[i]), s);
      return;
    }
    case QuantFormat::NF4:
    case QuantFormat::FP4: {
      const float a = quant_absmax(q, e / q.block);
      const uint32_t raw = *reinterpret_cast<const uint32_t*>(q.data + e / 2);
#pragma unroll
      for (int i = 0; i < 4; i++) {
        const uint32_t b = (raw >> (8 * i)) & 0xFF;
        w[2 * i] = __fmul_rn(code[b >> 4], a);  // the first value in the high nibble
        w[2 * i + 1] = __fmul_rn(code[b & 0xF], a);
      }
      return;
    }
    case QuantFormat::Q8_0: {
      const uint8_t* p = q.data + (e / kQK) * sizeof(BlockQ8_0);
      const int j = static_cast<int>(e % kQK);
      const float d = half_at(p);
      const int8_t* qs = reinterpret_cast<const int8_t*>(p + 2) + j;
#pragma unroll
      for (int i = 0; i < 8; i++) w[i] = __fmul_rn(static_cast<float>(qs[i]), d);
      return;
    }
    case QuantFormat::Q4_0: {
      const uint8_t* p = q.data + (e / kQK) * sizeof(BlockQ4_0);
      const int j = static_cast<int>(e % kQK);
      const float d = half_at(p);
      const uint8_t* qs = p + 2 + (j & 15);
      const int shift = j < 16 ? 0 : 4;  // values 0..15 in the low nibbles, 16..31 in the high
#pragma unroll
      for (int i = 0; i < 8; i++) w[i] = __fmul_rn(static_cast<float>(((qs[i] >> shift) & 0xF) - 8), d);
      return;
    }
    case QuantFormat::Q4_K: {
      const uint8_t* p = q.data + (e / kQK_K) * sizeof(BlockQ4_K);
      const int j = static_cast<int>(e % kQK_K), sub = j / 32;
      const float d = half_at(p), dmin = half_at(p + 2);
      int sc, m;
      scale_min_k4_dev(sub, p + 4, sc, m);
      const float d1 = __fmul_rn(d, static_cast<float>(sc)), m1 = __fmul_rn(dmin, static_cast<float>(m));
      const uint8_t* qs = p + 16 + 32 * (sub / 2) + (j % 32);
      const int shift = (sub & 1) ? 4 : 0;
#pragma unroll
      for (int i = 0; i < 8; i++) w[i] = __fsub_rn(__fmul_rn(d1, static_cast<float>((qs[i] >> shift) & 0xF)), m1);
      return;
    }
    default: {  // Q6_K
      const uint8_t* p = q.data + (e / kQK_K) * sizeof(BlockQ6_K);
      const int j = static_cast<int>(e % kQK_K), half = j / 128, m = (j % 128) / 32, l = j % 32;
      const uint8_t* ql = p + 64 * half + (m & 1) * 32 + l;
      const uint8_t* qh = p + 128 + 32 * half + l;
      const int8_t sc = reinterpret_cast<const int8_t*>(p + 192)[8 * half + l / 16 + 2 * m];
      const float ds = __fmul_rn(half_at(p + 208), static_cast<float>(sc));
      const int lshift = (m >> 1) * 4, hshift = 2 * m;
#pragma unroll
      for (int i = 0; i < 8; i++) {
        const int v = (((ql[i] >> lshift) & 0xF) | (((qh[i] >> hshift) & 3) << 4)) - 32;
        w[i] = __fmul_rn(ds, static_cast<float>(v));
      }
      return;
    }
  }
}

// deq(W)[r0 + i, c0 + k] (i < nr, k < nc) into out, a float buffer of dtype dt with row stride ldo,
// on the current stream (quant.cu). c0 and nc are multiples of 8 (any, for int8).
void quant_dequantize_rows(const QuantDev& q, int64_t r0, int64_t nr, int64_t c0, int64_t nc, void* out, DType dt,
                           int64_t ldo);

// gemm_sm90.cu: y = x·deq(W)ᵀ + Σ scale_i·u_i·B_iᵀ (+ bias) in one pass, W's nf4/fp4 codes decoded
// in the kernel's tile loads. ops[0] = {x, q.data, q.cols, 1, true}, the adapters K-major; the
// shapes and alignment of sm90_gemm_supports, 16-bit x, blocks of a multiple of 32 values.
struct Sm90Operand;
bool sm90_quant_gemm_supports(DType dt, int64_t M, const QuantDev& q, const std::vector<Sm90Operand>& ops, const void* bias,
                              const void* C);
void sm90_quant_lora_gemm(DType dt, int64_t M, const QuantDev& q, const std::vector<Sm90Operand>& ops, const void* bias, void* C);

// deq(W)[row, k] of an int8 weight (any cols).
__device__ __forceinline__ float quant_deq1_int8(const QuantDev& q, int64_t row, int64_t k) {
  return __fmul_rn(static_cast<float>(reinterpret_cast<const int8_t*>(q.data)[row * q.cols + k]), q.scale[row]);
}

}  // namespace cuda
}  // namespace lorakit
