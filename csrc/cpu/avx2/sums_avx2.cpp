// The portable sums with AVX2 registers (see sums_avx2.h). The portable loops keep acc[16] on the
// stack and reach them through a function-multiversioning call: ~15 ns a distance at D = 8, a
// third of the grouped search's time once the scan is fast.
#include "sums_avx2.h"

#if defined(__x86_64__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#pragma GCC optimize("fp-contract=off")
#include "lanes_avx2.h"

namespace sgcvq {
namespace cpu {
namespace {

// acc[l] + acc[l + 8], then + 4, + 2, + 1: reduce_lanes's tree, in its association.
inline float tree(__m256 lo, __m256 hi) {
  const __m256 s8 = _mm256_add_ps(lo, hi);
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

// Lanes past D hold t = 0: acc + 0 * 0 == acc for every acc >= +0 and NaN (no partial sum is -0).
// 8 lanes from p, lanes at or past n zero: a plain load when all 8 are in the row (the masked
// load is slower, and was half of a grouped search's re-score), none when n <= 0.
inline __m256 load8(const float* p, int64_t n) {
  if (n >= 8) return _mm256_loadu_ps(p);
  if (n <= 0) return _mm256_setzero_ps();
  return _mm256_maskload_ps(p, lanes_below(n));
}

template <bool kDiff>
inline float sums(const float* a, const float* b, int64_t D) {
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
  for (int64_t d = 0; d < D; d += 16) {
    __m256 t0 = load8(a + d, D - d), t1 = load8(a + d + 8, D - d - 8);
    if (kDiff) {
      t0 = _mm256_sub_ps(t0, load8(b + d, D - d));
      t1 = _mm256_sub_ps(t1, load8(b + d + 8, D - d - 8));
    }
    lo = _mm256_add_ps(lo, _mm256_mul_ps(t0, t0));
    hi = _mm256_add_ps(hi, _mm256_mul_ps(t1, t1));
  }
  return tree(lo, hi);
}

}  // namespace

float direct_sqdist_avx2(const float* a, const float* b, int64_t D) { return sums<true>(a, b, D); }
float sum_squares_avx2(const float* a, int64_t D) { return sums<false>(a, nullptr, D); }

}  // namespace cpu
}  // namespace sgcvq

#pragma GCC pop_options

#else  // not x86-64: never called (cpu_has_avx2() is false)

namespace sgcvq {
namespace cpu {
float direct_sqdist_avx2(const float*, const float*, int64_t) { return 0.f; }
float sum_squares_avx2(const float*, int64_t) { return 0.f; }
}  // namespace cpu
}  // namespace sgcvq

#endif
