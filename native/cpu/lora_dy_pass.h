#pragma once
#include <memory>
#include <vector>
#include "ops.h"

namespace lorakit {
namespace cpu {

// Fills gs[a] = s_a·dy·B_a (f32 [n, r_a]) and writes every requested dB_a = s_a·dyᵀ·u_a, reading
// dy once. dy is [n, outf] row-major.
void dy_pass(const TensorRef& dy, int64_t n, int64_t outf, const std::vector<BackwardTerm>& terms,
             std::vector<std::unique_ptr<float[]>>& gs);

}  // namespace cpu
}  // namespace lorakit
