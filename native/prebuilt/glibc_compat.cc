// Compiled into the prebuilt binaries only (LORAKIT_PREBUILT, CMakeLists.txt; binding.gyp
// never lists this folder). GCC 12's
// static libstdc++ names glibc 2.36's arc4random (in std::random_device, which lorakit does not use:
// the object comes in with std::runtime_error's old-ABI strings). This definition satisfies that
// reference, so that the binaries need no glibc newer than 2.34 (scripts/prebuild.js checks).
#include <cstdint>  // first: it brings glibc's <features.h>, which defines __GLIBC__
#if defined(__linux__) && defined(__GLIBC__)
#include <sys/random.h>

extern "C" uint32_t arc4random(void) {
  uint32_t v;
  if (getrandom(&v, sizeof v, 0) == static_cast<ssize_t>(sizeof v)) return v;  // getrandom: glibc 2.25
  __builtin_trap();
}
#endif
