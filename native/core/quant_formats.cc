// bnb's signed dynamic map (core/quant_formats.h), built as bitsandbytes' create_dynamic_map builds
// it, in f32 (torch.linspace(0.1, 1, k) in f32 is start + i·step, step = (end − start)/(k − 1)).
#include "quant_formats.h"
#include <algorithm>
#include <cmath>
#include <vector>

namespace lorakit {

void quant_dynamic_map(float out[256]) {
  std::vector<float> data;
  constexpr int kMaxExponentBits = 7, kNonSignBits = 7;
  for (int i = 0; i < kMaxExponentBits; i++) {
    const int items = (1 << (i + kNonSignBits - kMaxExponentBits)) + 1;
    std::vector<float> bounds(items);
    const float step = (1.0f - 0.1f) / static_cast<float>(items - 1);
    for (int k = 0; k < items; k++) {
      // volatile: the product is rounded on its own on every target (no fused multiply-add on arm64),
      // so the map, and the double-quant bytes it makes, are the same everywhere.
      volatile float t = step * static_cast<float>(k);
      bounds[k] = k == items - 1 ? 1.0f : 0.1f + t;
    }
    const float p = static_cast<float>(std::pow(10.0, -(kMaxExponentBits - 1) + i));
    for (int k = 0; k + 1 < items; k++) {
      const float mean = (bounds[k] + bounds[k + 1]) / 2.0f;
      data.push_back(p * mean);
      data.push_back(-p * mean);
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  std::sort(data.begin(), data.end());
  for (int k = 0; k < 256; k++) out[k] = data[k];
}

}  // namespace lorakit
