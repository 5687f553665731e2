// Device-side loads of float32 / bfloat16 / float16 elements as float32 (explicit conversions:
// torch builds .cu files with __CUDA_NO_HALF_CONVERSIONS__ and friends, so nothing is implicit).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace sgcvq::gpu {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T zero_value();
template <>
__device__ __forceinline__ float zero_value<float>() { return 0.f; }
template <>
__device__ __forceinline__ __nv_bfloat16 zero_value<__nv_bfloat16>() { return __float2bfloat16(0.f); }
template <>
__device__ __forceinline__ __half zero_value<__half>() { return __float2half(0.f); }

// Four consecutive elements as a float4; p must be aligned to 4 elements.
__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 load4(const __nv_bfloat16* p) {
  const uint2 raw = *reinterpret_cast<const uint2*>(p);
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
  const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
  return make_float4(a.x, a.y, b.x, b.y);
}
__device__ __forceinline__ float4 load4(const __half* p) {
  const uint2 raw = *reinterpret_cast<const uint2*>(p);
  const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&raw.x));
  const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&raw.y));
  return make_float4(a.x, a.y, b.x, b.y);
}

// NOTE: the definition of "the fp32 distance" on the GPU: t = a - b, s = fma(t, t, s) in the order
// d = 0..D-1. The tile search re-scores its candidates and its fallback scan with this one
// function, so every path of the CUDA backend ranks codes by the same numbers.
template <typename T>
__device__ __forceinline__ float direct_sqdist(const T* __restrict__ a, const T* __restrict__ b, int D) {
  float s = 0.f;
  for (int d = 0; d < D; ++d) {
    const float t = to_float(a[d]) - to_float(b[d]);
    s = fmaf(t, t, s);
  }
  return s;
}

}  // namespace sgcvq::gpu
