// 8-element vector loads and stores widened to f32: one 16-byte access for 16-bit types, two
// for f32. Callers guarantee alignment (cudaMalloc'd bases, offsets that are multiples of 8).
// load8 reads global memory through the read-only path (__ldg); load8_shared reads shared memory
// (__ldg on a shared address is an invalid-address-space fault).
#pragma once
#include "common.cuh"

namespace lorakit {
namespace cuda {

__device__ __forceinline__ void load8(const float* p, float (&v)[8]) {
  float4 a = __ldg(reinterpret_cast<const float4*>(p));
  float4 b = __ldg(reinterpret_cast<const float4*>(p) + 1);
  v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}
__device__ __forceinline__ void store8(float* p, const float (&v)[8]) {
  reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

template <class H2>
__device__ __forceinline__ float2 h2_to_float2(H2 h);
template <> __device__ __forceinline__ float2 h2_to_float2<__nv_bfloat162>(__nv_bfloat162 h) { return __bfloat1622float2(h); }
template <> __device__ __forceinline__ float2 h2_to_float2<__half2>(__half2 h) { return __half22float2(h); }

template <class T> struct Pair;
template <> struct Pair<__nv_bfloat16> {
  using type = __nv_bfloat162;
  static __device__ __forceinline__ type make(float a, float b) { return __floats2bfloat162_rn(a, b); }
};
template <> struct Pair<__half> {
  using type = __half2;
  static __device__ __forceinline__ type make(float a, float b) { return __floats2half2_rn(a, b); }
};

template <class T>
__device__ __forceinline__ void load8(const T* p, float (&v)[8]) {
  using P2 = typename Pair<T>::type;
  uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
  const P2* h = reinterpret_cast<const P2*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float2 f = h2_to_float2<P2>(h[i]);
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}

template <class T>
__device__ __forceinline__ void store8(T* p, const float (&v)[8]) {
  using P2 = typename Pair<T>::type;
  uint4 raw;
  P2* h = reinterpret_cast<P2*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; i++) h[i] = Pair<T>::make(v[2 * i], v[2 * i + 1]);
  *reinterpret_cast<uint4*>(p) = raw;
}

__device__ __forceinline__ void load8_shared(const float* p, float (&v)[8]) {
  float4 a = reinterpret_cast<const float4*>(p)[0];
  float4 b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}

template <class T>
__device__ __forceinline__ void load8_shared(const T* p, float (&v)[8]) {
  using P2 = typename Pair<T>::type;
  uint4 raw = *reinterpret_cast<const uint4*>(p);
  const P2* h = reinterpret_cast<const P2*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float2 f = h2_to_float2<P2>(h[i]);
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}

}  // namespace cuda
}  // namespace lorakit
