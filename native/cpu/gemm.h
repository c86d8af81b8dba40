// Packed, tiled f32 GEMM over operands of any float dtype and any strides.
//   C[m, n] = beta * C + sum over segments s of alpha_s * A_s[m, k_s] * B_s[k_s, n]  (+ bias[n])
// Several K segments write one output in one pass: this is how the LoRA term x·Aᵀ·Bᵀ is folded
// into the base GEMM (K extended by r) instead of a second pass over the output.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>
#include "../core/dtype.h"

namespace lorakit {

// Values [c0, c0 + len) of row `row` of a matrix stored in some encoded form (a quantized W), as f32.
using DecodeRowFn = void (*)(const void* ctx, int64_t row, int64_t c0, int64_t len, float* out);
// The same values rounded to nearest-even bf16, as bits (an optional faster form for bf16 panels).
using DecodeRow16Fn = void (*)(const void* ctx, int64_t row, int64_t c0, int64_t len, uint16_t* out);

// Element (i, k) of a matrix lives at data + (i * rs + k * cs) elements. A B operand may instead be
// decoded while it is packed (decode set, data unused): the rows of the encoded matrix E are B's
// columns (decode_t, B = Eᵀ) or its rows (B = E). Such a B is only packed, never read in place;
// with dtype BF16 (and a bf16 A) it joins the bf16 block path, its values rounded to bf16.
struct MatView {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rs = 0, cs = 0;
  DecodeRowFn decode = nullptr;
  DecodeRow16Fn decode16 = nullptr;  // optional, with decode: used for a BF16 view's B = Eᵀ panels
  const void* ctx = nullptr;
  bool decode_t = false;
  float at(int64_t i, int64_t k) const { return load_f32(data, dtype, i * rs + k * cs); }
};

struct KSegment {
  MatView a;  // [m, k]
  MatView b;  // [k, n]
  int64_t k = 0;
  float alpha = 1.f;
};

struct GemmOutput {
  void* data = nullptr;  // [m, n] row-major with leading dimension ldc
  DType dtype = DType::F32;
  int64_t ldc = 0;
  float beta = 0.f;            // beta != 0 reads C before writing (C must then be readable as dtype)
  const void* bias = nullptr;  // optional [n]
  DType bias_dtype = DType::F32;
};

void gemm(int64_t m, int64_t n, const std::vector<KSegment>& segs, const GemmOutput& out);

// The block sizes gemm uses on this machine (derived from the measured caches, and, where two
// derivations give the same bits, the faster of them by timing: gemm_blocks.cc).
struct GemmBlocks {
  int64_t mc = 0, kc = 0, nc = 0;  // rows of A per L2 block, K steps per block, columns of B per task
  const char* source = "";         // where the cache sizes came from, or LORAKIT_GEMM_BLOCKS
};
const GemmBlocks& gemm_blocks();      // the choice (the first candidate while they are being timed)
const GemmBlocks& gemm_blocks_max();  // the elementwise max over the candidates: scratch sizes
std::string gemm_blocks_source();     // where they came from, and the timing's outcome
// The blocks for one call (m × n output, k the sum of its segments' depths); candidate >= 0 when
// the call is one of the timed ones, and gemm_plan_done then takes its time.
struct GemmPlan {
  const GemmBlocks* blocks;
  int candidate;
  std::array<int64_t, 3> shape;
};
GemmPlan gemm_plan(int64_t m, int64_t n, int64_t k);
void gemm_plan_done(const GemmPlan& plan, double seconds);

// Timing of two ways to run one call shape (m, n, total k) on real calls: gemm_blocks.cc's two blockings,
// gemm_w_in_place.cc's two forms of W. Calls below GEMM_TIMED_FLOPS are not timed (their fixed costs would
// dominate); each way gets GEMM_TIMED_SAMPLES calls, alternating within the shape.
constexpr double GEMM_TIMED_FLOPS = 1 << 28;
constexpr int GEMM_TIMED_SAMPLES = 3;
using GemmShape = std::array<int64_t, 3>;
struct GemmShapeTiming {
  int next = 0;
  int count[2] = {0, 0};
  double best[2] = {1e300, 1e300};
  int take() { const int i = next; next ^= 1; return i; }  // the way the next call runs
  // Records a time of way i; true once both ways have their samples.
  bool add(int i, double v) {
    best[i] = best[i] < v ? best[i] : v;
    count[i]++;
    return count[0] >= GEMM_TIMED_SAMPLES && count[1] >= GEMM_TIMED_SAMPLES;
  }
};
// The timing of a shape in a table that remembers at most 64 shapes: a workload of ever new shapes
// (varying token counts) would otherwise grow it for as long as no shape recurs enough; it starts
// afresh when full.
template <class T>
T& gemm_shape_entry(std::map<GemmShape, T>& table, const GemmShape& shape) {
  if (table.size() >= 64 && table.find(shape) == table.end()) table.clear();
  return table[shape];
}

// The f32 GEMM with W (B = Wᵀ, f32, rows along K) read in place (gemm_w_in_place.cc); false, doing
// nothing, where the path or an operand does not allow it.
bool gemm_w_in_place(const GemmBlocks& bl, int64_t m, int64_t n, const std::vector<KSegment>& segs, const GemmOutput& out);
// Which form a call of shape (m, n, k) runs: in place (or packed) where the path's in-place form is always
// used (or absent); on paths with KernelTable::w_in_place_timed, the first calls of each large shape
// alternate the two (the same bits) and the faster is kept for that shape, timed by gemm_form_done.
struct GemmForm {
  bool in_place;
  bool timed;
  GemmShape shape;
};
GemmForm gemm_form(int64_t m, int64_t n, int64_t k, const std::vector<KSegment>& segs);
void gemm_form_done(const GemmForm& f, double seconds);
// Whether this path reads f32 W in place (it has the microkernel, and LORAKIT_GEMM_W_IN_PLACE is not 0:
// the packed form stays selectable, for comparisons).
bool gemm_w_in_place_enabled();

// Units: mc a multiple of the path's MR and of the bf16 blocks' 32 rows, kc of the AMX k-step (32),
// nc of NR and of the bf16 blocks' 32 columns.
struct KernelTable;
struct GemmUnits {
  int64_t m, k, n;
};
GemmUnits gemm_block_units(const KernelTable& kt);

// The tasks of a blocked GEMM over C [m, n]: tm chunks of at most rc rows (um-row units) × tn blocks
// of columns (un-column units, about nc each). Each task owns one C block and all of K.
struct GemmTasks {
  int64_t m, n, un, units_n, tn, rc, tm;
  int64_t count() const { return tm * tn; }
  // Task t: rows [*i0, *i0 + *rows), columns [*j0, *j1) (empty when there are more blocks than units).
  void at(int64_t t, int64_t* i0, int64_t* rows, int64_t* j0, int64_t* j1) const {
    const int64_t ti = t % tm, tj = t / tm;
    *i0 = ti * rc, *rows = (m - *i0 < rc ? m - *i0 : rc);
    *j0 = un * (units_n * tj / tn), *j1 = un * (units_n * (tj + 1) / tn);
    if (*j1 > n) *j1 = n;
  }
};
GemmTasks gemm_tasks(int64_t m, int64_t n, int64_t um, int64_t un, int64_t nc);

constexpr int64_t GEMM_MAX_RC = 960;  // rows of C one task owns at most (bounds its f32 accumulator)
inline int64_t gemm_round_down(int64_t v, int64_t unit) { return v / unit * unit > unit ? v / unit * unit : unit; }
inline int64_t gemm_round_up(int64_t v, int64_t unit) { return (v + unit - 1) / unit * unit; }

// Convenience views for row-major tensors.
inline MatView row_major(const void* p, DType t, int64_t ld) { return MatView{p, t, ld, 1}; }
inline MatView transposed(const void* p, DType t, int64_t ld) { return MatView{p, t, 1, ld}; }

}  // namespace lorakit
