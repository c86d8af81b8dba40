// The scalar exact_rows (microkernel.h ExactRowsFn) of the portable path: one element at a time,
// f32 arithmetic and dtype.h's round-to-nearest-even conversions. Merge and undo steps compute R
// with the same expressions, so within this path the undo is exact.
#include <cmath>
#include <cstring>
#include <type_traits>
#include "../core/exact_format.h"
#include "exact_rows.h"

namespace lorakit {
namespace {

template <DType T>
struct Bits {
  using U = typename std::conditional<T == DType::F32, uint32_t, uint16_t>::type;
  static float widen(U b) { return load_f32(&b, T, 0); }
  static U narrow(float f) {
    U b;
    store_f32(&b, T, 0, f);
    return b;
  }
};

template <DType T>
void rows_t(void* w, int64_t ldw, int64_t rows, int64_t n, const ExactRowStep* steps, int nsteps) {
  using B = Bits<T>;
  using U = typename B::U;
  U* wp = static_cast<U*>(w);
  for (int64_t i = 0; i < rows; i++)
    for (int64_t j = 0; j < n; j++) {
      U x = wp[i * ldw + j];
      for (int s = 0; s < nsteps; s++) {
        const ExactRowStep& st = steps[s];
        const float* qp = st.Q + (j / RANK_PANEL) * RANK_PANEL * st.r + j % RANK_PANEL;
        float d = 0.f;
        for (int64_t q = 0; q < st.r; q++) d = std::fma(st.p[i * st.r + q], qp[q * RANK_PANEL], d);
        const float k = st.k ? st.k[st.k_per_col ? j : i] : 1.f;
        const int64_t e = i * exact::kSeg + j;
        uint64_t& nz = st.nz[i * 4 + j / 64];
        const uint64_t bit = uint64_t(1) << (j % 64);
        if (st.undo) {
          const U R = B::narrow(st.k ? B::widen(x) / k - d : B::widen(x) - d);
          if (!(nz & bit)) x = R;
          else if (st.c[e] == exact::kRaw) x = static_cast<const U*>(st.aux)[e];
          else x = static_cast<U>(exact::corrected<T>(R, st.c[e]));
        } else {
          const float v = B::widen(x);
          const U a = B::narrow(st.k ? k * (v + d) : v + d);
          const U R = B::narrow(st.k ? B::widen(a) / k - d : B::widen(a) - d);
          if (R != x) {
            nz |= bit;
            st.c[e] = exact::correction<T>(x, R);
            static_cast<U*>(st.aux)[e] = x;
          }
          x = a;
        }
      }
      wp[i * ldw + j] = x;
    }
}

}  // namespace

void exact_rows_generic(DType t, void* w, int64_t ldw, int64_t rows, int64_t n, const ExactRowStep* steps, int nsteps) {
  switch (t) {
    case DType::F32: return rows_t<DType::F32>(w, ldw, rows, n, steps, nsteps);
    case DType::BF16: return rows_t<DType::BF16>(w, ldw, rows, n, steps, nsteps);
    default: return rows_t<DType::F16>(w, ldw, rows, n, steps, nsteps);
  }
}

}  // namespace lorakit
