// Hand-written because no BLAS is assumed on users' machines (the package builds from source with
// only a C++ compiler), and because the LoRA passes need things BLAS lacks: mixed f32/f16/bf16
// operands converted while packing (no full-size f32 copy), several K segments accumulated into
// one output tile, and a single rounding on store. Structure follows BLIS/GotoBLAS: A is packed
// once per call into MR-row panels shared by all tasks; per task a kc×nc block of B is packed once
// and swept by the A panels through the path's MR×NR register microkernel. bf16×bf16 segments run
// as 32×32 blocks over all of K (AMX tiles or vdpbf16ps): a full-K 32-column B panel against 32-row
// A blocks; on AMX, a W stored as rows along K is read in place instead (x is packed, W never is).
// One row (m = 1, decode) is a GEMV that streams B once instead, since a packed tile would waste
// MR-1 of its rows; a few rows (2..GEMV_ROWS_MAX, and one row of bf16·bf16 where vdpbf16ps exists)
// with W stored as rows go to gemv_rows.cc, which reads W in place. Where the path has an in-place
// microkernel, an f32 W stored as rows is never packed at any m either (gemm_w_in_place.cc).
#include "gemm.h"
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <vector>
#include "../core/thread_pool.h"
#include "caches.h"
#include "gemv_rows.h"
#include "microkernel.h"

namespace lorakit {

namespace {

struct Scratch {
  std::vector<float> b, acc, tmp, bias;
  std::vector<uint16_t> b16;
  alignas(64) uint16_t wtail[32 * 32];
  explicit Scratch(const GemmBlocks& bl)
      : b(bl.kc * bl.nc), acc((bl.mc + 32) * bl.nc), tmp(std::max(bl.kc, bl.nc)), bias(bl.nc), b16(bl.kc * bl.nc) {}
};

Scratch& scratch() {
  thread_local Scratch s(gemm_blocks_max());
  return s;
}

inline const char* elem_ptr(const MatView& v, int64_t i, int64_t k) {
  return static_cast<const char*>(v.data) + (i * v.rs + k * v.cs) * static_cast<int64_t>(dtype_size(v.dtype));
}

// Packs rows [i0, i0+mc) × k-range of A into mr-row panels: panel p holds kc steps of mr values.
void pack_a(const KernelTable& kt, const MatView& a, int64_t i0, int64_t mc, int64_t k0, int64_t kc, float alpha,
            float* dst, float* tmp) {
  const int64_t mr = kt.mr;
  for (int64_t p = 0; p < mc; p += mr) {
    int64_t rows = std::min(mr, mc - p);
    float* panel = dst + p * kc;
    if (a.cs == 1) {
      kt.pack_t(elem_ptr(a, i0 + p, k0), a.dtype, a.rs, rows, kc, panel, mr);
      if (alpha != 1.f)
        for (int64_t k = 0; k < kc; k++)
          for (int64_t r = 0; r < rows; r++) panel[k * mr + r] *= alpha;
    } else if (a.rs == 1) {  // column-contiguous source: each k step is a contiguous run of rows
      for (int64_t k = 0; k < kc; k++) kt.load_row(elem_ptr(a, i0 + p, k0 + k), a.dtype, alpha, rows, panel + k * mr);
    } else {
      for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < kc; k++) panel[k * mr + r] = alpha * a.at(i0 + p + r, k0 + k);
    }
    for (int64_t r = rows; r < mr; r++)
      for (int64_t k = 0; k < kc; k++) panel[k * mr + r] = 0.f;
  }
}

// pack_b of a decoded B (MatView::decode): B = Eᵀ decodes nr rows of E at a time and transposes
// them into the panel; B = E decodes each of the kc rows' [j0, j0 + nc) once and splits it into
// the panels (the decoder takes any range; ranges on block boundaries decode each block once).
void pack_b_decoded(const KernelTable& kt, const MatView& b, int64_t k0, int64_t kc, int64_t j0, int64_t nc, float* dst) {
  const int64_t nr = kt.nr;
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < std::max(nr * kc, nc)) buf.resize(std::max(nr * kc, nc));
  // A BF16 view's values are rounded to bf16 (the bf16 block path's operands, on any path).
  auto round = [&](float* v, int64_t n) {
    if (b.dtype != DType::BF16) return;
    thread_local std::vector<uint16_t> bits;
    if (static_cast<int64_t>(bits.size()) < n) bits.resize(n);
    kt.store_row(v, bits.data(), DType::BF16, n);
    kt.load_row(bits.data(), DType::BF16, 1.f, n, v);
  };
  if (b.decode_t) {
    for (int64_t q = 0; q < nc; q += nr) {
      const int64_t cols = std::min(nr, nc - q);
      float* panel = dst + q * kc;
      for (int64_t c = 0; c < cols; c++) b.decode(b.ctx, j0 + q + c, k0, kc, buf.data() + c * kc);
      round(buf.data(), cols * kc);
      kt.pack_t(buf.data(), DType::F32, kc, cols, kc, panel, nr);
      for (int64_t c = cols; c < nr; c++)
        for (int64_t k = 0; k < kc; k++) panel[k * nr + c] = 0.f;
    }
    return;
  }
  for (int64_t k = 0; k < kc; k++) {
    b.decode(b.ctx, k0 + k, j0, nc, buf.data());
    round(buf.data(), nc);
    for (int64_t q = 0; q < nc; q += nr) {
      const int64_t cols = std::min(nr, nc - q);
      float* row = dst + q * kc + k * nr;
      std::memcpy(row, buf.data() + q, cols * sizeof(float));
      for (int64_t c = cols; c < nr; c++) row[c] = 0.f;
    }
  }
}

// Packs k-range × columns [j0, j0+nc) of B into nr-column panels.
void pack_b(const KernelTable& kt, const MatView& b, int64_t k0, int64_t kc, int64_t j0, int64_t nc, float* dst,
            float* tmp) {
  if (b.decode) return pack_b_decoded(kt, b, k0, kc, j0, nc, dst);
  const int64_t nr = kt.nr;
  for (int64_t q = 0; q < nc; q += nr) {
    int64_t cols = std::min(nr, nc - q);
    float* panel = dst + q * kc;
    if (b.cs == 1) {
      for (int64_t k = 0; k < kc; k++) {
        kt.load_row(elem_ptr(b, k0 + k, j0 + q), b.dtype, 1.f, cols, panel + k * nr);
        for (int64_t c = cols; c < nr; c++) panel[k * nr + c] = 0.f;
      }
      continue;
    }
    if (b.rs == 1) {  // e.g. Wᵀ of a row-major W: each column is a contiguous row of W
      kt.pack_t(elem_ptr(b, k0, j0 + q), b.dtype, b.cs, cols, kc, panel, nr);
    } else {
      for (int64_t c = 0; c < cols; c++)
        for (int64_t k = 0; k < kc; k++) panel[k * nr + c] = b.at(k0 + k, j0 + q + c);
    }
    for (int64_t c = cols; c < nr; c++)
      for (int64_t k = 0; k < kc; k++) panel[k * nr + c] = 0.f;
  }
}

inline uint16_t bits_at(const MatView& v, int64_t i, int64_t k) {
  return static_cast<const uint16_t*>(v.data)[i * v.rs + k * v.cs];
}

// bf16 block operand packing (bf16 bits copied, no rounding), layouts as Bf16BlockFn: A as 32-row
// blocks of 32x32 chunks along K (rounded up to 32); B as 32-column panels in VNNI order
// [kcp/2][32][2]. Padding is zero. dst points at the chunk holding k0 (k0 a multiple of 32).
void pack_a16(const MatView& a, int64_t i0, int64_t mc, int64_t k0, int64_t kc, int64_t kcp, uint16_t* dst) {
  for (int64_t r = 0; r < BF16_BLOCK; r++) {
    for (int64_t c = 0; c < kcp; c += 32) {
      uint16_t* row = dst + c * 32 + r * 32;
      const int64_t n = r < mc ? std::max<int64_t>(0, std::min<int64_t>(32, kc - c)) : 0;
      if (a.cs == 1 && n) std::memcpy(row, elem_ptr(a, i0 + r, k0 + c), n * 2);
      else
        for (int64_t k = 0; k < n; k++) row[k] = bits_at(a, i0 + r, k0 + c + k);
      std::fill(row + n, row + 32, uint16_t(0));
    }
  }
}

void pack_b16(const MatView& b, int64_t k0, int64_t kc, int64_t kcp, int64_t j0, int64_t nc, uint16_t* dst) {
  int64_t cols = (nc + 31) / 32 * 32;
  std::memset(dst, 0, cols * kcp * 2);
  if (b.decode && b.decode_t && kc % 2 == 0) {
    // A decoded B = Eᵀ: 32 rows of E decoded and rounded to bf16, then the 32-bit transpose above.
    const KernelTable& kt = kernel_table();
    thread_local std::vector<float> buf;
    thread_local std::vector<uint16_t> rows;
    if (static_cast<int64_t>(buf.size()) < kc) buf.resize(kc);
    if (static_cast<int64_t>(rows.size()) < 32 * kc) rows.resize(32 * kc);
    for (int64_t q = 0; q < cols; q += 32) {
      const int64_t nq = std::min<int64_t>(32, nc - q);
      for (int64_t c = 0; c < nq; c++) {
        if (b.decode16) {
          b.decode16(b.ctx, j0 + q + c, k0, kc, rows.data() + c * kc);
          continue;
        }
        b.decode(b.ctx, j0 + q + c, k0, kc, buf.data());
        kt.store_row(buf.data(), rows.data() + c * kc, DType::BF16, kc);
      }
      kt.pack_t(rows.data(), DType::F32, kc / 2, nq, kc / 2, reinterpret_cast<float*>(dst + q * kcp), 32);
    }
    return;
  }
  if (b.decode) {  // a decoded B (MatView::decode), rounded to bf16: word (k/2, c) = (B[k][c], B[k+1][c])
    const KernelTable& kt = kernel_table();
    thread_local std::vector<float> buf;
    thread_local std::vector<uint16_t> pair;
    const int64_t half = std::max<int64_t>(kc, 32);  // one decoded row: kc values, or up to 32 columns
    if (static_cast<int64_t>(buf.size()) < half) buf.resize(half);
    if (static_cast<int64_t>(pair.size()) < 2 * half) pair.resize(2 * half);
    for (int64_t q = 0; q < cols; q += 32) {
      uint16_t* panel = dst + q * kcp;
      const int64_t nq = std::min<int64_t>(32, nc - q);
      const int64_t n = b.decode_t ? kc : nq;  // values per decoded row of E
      for (int64_t i = 0; i < (b.decode_t ? nq : kc); i++) {
        b.decode(b.ctx, b.decode_t ? j0 + q + i : k0 + i, b.decode_t ? k0 : j0 + q, n, buf.data());
        kt.store_row(buf.data(), pair.data() + (i & 1) * half, DType::BF16, n);
        if (b.decode_t) {  // column i (odd kc only)
          for (int64_t k = 0; k < kc; k++) panel[(k / 2) * 64 + i * 2 + (k & 1)] = pair[k];
        } else if ((i & 1) || i == kc - 1) {  // rows k = i − 1 and i (the last odd row pairs with zeros)
          const uint16_t* lo = pair.data() + ((i & 1) ? 0 : half);
          const uint16_t* hi = pair.data() + (i & 1) * half;
          uint32_t* words = reinterpret_cast<uint32_t*>(panel) + (i / 2) * 32;
          for (int64_t c = 0; c < nq; c++)
            words[c] = (i & 1) ? (uint32_t(lo[c]) | (uint32_t(hi[c]) << 16)) : uint32_t(hi[c]);
        }
      }
    }
    return;
  }
  for (int64_t q = 0; q < cols; q += 32) {
    uint16_t* panel = dst + q * kcp;
    int64_t nq = std::min<int64_t>(32, nc - q);
    if (b.rs == 1 && b.cs % 2 == 0 && kc % 2 == 0) {
      // Wᵀ of a row-major W: each k pair is one 32-bit word, so VNNI packing is a 32-bit transpose
      // (bit-exact moves through the f32 transpose kernel).
      const KernelTable& kt = kernel_table();
      kt.pack_t(static_cast<const uint16_t*>(b.data) + (j0 + q) * b.cs + k0, DType::F32, b.cs / 2, nq, kc / 2,
                reinterpret_cast<float*>(panel), 32);
    } else if (b.rs == 1) {
      for (int64_t c = 0; c < nq; c++) {
        const uint16_t* src = static_cast<const uint16_t*>(b.data) + (j0 + q + c) * b.cs + k0;
        for (int64_t k = 0; k < kc; k++) panel[(k / 2) * 64 + c * 2 + (k & 1)] = src[k];
      }
    } else {
      for (int64_t k = 0; k < kc; k++)
        for (int64_t c = 0; c < nq; c++) panel[(k / 2) * 64 + c * 2 + (k & 1)] = bits_at(b, k0 + k, j0 + q + c);
    }
  }
}

bool use_amx(const KernelTable& kt, const KSegment& s) {
  return kt.bf16_block && s.a.dtype == DType::BF16 && s.b.dtype == DType::BF16 && s.alpha == 1.f;
}

// W stored as rows along K (B = Wᵀ of a row-major W, the LoRA layout): the AMX path reads it in place
// and packs x instead, which is n/d of the size and packed once per call.
bool use_w_in_place(const KernelTable& kt, const KSegment& s) {
  return use_amx(kt, s) && kt.bf16_block_w && s.b.rs == 1 && s.b.cs >= s.k && !s.b.decode;
}

// A of every non-AMX segment packed once per call (all row panels, all k blocks), shared by the
// tasks: otherwise each column block of C would repack it.
struct PackedA {
  std::vector<int64_t> base;  // per segment: offset in data (f32 panels) or, for AMX segments, in data16
  std::vector<bool> amx;
  std::vector<bool> w_in_place;  // AMX with W read in place: data16 holds x as VNNI panels (Bf16BlockWFn)
  std::vector<int64_t> kpad;  // AMX: K rounded up to 32, the row stride of the packed rows
  int64_t m_pad = 0, m_pad32 = 0;
  float* data = nullptr;
  uint16_t* data16 = nullptr;
  const uint16_t* rows16(size_t seg, int64_t i) const { return data16 + base[seg] + i * kpad[seg]; }
  // Panel for rows [i, i+mr) of k block starting at k0 (kc steps): kc × mr values.
  const float* panel(size_t seg, int64_t k0, int64_t kc, int64_t i) const { return data + base[seg] + k0 * m_pad + i * kc; }
};

std::vector<float>& packed_a_buffer() {
  thread_local std::vector<float> buf;  // the calling thread's; gemm is not re-entered from tasks
  return buf;
}

std::vector<uint16_t>& packed_a16_buffer() {
  thread_local std::vector<uint16_t> buf;
  return buf;
}

PackedA pack_all_a(const KernelTable& kt, const GemmBlocks& bl, int64_t m, const std::vector<KSegment>& segs) {
  PackedA pa;
  pa.m_pad = (m + kt.mr - 1) / kt.mr * kt.mr;
  pa.m_pad32 = (m + 31) / 32 * 32;
  int64_t total = 0, total16 = 0;
  for (const KSegment& s : segs) {
    bool amx = use_amx(kt, s);
    pa.amx.push_back(amx);
    pa.w_in_place.push_back(use_w_in_place(kt, s));
    pa.kpad.push_back((s.k + 31) / 32 * 32);
    if (amx) {
      pa.base.push_back(total16);
      total16 += pa.kpad.back() * pa.m_pad32;
    } else {
      pa.base.push_back(total);
      total += s.k * pa.m_pad;
    }
  }
  std::vector<float>& buf = packed_a_buffer();
  if (static_cast<int64_t>(buf.size()) < total) buf.resize(total);
  pa.data = buf.data();
  std::vector<uint16_t>& buf16 = packed_a16_buffer();
  if (static_cast<int64_t>(buf16.size()) < total16) buf16.resize(total16);
  pa.data16 = buf16.data();
  // One parallel region for every segment's packing (each region costs a wake-up of the pool).
  struct Unit {
    size_t seg;
    int64_t k0, i;
  };
  std::vector<Unit> units;
  for (size_t si = 0; si < segs.size(); si++) {
    const int64_t step = pa.amx[si] ? 32 : kt.mr, rows = pa.amx[si] ? pa.m_pad32 : pa.m_pad;
    for (int64_t k0 = 0; k0 < segs[si].k; k0 += bl.kc)
      for (int64_t i = 0; i < rows; i += step) units.push_back({si, k0, i});
  }
  parallel_for(
      static_cast<int64_t>(units.size()),
      [&](int64_t b, int64_t e) {
        Scratch& sc = scratch();
        for (int64_t t = b; t < e; t++) {
          const Unit& u = units[t];
          const KSegment& s = segs[u.seg];
          int64_t kc = std::min(bl.kc, s.k - u.k0);
          uint16_t* dst16 = pa.amx[u.seg] ? const_cast<uint16_t*>(pa.rows16(u.seg, u.i)) + u.k0 * BF16_BLOCK : nullptr;
          if (pa.w_in_place[u.seg]) {
            const MatView xt{s.a.data, s.a.dtype, s.a.cs, s.a.rs};  // xᵀ: x's rows become B's columns
            pack_b16(xt, u.k0, kc, (kc + 31) / 32 * 32, u.i, std::min<int64_t>(32, m - u.i), dst16);
          } else if (pa.amx[u.seg]) {
            pack_a16(s.a, u.i, std::min<int64_t>(32, m - u.i), u.k0, kc, (kc + 31) / 32 * 32, dst16);
          } else {
            pack_a(kt, s.a, u.i, std::min(kt.mr, m - u.i), u.k0, kc, s.alpha,
                   const_cast<float*>(pa.panel(u.seg, u.k0, kc, u.i)), sc.tmp.data());
          }
        }
      },
      16);
  return pa;
}

// x·Wᵀ for this task's rows and W rows [j0, j0 + nc), W read in place: 32 W rows at a time against
// every 32-row block of x (whose VNNI panels start at x16). Only edges are copied: a last block of
// fewer than 32 W rows (zero-padded, whole K) and K's last partial chunk of 32.
void w_in_place_segment(const KernelTable& kt, const GemmBlocks& bl, const KSegment& seg, int64_t kpad, const uint16_t* x16,
                        int64_t rc, int64_t j0, int64_t nc, float* acc, Scratch& s) {
  const int64_t ldw = seg.b.cs, kfull = seg.k / 32 * 32;
  for (int64_t jr = 0; jr < nc; jr += 32) {
    const int64_t rows = std::min<int64_t>(32, nc - jr);
    const uint16_t* w = static_cast<const uint16_t*>(seg.b.data) + (j0 + jr) * ldw;
    const uint16_t* wtail = nullptr;
    int64_t kf = kfull, ld = ldw;
    if (rows < 32) {
      if (static_cast<int64_t>(s.b16.size()) < 32 * kpad) s.b16.resize(32 * kpad);
      for (int64_t j = 0; j < 32; j++) {
        uint16_t* dst = s.b16.data() + j * kpad;
        const int64_t n = j < rows ? seg.k : 0;
        if (n) std::memcpy(dst, w + j * ldw, n * 2);
        std::fill(dst + n, dst + kpad, uint16_t(0));
      }
      w = s.b16.data(), kf = kpad, ld = kpad;
    } else if (kfull < seg.k) {
      uint16_t* tail = s.wtail;
      for (int64_t j = 0; j < 32; j++) {
        const int64_t n = seg.k - kfull;
        std::memcpy(tail + j * 32, w + j * ldw + kfull, n * 2);
        std::fill(tail + j * 32 + n, tail + j * 32 + 32, uint16_t(0));
      }
      wtail = tail;
    }
    for (int64_t ir = 0; ir < rc; ir += 32)
      kt.bf16_block_w(kf, w, ld, wtail, x16 + ir * kpad, acc + ir * bl.nc + jr, bl.nc);
  }
}

void compute_task(const GemmBlocks& bl, int64_t i0, int64_t rc, int64_t j0, int64_t nc, const std::vector<KSegment>& segs,
                  const PackedA& pa, const GemmOutput& out) {
  const KernelTable& kt = kernel_table();
  Scratch& s = scratch();
  if (static_cast<int64_t>(s.acc.size()) < (rc + 32) * bl.nc) s.acc.resize((rc + 32) * bl.nc);
  float* acc = s.acc.data();  // rc × nc, leading dimension bl.nc
  // A first segment of f32 microkernels zeroes each C tile just before its first call (from L1)
  // instead of the whole rc × nc block up front (a sweep of up to 1.2 MiB through L2 per task).
  const bool zero_tiles = !pa.amx[0] && segs[0].k > 0;
  if (!zero_tiles)
    for (int64_t i = 0; i < rc; i++) std::fill(acc + i * bl.nc, acc + i * bl.nc + nc, 0.f);
  for (size_t si = 0; si < segs.size(); si++) {
    const KSegment& seg = segs[si];
    if (pa.w_in_place[si]) {
      w_in_place_segment(kt, bl, seg, pa.kpad[si], pa.rows16(si, i0), rc, j0, nc, acc, s);
      continue;
    }
    if (pa.amx[si]) {
      // AMX: a 32-column panel of B over all of K, then every 32-row block of this task's rows with
      // its C tiles held in registers for the whole K (one load and one store of C per segment).
      const int64_t kpad = pa.kpad[si];
      if (static_cast<int64_t>(s.b16.size()) < kpad * 32) s.b16.resize(kpad * 32);
      for (int64_t jr = 0; jr < nc; jr += 32) {
        for (int64_t k0 = 0; k0 < seg.k; k0 += bl.kc) {
          int64_t kc = std::min(bl.kc, seg.k - k0);
          pack_b16(seg.b, k0, kc, (kc + 31) / 32 * 32, j0 + jr, std::min<int64_t>(32, nc - jr), s.b16.data() + k0 * 32);
        }
        for (int64_t ir = 0; ir < rc; ir += 32)
          kt.bf16_block(kpad, pa.rows16(si, i0 + ir), s.b16.data(), acc + ir * bl.nc + jr, bl.nc);
      }
      continue;
    }
    // Each NR panel of the B block is packed just before its first use, so that the microkernels
    // find it in L1. (Prefetching the next panel during the current one's microkernels was tried:
    // no measurable gain on Zen 5, where the packing's loads stall either way.)
    for (int64_t k0 = 0; k0 < seg.k; k0 += bl.kc) {
      const int64_t kc = std::min(bl.kc, seg.k - k0);
      for (int64_t ic = 0; ic < rc; ic += bl.mc) {
        const int64_t mc = std::min(bl.mc, rc - ic);
        for (int64_t jr = 0; jr < nc; jr += kt.nr) {
          const int64_t cols = std::min(kt.nr, nc - jr);
          if (ic == 0) pack_b(kt, seg.b, k0, kc, j0 + jr, cols, s.b.data() + jr * kc, s.tmp.data());
          for (int64_t ir = 0; ir < mc; ir += kt.mr) {
            float* tile = acc + (ic + ir) * bl.nc + jr;
            const int64_t rows = std::min(kt.mr, mc - ir);
            if (zero_tiles && si == 0 && k0 == 0)
              for (int64_t i = 0; i < rows; i++) std::fill(tile + i * bl.nc, tile + i * bl.nc + cols, 0.f);
            kt.microkernel(kc, pa.panel(si, k0, kc, i0 + ic + ir), s.b.data() + jr * kc, tile, bl.nc, rows, cols);
          }
        }
      }
    }
  }
  store_gemm_rows(kt, acc, bl.nc, i0, rc, j0, nc, out, s.tmp.data(), s.bias.data());
}

}  // namespace

// Bias (row vector) and beta·C, then one rounding into the output dtype (tmp and bias: nc floats each).
void store_gemm_rows(const KernelTable& kt, const float* acc, int64_t ldacc, int64_t i0, int64_t rows, int64_t j0, int64_t nc,
                     const GemmOutput& out, float* tmp, float* bias) {
  const size_t es = dtype_size(out.dtype);
  if (out.bias) kt.load_row(static_cast<const char*>(out.bias) + j0 * dtype_size(out.bias_dtype), out.bias_dtype, 1.f, nc, bias);
  for (int64_t i = 0; i < rows; i++) {
    float* row = const_cast<float*>(acc + i * ldacc);
    char* dst = static_cast<char*>(out.data) + ((i0 + i) * out.ldc + j0) * es;
    if (out.beta != 0.f) {
      kt.load_row(dst, out.dtype, out.beta, nc, tmp);
      for (int64_t j = 0; j < nc; j++) row[j] += tmp[j];
    }
    if (out.bias)
      for (int64_t j = 0; j < nc; j++) row[j] += bias[j];
    kt.store_row(row, dst, out.dtype, nc);
  }
}

namespace {

void gemm_blocked(const GemmBlocks& bl, int64_t m, int64_t n, const std::vector<KSegment>& segs, const GemmOutput& out,
                  bool in_place) {
  if (in_place && gemm_w_in_place(bl, m, n, segs, out)) return;
  const KernelTable& kt = kernel_table();
  const GemmUnits units = gemm_block_units(kt);
  const GemmTasks tasks = gemm_tasks(m, n, units.m, units.n, bl.nc);
  const PackedA pa = pack_all_a(kt, bl, m, segs);
  // The packed copy of A is kept for the next call unless it is large (then it is given back).
  struct Release {
    ~Release() {
      constexpr size_t kKeep = size_t(4) << 20;  // elements
      auto& a = packed_a_buffer();
      auto& a16 = packed_a16_buffer();
      if (a.size() > kKeep) std::vector<float>().swap(a);
      if (a16.size() > 2 * kKeep) std::vector<uint16_t>().swap(a16);
    }
  } release;
  // Each task owns one C block and all of K: deterministic, and C is written exactly once.
  parallel_for(tasks.count(), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; t++) {
      int64_t i0, rows, j0, j1;
      tasks.at(t, &i0, &rows, &j0, &j1);
      compute_task(bl, i0, rows, j0, j1 - j0, segs, pa, out);
    }
  });
}

}  // namespace

void gemm(int64_t m, int64_t n, const std::vector<KSegment>& segs, const GemmOutput& out) {
  if (m <= 0 || n <= 0) return;
  const KernelTable& kt = kernel_table();
  if (gemv_rows_ok(kt, m, segs)) return gemv_rows_gemm(m, n, segs, out);
  if (gemv_one_row_ok(m, segs)) return gemv_one_row(n, segs, out);
  int64_t k = 0;
  for (const KSegment& s : segs) k += s.k;
  const GemmPlan plan = gemm_plan(m, n, k);
  const GemmForm form = gemm_form(m, n, k, segs);
  const auto t0 = std::chrono::steady_clock::now();
  gemm_blocked(*plan.blocks, m, n, segs, out, form.in_place);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  gemm_plan_done(plan, seconds);
  gemm_form_done(form, seconds);
}

}  // namespace lorakit
