// Runtime dispatch: picks the best path the CPU supports once, at load time. LORAKIT_CPU_PATH
// (portable | avx2 | avx512 | avx512bf16 | amx on x86-64; portable | neon on arm64) forces a path; a
// forced path the CPU lacks falls back to the best available one below it (the chosen name is
// reported by backendInfo().cpuPath). amx-emulated runs the AMX path's packing with a scalar tile
// stand-in, to test it on x86 CPUs without AMX.
#include "microkernel.h"
#include <cstdlib>
#include <cstring>
#include <string>

namespace lorakit {
namespace {

bool has_avx2() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

bool has_avx512() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
#else
  return false;
#endif
}

int rank_of(const char* s) {
  if (!s || !*s) return 99;
  if (std::strcmp(s, "portable") == 0) return 0;
  if (std::strcmp(s, "avx2") == 0 || std::strcmp(s, "neon") == 0) return 1;  // the first vector path
  if (std::strcmp(s, "avx512") == 0) return 2;
  if (std::strcmp(s, "avx512bf16") == 0) return 3;
  if (std::strcmp(s, "amx") == 0) return 4;
  return 99;  // unknown names pick the best path
}

// The x86 kernel files are compiled only for x86-64 and microkernel_neon.cc only for arm64, so each
// architecture names only its own tables.
#if defined(__x86_64__) || defined(_M_X64)
#define LORAKIT_X86_PATHS 1
#endif

const KernelTable* choose() {
  const char* env = std::getenv("LORAKIT_CPU_PATH");
  int want = rank_of(env);
#if defined(LORAKIT_X86_PATHS)
  if (env && std::strcmp(env, "amx-emulated") == 0) return amx_emulated_table();
  // AMX refused by the OS (amx_table() null) falls to avx512bf16 on the same CPU.
  if (want >= 4 && has_avx512() && amx_table()) return amx_table();
  if (want >= 3 && has_avx512() && avx512bf16_table()) return avx512bf16_table();
  if (want >= 2 && has_avx512() && avx512_table()) return avx512_table();
  if (want >= 1 && has_avx2() && avx2_table()) return avx2_table();
#elif defined(__aarch64__)
  if (want >= 1) return neon_table();  // Advanced SIMD is part of every AArch64 CPU
#endif
  return portable_table();
}

}  // namespace

const KernelTable& kernel_table() {
  static const KernelTable* t = choose();
  return *t;
}

const char* available_paths() {
  static const std::string s = [] {
    std::string r;
#if defined(LORAKIT_X86_PATHS)
    if (has_avx512() && amx_table()) r += "amx,";
    if (has_avx512() && avx512bf16_table()) r += "avx512bf16,";
    if (has_avx512() && avx512_table()) r += "avx512,";
    if (has_avx2() && avx2_table()) r += "avx2,";
#elif defined(__aarch64__)
    r += "neon,";
#endif
    return r + "portable";
  }();
  return s.c_str();
}

}  // namespace lorakit
