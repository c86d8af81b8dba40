// Shared by the decode kernels (decode.cu: CUDA cores, any dtype; decode_tc.cu: tensor cores,
// 16-bit weights): the LoRA terms added in the epilogue and the split-K bookkeeping.
#pragma once
#include "common.cuh"
#include "ops.h"

namespace lorakit {
namespace cuda {

struct DecodeTerm {
  const void* u;
  const void* B;
  DType udt, bdt;
  int r;
  float scale;
};
struct DecodeTerms {
  DecodeTerm t[kDecodeMaxTerms];
  int count;
};

__device__ __forceinline__ float load_any(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::F16: return __half2float(static_cast<const __half*>(p)[i]);
    default: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  }
}

// y[row, j] from the base sum v: + Σ scale·u[row]·B[j] over the terms, + bias[j].
__device__ __forceinline__ float decode_epilogue(float v, int64_t row, int64_t j, const DecodeTerms& terms,
                                                 const void* bias, DType bias_dt) {
  for (int t = 0; t < terms.count; t++) {
    const DecodeTerm& tm = terms.t[t];
    float s = 0.f;
    for (int q = 0; q < tm.r; q++) s = fmaf(load_any(tm.u, tm.udt, row * tm.r + q), load_any(tm.B, tm.bdt, j * tm.r + q), s);
    v = fmaf(tm.scale, s, v);
  }
  if (bias) v += load_any(bias, bias_dt, j);
  return v;
}

// Split K: with few output features one block per SM cannot keep enough of W in flight, so K is
// split over gridDim.y blocks. Each writes its partial sums to `part`; the last block of a
// feature group to finish (a ticket counter) adds them in split order, which keeps the result
// independent of timing, and runs the epilogue. It also resets the counter.
struct SplitK {
  float* part;         // [splits][n][outf], null when gridDim.y == 1
  unsigned* counters;  // [gridDim.x], zero between launches
  int64_t k_per;       // K range per split
};
unsigned* decode_split_counters(int64_t groups);

// The tensor-core decode (16-bit W, in % 8 == 0, aligned rows); false when it does not apply.
bool decode_tc_forward(const TensorRef& x, const TensorRef& W, const TensorRef* bias, const DecodeTerms& terms,
                       const TensorRef& y);

}  // namespace cuda
}  // namespace lorakit
