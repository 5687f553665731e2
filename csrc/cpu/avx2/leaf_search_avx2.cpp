// The AVX2 leaf search (leaf_search_avx2.h).
//
// Per token: the box bounds of every leaf (D vector steps per 8 leaves), the token's own leaf
// (the k-d tree's descent, by the caller) scanned with a branch-free top-2, then the leaves in
// tree order, each skipped when its box proves it holds no code below the running second best v2.
// The caller hands the tokens in the order of their own leaves, so neighbouring tokens visit much
// the same leaves (a token's ~40 leaves do not fit in L1: the visits stream from L2, which is what
// limits this search; benchmarks/NOTES.md, AVX2 entry 7).
//
// The skip (rigorous; the certificate then holds as for a full scan): for every code e of a leaf,
// ||x - e||^2 >= LB = dist(x, box)^2, so its exact approximate value a* = ||e||^2 - 2 x.e =
// ||x - e||^2 - ||x||^2 >= LB - ||x||^2. lb = fl(sum_d t_d^2) with t_d = max(fl(lo_d - x_d),
// fl(x_d - hi_d), 0) is at most (1 + u)^(D + 2) LB (each t_d rounds up by at most u, each square
// and sum once), so fl(lb s) with s <= 1 - (2D + 8) u (cert::leaf_bound_scale) is <= LB. With
// thr >= v2 + ||x||^2 (computed in double from x's exact squares and rounded up to a float), a
// leaf with fl(lb s) > thr holds only codes whose a* > v2: the top-2 it would give is the one we
// have. NaN anywhere makes the comparison false: the leaf is visited.
//
// Compiled for AVX2 + FMA by the pragma below (after every include); called only where
// avx2_kernels_on() says the CPU has them.
#include "leaf_search_avx2.h"

#include "../../include/sgcvq/certificate.h"
#include "cpu_kind.h"

#include <cstdint>
#include <utility>

#if defined(__x86_64__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

#include "lanes_avx2.h"

namespace sgcvq {
namespace cpu {
namespace {

constexpr int kVecs = static_cast<int>(kLeafCodes / 8);  // 8 vectors of 8 codes a leaf

// lanes[m]: the set bits of m in increasing order, then zeros (a left-packing permutation).
struct CompressTable {
  alignas(32) int32_t lanes[256][8];
  constexpr CompressTable() : lanes() {
    for (int m = 0; m < 256; ++m) {
      int n = 0;
      for (int l = 0; l < 8; ++l)
        if (m & (1 << l)) lanes[m][n++] = l;
    }
  }
};
constexpr CompressTable kCompress;

// The smallest value of 8 vectors; a NaN value is never it (the running minimum is the second
// operand, which _mm256_min_ps returns when either is NaN), +inf when none is finite.
inline __m256 min8(const __m256* a) {
  __m256 m = _mm256_set1_ps(kInf);
  for (int j = 0; j < kVecs; ++j) m = _mm256_min_ps(a[j], m);
  return m;
}

// thr >= v2 + ||x||^2 as a float, rounded up (xx_up >= ||x||^2 in double). +inf for v2 = +inf.
inline float skip_threshold(float v2, double xx_up) {
  const double t = static_cast<double>(v2) + xx_up;
  const double tt = t + __builtin_fabs(t) * 0x1p-40 + 0x1p-100;
  float f = static_cast<float>(tt);
  if (static_cast<double>(f) < tt) f = next_up(f);
  return f;
}

// a[j] <- norms + xs . e for the 64 codes of leaf b (8 independent accumulators, one broadcast of
// x a feature).
template <int D>
__attribute__((always_inline)) inline void leaf_values(const float* codes, const float* norms, int64_t b,
                                                      const float* xs, __m256* a) {
  const float* e = codes + b * D * kLeafCodes;
  const float* n = norms + b * kLeafCodes;
#pragma GCC unroll 8
  for (int j = 0; j < kVecs; ++j) a[j] = _mm256_loadu_ps(n + 8 * j);
#pragma GCC unroll 16
  for (int d = 0; d < D; ++d) {
    const __m256 xb = _mm256_broadcast_ss(xs + d);
#pragma GCC unroll 8
    for (int j = 0; j < kVecs; ++j) a[j] = _mm256_fmadd_ps(_mm256_loadu_ps(e + d * kLeafCodes + 8 * j), xb, a[j]);
  }
}

// The first (vector, lane) of a holding v (v is finite and present).
inline int first_equal(const __m256* a, float v) {
  const __m256 vb = _mm256_set1_ps(v);
  for (int j = 0; j < kVecs; ++j) {
    const int m = _mm256_movemask_ps(_mm256_cmp_ps(a[j], vb, _CMP_EQ_OQ));
    if (m != 0) return 8 * j + __builtin_ctz(static_cast<unsigned>(m));
  }
  return -1;
}

// The top-2 of one leaf's 64 values without a data-dependent branch per value.
inline Top2 leaf_top2(__m256* a, const int32_t* index) {
  Top2 o;
  const float v1 = hmin(min8(a));
  if (!(v1 < kInf)) return o;
  const int p1 = first_equal(a, v1);
  o.v1 = v1;
  o.i1 = index[p1];
  alignas(32) float lane[8];
  _mm256_store_ps(lane, a[p1 / 8]);
  lane[p1 % 8] = kInf;
  a[p1 / 8] = _mm256_load_ps(lane);
  const float v2 = hmin(min8(a));
  if (v2 < kInf) {
    o.v2 = v2;
    o.i2 = index[first_equal(a, v2)];
  }
  return o;
}

template <int D>
int64_t search_token(const float* xs, int32_t home, const CodeLeaves::View& L, float* bound, int32_t* list,
                     Top2& out) {
  const int64_t leaves = L.leaves, lp = L.leaves_pad;
  const float* codes = L.codes;
  const float* norms = L.norms;
  const int32_t* index = L.index;
  // x = -xs / 2 (exact) and ||x||^2 from its exact squares in double (D <= 16 terms: relative
  // error <= 16 2^-53, covered by the 2^-40).
  alignas(32) float x[D];
  double xx = 0.0;
  for (int d = 0; d < D; ++d) {
    x[d] = -0.5f * xs[d];
    xx += static_cast<double>(x[d]) * static_cast<double>(x[d]);
  }
  const double xx_up = xx * (1.0 + 0x1p-40);
  const __m256 scale = _mm256_set1_ps(static_cast<float>(cert::leaf_bound_scale(D)));
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t g = 0; g < lp; g += 8) {
    __m256 acc = zero;
#pragma GCC unroll 16
    for (int d = 0; d < D; ++d) {
      const __m256 xb = _mm256_broadcast_ss(x + d);
      const __m256 below = _mm256_sub_ps(_mm256_loadu_ps(L.lo + d * lp + g), xb);
      const __m256 above = _mm256_sub_ps(xb, _mm256_loadu_ps(L.hi + d * lp + g));
      const __m256 t = _mm256_max_ps(_mm256_max_ps(below, above), zero);  // NaN -> 0: visited
      acc = _mm256_fmadd_ps(t, t, acc);
    }
    _mm256_storeu_ps(bound + g, _mm256_mul_ps(acc, scale));
  }

  __m256 a[kVecs];
  leaf_values<D>(codes, norms, home, xs, a);
  out = leaf_top2(a, index + home * kLeafCodes);
  if (!(out.v1 < kInf)) {  // nothing finite (NaN values): the per-value rule, which never keeps NaN
    alignas(32) float v[kLeafCodes];
    for (int j = 0; j < kVecs; ++j) _mm256_store_ps(v + 8 * j, a[j]);
    for (int l = 0; l < kLeafCodes; ++l) keep(out, v[l], index[home * kLeafCodes + l]);
  }
  int64_t visits = 1;
  float thr = skip_threshold(out.v2, xx_up);
  __m256 v2b = _mm256_set1_ps(out.v2);
  // The leaves the threshold after the own leaf does not rule out, compacted into a list without a
  // branch per group (a table of lane permutations by mask), then visited in tree order with the
  // threshold re-checked as it falls.
  int64_t n = 0;
  const __m256 thr0 = _mm256_set1_ps(thr);
  for (int64_t g = 0; g < leaves; g += 8) {
    unsigned m = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(bound + g), thr0, _CMP_NGT_UQ)));
    if (g + 8 > leaves) m &= (1u << (leaves - g)) - 1u;
    if (home >= g && home < g + 8) m &= ~(1u << (home - g));
    const __m256i ids = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(g)),
                                         _mm256_load_si256(reinterpret_cast<const __m256i*>(kCompress.lanes[m])));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(list + n), ids);
    n += __builtin_popcount(m);
  }
  for (int64_t i = 0; i < n; ++i) {
    const int64_t b = list[i];
    if (bound[b] > thr) continue;
    ++visits;
    leaf_values<D>(codes, norms, b, xs, a);
    if (_mm256_movemask_ps(_mm256_cmp_ps(min8(a), v2b, _CMP_LT_OQ)) == 0) continue;
    // The rare update: only the lanes below v2 (a vector's mask, then its set bits).
    for (int j = 0; j < kVecs; ++j) {
      unsigned hit = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(a[j], v2b, _CMP_LT_OQ)));
      if (hit == 0) continue;
      alignas(32) float v[8];
      _mm256_store_ps(v, a[j]);
      for (; hit != 0; hit &= hit - 1) {
        const int l = __builtin_ctz(hit);
        keep(out, v[l], index[b * kLeafCodes + 8 * j + l]);  // below the v2 of the mask: maybe not below today's
      }
    }
    thr = skip_threshold(out.v2, xx_up);
    v2b = _mm256_set1_ps(out.v2);
  }
  return visits;
}

template <int D>
int64_t search(const float* xs, const int32_t* order, const int32_t* home, int64_t n, const CodeLeaves::View& L,
               float* bound, int32_t* list, Top2* best) {
  int64_t visits = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = order[i];
    visits += search_token<D>(xs + t * L.D, home[t], L, bound, list, best[t]);
  }
  return visits;
}

using SearchFn = int64_t (*)(const float*, const int32_t*, const int32_t*, int64_t, const CodeLeaves::View&, float*,
                             int32_t*, Top2*);
template <int... Ds>
SearchFn pick(int64_t D, std::integer_sequence<int, Ds...>) {
  SearchFn fn = nullptr;
  ((D == Ds + 1 ? (fn = &search<Ds + 1>, 0) : 0), ...);
  return fn;
}

}  // namespace

int64_t leaf_search_avx2(const float* xs, const int32_t* order, const int32_t* home, int64_t n,
                         const CodeLeaves::View& L, float* bound, int32_t* list, Top2* best) {
  if (!avx2_kernels_on()) return -1;
  const SearchFn fn = pick(L.D, std::make_integer_sequence<int, kSmallMaxD>{});
  if (fn == nullptr || L.leaves == 0) return -1;
  return fn(xs, order, home, n, L, bound, list, best);
}

}  // namespace cpu
}  // namespace sgcvq

#pragma GCC pop_options

#else  // not x86-64: no AVX2 kernels

namespace sgcvq {
namespace cpu {
int64_t leaf_search_avx2(const float*, const int32_t*, const int32_t*, int64_t, const CodeLeaves::View&, float*, int32_t*,
                         Top2*) {
  return -1;
}
}  // namespace cpu
}  // namespace sgcvq

#endif
