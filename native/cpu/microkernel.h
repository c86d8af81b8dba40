// The ISA-specific inner kernels, selected once at load time for the CPU (microkernel.cc).
// Each path lives in its own file compiled with target attributes (no global -march), so one
// binary runs on any x86-64 and picks the best path it finds; arm64 gets NEON, other CPUs the
// portable path.
#pragma once
#include <cstdint>
#include "../core/dtype.h"

namespace lorakit {

// acc[i*ldacc + j] += sum_k a[k*mr + i] * b[k*nr + j] for i < mr_used, j < nr_used, where
// (mr, nr) is the path's tile and a/b are packed panels of kc steps.
using MicrokernelFn = void (*)(int64_t kc, const float* a, const float* b, float* acc, int64_t ldacc,
                               int64_t mr_used, int64_t nr_used);

// The microkernel with its A side read in place from a row-major matrix instead of a packed panel:
// acc[i*ldacc + j] += sum_k a[i*lda + k] * b[k*nr + j], the same chains of fused multiply-adds as
// MicrokernelFn (so the same bits). For x·Wᵀ with A = W: W's rows need no packing.
using MicrokernelWFn = void (*)(int64_t kc, const float* a, int64_t lda, const float* b, float* acc, int64_t ldacc,
                                int64_t mr_used, int64_t nr_used);

// GEMV over rows: out[j] += sum_k x[k] * w[j*ldw + k] for j < rows (w of dtype wt, rows contiguous).
using DotRowsFn = void (*)(int64_t k, const float* x, const void* w, DType wt, int64_t ldw, int64_t rows,
                           float* out);
// GEMV over columns: out[j] += sum_k x[k] * w[k*ldw + j] for j < cols.
using AxpyRowsFn = void (*)(int64_t k, const float* x, const void* w, DType wt, int64_t ldw, int64_t cols,
                            float* out);
// dst[i] = alpha * src[i] (converted to f32), n elements.
using LoadRowFn = void (*)(const void* src, DType st, float alpha, int64_t n, float* dst);
// Transposing pack: dst[k*ld_dst + c] = src[c*ld_src + k] (converted to f32) for c < cols, k < kc.
using PackTFn = void (*)(const void* src, DType st, int64_t ld_src, int64_t cols, int64_t kc, float* dst,
                         int64_t ld_dst);
// dst[i] = round(src[i]) into dt, n elements.
using StoreRowFn = void (*)(const float* src, void* dst, DType dt, int64_t n);
// Q of the merge (the r × n factor of ΔW = P·Q), packed in 16-column panels:
// Q(q, j) = Q[(j/16)*16*r + q*16 + j%16] (zero-padded), so the loop over q reads contiguous memory
// instead of r rows a W-row apart (which would all map to the same cache sets).
constexpr int64_t RANK_PANEL = 16;
// The merge's fused pass over a block of W, one read and one write of each element:
// out[i*ldo + j] = round_ot(w[i*ldw + j] + sum_q p[i*r + q] * Q(q, j)) for i < rows, j < n, with Q
// packed in RANK_PANEL panels from column 0 of the block. Each element is widened in registers,
// accumulated in f32 (W first, then the r products in order of q, fused multiply-adds) and rounded
// once (round-to-nearest-even, as store_row). out may be w itself (same ld); wt and ot are float
// dtypes, any combination. p and Q must be finite when w and out are bf16 (a path may then skip the
// quiet-NaN fix-up of the rounding: NaNs of w are still kept exactly); merge_delta checks and sends
// non-finite factors through an f32 tile and store_row instead.
using MergeRowsFn = void (*)(int64_t r, const float* p, int64_t rows, const float* Q, int64_t n, const void* w,
                             DType wt, int64_t ldw, void* out, DType ot, int64_t ldo);

// One step of an exact merge (core/exact_format.h) for ExactRowsFn: the delta of row i, column j
// of the block is d = Σ_q p[i*r + q]·Q(q, j), fused multiply-adds in order of q from zero (Q packed
// as for MergeRowsFn, from the block's first column). A merge step sets x' = round(x + d) (DoRA:
// round(k·(x + d))) and flags each element whose R = round(x' − d) (DoRA: round(x'/k − d)) is not
// x: nz bit j, c[j] = its correction, aux[j] = x's bits (a kernel may write c and aux for every
// element, c = 0 where nz is clear). An undo step sets x = R for its x' and then, where nz is set,
// x = R corrected by c[j] (aux[j], the raw bits, where c[j] is kRaw); the decoders write c for
// every element (0 where nz is clear), so a kernel may read c alone.
struct ExactRowStep {
  const float* p;  // [rows, r]
  const float* Q;
  int64_t r;
  const float* k;  // DoRA scale: null, one per row (k[i]) or, with k_per_col, one per column (k[j])
  bool k_per_col;
  bool undo;
  bool nan_safe;   // p, Q or k hold a non-finite value: NaNs must stay NaNs when rounded
  int8_t* c;       // [rows'][256], rows' = rows rounded up to 8 (the kernels may use padding rows)
  void* aux;       // [rows'][256] bit patterns of the weight's dtype
  uint64_t* nz;    // [rows'][4]; a merge step ORs its flags in (zero it first)
};
// Runs the steps in order over rows × n columns of w (n ≤ 256, row stride ldw elements, float
// dtype t), reading and writing each element of w once. Merge and unmerge must run on one path: the
// arithmetic of R is the same expression in both roles.
using ExactRowsFn = void (*)(DType t, void* w, int64_t ldw, int64_t rows, int64_t n, const ExactRowStep* steps,
                             int nsteps);

// bf16 block (AMX tiles or AVX512-BF16 vdpbf16ps): acc (32 x 32 f32, leading dimension ldacc) +=
// A·B over kc (multiple of 32) steps, with f32 accumulation. A is one packed 32-row block stored as
// kc/32 contiguous 32x32 bf16 chunks, A(i, k) = a[(k/32)*1024 + i*32 + k%32] (each AMX tile is 16
// rows 64 bytes apart: a row stride of all of K would put the 16 rows in one L1 set); B is a
// 32-column panel in VNNI order, B(k, j) = b[(k/2)*64 + j*2 + k%2]. acc is read once and written once.
using Bf16BlockFn = void (*)(int64_t kc, const uint16_t* a, const uint16_t* b, float* acc, int64_t ldacc);
constexpr int64_t BF16_BLOCK = 32;
// The same product with W read in place (AMX), for W stored as rows along K (B(k, j) = W[j, k]): no
// per-call repacking of the frozen weight. acc (32 rows of x × 32 rows of W, leading dimension ldacc)
// += x·Wᵀ with W(j, k) = w[j*ldw + k] for k < kfull (a multiple of 32), then, if wtail is not null,
// one more 32-step chunk from wtail (32 × 32, row stride 32, zero-padded); x packed as a Bf16BlockFn
// B panel (VNNI, its 32 rows as the columns) over all the steps.
using Bf16BlockWFn = void (*)(int64_t kfull, const uint16_t* w, int64_t ldw, const uint16_t* wtail, const uint16_t* x,
                              float* acc, int64_t ldacc);

// Multi-row GEMV over W's rows, W read in place: out[i*ldo + j] += sum_k x[i*ldx + k] * w[j*ldw + k]
// for i < m (1 <= m <= GEMV_ROWS_MAX, gemv_rows.h), j < rows; x f32, w of dtype wt (f32, bf16 or
// f16), f32 sums.
using GemvRowsFn = void (*)(int64_t m, int64_t k, const float* x, int64_t ldx, const void* w, DType wt, int64_t ldw,
                            int64_t rows, float* out, int64_t ldo);
// The same with x and w both bf16 bits (a bf16 dot-product unit: two exact products per lane per step).
using GemvRowsBf16Fn = void (*)(int64_t m, int64_t k, const uint16_t* x, int64_t ldx, const uint16_t* w,
                                int64_t ldw, int64_t rows, float* out, int64_t ldo);

// Runs a register-resident FMA (or AMX tile) loop `iters` times; returns the FLOPs done.
using PeakFn = double (*)(int64_t iters);

struct KernelTable {
  const char* name;
  int64_t mr, nr;
  MicrokernelFn microkernel;
  DotRowsFn dot_rows;
  AxpyRowsFn axpy_rows;
  LoadRowFn load_row;
  PackTFn pack_t;
  StoreRowFn store_row;
  MergeRowsFn merge_rows;
  // Q's column order inside each 16-column panel that merge_rows wants when W and out are both bf16:
  // false = natural; true = the panel's even columns, then its odd ones (the AVX2 kernel splits
  // 16 loaded bf16 into even and odd f32 lanes with a shift and a mask).
  bool merge_bf16_even_odd;
  Bf16BlockFn bf16_block;  // null unless the path has a bf16 dot-product unit (amx, avx512bf16)
  PeakFn fma_peak;         // f32 FMA loop of this path's vector width
  PeakFn amx_peak;         // bf16 tile loop; null unless AMX
  PeakFn bf16_dot_peak;    // vdpbf16ps loop; null unless avx512bf16
  Bf16BlockWFn bf16_block_w;  // null unless AMX (or its emulation)
  ExactRowsFn exact_rows;
  GemvRowsFn gemv_rows;            // null: gemm packs W as for any m (portable, neon)
  GemvRowsBf16Fn gemv_rows_bf16;   // null unless avx512bf16
  int64_t gemv_rows_max;           // the most rows of x gemm sends to gemv_rows (measured per path)
  // The microkernel continues each element's chain of fused multiply-adds from its C tile (rather
  // than adding a fresh kc-long sum to it), so the sums' bits do not depend on the block sizes and
  // gemm may time two blockings against each other (gemm_blocks.cc).
  bool micro_sums_ignore_blocks = false;
  MicrokernelWFn microkernel_w = nullptr;  // null: gemm always packs W (gemm_w_in_place.cc)
  int64_t mr_w = 0, nr_w = 0;               // microkernel_w's tile: rows read in place × packed columns
  // The in-place form is not faster at every shape on this path: gemm times both per call shape.
  bool w_in_place_timed = false;
};

const KernelTable& kernel_table();

// The paths this CPU can run, best first (for tests and the benchmark).
const char* available_paths();

// Per-ISA tables. The x86 ones are defined only in x86-64 builds, neon_table only in arm64 builds
// (each file is compiled for its architecture alone); null when the CPU or OS lacks the feature.
const KernelTable* portable_table();
const KernelTable* neon_table();
const KernelTable* avx2_table();
const KernelTable* avx512_table();
const KernelTable* avx512bf16_table();  // AVX-512 plus vdpbf16ps blocks; null without AVX512_BF16
const KernelTable* amx_table();  // the AVX-512 table plus AMX tiles; null if the OS refuses AMX state
const KernelTable* amx_emulated_table();  // scalar AMX stand-in for tests (LORAKIT_CPU_PATH=amx-emulated)

}  // namespace lorakit
