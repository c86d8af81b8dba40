#include "caches.h"
#include <unistd.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace lorakit {
namespace {

std::string read_line(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "r");
  if (!f) return "";
  char buf[64] = {};
  const bool ok = std::fgets(buf, sizeof buf, f) != nullptr;
  std::fclose(f);
  if (!ok) return "";
  std::string s(buf);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// sysfs sizes read "48K", "1024K", "32M" (or plain bytes).
int64_t parse_size(const std::string& s) {
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (v <= 0 || end == s.c_str()) return 0;
  const char u = *end;
  return v * (u == 'K' || u == 'k' ? 1024LL : u == 'M' || u == 'm' ? 1LL << 20 : u == 'G' || u == 'g' ? 1LL << 30 : 1LL);
}

// Largest data/unified cache at each level 1-3 listed for cpu0.
bool from_sysfs(CacheSizes& c) {
  bool any = false;
  for (int i = 0; i < 16; i++) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    const std::string level = read_line(dir + "level");
    if (level.empty()) continue;
    if (read_line(dir + "type") == "Instruction") continue;
    const int64_t bytes = parse_size(read_line(dir + "size"));
    int64_t* slot = level == "1" ? &c.l1d : level == "2" ? &c.l2 : level == "3" ? &c.l3 : nullptr;
    if (slot && bytes > *slot) *slot = bytes, any = true;
  }
  return any;
}

int64_t sysconf_bytes(int name) {
  const long v = ::sysconf(name);
  return v > 0 ? static_cast<int64_t>(v) : 0;
}

CacheSizes detect() {
  CacheSizes c;
  const bool sysfs = from_sysfs(c);
  bool conf = false;
#if defined(_SC_LEVEL1_DCACHE_SIZE)
  auto fill = [&](int64_t& slot, int name) {
    if (slot == 0 && (slot = sysconf_bytes(name)) != 0) conf = true;
  };
  fill(c.l1d, _SC_LEVEL1_DCACHE_SIZE);
  fill(c.l2, _SC_LEVEL2_CACHE_SIZE);
  fill(c.l3, _SC_LEVEL3_CACHE_SIZE);
#endif
  auto guess = [](int64_t& slot, int64_t bytes) {
    if (slot == 0) slot = bytes;
  };
  guess(c.l1d, 32 << 10);
  guess(c.l2, 1 << 20);
  guess(c.l3, 32 << 20);
  c.source = sysfs ? "sysfs" : conf ? "sysconf" : "default";
  return c;
}

}  // namespace

const CacheSizes& cache_sizes() {
  static const CacheSizes c = detect();
  return c;
}

}  // namespace lorakit
