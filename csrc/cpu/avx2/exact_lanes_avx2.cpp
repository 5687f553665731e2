// The AVX2 exact search at D <= 16 (see exact_lanes_avx2.h).
//
// The portable direct_sqdist has one chunk of 16 lanes there: lane d holds t_d * t_d (t_d = x_d -
// e_d, one rounding, zero past D), then acc[l] += acc[l + 8], += acc[l + 4], += acc[l + 2],
// += acc[l + 1]. Here vector register d holds t_d^2 of 8 codes and the same additions add
// registers: the same operations on the same operands for every code. Terms known to be +0 (past
// D) are not added: x + (+0) == x for every x >= +0 and NaN, and no square is -0. Multiplies and
// adds stay separate (fp-contract off): an FMA would round differently from t * t, then + .
// The per-pair loop this replaces called direct_sqdist for every (token, code) pair: ~10 ns
// each, 0.16 ms per uncertified token at K = 16384.
#include "exact_lanes_avx2.h"

#include "cpu_kind.h"

#include <cstdint>
#include <utility>

#if defined(__x86_64__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#pragma GCC optimize("fp-contract=off")
#include "lanes_avx2.h"

namespace sgcvq {
namespace cpu {
namespace {

constexpr int64_t kV = 8;       // codes per vector
constexpr int kTokens = 4;      // tokens per pass over a code vector

// direct_sqdist of one token (x broadcast per feature: xb) to the 8 codes e[d * 16 + lane].
template <int D>
inline __m256 sqdist8(const __m256 (&xb)[D], const float* e) {
  __m256 q[16];
#pragma GCC unroll 16
  for (int d = 0; d < D; ++d) {
    const __m256 t = _mm256_sub_ps(xb[d], _mm256_loadu_ps(e + d * kLanes));
    q[d] = _mm256_mul_ps(t, t);
  }
  // The tree 8, 4, 2, 1 over the feature registers; s[l] is lane l of the portable acc.
  __m256 s[8];
#pragma GCC unroll 8
  for (int l = 0; l < 8; ++l) s[l] = l + 8 < D ? _mm256_add_ps(q[l], q[l + 8]) : l < D ? q[l] : _mm256_setzero_ps();
  constexpr int live8 = D < 8 ? D : 8;  // s[l] is +0 for l >= live8
#pragma GCC unroll 4
  for (int l = 0; l < 4; ++l)
    if (l + 4 < live8) s[l] = _mm256_add_ps(s[l], s[l + 4]);
  constexpr int live4 = live8 < 4 ? live8 : 4;
#pragma GCC unroll 2
  for (int l = 0; l < 2; ++l)
    if (l + 2 < live4) s[l] = _mm256_add_ps(s[l], s[l + 2]);
  constexpr int live2 = live4 < 2 ? live4 : 2;
  if (1 < live2) s[0] = _mm256_add_ps(s[0], s[1]);
  return s[0];
}

template <int D>
void exact_lanes(const float* xs, int64_t T, const SmallDCodebook& cb, int64_t k0, int64_t k1, float* val,
                 int64_t* arg) {
  const __m256 inf = _mm256_set1_ps(__builtin_inff());
  const __m256i iota = lane_index();
  const int64_t c0 = k0 / kV, c1 = (k1 + kV - 1) / kV;
  alignas(32) float bv[kV];
  alignas(32) int32_t bk[kV];
  for (int64_t t0 = 0; t0 < T; t0 += kTokens) {
    const int nt = static_cast<int>(T - t0 < kTokens ? T - t0 : kTokens);
    __m256 best[kTokens];
    __m256i at[kTokens];
    __m256 xb[kTokens][D];
    for (int i = 0; i < kTokens; ++i) {
      best[i] = inf;
      at[i] = _mm256_set1_epi32(-1);
      for (int d = 0; d < D; ++d) xb[i][d] = _mm256_set1_ps(i < nt ? xs[(t0 + i) * D + d] : 0.f);
    }
    for (int64_t c = c0; c < c1; ++c) {
      const float* e = cb.blocks + (c >> 1) * D * kLanes + (c & 1) * kV;
      const __m256i code = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(c * kV)), iota);
      // Lanes outside [k0, k1): never below anything (+inf is not < +inf).
      const bool edge = c * kV < k0 || (c + 1) * kV > k1;
      const __m256 out = _mm256_castsi256_ps(
          _mm256_or_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(k0)), code),
                          _mm256_cmpgt_epi32(code, _mm256_set1_epi32(static_cast<int32_t>(k1 - 1)))));
#pragma GCC unroll 4
      for (int i = 0; i < kTokens; ++i) {
        __m256 v = sqdist8<D>(xb[i], e);
        if (edge) v = _mm256_blendv_ps(v, inf, out);
        const __m256 lt = _mm256_cmp_ps(v, best[i], _CMP_LT_OQ);  // strict: the earlier code stays
        best[i] = _mm256_blendv_ps(best[i], v, lt);
        at[i] = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(at[i]), _mm256_castsi256_ps(code), lt));
      }
    }
    for (int i = 0; i < nt; ++i) {
      _mm256_store_ps(bv, best[i]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(bk), at[i]);
      // The smallest lane value, the lowest code among equal ones; it replaces the carried-in
      // answer only when strictly below it (an earlier range's codes are lower).
      float m = bv[0];
      int32_t mk = bk[0];
      for (int l = 1; l < kV; ++l)
        if (bv[l] < m || (bv[l] == m && bk[l] < mk)) {
          m = bv[l];
          mk = bk[l];
        }
      if (mk >= 0 && m < val[t0 + i]) {
        val[t0 + i] = m;
        arg[t0 + i] = mk;
      }
    }
  }
}

using ExactFn = void (*)(const float*, int64_t, const SmallDCodebook&, int64_t, int64_t, float*, int64_t*);
template <int... Ds>
ExactFn pick(int64_t D, std::integer_sequence<int, Ds...>) {
  ExactFn fn = nullptr;
  ((D == Ds + 1 ? (fn = &exact_lanes<Ds + 1>, 0) : 0), ...);
  return fn;
}

}  // namespace

bool exact_lanes_avx2(const float* xs, int64_t T, int64_t D, const SmallDCodebook& cb, int64_t k0, int64_t k1,
                      float* val, int64_t* arg) {
  if (!avx2_kernels_on()) return false;
  const ExactFn fn = pick(D, std::make_integer_sequence<int, kSmallMaxD>{});
  if (fn == nullptr) return false;
  if (T > 0 && k1 > k0) fn(xs, T, cb, k0, k1, val, arg);
  return true;
}

}  // namespace cpu
}  // namespace sgcvq

#pragma GCC pop_options

#else  // not x86-64

namespace sgcvq {
namespace cpu {
bool exact_lanes_avx2(const float*, int64_t, int64_t, const SmallDCodebook&, int64_t, int64_t, float*, int64_t*) {
  return false;
}
}  // namespace cpu
}  // namespace sgcvq

#endif
