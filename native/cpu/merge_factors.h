// The merge's factor packing, shared by merge_delta (merge.cc) and exact_merge (exact_merge.cc).
#pragma once
#include <cstdint>
#include "../core/tensor.h"
#include "microkernel.h"

namespace lorakit {
namespace cpu {

// Dense f32 copies of the small factors in the orientation the row loop wants, built in parallel with
// the vector load/transpose kernels: P [rows, r] = scale·(B, or Aᵀ with fan_in_fan_out) row-major, and
// Q(q, j) = (A, or Bᵀ) packed in RANK_PANEL-column panels, zero-padded (microkernel.h); with
// even_odd, each panel row holds the panel's even columns, then its odd ones. Q needs
// ⌈cols/RANK_PANEL⌉·RANK_PANEL·r floats. Returns whether every value of P and Q is finite.
bool prepare_factors(const KernelTable& kt, const TensorRef& A, const TensorRef& B, float scale, bool fan_in_fan_out,
                     int64_t rows, int64_t cols, int64_t r, bool even_odd, float* P, float* Q);

}  // namespace cpu
}  // namespace lorakit
