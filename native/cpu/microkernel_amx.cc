// The AMX path (Intel Sapphire Rapids and later): bf16×bf16 GEMM segments run on AMX tiles
// (tdpbf16ps, f32 accumulation); everything else uses the AVX-512 kernels. Linux requires each
// process to ask for the tile state (arch_prctl ARCH_REQ_XCOMP_PERM) before the first tile use.
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
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

// tmm0..3: C (2x2 blocks of 16x16 f32); tmm4, 5: A rows 0-15, 16-31; tmm6, 7: B columns 0-15, 16-31.
LK_AMX void amx_block(int64_t kc, const uint16_t* a, int64_t lda, const uint16_t* b, float* acc, int64_t ldacc) {
  if (!tl_configured) configure();
  const int64_t cs = ldacc * 4;
  _tile_loadd(0, acc, cs);
  _tile_loadd(1, acc + 16, cs);
  _tile_loadd(2, acc + 16 * ldacc, cs);
  _tile_loadd(3, acc + 16 * ldacc + 16, cs);
  const int64_t as = lda * 2;  // bytes per packed A row
  for (int64_t k = 0; k < kc; k += 32) {
    _tile_loadd(4, a + k, as);
    _tile_loadd(5, a + 16 * lda + k, as);
    const uint16_t* bk = b + (k / 2) * 64;
    _tile_loadd(6, bk, 128);
    _tile_loadd(7, bk + 32, 128);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, acc, cs);
  _tile_stored(1, acc + 16, cs);
  _tile_stored(2, acc + 16 * ldacc, cs);
  _tile_stored(3, acc + 16 * ldacc + 16, cs);
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
  t.amx_block = amx_block;
  t.amx_peak = amx_peak;
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

void amx_block_emulated(int64_t kc, const uint16_t* a, int64_t lda, const uint16_t* b, float* acc, int64_t ldacc) {
  for (int64_t i = 0; i < 32; i++)
    for (int64_t j = 0; j < 32; j++) {
      float s = 0.f;
      for (int64_t k = 0; k < kc; k++) s += bf16_to_f32(a[i * lda + k]) * bf16_to_f32(b[(k / 2) * 64 + j * 2 + (k & 1)]);
      acc[i * ldacc + j] += s;
    }
}

}  // namespace

const KernelTable* amx_emulated_table() {
  static const KernelTable t = [] {
    KernelTable k = avx2_table() ? *avx2_table() : *portable_table();
    k.name = "amx-emulated";
    k.amx_block = amx_block_emulated;
    return k;
  }();
  return &t;
}

}  // namespace lorakit
