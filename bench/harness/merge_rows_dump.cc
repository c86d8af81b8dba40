// The fused merge's outputs (MergeRowsFn) on fixed pseudo-random inputs, written to stdout: for
// comparing two builds of a path bit for bit, e.g. the NEON kernel before and after a change,
// cross-compiled and run under qemu (no arm64 machine needed):
//   for f in native/cpu/*.cc native/core/*.cc (minus cpu/backend.cc):
//     aarch64-linux-gnu-g++ -std=c++17 -O1 -Inative -c $f   (microkernel_neon.cc at -O3, old and new)
//   aarch64-linux-gnu-g++ -static -pthread merge_rows_dump.o microkernel_neon.o <the rest> -o dump
//   QEMU_LD_PREFIX=/usr/aarch64-linux-gnu qemu-aarch64 ./dump > out.bin; cmp old.bin new.bin
#include <cstdio>
#include <cstdint>
#include <vector>
#include "core/dtype.h"
#include "cpu/microkernel.h"
using namespace lorakit;
static uint32_t s = 12345;
static float rnd() { s = s * 1664525u + 1013904223u; return (static_cast<int32_t>(s >> 8) - (1 << 23)) / float(1 << 23); }
int main() {
  const KernelTable* kt = neon_table();  // change for an x86 table (avx2_table(), …)
  const int64_t shapes[][3] = {{1, 1, 1}, {7, 33, 3}, {13, 47, 16}, {37, 301, 5}, {64, 256, 64}, {9, 17, 2}, {6, 15, 8}, {23, 130, 32}};
  const DType dts[] = {DType::F32, DType::BF16, DType::F16};
  for (auto& sh : shapes)
    for (DType dt : dts) {
      const int64_t rows = sh[0], n = sh[1], r = sh[2], es = dtype_size(dt), npad = (n + 15) / 16 * 16;
      std::vector<float> P(rows * r), Q(npad * r, 0.f);
      for (auto& v : P) v = rnd() * 0.5f;
      for (int64_t j = 0; j < n; j++)  // panel j/16, row q, lane j%16; padding stays zero
        for (int64_t q = 0; q < r; q++) Q[(j / 16) * 16 * r + q * 16 + j % 16] = rnd() * 0.5f;
      std::vector<uint8_t> W(rows * n * es), O(rows * n * es);
      for (int64_t i = 0; i < rows * n; i++) store_f32(W.data(), dt, i, rnd());
      kt->merge_rows(r, P.data(), rows, Q.data(), n, W.data(), dt, n, O.data(), dt, n);
      fwrite(O.data(), 1, O.size(), stdout);
    }
  return 0;
}
