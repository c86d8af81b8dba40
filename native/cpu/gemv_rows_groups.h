// The block order shared by the multi-row GEMV kernels (gemv_rows_avx512.cc, gemv_rows_avx2.cc):
// m rows of x split into near-equal groups of at most 6 (8 → 4 + 4, 16 → 6 + 5 + 5; a group of one or
// two would reload the W vectors for few FMAs), each run by the kernel's register block for its size.
#pragma once
#include <cstdint>
#include <type_traits>
#include "gemv_rows.h"

namespace lorakit {

constexpr int GEMV_X_GROUP_MAX = 6;  // x rows per register block in every kernel

// f(i0, std::integral_constant<int, M>{}) for each group: rows [i0, i0 + M) of x.
template <class F>
inline void for_each_x_group(int64_t m, F&& f) {
  const int64_t g = (m + GEMV_X_GROUP_MAX - 1) / GEMV_X_GROUP_MAX, base = m / g, extra = m % g;
  for (int64_t q = 0, i0 = 0; q < g; q++) {
    const int64_t size = base + (q < extra ? 1 : 0);
    switch (size) {
      case 6: f(i0, std::integral_constant<int, 6>{}); break;
      case 5: f(i0, std::integral_constant<int, 5>{}); break;
      case 4: f(i0, std::integral_constant<int, 4>{}); break;
      case 3: f(i0, std::integral_constant<int, 3>{}); break;
      case 2: f(i0, std::integral_constant<int, 2>{}); break;
      default: f(i0, std::integral_constant<int, 1>{});
    }
    i0 += size;
  }
}

// The register blocks of a call: W's rows in blocks of RB (then one by one), each against every x
// group; f(i0, j, std::integral_constant<int, R>{}, std::integral_constant<int, M>{}) runs the block of
// x rows [i0, i0 + M) and W rows [j, j + R).
template <int RB, class F>
inline void for_each_register_block(int64_t m, int64_t rows, F&& f) {
  int64_t j = 0;
  for (; j + RB <= rows; j += RB)
    for_each_x_group(m, [&](int64_t i0, auto size) { f(i0, j, std::integral_constant<int, RB>{}, size); });
  for (; j < rows; j++)
    for_each_x_group(m, [&](int64_t i0, auto size) { f(i0, j, std::integral_constant<int, 1>{}, size); });
}

}  // namespace lorakit
