// CPU-only timing harness for the exact merge (cpu/exact_merge.cc) against today's merge
// (cpu/merge.cc merge_delta) on one W [d, d], r, ‖ΔW‖/‖W‖ ≈ 5%, for kernel iteration without Node.
// Build (repository root):
//   g++ -O3 -std=c++17 -pthread -Inative bench/harness/exact_merge.cc native/core/*.cc native/cpu/*.cc -o exact_merge
// Run: ./exact_merge <threads> <d> <r> <dtypes, e.g. f32,f16,bf16>   (REPS env: timed runs, default 15)
// Prints best/median ms of plain merge, exact merge, exact unmerge and swap (undo + merge in one
// pass), each op timed in turn with the others, and checks that every unmerge gives W back bit for bit.
// Also: STATS=1 (correction classes of the first record), DUMP=prefix (writes it, for byte
// comparisons between builds), -DLK_EXACT_PROFILE on every file (TSC cycles per phase: decode,
// kernel, encode, pass, record), `./exact_merge micro [r]` (kernels on one L1-resident 8 × 256 block)
// and `./exact_merge codec [d]` (the vector codec alone over one f16 record's segments).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>
#include "core/exact_format.h"
#include "core/thread_pool.h"
#include "cpu/microkernel.h"
#include "cpu/exact_codec.h"
#include "cpu/ops.h"

using namespace lorakit;
#ifdef LK_EXACT_PROFILE
namespace lorakit { extern uint64_t g_exact_prof[8]; }
static void prof(const char* what, int reps) {  // Mcycles (TSC) per call of each phase, then reset
  const char* names[] = {"decode", "kernel", "encode", "pass", "record"};
  std::printf("  %-8s", what);
  for (int i = 0; i < 5; i++) std::printf(" %s %.2f", names[i], g_exact_prof[i] / 1e6 / reps);
  std::printf("  Mcycles\n");
  for (auto& v : g_exact_prof) v = 0;
}
#else
static void prof(const char*, int) {}
#endif

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Buf {
  std::vector<uint8_t> bytes;
  TensorRef ref;
  Buf(DType t, std::vector<int64_t> shape) {
    ref.dtype = t;
    ref.shape = shape;
    bytes.resize(static_cast<size_t>(ref.numel()) * dtype_size(t) + 64);
    ref.data = bytes.data();
  }
};

static uint32_t rng_state = 1;
static float uniform() {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 17;
  rng_state ^= rng_state << 5;
  return static_cast<float>(rng_state / 4294967296.0 * 2 - 1);
}

static void fill(Buf& b, float scale) {
  for (int64_t i = 0; i < b.ref.numel(); i++) store_f32(b.ref.data, b.ref.dtype, i, uniform() * scale);
}

// One 8 × 256 block resident in L1, the kernels called over and over: compute cost alone.
static int micro(int64_t r) {
  const KernelTable& kt = kernel_table();
  const int64_t ld = 256;
  std::vector<float> P(8 * r), Q(256 * r + 16 * r);
  for (auto& v : P) v = uniform() * 1e-3f;
  for (auto& v : Q) v = uniform();
  for (DType t : {DType::F32, DType::F16, DType::BF16}) {
    std::vector<uint32_t> w(8 * 256), aux(8 * 256), rb(8 * 256);
    for (int64_t i = 0; i < 8 * 256; i++) store_f32(w.data(), t, i, uniform() * 0.03f);
    std::vector<int8_t> c(8 * 256, 0);
    std::vector<uint64_t> nz(32);
    const int N = 4000;
    double tp = 1e9, tm = 1e9, tu = 1e9;
    std::vector<uint32_t> auxp(8 * 256 + 1024), rbp(8 * 256 + 1024);
    const int sh = std::getenv("SH") ? std::atoi(std::getenv("SH")) : 0;
    ExactRowStep st{P.data(), Q.data(), r, nullptr, false, false, false, c.data(), auxp.data() + sh, nz.data()};
    for (int rep = 0; rep < 15; rep++) {
      double t0 = now();
      for (int it = 0; it < N; it++) kt.merge_rows(r, P.data(), 8, Q.data(), 256, w.data(), t, ld, w.data(), t, ld);
      tp = std::min(tp, (now() - t0) / N);
      st.undo = false;
      t0 = now();
      for (int it = 0; it < N; it++) kt.exact_rows(t, w.data(), ld, 8, 256, &st, 1);
      tm = std::min(tm, (now() - t0) / N);
      st.undo = true;
      t0 = now();
      for (int it = 0; it < N; it++) kt.exact_rows(t, w.data(), ld, 8, 256, &st, 1);
      tu = std::min(tu, (now() - t0) / N);
    }
    std::printf("micro %s r=%lld: ns per 8x256 block: plain %.0f  exact merge %.0f  exact undo %.0f\n", dtype_name(t), (long long)r,
                tp * 1e9, tm * 1e9, tu * 1e9);
  }
  return 0;
}

// The vector codec alone over the segments of one f16 record (W [d, d], r 16), resident in L2:
// ns per segment to decode them all, then to encode them back (checked against the record).
static int codec_bench(int64_t d) {
  Buf W(DType::F16, {d, d});
  fill(W, 0.02f * std::sqrt(3.f));
  const int64_t r = 16;
  Buf A(DType::F32, {r, d}), B(DType::F32, {d, r});
  fill(A, 1.f);
  fill(B, 1.f);
  const float scale = 0.05f * 0.02f / (std::sqrt(static_cast<float>(r)) / 3.f);
  std::vector<std::shared_ptr<Storage>> rec;
  cpu::exact_merge(W.ref, false, {}, {ExactStep{A.ref, B.ref, scale, nullptr, nullptr, nullptr, 0}}, &rec);
  const uint8_t* base = static_cast<const uint8_t*>(rec[0]->data);
  const uint32_t* off = reinterpret_cast<const uint32_t*>(base + sizeof(exact::ExactHeader));
  const uint8_t* st = base + sizeof(exact::ExactHeader) + exact::offsets_bytes(d, d);
  const int64_t S = exact::segment_count(d, d), spr = exact::segments_per_row(d);
  std::vector<int8_t> c(S * 256);
  std::vector<uint16_t> raw(S * 256);
  std::vector<uint64_t> nz(S * 4);
  std::vector<uint8_t> out(static_cast<size_t>(off[S]) + 4096);
  double td = 1e9, te = 1e9;
  for (int rep = 0; rep < 20; rep++) {
    double t0 = now();
    for (int64_t s = 0; s < S; s++) {
      const int len = static_cast<int>(std::min<int64_t>(256, d - (s % spr) * 256));
      uint64_t(&z)[4] = *reinterpret_cast<uint64_t(*)[4]>(&nz[s * 4]);
      if (!exact_decode_vbmi2(st + off[s], static_cast<int>(off[s + 1] - off[s]), len, DType::F16, &c[s * 256], &raw[s * 256], z))
        return std::printf("decode failed at %lld\n", (long long)s), 1;
    }
    double t1 = now();
    size_t at = 0;
    for (int64_t s = 0; s < S; s++) {
      const int len = static_cast<int>(std::min<int64_t>(256, d - (s % spr) * 256));
      const uint64_t(&z)[4] = *reinterpret_cast<const uint64_t(*)[4]>(&nz[s * 4]);
      at += static_cast<size_t>(exact_encode_vbmi2(&c[s * 256], &raw[s * 256], len, DType::F16, z, out.data() + at));
    }
    double t2 = now();
    if (at != off[S] || std::memcmp(out.data(), st, at) != 0) return std::printf("encode differs\n"), 1;
    td = std::min(td, t1 - t0);
    te = std::min(te, t2 - t1);
  }
  std::printf("codec f16 d=%lld: %lld segments, decode %.1f ns/segment, encode %.1f ns/segment\n", (long long)d, (long long)S,
              td / S * 1e9, te / S * 1e9);
  return 0;
}

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "codec") == 0) return codec_bench(argc > 2 ? std::atoll(argv[2]) : 1024);
  if (argc > 1 && std::strcmp(argv[1], "micro") == 0) return micro(argc > 2 ? std::atoll(argv[2]) : 16);
  const int threads = argc > 1 ? std::atoi(argv[1]) : 1;
  const int64_t d = argc > 2 ? std::atoll(argv[2]) : 4096, r = argc > 3 ? std::atoll(argv[3]) : 16;
  const std::string dts = argc > 4 ? argv[4] : "f32,f16,bf16";
  const int reps = std::getenv("REPS") ? std::atoi(std::getenv("REPS")) : 15;
  set_num_threads(threads);
  std::printf("path %s, %d threads, W [%lld, %lld], r %lld\n", kernel_table().name, num_threads(), (long long)d,
              (long long)d, (long long)r);
  for (const char* name : {"f32", "f16", "bf16"}) {
    if (dts.find(name) == std::string::npos) continue;
    const DType t = std::strcmp(name, "f32") == 0 ? DType::F32 : std::strcmp(name, "f16") == 0 ? DType::F16 : DType::BF16;
    Buf W(t, {d, d});
    fill(W, 0.02f * std::sqrt(3.f));
    std::vector<uint8_t> orig = W.bytes;
    // ‖B·A‖ ≈ sqrt(r)·σa·σb·d-ish: scale so that ‖ΔW‖/‖W‖ ≈ 5% (σ(W) = 0.02).
    Buf A1(DType::F32, {r, d}), B1(DType::F32, {d, r}), A2(DType::F32, {r, d}), B2(DType::F32, {d, r});
    for (Buf* b : {&A1, &B1, &A2, &B2}) fill(*b, 1.f);
    const float scale = 0.05f * 0.02f / (std::sqrt(static_cast<float>(r)) / 3.f);
    ExactStep s1{A1.ref, B1.ref, scale, nullptr, nullptr, nullptr, 0};
    ExactStep s2{A2.ref, B2.ref, scale, nullptr, nullptr, nullptr, 0};
    std::vector<double> tp, tm, tu, ts;
    std::vector<std::shared_ptr<Storage>> rec, rec2;
    bool exact = true;
    double bits = 0;
    for (int it = -1; it < reps; it++) {
      double t0 = now();
      cpu::merge_delta(W.ref, A1.ref, B1.ref, scale, false, W.ref);
      double t1 = now();
      if (std::getenv("DRIFT")) cpu::merge_delta(W.ref, A1.ref, B1.ref, -scale, false, W.ref);
      else std::memcpy(W.bytes.data(), orig.data(), orig.size());
      if (it < 0 && std::getenv("DRIFT")) orig = W.bytes;
      double t2 = now();
      cpu::exact_merge(W.ref, false, {}, {s1}, &rec);
      double t3 = now();
      if (it >= 0) prof("merge", 1);
      bits = rec[0]->nbytes * 8.0 / (d * d);
      if (it < 0 && std::getenv("DUMP")) {  // the fresh merge's record, for byte comparisons
        FILE* f = std::fopen((std::string(std::getenv("DUMP")) + "." + name).c_str(), "wb");
        std::fwrite(rec[0]->data, 1, rec[0]->nbytes, f);
        std::fclose(f);
      }
      if (it < 0 && std::getenv("STATS")) {  // correction classes of the fresh merge's record
        const uint8_t* base = static_cast<const uint8_t*>(rec[0]->data);
        const uint32_t* off = reinterpret_cast<const uint32_t*>(base + sizeof(exact::ExactHeader));
        const uint8_t* st = base + sizeof(exact::ExactHeader) + exact::offsets_bytes(d, d);
        const int64_t S = exact::segment_count(d, d);
        int64_t cnt[4] = {0, 0, 0, 0}, lists = 0, empty = 0;
        std::vector<int8_t> c(256);
        std::vector<uint32_t> raw(256);
        for (int64_t s = 0; s < S; s++) {
          uint64_t nz[4];
          const int len = static_cast<int>(std::min<int64_t>(256, d - (s % exact::segments_per_row(d)) * 256));
          const int bytes = static_cast<int>(off[s + 1] - off[s]);
          empty += bytes == 0;
          if (bytes && exact::uses_list(st[off[s]] + 1, len)) lists++;
          bool ok = t == DType::F32 ? exact::decode_segment(st + off[s], bytes, len, t, c.data(), raw.data(), nz)
                                    : exact::decode_segment(st + off[s], bytes, len, t, c.data(), reinterpret_cast<uint16_t*>(raw.data()), nz);
          if (!ok) std::printf("corrupt segment %lld\n", (long long)s);
          for (int j = 0; j < len; j++)
            if (nz[j >> 6] >> (j & 63) & 1) cnt[exact::class_of(c[j])]++;
        }
        std::printf("%s: corrections %.2f%% (+1 %lld, -1 %lld, small %lld, raw %lld); segments %lld, empty %lld, list %lld\n", name,
                    100.0 * (cnt[0] + cnt[1] + cnt[2] + cnt[3]) / (d * d), (long long)cnt[0], (long long)cnt[1],
                    (long long)cnt[2], (long long)cnt[3], (long long)S, (long long)empty, (long long)lists);
      }
      ExactStep u1 = s1;
      u1.record = rec[0]->data;
      u1.record_bytes = rec[0]->nbytes;
      double t4 = now();
      cpu::exact_merge(W.ref, false, {u1}, {s2}, &rec2);  // swap: a → b
      double t5 = now();
      if (it >= 0) prof("swap", 1);
      ExactStep u2 = s2;
      u2.record = rec2[0]->data;
      u2.record_bytes = rec2[0]->nbytes;
      std::vector<std::shared_ptr<Storage>> none;
      double t6 = now();
      cpu::exact_merge(W.ref, false, {u2}, {}, &none);
      double t7 = now();
      if (it >= 0) prof("unmerge", 1);
      exact = exact && std::memcmp(W.bytes.data(), orig.data(), orig.size()) == 0;
      if (it >= 0) {
        tp.push_back(t1 - t0);
        tm.push_back(t3 - t2);
        ts.push_back(t5 - t4);
        tu.push_back(t7 - t6);
      }
    }
    auto show = [&](const char* op, std::vector<double>& v, double ref) {
      std::sort(v.begin(), v.end());
      std::printf("%-5s %-14s best %7.2f ms  median %7.2f ms  %4.0f%% of plain merge (best)\n", name, op, v[0] * 1e3,
                  v[v.size() / 2] * 1e3, 100 * ref / v[0]);
    };
    std::sort(tp.begin(), tp.end());
    show("plain merge", tp, tp[0]);
    show("exact merge", tm, tp[0]);
    show("exact unmerge", tu, tp[0]);
    show("swap", ts, tp[0]);
    std::printf("%-5s %.3f bits/weight, unmerge %s\n", name, bits, exact ? "exact" : "NOT EXACT");
  }
  return 0;
}
