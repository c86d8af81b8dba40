// Fuzzes the vector exact-merge codec (native/cpu/exact_codec_avx512.cc) against core/exact_format.h's
// scalar one: identical bytes from encode, identical corrections from decode, and the same verdict
// on corrupted streams. Built and run by scripts/check-exact-codec.sh.
#include <cstdio>
#include <random>
#include <vector>
#include <cstring>
#include "cpu/exact_codec.h"
#include "core/exact_format.h"
using namespace lorakit;
template <class U> int run(DType t, std::mt19937& g, double dens, int len) {
  int8_t c[256]; U orig[256]; uint64_t nz[4] = {0,0,0,0};
  std::uniform_real_distribution<double> u(0,1);
  for (int j = 0; j < 256; j++) { c[j] = (int8_t)g(); orig[j] = (U)g(); }
  for (int j = 0; j < len; j++) if (u(g) < dens) {
    double r = u(g); int8_t v = r < 0.45 ? 1 : r < 0.9 ? -1 : r < 0.95 ? exact::kRaw : (int8_t)((g()%8+2) * (g()%2?1:-1));
    c[j] = v; nz[j>>6] |= 1ull << (j&63); }
  uint8_t a[exact::kMaxSegmentBytes + 64], b[exact::kMaxSegmentBytes + 64];
  int na = exact::encode_segment_masked(c, orig, len, t, nz, a);
  int nb = exact_encode_vbmi2(c, orig, len, t, nz, b);
  if (na != nb || memcmp(a, b, na)) { printf("encode mismatch %d %d dens %f len %d\n", na, nb, dens, len); return 1; }
  // decode both
  int8_t c1[256], c2[256]; U r1[256], r2[256]; uint64_t z1[4], z2[4];
  memset(c1, 0, 256); memset(c2, 0x55, 256); memset(r1,0,sizeof r1); memset(r2,0,sizeof r2);
  bool o1 = exact::decode_segment(a, na, len, t, c1, r1, z1);
  bool o2 = exact_decode_vbmi2(a, na, len, t, c2, r2, z2);
  if (!o1 || !o2 || memcmp(z1, z2, 32)) { printf("decode fail %d %d\n", o1, o2); return 1; }
  for (int j = 0; j < len; j++) { bool f = (z1[j>>6]>>(j&63))&1; if (f && (c1[j]!=c2[j] || (c1[j]==exact::kRaw && r1[j]!=r2[j]))) { printf("decode val mismatch j=%d %d %d\n", j, c1[j], c2[j]); return 1;}  }
  // corrupt: random byte flips must agree on validity
  for (int it = 0; it < 4 && na > 0; it++) {
    uint8_t d[exact::kMaxSegmentBytes + 64]; memcpy(d, a, na); d[g()%na] ^= (uint8_t)(1u << (g()%8));
    int nd = na - (g()%3==0 ? 1 : 0);
    bool p1 = exact::decode_segment(d, nd, len, t, c1, r1, z1);
    bool p2 = exact_decode_vbmi2(d, nd, len, t, c2, r2, z2);
    if (p1 != p2) { printf("corrupt validity differs %d %d\n", p1, p2); return 1; }
  }
  return 0;
}
int main() {
  std::mt19937 g(1); int bad = 0;
  for (int it = 0; it < 200000 && !bad; it++) {
    double dens = std::vector<double>{0, 0.002, 0.02, 0.05, 0.1, 0.3, 0.7, 1.0}[it % 8];
    int len = it % 5 == 0 ? 1 + g() % 256 : 256;
    bad |= (it % 3 == 0) ? run<uint32_t>(DType::F32, g, dens, len) : run<uint16_t>(it%3==1 ? DType::F16 : DType::BF16, g, dens, len);
  }
  printf(bad ? "FAIL\n" : "ok\n");

  return bad;
}
