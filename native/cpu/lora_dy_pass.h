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

// The adapter half of the backward (lora_backward.cc; shared with the quantized base's backward):
// gs[a] = s_a·dy·B_a (f32 [n, r_a]) and every requested dA_a, dB_a.
void lora_term_grads(const TensorRef& dy, int64_t n, int64_t in, int64_t outf, const std::vector<BackwardTerm>& terms,
                     std::vector<std::unique_ptr<float[]>>& gs);
// acc (f32 [n, in]) += mask_a ⊙ (g_a·A_a) / (1 − p_a) for the terms with dropout (p_a > 0).
void add_dropout_dx(int64_t n, int64_t in, const std::vector<BackwardTerm>& terms,
                    const std::vector<std::unique_ptr<float[]>>& gs, float* acc);

}  // namespace cpu
}  // namespace lorakit
