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

// One chunk of 16 features of one code: sums<true>'s step (t = x - e, acc += t * t, no FMA).
__attribute__((always_inline)) inline void chunk(__m256 x0, __m256 x1, __m256 e0, __m256 e1, __m256& lo, __m256& hi) {
  const __m256 t0 = _mm256_sub_ps(x0, e0), t1 = _mm256_sub_ps(x1, e1);
  lo = _mm256_add_ps(lo, _mm256_mul_ps(t0, t0));
  hi = _mm256_add_ps(hi, _mm256_mul_ps(t1, t1));
}

// Four codes a pass for one token: sums<true>'s operations for each, the token's 16 features
// loaded once for the four, eight independent accumulator chains in named registers (as arrays,
// with load8's tail test inside the loop, GCC kept them on the stack: a store per add).
inline void four_sqdists(const float* x, const float* e, int64_t D, float* out) {
  const float *p0 = e, *p1 = e + D, *p2 = e + 2 * D, *p3 = e + 3 * D;
  __m256 l0 = _mm256_setzero_ps(), l1 = l0, l2 = l0, l3 = l0, h0 = l0, h1 = l0, h2 = l0, h3 = l0;
  int64_t d = 0;
  for (; d + 16 <= D; d += 16) {
    const __m256 x0 = _mm256_loadu_ps(x + d), x1 = _mm256_loadu_ps(x + d + 8);
    chunk(x0, x1, _mm256_loadu_ps(p0 + d), _mm256_loadu_ps(p0 + d + 8), l0, h0);
    chunk(x0, x1, _mm256_loadu_ps(p1 + d), _mm256_loadu_ps(p1 + d + 8), l1, h1);
    chunk(x0, x1, _mm256_loadu_ps(p2 + d), _mm256_loadu_ps(p2 + d + 8), l2, h2);
    chunk(x0, x1, _mm256_loadu_ps(p3 + d), _mm256_loadu_ps(p3 + d + 8), l3, h3);
  }
  if (d < D) {  // the last, partial chunk: zero lanes past D (t = 0 adds nothing)
    const __m256 x0 = load8(x + d, D - d), x1 = load8(x + d + 8, D - d - 8);
    chunk(x0, x1, load8(p0 + d, D - d), load8(p0 + d + 8, D - d - 8), l0, h0);
    chunk(x0, x1, load8(p1 + d, D - d), load8(p1 + d + 8, D - d - 8), l1, h1);
    chunk(x0, x1, load8(p2 + d, D - d), load8(p2 + d + 8, D - d - 8), l2, h2);
    chunk(x0, x1, load8(p3 + d, D - d), load8(p3 + d + 8, D - d - 8), l3, h3);
  }
  out[0] = tree(l0, h0);
  out[1] = tree(l1, h1);
  out[2] = tree(l2, h2);
  out[3] = tree(l3, h3);
}

}  // namespace

float direct_sqdist_avx2(const float* a, const float* b, int64_t D) { return sums<true>(a, b, D); }
float sum_squares_avx2(const float* a, int64_t D) { return sums<false>(a, nullptr, D); }

void exact_rows_avx2(const float* xs, int64_t T, int64_t D, const float* e, int64_t k0, int64_t k1, int64_t block,
                     float* val, int64_t* arg) {
  for (int64_t kb = k0; kb < k1; kb += block) {
    const int64_t ke = kb + block < k1 ? kb + block : k1;
    for (int64_t t = 0; t < T; ++t) {
      const float* x = xs + t * D;
      float bv = val[t];
      int64_t bi = arg[t];
      int64_t k = kb;
      alignas(16) float v[4];
      for (; k + 4 <= ke; k += 4) {
        four_sqdists(x, e + k * D, D, v);
        for (int j = 0; j < 4; ++j)  // codes in index order, strict '<': the first of equal values
          if (v[j] < bv) {
            bv = v[j];
            bi = k + j;
          }
      }
      for (; k < ke; ++k) {
        const float w = sums<true>(x, e + k * D, D);
        if (w < bv) {
          bv = w;
          bi = k;
        }
      }
      val[t] = bv;
      arg[t] = bi;
    }
  }
}

}  // namespace cpu
}  // namespace sgcvq

#pragma GCC pop_options

#else  // not x86-64: never called (cpu_has_avx2() is false)

namespace sgcvq {
namespace cpu {
float direct_sqdist_avx2(const float*, const float*, int64_t) { return 0.f; }
float sum_squares_avx2(const float*, int64_t) { return 0.f; }
void exact_rows_avx2(const float*, int64_t, int64_t, const float*, int64_t, int64_t, int64_t, float*, int64_t*) {}
}  // namespace cpu
}  // namespace sgcvq

#endif
