// The AMX path (Intel Sapphire Rapids and later): bf16×bf16 GEMM segments run on AMX tiles
// (tdpbf16ps, f32 accumulation); everything else uses the AVX-512 kernels. Linux requires each
// process to ask for the tile state (arch_prctl ARCH_REQ_XCOMP_PERM) before the first tile use.
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
// GCC 12's _mm512_i32gather_ps reads an _mm512_undefined_ps() and warns at each use (header false positive).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <cpuid.h>
#include <cstring>
#include "microkernel.h"

#define LK_AMX __attribute__((target("amx-tile,amx-bf16,avx512f")))

namespace lorakit {
namespace {

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

thread_local bool tl_configured = false;

LK_AMX void configure() {
  TileConfig cfg;
  for (int t = 0; t < 8; t++) {
    cfg.colsb[t] = 64;  // 16 f32 or 32 bf16 per row
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
  tl_configured = true;
}

// tmm0..3: C (2x2 blocks of 16x16 f32) += tmm4, 5 (A rows 0-15, 16-31) · tmm6, 7 (B columns 0-15,
// 16-31), over `steps` k steps of 32: A's step s at a + s*a_next (row stride a_stride bytes, rows
// 16-31 at a + a_half), B's at b + s*1024 (VNNI, 128-byte rows). Software-pipelined: each operand
// tile of the next step is loaded right after the last product reading it is issued (measured
// faster on Sapphire Rapids than loading all four first); the last step reloads its own tiles.
LK_AMX inline void tile_steps(int64_t steps, const uint16_t* a, int64_t a_next, int64_t a_half, int64_t a_stride,
                              const uint16_t* b) {
  if (steps <= 0) return;
  _tile_loadd(4, a, a_stride);
  _tile_loadd(6, b, 128);
  _tile_loadd(7, b + 32, 128);
  _tile_loadd(5, a + a_half, a_stride);
  for (int64_t s = 0; s < steps; s++) {
    const int64_t n = s + 1 < steps ? s + 1 : s;
    const uint16_t* an = a + n * a_next;
    const uint16_t* bn = b + n * 1024;
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(4, an, a_stride);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
    _tile_loadd(5, an + a_half, a_stride);
    _tile_loadd(6, bn, 128);
    _tile_loadd(7, bn + 32, 128);
  }
}

// Bf16BlockFn; layouts in microkernel.h (each packed A tile is 1 KiB contiguous, 64-byte rows).
LK_AMX void amx_block(int64_t kc, const uint16_t* a, const uint16_t* b, float* acc, int64_t ldacc) {
  if (!tl_configured) configure();
  const int64_t cs = ldacc * 4;
  _tile_loadd(0, acc, cs);
  _tile_loadd(1, acc + 16, cs);
  _tile_loadd(2, acc + 16 * ldacc, cs);
  _tile_loadd(3, acc + 16 * ldacc + 16, cs);
  tile_steps(kc / 32, a, 1024, 512, 64, b);
  _tile_stored(0, acc, cs);
  _tile_stored(1, acc + 16, cs);
  _tile_stored(2, acc + 16 * ldacc, cs);
  _tile_stored(3, acc + 16 * ldacc + 16, cs);
}

// Bf16BlockWFn: W rows are the A tiles, loaded in place (row stride ldw), x's VNNI panel the B tiles;
// the C tiles hold (x·Wᵀ)ᵀ, added transposed into acc (gathers: ~1/K of the block's work).
LK_AMX void amx_block_w(int64_t kfull, const uint16_t* w, int64_t ldw, const uint16_t* wtail, const uint16_t* x,
                        float* acc, int64_t ldacc) {
  if (!tl_configured) configure();
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  tile_steps(kfull / 32, w, 32, 16 * ldw, ldw * 2, x);
  if (wtail) tile_steps(1, wtail, 0, 512, 64, x + (kfull / 2) * 64);
  alignas(64) float t[32][32];  // t[j][i]: row j of W, row i of x
  _tile_stored(0, &t[0][0], 128);
  _tile_stored(1, &t[0][16], 128);
  _tile_stored(2, &t[16][0], 128);
  _tile_stored(3, &t[16][16], 128);
  const __m512i col = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                         _mm512_set1_epi32(32));
  for (int i = 0; i < 32; i++) {
    float* row = acc + i * ldacc;
    _mm512_storeu_ps(row, _mm512_add_ps(_mm512_loadu_ps(row), _mm512_i32gather_ps(col, &t[0][i], 4)));
    _mm512_storeu_ps(row + 16, _mm512_add_ps(_mm512_loadu_ps(row + 16), _mm512_i32gather_ps(col, &t[16][i], 4)));
  }
}

// Register-resident tdpbf16ps: each is 16×16×32 multiply-adds.
LK_AMX double amx_peak(int64_t iters) {
  if (!tl_configured) configure();
  alignas(64) static const uint16_t zeros[16 * 32] = {};
  alignas(64) float c[16 * 16];
  for (int t = 0; t < 256; t++) c[t] = 0.f;
  _tile_loadd(4, zeros, 64);
  _tile_loadd(5, zeros, 64);
  _tile_loadd(6, zeros, 64);
  _tile_loadd(7, zeros, 64);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t i = 0; i < iters; i++) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c, 64);
  volatile float sink = c[0];
  (void)sink;
  return 4.0 * 2 * 16 * 16 * 32 * static_cast<double>(iters);
}

bool cpu_has_amx_bf16() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  return (d & (1u << 22)) && (d & (1u << 24));  // AMX-BF16, AMX-TILE
}

bool os_grants_amx() {
  constexpr long kReqPerm = 0x1023, kXtileData = 18;
  return syscall(SYS_arch_prctl, kReqPerm, kXtileData) == 0;
}

const KernelTable* make() {
  const KernelTable* base = avx512_table();
  if (!base || !__builtin_cpu_supports("avx512f") || !cpu_has_amx_bf16() || !os_grants_amx()) return nullptr;
  static KernelTable t = *base;
  t.name = "amx";
  t.bf16_block = amx_block;
  t.bf16_block_w = amx_block_w;
  t.amx_peak = amx_peak;
  // Every AMX CPU has AVX512-BF16: the merge rounds bf16 rows with it (microkernel_avx512bf16.cc).
  if (const KernelTable* b16 = avx512bf16_table()) t.merge_rows = b16->merge_rows;
  return &t;
}

}  // namespace

const KernelTable* amx_table() {
  static const KernelTable* t = make();
  return t;
}

}  // namespace lorakit

#else
#include "microkernel.h"
namespace lorakit {
const KernelTable* amx_table() { return nullptr; }
}  // namespace lorakit
#endif

// A scalar stand-in for the AMX tile block (same packed layouts), so that the AMX path's packing
// and blocking can be tested on CPUs without AMX: LORAKIT_CPU_PATH=amx-emulated (tests only).
namespace lorakit {
namespace {

void amx_block_emulated(int64_t kc, const uint16_t* a, const uint16_t* b, float* acc, int64_t ldacc) {
  for (int64_t i = 0; i < 32; i++)
    for (int64_t j = 0; j < 32; j++) {
      float s = 0.f;
      for (int64_t k = 0; k < kc; k++)
        s += bf16_to_f32(a[(k / 32) * 1024 + i * 32 + k % 32]) * bf16_to_f32(b[(k / 2) * 64 + j * 2 + (k & 1)]);
      acc[i * ldacc + j] += s;
    }
}

void amx_block_w_emulated(int64_t kfull, const uint16_t* w, int64_t ldw, const uint16_t* wtail, const uint16_t* x,
                          float* acc, int64_t ldacc) {
  const int64_t steps = kfull + (wtail ? 32 : 0);
  for (int64_t i = 0; i < 32; i++)
    for (int64_t j = 0; j < 32; j++) {
      float s = 0.f;
      for (int64_t k = 0; k < steps; k++) {
        const uint16_t wv = k < kfull ? w[j * ldw + k] : wtail[j * 32 + k - kfull];
        s += bf16_to_f32(wv) * bf16_to_f32(x[(k / 2) * 64 + i * 2 + (k & 1)]);
      }
      acc[i * ldacc + j] += s;
    }
}

}  // namespace

const KernelTable* amx_emulated_table() {
  static const KernelTable t = [] {
    KernelTable k = avx2_table() ? *avx2_table() : *portable_table();
    k.name = "amx-emulated";
    k.bf16_block = amx_block_emulated;
    k.bf16_block_w = amx_block_w_emulated;
    return k;
  }();
  return &t;
}

}  // namespace lorakit
