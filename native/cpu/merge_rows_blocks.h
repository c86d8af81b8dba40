// The blocking shared by the fused merge kernels (MergeRowsFn, microkernel.h: out = W + P·Q, rows
// of W and out of one dtype) around each ISA's register tile (microkernel_avx2.cc,
// microkernel_neon.cc, merge_rows_avx512_body.h): rows in blocks of the tile's height, then 4, 2, 1;
// each block's last n % 16 columns through a 16-column f32 tile (W widened in, zeros past n: Q's
// padding is zero), run by the ISA's f32 panel code and rounded into the dtype on the way out, so
// every column takes the same per-lane arithmetic. Always inlined: they take the caller's target.
#pragma once
#include <cstdint>
#include <type_traits>
#include "../core/dtype.h"

namespace lorakit {

#define LK_MERGE_INLINE inline __attribute__((always_inline))

// Element i of a row of dtype T (f32; bf16 and f16: 2 bytes).
template <DType T>
LK_MERGE_INLINE const void* elem_at(const void* p, int64_t i) {
  return static_cast<const char*>(p) + i * static_cast<int64_t>(T == DType::F32 ? 4 : 2);
}
template <DType T>
LK_MERGE_INLINE void* elem_at(void* p, int64_t i) {
  return static_cast<char*>(p) + i * static_cast<int64_t>(T == DType::F32 ? 4 : 2);
}

// block(std::integral_constant<DType, T>{}, std::integral_constant<int, MR>{}, i) for rows
// [i, i + MR): blocks of MR0, then 4, 2, 1.
template <DType T, int MR0, class Block>
LK_MERGE_INLINE void merge_row_blocks(int64_t rows, Block& block) {
  const std::integral_constant<DType, T> t;
  int64_t i = 0;
  for (; i + MR0 <= rows; i += MR0) block(t, std::integral_constant<int, MR0>{}, i);
  for (; i + 4 <= rows; i += 4) block(t, std::integral_constant<int, 4>{}, i);
  for (; i + 2 <= rows; i += 2) block(t, std::integral_constant<int, 2>{}, i);
  for (; i < rows; i++) block(t, std::integral_constant<int, 1>{}, i);
}

// W and out of one dtype T in f32, bf16, f16: merge_row_blocks<T, MR0>(rows, block), true; other
// pairs (rare: the scalar pass's) false, nothing run.
template <int MR0, class Block>
LK_MERGE_INLINE bool for_each_merge_block(DType wt, DType ot, int64_t rows, Block&& block) {
  if (wt != ot) return false;
  switch (wt) {
    case DType::F32: merge_row_blocks<DType::F32, MR0>(rows, block); return true;
    case DType::BF16: merge_row_blocks<DType::BF16, MR0>(rows, block); return true;
    case DType::F16: merge_row_blocks<DType::F16, MR0>(rows, block); return true;
    default: return false;
  }
}

// Columns [0, nt) (nt < 16) of MR rows of W (stride ldw) into out (stride ldo) through the f32
// tile: slot k holds column col(k) (the order the ISA packed Q's panel in); panel(t) runs the f32
// panel code on the tile in place (stride 16).
template <DType T, int MR, class Panel, class Col>
LK_MERGE_INLINE void merge_tail_tile(int64_t nt, const void* w, int64_t ldw, void* o, int64_t ldo, Panel&& panel, Col col) {
  alignas(64) float t[MR][16];
  for (int i = 0; i < MR; i++)
    for (int64_t k = 0; k < 16; k++) t[i][k] = col(k) < nt ? load_f32(w, T, i * ldw + col(k)) : 0.f;
  panel(&t[0][0]);
  for (int i = 0; i < MR; i++)
    for (int64_t k = 0; k < 16; k++)
      if (col(k) < nt) store_f32(o, T, i * ldo + col(k), t[i][k]);
}
template <DType T, int MR, class Panel>
LK_MERGE_INLINE void merge_tail_tile(int64_t nt, const void* w, int64_t ldw, void* o, int64_t ldo, Panel&& panel) {
  merge_tail_tile<T, MR>(nt, w, ldw, o, ldo, panel, [](int64_t k) { return k; });
}

#undef LK_MERGE_INLINE

}  // namespace lorakit
