// Quantized bases on cuda (core/quant_formats.h): quantize and dequantize. quantize writes the
// same bytes as the cpu backend for the same w: every float operation is an explicit __f*_rn
// intrinsic in the cpu's order (nvcc contracts a·b + c into an FMA otherwise), absmax reductions
// are maxima (order-free), and the double-quant mean is summed on the host in f64 in index order.
//   int8:     absmax per row; s = absmax / 127; q = roundf((x · 127) / absmax) (0 when absmax = 0)
//   nf4/fp4:  absmax per block; q = tree(x · (1 / absmax)) (bnb's dQuantizeNF4 / dQuantizeFP4)
//   double quant: offset = (f32)(Σ_f64 absmax / nblocks); v = absmax − offset; absmax2 = max|v| per
//             256; t = v · (1 / absmax2); q = the first map entry >= t or its predecessor,
//             whichever |map[i] − t| (f32) is smaller, ties to the lower (absmax2 = 0: the index of 0.0)
//   q8_0, q4_0: ggml's quantize_row_*_ref (as native/cpu/ggml_blocks.cc)
//   q4_k, q6_k: the cpu backend's quantizer (host copy of w): its one-pass searches are not worth
//             a second, bit-exact device implementation. cuda code includes no native/cpu header,
//             so it reaches that quantizer through core/backend.h's find_backend(Device::CPU).
#include <cmath>
#include <mutex>
#include <vector>
#include "../core/backend.h"
#include "common.cuh"
#include "device_buffer.h"
#include "ops.h"
#include "quant_codec.cuh"
#include "runtime.h"
#include "vec.cuh"

namespace lorakit {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// One block per row: s = absmax / 127, q = roundf((x · 127) / absmax).
template <class T>
__global__ void quant_int8_kernel(const T* __restrict__ w, int64_t cols, float* __restrict__ scale, int8_t* __restrict__ q) {
  __shared__ float red[kThreads / 32];
  const int64_t row = blockIdx.x;
  const T* x = w + row * cols;
  float m = 0.f;
  for (int64_t k = threadIdx.x; k < cols; k += kThreads) m = fmaxf(m, fabsf(to_f32<T>(x[k])));
  for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = m;
  __syncthreads();
  float absmax = 0.f;
  for (int i = 0; i < kThreads / 32; i++) absmax = fmaxf(absmax, red[i]);
  if (threadIdx.x == 0) scale[row] = __fdiv_rn(absmax, 127.0f);
  for (int64_t k = threadIdx.x; k < cols; k += kThreads) {
    const float v = absmax > 0.f ? roundf(__fdiv_rn(__fmul_rn(to_f32<T>(x[k]), 127.0f), absmax)) : 0.f;
    q[row * cols + k] = static_cast<int8_t>(fminf(127.f, fmaxf(-127.f, v)));
  }
}

// One thread per block of `block` values along a row: absmax, then two codes per byte (first high).
template <class T, bool kNF4>
__global__ void quant_4bit_kernel(const T* __restrict__ w, int64_t nblocks, int block, float* __restrict__ absmax_out,
                                  uint8_t* __restrict__ packed) {
  for (int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; b < nblocks; b += int64_t(gridDim.x) * blockDim.x) {
    const T* x = w + b * block;
    float a = 0.f;
    for (int i = 0; i < block; i++) a = fmaxf(a, fabsf(to_f32<T>(x[i])));
    absmax_out[b] = a;
    const float inv = __fdiv_rn(1.0f, a);
    uint8_t* out = packed + b * (block / 2);
    for (int i = 0; i < block; i += 2) {
      const float v0 = __fmul_rn(to_f32<T>(x[i]), inv), v1 = __fmul_rn(to_f32<T>(x[i + 1]), inv);
      // core/quant_formats.h's trees (host and device): NaN (an all-zero block) takes the same branch as on the cpu.
      const uint8_t q0 = kNF4 ? quantize_nf4_value(v0) : quantize_fp4_value(v0);
      const uint8_t q1 = kNF4 ? quantize_nf4_value(v1) : quantize_fp4_value(v1);
      out[i / 2] = static_cast<uint8_t>((q0 << 4) | q1);
    }
  }
}

// Double quant: one block per 256 absmax values (one per thread): absmax2, then the nearest map entry.
__global__ void double_quant_kernel(const float* __restrict__ absmax, int64_t nblocks, float offset, const float* __restrict__ map,
                                    int zero_index, float* __restrict__ scale2, uint8_t* __restrict__ qscale) {
  __shared__ float red[kThreads / 32];
  __shared__ float smap[256];
  smap[threadIdx.x] = map[threadIdx.x];
  const int64_t i = int64_t(blockIdx.x) * kDoubleQuantBlock + threadIdx.x;
  const float v = i < nblocks ? __fsub_rn(absmax[i], offset) : 0.f;
  float m = fabsf(v);
  for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = m;
  __syncthreads();
  float a2 = 0.f;
  for (int k = 0; k < kThreads / 32; k++) a2 = fmaxf(a2, red[k]);
  if (threadIdx.x == 0) scale2[blockIdx.x] = a2;
  if (i >= nblocks) return;
  int best = zero_index;
  if (a2 > 0.f) {  // the first entry >= t (a binary search), then the closer of it and its predecessor
    const float t = __fmul_rn(v, __fdiv_rn(1.0f, a2));
    int lo = 0, hi = 256;
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (smap[mid] < t) lo = mid + 1;
      else hi = mid;
    }
    if (hi == 0) best = 0;
    else if (hi == 256) best = 255;
    else best = fabsf(__fsub_rn(smap[hi - 1], t)) <= fabsf(__fsub_rn(smap[hi], t)) ? hi - 1 : hi;
  }
  qscale[i] = static_cast<uint8_t>(best);
}

// ggml's quantize_row_q8_0_ref / quantize_row_q4_0_ref, one thread per 32-value block.
template <class T>
__global__ void quant_q8_0_kernel(const T* __restrict__ w, int64_t nb, uint8_t* __restrict__ out) {
  for (int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; b < nb; b += int64_t(gridDim.x) * blockDim.x) {
    const T* x = w + b * kQK;
    float amax = 0.f;
    for (int j = 0; j < kQK; j++) {
      const float v = fabsf(to_f32<T>(x[j]));
      amax = amax > v ? amax : v;
    }
    const float d = __fdiv_rn(amax, 127.0f);
    const float id = d != 0.f ? __fdiv_rn(1.0f, d) : 0.f;
    uint8_t* p = out + b * sizeof(BlockQ8_0);
    *reinterpret_cast<__half*>(p) = __float2half_rn(d);
    for (int j = 0; j < kQK; j++) p[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(roundf(__fmul_rn(to_f32<T>(x[j]), id))));
  }
}

template <class T>
__global__ void quant_q4_0_kernel(const T* __restrict__ w, int64_t nb, uint8_t* __restrict__ out) {
  for (int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; b < nb; b += int64_t(gridDim.x) * blockDim.x) {
    const T* x = w + b * kQK;
    float amax = 0.f, max = 0.f;
    for (int j = 0; j < kQK; j++) {
      const float v = to_f32<T>(x[j]);
      if (amax < fabsf(v)) {
        amax = fabsf(v);
        max = v;
      }
    }
    const float d = __fdiv_rn(max, -8.0f);
    const float id = d != 0.f ? __fdiv_rn(1.0f, d) : 0.f;
    uint8_t* p = out + b * sizeof(BlockQ4_0);
    *reinterpret_cast<__half*>(p) = __float2half_rn(d);
    for (int j = 0; j < kQK / 2; j++) {
      const float x0 = __fmul_rn(to_f32<T>(x[j]), id), x1 = __fmul_rn(to_f32<T>(x[kQK / 2 + j]), id);
      const int q0 = min(15, int(static_cast<int8_t>(int(__fadd_rn(x0, 8.5f)))));
      const int q1 = min(15, int(static_cast<int8_t>(int(__fadd_rn(x1, 8.5f)))));
      p[2 + j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

// deq(W)[r0 + i, c0 + k] for i < nr, k < nc into out (row stride ldo); G = 8 values per thread
// (cols, c0, nc multiples of 8) or 1 (int8 with any cols).
template <class T, int G>
__global__ void dequant_kernel(QuantDev q, int64_t r0, int64_t nr, int64_t c0, int64_t nc, T* __restrict__ out, int64_t ldo) {
  __shared__ float code[16];
  if (threadIdx.x < 16) code[threadIdx.x] = kQuantCode4[q.fmt == QuantFormat::FP4 ? 1 : 0][threadIdx.x];
  __syncthreads();
  const int64_t per_row = nc / G, total = nr * per_row;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = t / per_row, k = (t % per_row) * G;
    T* o = out + i * ldo + k;
    if constexpr (G == 8) {
      float w[8];
      quant_deq8(q, code, r0 + i, c0 + k, w);
      if (reinterpret_cast<uintptr_t>(o) % 16 == 0) {
        store8(o, w);
      } else {
#pragma unroll
        for (int e = 0; e < 8; e++) o[e] = from_f32<T>(w[e]);
      }
    } else {
      o[0] = from_f32<T>(quant_deq1_int8(q, r0 + i, c0 + k));
    }
  }
}

}  // namespace

const float* quant_dyn_map_device() {
  static std::once_flag once;
  static float* map = nullptr;  // leaked: lives as long as the process
  std::call_once(once, [] {
    float host[256];
    quant_dynamic_map(host);
    LK_CUDA(cudaMalloc(&map, sizeof(host)), "dynamic map");
    LK_CUDA(cudaMemcpy(map, host, sizeof(host), cudaMemcpyHostToDevice), "dynamic map");
  });
  return map;
}

void quant_dequantize_rows(const QuantDev& q, int64_t r0, int64_t nr, int64_t c0, int64_t nc, void* out, DType dt,
                           int64_t ldo) {
  if (nr <= 0 || nc <= 0) return;
  const bool by8 = q.cols % 8 == 0 && c0 % 8 == 0 && nc % 8 == 0;
  if (!by8 && q.fmt != QuantFormat::INT8) throw_range("quantized weight: a column range that is not a multiple of 8");
  dispatch_float(dt, "out", [&](auto z) {
    using T = decltype(z);
    const int64_t work = nr * (by8 ? nc / 8 : nc);
    if (by8) dequant_kernel<T, 8><<<blocks_for(work, kThreads), kThreads, 0, stream()>>>(q, r0, nr, c0, nc, static_cast<T*>(out), ldo);
    else dequant_kernel<T, 1><<<blocks_for(work, kThreads), kThreads, 0, stream()>>>(q, r0, nr, c0, nc, static_cast<T*>(out), ldo);
  });
  LK_LAUNCHED("dequantize");
}

void quantize(const TensorRef& w, const QuantSpec& spec, uint8_t* out) {
  const QuantLayout L = quant_layout(spec);
  LK_CUDA(cudaMemsetAsync(out, 0, L.nbytes, stream()), "memset");  // the gaps between sections are zero, as on the cpu
  const int64_t n = spec.rows * spec.cols;
  if (spec.format == QuantFormat::Q4_K || spec.format == QuantFormat::Q6_K) {
    const Backend* cpu = find_backend(Device::CPU);
    if (!cpu || !cpu->ggml_quantize) throw_state("quantize: the cpu backend's ggml quantizer is missing");
    std::vector<Buf> hold;
    const float* wf = as_f32(w, hold);
    std::vector<float> host(static_cast<size_t>(n));
    std::vector<uint8_t> bytes(L.data_bytes);
    copy_to_host(host.data(), wf, host.size() * sizeof(float));
    cpu->ggml_quantize(quant_ggml_type(spec.format), host.data(), bytes.data(), n);
    copy_to_device(out + L.data_off, bytes.data(), bytes.size());
    return;
  }
  dispatch_float(w.dtype, "w", [&](auto z) {
    using T = decltype(z);
    const T* x = w.as<T>();
    switch (spec.format) {
      case QuantFormat::INT8:
        quant_int8_kernel<T><<<unsigned(spec.rows), kThreads, 0, stream()>>>(x, spec.cols, reinterpret_cast<float*>(out + L.scale_off),
                                                                             reinterpret_cast<int8_t*>(out + L.data_off));
        break;
      case QuantFormat::Q8_0: quant_q8_0_kernel<T><<<blocks_for(L.nblocks, 128), 128, 0, stream()>>>(x, L.nblocks, out); break;
      case QuantFormat::Q4_0: quant_q4_0_kernel<T><<<blocks_for(L.nblocks, 128), 128, 0, stream()>>>(x, L.nblocks, out); break;
      default: {  // nf4 / fp4
        Buf dq_absmax(spec.double_quant ? size_t(L.nblocks) * 4 : 0);
        float* absmax = spec.double_quant ? dq_absmax.f() : reinterpret_cast<float*>(out + L.scale_off);
        if (spec.format == QuantFormat::NF4)
          quant_4bit_kernel<T, true><<<blocks_for(L.nblocks, 128), 128, 0, stream()>>>(x, L.nblocks, spec.block, absmax, out + L.data_off);
        else
          quant_4bit_kernel<T, false><<<blocks_for(L.nblocks, 128), 128, 0, stream()>>>(x, L.nblocks, spec.block, absmax, out + L.data_off);
        LK_LAUNCHED("quantize");
        if (!spec.double_quant) break;
        std::vector<float> host(static_cast<size_t>(L.nblocks));
        copy_to_host(host.data(), absmax, host.size() * sizeof(float));
        double sum = 0.0;
        for (float a : host) sum += a;
        const float offset = static_cast<float>(sum / static_cast<double>(L.nblocks));
        float map[256];
        quant_dynamic_map(map);
        int zero_index = 0;
        while (zero_index < 255 && map[zero_index] != 0.0f) zero_index++;
        copy_to_device(out + L.offset_off, &offset, sizeof(offset));
        double_quant_kernel<<<unsigned(L.nblocks2), kThreads, 0, stream()>>>(absmax, L.nblocks, offset, quant_dyn_map_device(), zero_index,
                                                                              reinterpret_cast<float*>(out + L.scale2_off), out + L.qscale_off);
        break;
      }
    }
  });
  LK_LAUNCHED("quantize");
}

void dequantize(const QuantWeight& W, const TensorRef& out) {
  const QuantDev q = quant_dev(W.spec, W.data);
  quant_dequantize_rows(q, 0, W.spec.rows, 0, W.spec.cols, out.data, out.dtype, W.spec.cols);
}

}  // namespace cuda
}  // namespace lorakit
