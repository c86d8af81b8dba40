// Bindings for the benchmark: the machine's measured ceilings.
#include "bench_binding.h"
#include <cmath>
#include "../cpu/peak.h"
#include "args.h"

namespace lorakit {
namespace napi {
namespace {

// measurePeaks(bufferBytes): { fmaGflops, amxGflops, bf16DotGflops, copyGBs, readGBs, threads }
Napi::Value MeasurePeaks(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    double bytes = get_number(info, 0, "bufferBytes");
    if (!(bytes >= (1 << 20) && bytes <= 16.0 * (1ll << 30)) || bytes != std::floor(bytes))
      throw_range("bufferBytes: expected an integer in [1 MiB, 16 GiB], got " + std::to_string(bytes));
    Peaks p = measure_peaks(static_cast<int64_t>(bytes));
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("fmaGflops", p.fma_gflops);
    o.Set("amxGflops", p.amx_gflops);
    o.Set("bf16DotGflops", p.bf16_dot_gflops);
    o.Set("copyGBs", p.copy_gbs);
    o.Set("readGBs", p.read_gbs);
    o.Set("threads", p.threads);
    return o;
  });
}

}  // namespace

void InitBench(Napi::Env env, Napi::Object exports) {
  exports.Set("measurePeaks", Napi::Function::New<MeasurePeaks>(env, "measurePeaks"));
}

}  // namespace napi
}  // namespace lorakit
