// Lane helpers shared by the AVX2 kernel files (exact_lanes_avx2.cpp, int16_search_avx2.cpp,
// sums_avx2.cpp, small_scan_avx2.cpp, leaf_search_avx2.cpp).
//
// Include it after the file's `#pragma GCC target("avx2,...")`, as the kernels themselves are:
// these are AVX2 code, always inlined and of internal linkage (an anonymous namespace), so no
// out-of-line copy of them can be shared (COMDAT) with code for CPUs without AVX2.
#pragma once
#if !defined(__x86_64__)
#error "lanes_avx2.h is AVX2 code: include it only inside a file's x86-64 section"
#endif
#include <immintrin.h>

#include <cstdint>

namespace sgcvq {
namespace cpu {
namespace {

// 0, 1, ..., 7: each lane's own index (code or feature offsets within a vector).
__attribute__((always_inline)) inline __m256i lane_index() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }

// Lanes l < n set, n any value (<= 0: none, >= 8: all): the mask of a row's last, partial vector.
__attribute__((always_inline)) inline __m256i lanes_below(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(n < 0 ? 0 : n > 8 ? 8 : n)), lane_index());
}

// The smallest of 8 lanes (with a NaN lane the result depends on its position: callers keep NaN
// out of the vectors they reduce).
__attribute__((always_inline)) inline float hmin(__m256 v) {
  const __m128 h = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 q = _mm_min_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_min_ss(q, _mm_shuffle_ps(q, q, 1)));
}

// Top2::push's rule (candidates.h), here so that no inline function of a shared header is called
// from AVX2 code (a COMDAT copy compiled with AVX2 could be the one the linker keeps for every
// caller). A template so that this header needs no Top2; internal linkage like the rest.
template <typename Top2T>
__attribute__((always_inline)) inline void keep(Top2T& o, float v, int64_t i) {
  if (v < o.v1) {
    o.v2 = o.v1;
    o.i2 = o.i1;
    o.v1 = v;
    o.i1 = i;
  } else if (v < o.v2) {
    o.v2 = v;
    o.i2 = i;
  }
}

}  // namespace
}  // namespace cpu
}  // namespace sgcvq
