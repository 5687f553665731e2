// The inner scans of the CPU nearest_code (see nearest_code_scan.h).
//
// The AVX-512 small-D scan register-blocks tokens x 16 codes: the block's D code vectors stay in
// registers, each token's approximate distances come from D FMAs with x broadcast from memory.
// The first ~40 KB of codes (the window) keep a per-lane top-2 without branches; after it, one
// compare against the token's running second-best decides whether the (rare by then) scalar top-2
// update runs. Codes are swept in chunks that fit L1, the token tile reuses each chunk 8 times. Compiled with function-level target attributes, never -march flags, so the
// library still loads on CPUs without AVX-512 and uses the portable loops there.
#include "nearest_code_scan.h"

#include "options.h"
#include "avx2/cpu_kind.h"
#include "avx2/exact_lanes_avx2.h"
#include "avx2/small_scan_avx2.h"
#include "avx2/sums_avx2.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

// GCC's own intrinsics headers (_mm512_reduce_min_ps, masked blends) trip this warning on their
// deliberately undefined temporaries; our code has no uninitialised reads it would catch.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

// The portable loops: an AVX2 clone next to the baseline one on x86-64 (ifunc), plain elsewhere.
#if SGCVQ_X86
#define SGCVQ_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SGCVQ_CLONES
#endif

namespace sgcvq {
namespace cpu {
namespace {

// Lanes of block b (codes b*16 .. b*16+15) that lie in [k0, k1).
inline uint32_t lane_mask(int64_t b, int64_t k0, int64_t k1) {
  const int64_t lo = std::max<int64_t>(0, k0 - b * kLanes);
  const int64_t hi = std::min<int64_t>(kLanes, k1 - b * kLanes);
  if (hi <= lo) return 0;
  return ((hi >= 32 ? 0u : (1u << hi)) - 1u) & ~((1u << lo) - 1u) & 0xFFFFu;
}

// Scalar top-2 update from the lanes in `hit`, in lane (= index) order.
inline void push_lanes(Top2& b, const float* vals, uint32_t hit, int64_t base) {
  while (hit) {
    const int j = __builtin_ctz(hit);
    hit &= hit - 1;
    b.push(vals[j], base + j);
  }
}

#if SGCVQ_X86
// Top-2 of a fresh token straight from its first nv <= 4 vectors of 16 values (vector n holds
// codes base + 16n ..; lanes outside valid[n] and NaN lanes excluded, as the strict compare
// excludes them): vector reductions instead of up to 64 mispredicted scalar pushes. Every code
// that later enters the running top-2 costs a mispredicted branch, about 2 ln(n / seeded) of them
// per token, so seeding from 64 codes matters most for groups of a few hundred codes.
constexpr int kSeedVectors = 4;

__attribute__((target("avx512f,avx512dq"))) inline int64_t lowest_lane_equal(const __m512* v, int nv,
                                                                            float m, int& vec) {
  for (int n = 0; n < nv; ++n) {
    const __mmask16 eq = _mm512_cmp_ps_mask(v[n], _mm512_set1_ps(m), _CMP_EQ_OQ);
    if (eq) {
      vec = n;
      return __builtin_ctz(eq);
    }
  }
  vec = 0;
  return -1;  // unreachable: m is the minimum of these lanes
}

__attribute__((target("avx512f,avx512dq"))) inline void seed_top2(const __m512* in, const __mmask16* valid,
                                                                  int nv, int64_t base, Top2& b) {
  const __m512 inf = _mm512_set1_ps(kInf);
  __m512 v[kSeedVectors];
  __m512 m = inf;
  for (int n = 0; n < nv; ++n) {
    v[n] = _mm512_mask_blend_ps(valid[n] & _mm512_cmp_ps_mask(in[n], in[n], _CMP_ORD_Q), inf, in[n]);
    m = _mm512_min_ps(m, v[n]);
  }
  const float m1 = _mm512_reduce_min_ps(m);
  if (!(m1 < kInf)) return;
  int n1 = 0;
  const int64_t l1 = lowest_lane_equal(v, nv, m1, n1);
  b.v1 = m1;
  b.i1 = base + n1 * kLanes + l1;
  v[n1] = _mm512_mask_blend_ps(static_cast<__mmask16>(1u << l1), v[n1], inf);
  m = inf;
  for (int n = 0; n < nv; ++n) m = _mm512_min_ps(m, v[n]);
  const float m2 = _mm512_reduce_min_ps(m);
  if (!(m2 < kInf)) return;
  int n2 = 0;
  const int64_t l2 = lowest_lane_equal(v, nv, m2, n2);
  b.v2 = m2;
  b.i2 = base + n2 * kLanes + l2;
}

template <int D, int NB>
__attribute__((target("avx512f,avx512dq"))) inline void small_d_step(const float* x, const SmallDCodebook& cb,
                                                            int64_t b, int64_t k0, int64_t k1,
                                                            __m512* thr, Top2* best) {
  constexpr int kT = static_cast<int>(kSmallTokens);
  alignas(64) float tmp[kLanes];
  __m512 ev[NB][D], nv[NB];
#pragma GCC unroll 2
  for (int n = 0; n < NB; ++n) {
    const float* e = cb.blocks + (b + n) * (D * kLanes);
#pragma GCC unroll 16
    for (int d = 0; d < D; ++d) ev[n][d] = _mm512_loadu_ps(e + d * kLanes);
    nv[n] = _mm512_loadu_ps(cb.norms + (b + n) * kLanes);
    if ((b + n) * kLanes < k0 || (b + n + 1) * kLanes > k1)
      nv[n] = _mm512_mask_blend_ps(static_cast<__mmask16>(lane_mask(b + n, k0, k1)),
                                   _mm512_set1_ps(kInf), nv[n]);
  }
#pragma GCC unroll 8
  for (int i = 0; i < kT; ++i) {
    __m512 acc[NB];
#pragma GCC unroll 2
    for (int n = 0; n < NB; ++n) acc[n] = nv[n];
#pragma GCC unroll 16
    for (int d = 0; d < D; ++d) {
      const __m512 xb = _mm512_set1_ps(x[i * D + d]);
#pragma GCC unroll 2
      for (int n = 0; n < NB; ++n) acc[n] = _mm512_fmadd_ps(xb, ev[n][d], acc[n]);
    }
    __mmask16 hit[NB];
#pragma GCC unroll 2
    for (int n = 0; n < NB; ++n) hit[n] = _mm512_cmp_ps_mask(acc[n], thr[i], _CMP_LT_OQ);
    const __mmask16 any = NB == 1 ? hit[0] : _kor_mask16(hit[0], hit[NB - 1]);
    if (__builtin_expect(!_kortestz_mask16_u8(any, any), 0)) {
      for (int n = 0; n < NB; ++n) {
        _mm512_store_ps(tmp, acc[n]);
        push_lanes(best[i], tmp, hit[n], (b + n) * kLanes);
      }
      thr[i] = _mm512_set1_ps(best[i].v2);
    }
  }
}

// The window: the first codes of a range, searched without a single data-dependent branch.
// Each token keeps, per lane, the smallest value m1 (with the block it came from) and the second
// smallest m2; five vector ops per 16 codes instead of one compare, but no mispredicted top-2
// updates, which is what a branchy scan pays about 2 ln(n / seeded) times per token (~30 ns each).
// At the end the token's top-2 comes from the lanes: i1, i2 are the two best lane winners, and
// v2 = min(second lane winner, every lane's m2) bounds every other code from below, which is all
// the certificate asks of v2 (Top2's invariants hold with i2 worse than v2; see Top2::push).
// Strict '<' keeps NaN out, like the branchy scan; max(acc, m1) returns m1 for a NaN acc.
template <int D>
__attribute__((target("avx512f,avx512dq"))) void window_top2(const float* xs, int64_t T,
                                                            const SmallDCodebook& cb, int64_t b0,
                                                            int64_t bw, int64_t k0, int64_t k1,
                                                            Top2* best) {
  // Tokens per pass: their 3 state vectors plus the block's D code vectors fit the 32 registers.
  constexpr int kW = D <= 10 ? 4 : 2;
  const __m512 inf = _mm512_set1_ps(kInf);
  alignas(64) int32_t lanes[kLanes];
  for (int64_t t0 = 0; t0 < T; t0 += kW) {
    __m512 m1[kW], m2[kW];
    __m512i id[kW];
#pragma GCC unroll 4
    for (int i = 0; i < kW; ++i) {
      m1[i] = inf;
      m2[i] = inf;
      id[i] = _mm512_setzero_si512();
    }
    const float* x = xs + t0 * D;
    for (int64_t b = b0; b < bw; ++b) {
      const float* e = cb.blocks + b * (D * kLanes);
      __m512 ev[D];
#pragma GCC unroll 16
      for (int d = 0; d < D; ++d) ev[d] = _mm512_loadu_ps(e + d * kLanes);
      __m512 nv = _mm512_loadu_ps(cb.norms + b * kLanes);
      if (b * kLanes < k0 || (b + 1) * kLanes > k1)
        nv = _mm512_mask_blend_ps(static_cast<__mmask16>(lane_mask(b, k0, k1)), inf, nv);
      const __m512i bid = _mm512_set1_epi32(static_cast<int32_t>(b - b0));
#pragma GCC unroll 4
      for (int i = 0; i < kW; ++i) {
        __m512 acc = nv;
#pragma GCC unroll 16
        for (int d = 0; d < D; ++d) acc = _mm512_fmadd_ps(_mm512_set1_ps(x[i * D + d]), ev[d], acc);
        const __mmask16 lt = _mm512_cmp_ps_mask(acc, m1[i], _CMP_LT_OQ);
        m2[i] = _mm512_min_ps(_mm512_max_ps(acc, m1[i]), m2[i]);
        m1[i] = _mm512_mask_mov_ps(m1[i], lt, acc);
        id[i] = _mm512_mask_mov_epi32(id[i], lt, bid);
      }
    }
    for (int i = 0; i < kW; ++i) {
      Top2& o = best[t0 + i];
      const float v1 = _mm512_reduce_min_ps(m1[i]);
      if (!(v1 < kInf)) continue;  // nothing finite in the window: the branchy scan starts afresh
      _mm512_store_si512(lanes, id[i]);
      const int l1 = __builtin_ctz(_mm512_cmp_ps_mask(m1[i], _mm512_set1_ps(v1), _CMP_EQ_OQ));
      const __m512 rest = _mm512_mask_blend_ps(static_cast<__mmask16>(1u << l1), m1[i], inf);
      const float v2 = _mm512_reduce_min_ps(rest);
      o.v1 = v1;
      o.i1 = (b0 + lanes[l1]) * kLanes + l1;
      o.v2 = std::min(v2, _mm512_reduce_min_ps(m2[i]));
      if (v2 < kInf) {
        const int l2 = __builtin_ctz(_mm512_cmp_ps_mask(rest, _mm512_set1_ps(v2), _CMP_EQ_OQ));
        o.i2 = (b0 + lanes[l2]) * kLanes + l2;
      }
    }
  }
}

template <int D>
__attribute__((target("avx512f,avx512dq"))) void small_d_scan_avx512(const float* xs, int64_t T,
                                                            const SmallDCodebook& cb, int64_t k0,
                                                            int64_t k1, Top2* best) {
  constexpr int kT = static_cast<int>(kSmallTokens);
  // Two blocks per step where their 2D code vectors fit the 32 registers next to the thresholds:
  // each broadcast of x then feeds two FMAs, which halves the loads per FMA.
  constexpr int NB = D <= 8 ? 2 : 1;
  const int64_t b0 = k0 / kLanes, b1 = (k1 + kLanes - 1) / kLanes;
  // The window covers about 40 KB of codes (L1 holds it while every token passes over it): a
  // whole group of up to 1024 codes at D = 8, and the start of a full search, after which the
  // running second best is low enough that the branchy scan rarely branches.
  const int64_t bw = std::min(b1, b0 + std::max<int64_t>(4, 40960 / (64 * (D + 1))));
  window_top2<D>(xs, T, cb, b0, bw, k0, k1, best);
  // Blocks per chunk: codes + norms of a chunk take about 24 KB, inside a 32-48 KB L1.
  const int64_t chunk = std::max<int64_t>(4, 24576 / (64 * (D + 1))) / NB * NB;
  for (int64_t c0 = bw; c0 < b1; c0 += chunk) {
    const int64_t c1 = std::min(b1, c0 + chunk);
    for (int64_t t0 = 0; t0 < T; t0 += kT) {
      __m512 thr[kT];
#pragma GCC unroll 8
      for (int i = 0; i < kT; ++i) thr[i] = _mm512_set1_ps(best[t0 + i].v2);
      int64_t b = c0;
      for (; b + NB <= c1; b += NB) small_d_step<D, NB>(xs + t0 * D, cb, b, k0, k1, thr, best + t0);
      for (; b < c1; ++b) small_d_step<D, 1>(xs + t0 * D, cb, b, k0, k1, thr, best + t0);
    }
  }
}

#endif  // SGCVQ_X86

// GCC vector extensions pin the layout (codes along the lanes); left to itself the
// auto-vectoriser vectorises over d with permutes. Two 8-float halves, not one 16-float vector:
// GCC keeps a 64-byte vector on the stack under AVX2 and stalls on store forwarding.
typedef float Half __attribute__((vector_size(8 * sizeof(float))));

SGCVQ_CLONES void small_d_scan_portable(
    const float* xs, int64_t T, int64_t D, const SmallDCodebook& cb, int64_t k0, int64_t k1,
    Top2* best) {
  const int64_t b0 = k0 / kLanes, b1 = (k1 + kLanes - 1) / kLanes;
  alignas(32) float vals[kLanes];
  for (int64_t t = 0; t < T; ++t) {
    const float* x = xs + t * D;
    for (int64_t b = b0; b < b1; ++b) {
      const float* e = cb.blocks + b * (D * kLanes);
      Half lo, hi, elo, ehi;
      std::memcpy(&lo, cb.norms + b * kLanes, sizeof lo);
      std::memcpy(&hi, cb.norms + b * kLanes + 8, sizeof hi);
      for (int64_t d = 0; d < D; ++d) {
        std::memcpy(&elo, e + d * kLanes, sizeof elo);
        std::memcpy(&ehi, e + d * kLanes + 8, sizeof ehi);
        lo += x[d] * elo;
        hi += x[d] * ehi;
      }
      // Any lane below the second best? Most blocks hold none.
      const float thr = best[t].v2;
      const auto below = (lo < thr) | (hi < thr);
      int any = 0;
      for (int l = 0; l < 8; ++l) any |= below[l];
      if (!any) continue;
      std::memcpy(vals, &lo, sizeof lo);
      std::memcpy(vals + 8, &hi, sizeof hi);
      const int64_t first = std::max<int64_t>(0, k0 - b * kLanes);
      const int64_t last = std::min<int64_t>(kLanes, k1 - b * kLanes);
      for (int64_t l = first; l < last; ++l)
        if (vals[l] < best[t].v2) best[t].push(vals[l], b * kLanes + l);
    }
  }
}

#if SGCVQ_X86
using SmallFn = void (*)(const float*, int64_t, const SmallDCodebook&, int64_t, int64_t, Top2*);

template <int... Ds>
SmallFn pick_small(int64_t D, std::integer_sequence<int, Ds...>) {
  SmallFn fn = nullptr;
  ((D == Ds + 1 ? (fn = &small_d_scan_avx512<Ds + 1>, 0) : 0), ...);
  return fn;
}

__attribute__((target("avx512f,avx512dq"))) void top2_rows_avx512(const float* S, int64_t ld, int64_t tn,
                                                         int64_t kn, const float* norms,
                                                         int64_t kbase, Top2* best) {
  alignas(64) float tmp[4 * kLanes];
  for (int64_t t = 0; t < tn; ++t) {
    const float* row = S + t * ld;
    int64_t j = 0;
    if (best[t].i1 < 0 && kn >= kLanes) {  // a fresh token: seed from the first 16-64 values
      const int nseed = static_cast<int>(std::min<int64_t>(kSeedVectors, kn / kLanes));
      __m512 v[kSeedVectors];
      const __mmask16 valid[kSeedVectors] = {0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF};
      for (int n = 0; n < nseed; ++n)
        v[n] = _mm512_add_ps(_mm512_loadu_ps(row + n * kLanes), _mm512_loadu_ps(norms + n * kLanes));
      seed_top2(v, valid, nseed, kbase, best[t]);
      j = nseed * kLanes;
    }
    __m512 thr = _mm512_set1_ps(best[t].v2);
    for (; j + 4 * kLanes <= kn; j += 4 * kLanes) {
      // Four vectors per compare-and-branch: the branch is taken rarely once the top-2 settles.
      const __m512 a = _mm512_add_ps(_mm512_loadu_ps(row + j), _mm512_loadu_ps(norms + j));
      const __m512 b = _mm512_add_ps(_mm512_loadu_ps(row + j + 16), _mm512_loadu_ps(norms + j + 16));
      const __m512 c = _mm512_add_ps(_mm512_loadu_ps(row + j + 32), _mm512_loadu_ps(norms + j + 32));
      const __m512 d = _mm512_add_ps(_mm512_loadu_ps(row + j + 48), _mm512_loadu_ps(norms + j + 48));
      const uint64_t hit = static_cast<uint64_t>(_mm512_cmp_ps_mask(a, thr, _CMP_LT_OQ)) |
                           static_cast<uint64_t>(_mm512_cmp_ps_mask(b, thr, _CMP_LT_OQ)) << 16 |
                           static_cast<uint64_t>(_mm512_cmp_ps_mask(c, thr, _CMP_LT_OQ)) << 32 |
                           static_cast<uint64_t>(_mm512_cmp_ps_mask(d, thr, _CMP_LT_OQ)) << 48;
      if (__builtin_expect(hit != 0, 0)) {
        _mm512_store_ps(tmp, a);
        _mm512_store_ps(tmp + 16, b);
        _mm512_store_ps(tmp + 32, c);
        _mm512_store_ps(tmp + 48, d);
        for (uint64_t h = hit; h; h &= h - 1) {
          const int l = __builtin_ctzll(h);
          best[t].push(tmp[l], kbase + j + l);
        }
        thr = _mm512_set1_ps(best[t].v2);
      }
    }
    for (; j < kn; j += kLanes) {
      const __mmask16 m = static_cast<__mmask16>(lane_mask(0, 0, kn - j));
      const __m512 a = _mm512_add_ps(_mm512_maskz_loadu_ps(m, row + j), _mm512_maskz_loadu_ps(m, norms + j));
      const __mmask16 hit = _mm512_mask_cmp_ps_mask(m, a, thr, _CMP_LT_OQ);
      if (hit) {
        _mm512_store_ps(tmp, a);
        push_lanes(best[t], tmp, hit, kbase + j);
        thr = _mm512_set1_ps(best[t].v2);
      }
    }
  }
}

#endif  // SGCVQ_X86

SGCVQ_CLONES void top2_rows_portable(
    const float* S, int64_t ld, int64_t tn, int64_t kn, const float* norms, int64_t kbase,
    Top2* best) {
  for (int64_t t = 0; t < tn; ++t) {
    const float* row = S + t * ld;
    // A vectorisable any-below-threshold test first: most tiles hold nothing below the second best.
    const float thr = best[t].v2;
    int any = 0;
    for (int64_t j = 0; j < kn; ++j) any |= row[j] + norms[j] < thr;
    if (!any) continue;
    for (int64_t j = 0; j < kn; ++j) {
      const float v = row[j] + norms[j];
      if (v < best[t].v2) best[t].push(v, kbase + j);
    }
  }
}

// Fixed tree over the 16 lanes: 8, 4, 2, 1.
inline float reduce_lanes(float* acc) {
  for (int64_t w = kLanes / 2; w >= 1; w /= 2)
    for (int64_t l = 0; l < w; ++l) acc[l] += acc[l + w];
  return acc[0];
}

// The sums behind "the fp32 distance" (nearest_code_scan.h). The AVX-512 versions keep the 16
// partial sums in one register (acc <- fma(t, t, acc), the masked tail adds exact zeros) and add
// them by the same 8, 4, 2, 1 tree with shuffles; the portable ones spell it out with arrays.
#if SGCVQ_X86
__attribute__((target("avx512f"))) inline float tree16(__m512 acc) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(acc),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1)));
  const __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  const __m128 r = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(r, _mm_shuffle_ps(r, r, 1)));
}

__attribute__((target("avx512f"))) float direct_sqdist_avx512(const float* a, const float* b, int64_t D) {
  __m512 acc = _mm512_setzero_ps();
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes) {
    const __m512 t = _mm512_sub_ps(_mm512_loadu_ps(a + d), _mm512_loadu_ps(b + d));
    acc = _mm512_fmadd_ps(t, t, acc);
  }
  if (d < D) {
    const __mmask16 m = static_cast<__mmask16>(lane_mask(0, 0, D - d));
    const __m512 t = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + d), _mm512_maskz_loadu_ps(m, b + d));
    acc = _mm512_fmadd_ps(t, t, acc);
  }
  return tree16(acc);
}

__attribute__((target("avx512f"))) float sum_squares_avx512(const float* a, int64_t D) {
  __m512 acc = _mm512_setzero_ps();
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes) {
    const __m512 t = _mm512_loadu_ps(a + d);
    acc = _mm512_fmadd_ps(t, t, acc);
  }
  if (d < D) {
    const __m512 t = _mm512_maskz_loadu_ps(static_cast<__mmask16>(lane_mask(0, 0, D - d)), a + d);
    acc = _mm512_fmadd_ps(t, t, acc);
  }
  return tree16(acc);
}

#endif  // SGCVQ_X86

SGCVQ_CLONES float direct_sqdist_portable(const float* a,
                                                                                const float* b,
                                                                                int64_t D) {
  float acc[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) {
      const float t = a[d + l] - b[d + l];
      acc[l] += t * t;
    }
  for (int64_t l = 0; d + l < D; ++l) {
    const float t = a[d + l] - b[d + l];
    acc[l] += t * t;
  }
  return reduce_lanes(acc);
}

SGCVQ_CLONES float sum_squares_portable(const float* a, int64_t D) {
  float acc[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) acc[l] += a[d + l] * a[d + l];
  for (int64_t l = 0; d + l < D; ++l) acc[l] += a[d + l] * a[d + l];
  return reduce_lanes(acc);
}

// ---- exact search: the same bits as direct_sqdist, many (token, code) pairs at a time ------------
// D <= 16, codes across the lanes of the small-D layout: direct_sqdist_avx512 has a single chunk
// there, lane d holding t_d^2 = fma(t_d, t_d, +0) (zero past D), then the tree 8, 4, 2, 1. Here
// vector register d holds t_d^2 of 16 codes and the same tree adds registers: the same
// operations on the same operands for every code. Terms past D are +0 and are not added
// (x + (+0) == x for every x >= +0 and NaN; no term is ever -0), which D being a compile-time
// constant makes free. fma, not mul + add: -ffp-contract would fuse a mul into the add above it.
#if SGCVQ_X86
template <int D>
__attribute__((target("avx512f"))) void exact_lanes_avx512(const float* xs, int64_t T, const SmallDCodebook& cb,
                                                          int64_t k0, int64_t k1, float* val, int64_t* arg) {
  const __m512 zero = _mm512_setzero_ps(), inf = _mm512_set1_ps(kInf);
  const int64_t b0 = k0 / kLanes, b1 = (k1 + kLanes - 1) / kLanes;
  for (int64_t t = 0; t < T; ++t) {
    __m512 x[D];
    for (int d = 0; d < D; ++d) x[d] = _mm512_set1_ps(xs[t * D + d]);
    __m512 best = inf;
    __m512i bblk = _mm512_setzero_si512(), blk = _mm512_set1_epi32(0);
    const __m512i one = _mm512_set1_epi32(1);
    for (int64_t b = b0; b < b1; ++b, blk = _mm512_add_epi32(blk, one)) {
      const float* e = cb.blocks + b * D * kLanes;
      __m512 a[kLanes];
      for (int d = 0; d < D; ++d) {
        const __m512 td = _mm512_sub_ps(x[d], _mm512_loadu_ps(e + d * kLanes));
        a[d] = _mm512_fmadd_ps(td, td, zero);
      }
      for (int l = 0; l < 8 && l < D; ++l)
        if (l + 8 < D) a[l] = _mm512_add_ps(a[l], a[l + 8]);
      for (int l = 0; l < 4 && l < D; ++l)
        if (l + 4 < D) a[l] = _mm512_add_ps(a[l], a[l + 4]);
      for (int l = 0; l < 2 && l < D; ++l)
        if (l + 2 < D) a[l] = _mm512_add_ps(a[l], a[l + 2]);
      __m512 v = D > 1 ? _mm512_add_ps(a[0], a[1]) : a[0];
      if (b == b0 || b == b1 - 1) v = _mm512_mask_blend_ps(static_cast<__mmask16>(lane_mask(b, k0, k1)), inf, v);
      const __mmask16 lt = _mm512_cmp_ps_mask(v, best, _CMP_LT_OQ);  // NaN never wins, as in the loop
      best = _mm512_mask_blend_ps(lt, best, v);
      bblk = _mm512_mask_blend_epi32(lt, bblk, blk);
    }
    // Lane j holds the first (lowest-index) minimum among codes b*16 + j: the answer is the
    // lowest index among the lanes holding the overall minimum, if that is below infinity.
    alignas(64) float bv[kLanes];
    alignas(64) int32_t bb[kLanes];
    _mm512_store_ps(bv, best);
    _mm512_store_si512(reinterpret_cast<__m512i*>(bb), bblk);
    float m = val[t];
    int64_t mi = arg[t];
    for (int j = 0; j < kLanes; ++j) {
      const int64_t k = (b0 + bb[j]) * kLanes + j;
      if (bv[j] < m || (bv[j] == m && mi >= 0 && k < mi)) {
        m = bv[j];
        mi = k;
      }
    }
    val[t] = m;
    arg[t] = mi;
  }
}

using ExactLanesFn = void (*)(const float*, int64_t, const SmallDCodebook&, int64_t, int64_t, float*, int64_t*);
template <int... Ds>
ExactLanesFn pick_exact_lanes(int64_t D, std::integer_sequence<int, Ds...>) {
  ExactLanesFn fn = nullptr;
  ((D == Ds + 1 ? (fn = &exact_lanes_avx512<Ds + 1>, 0) : 0), ...);
  return fn;
}

// Any D: micro-tiles of 4 tokens x 4 codes (16 accumulators in registers, 8 loads per 16 fma),
// the codes from a block that stays in L2; each pair summed exactly as direct_sqdist_avx512 does
// (its chunks in order, the masked tail, tree16).
#endif  // SGCVQ_X86
constexpr int64_t kExactRows = 4, kExactCols = 4;
constexpr int64_t kExactBlockBytes = 192 << 10;
#if SGCVQ_X86
// tree16 of 16 accumulators at once, transposed: each step adds the same two values tree16 adds
// (lane l and l + 8, then + 4, + 2, + 1), for several accumulators per instruction: 15 adds and 30
// shuffles instead of 16 x 8 ops. Lane 4c + j of the result is tree16(a[j][c]).
__attribute__((target("avx512f"))) inline __m512 tree16_transposed(const __m512 (&a)[kExactRows][kExactCols]) {
  static_assert(kExactRows == 4 && kExactCols == 4, "the lane map below is for 4 x 4 accumulators");
  __m512 s1[8], s2[4], s3[2];
  for (int m = 0; m < 8; ++m) {  // halves: [a_{2m}[l] + a_{2m}[l + 8], a_{2m+1}[l] + a_{2m+1}[l + 8]]
    const __m512 A = a[(2 * m) / 4][(2 * m) % 4], B = a[(2 * m + 1) / 4][(2 * m + 1) % 4];
    s1[m] = _mm512_add_ps(_mm512_shuffle_f32x4(A, B, 0x44), _mm512_shuffle_f32x4(A, B, 0xEE));
  }
  for (int n = 0; n < 4; ++n)  // quarter i: + 4 within accumulator 4n + i
    s2[n] = _mm512_add_ps(_mm512_shuffle_f32x4(s1[2 * n], s1[2 * n + 1], 0x88),
                          _mm512_shuffle_f32x4(s1[2 * n], s1[2 * n + 1], 0xDD));
  for (int o = 0; o < 2; ++o)  // quarter i: [+2 of 8o + i (lanes 0, 1), +2 of 8o + 4 + i (lanes 2, 3)]
    s3[o] = _mm512_add_ps(_mm512_shuffle_ps(s2[2 * o], s2[2 * o + 1], 0x44),
                          _mm512_shuffle_ps(s2[2 * o], s2[2 * o + 1], 0xEE));
  // quarter i: [+1 of i, of 4 + i, of 8 + i, of 12 + i]: lane 4i + s holds accumulator 4s + i.
  return _mm512_add_ps(_mm512_shuffle_ps(s3[0], s3[1], 0x88), _mm512_shuffle_ps(s3[0], s3[1], 0xDD));
}

__attribute__((target("avx512f"))) void exact_rows_avx512(const float* xs, int64_t T, int64_t D, const float* e,
                                                         int64_t k0, int64_t k1, float* val, int64_t* arg) {
  const int64_t full = D / kLanes * kLanes;
  const __mmask16 tail = static_cast<__mmask16>(lane_mask(0, 0, D - full));
  const int64_t kb_len = std::max<int64_t>(16, kExactBlockBytes / (D * static_cast<int64_t>(sizeof(float))));
  for (int64_t kb = k0; kb < k1; kb += kb_len) {
    const int64_t ke = std::min(k1, kb + kb_len);
    for (int64_t t0 = 0; t0 < T; t0 += kExactRows) {
      const float* x[kExactRows];
      float bv[kExactRows];
      int64_t bi[kExactRows];
      for (int64_t j = 0; j < kExactRows; ++j) {  // rows past T repeat the last one, results dropped
        const int64_t t = std::min(t0 + j, T - 1);
        x[j] = xs + t * D;
        bv[j] = val[t];
        bi[j] = arg[t];
      }
      for (int64_t k = kb; k < ke; k += kExactCols) {
        const float* ek[kExactCols];  // codes past ke repeat the last one, results dropped
        for (int64_t c = 0; c < kExactCols; ++c) ek[c] = e + std::min(k + c, ke - 1) * D;
        __m512 a[kExactRows][kExactCols];
        for (int64_t j = 0; j < kExactRows; ++j)
          for (int64_t c = 0; c < kExactCols; ++c) a[j][c] = _mm512_setzero_ps();
        for (int64_t d = 0; d < full; d += kLanes) {
          __m512 ev[kExactCols];
          for (int64_t c = 0; c < kExactCols; ++c) ev[c] = _mm512_loadu_ps(ek[c] + d);
          for (int64_t j = 0; j < kExactRows; ++j) {
            const __m512 xv = _mm512_loadu_ps(x[j] + d);
            for (int64_t c = 0; c < kExactCols; ++c) {
              const __m512 t = _mm512_sub_ps(xv, ev[c]);
              a[j][c] = _mm512_fmadd_ps(t, t, a[j][c]);
            }
          }
        }
        if (full < D) {
          __m512 ev[kExactCols];
          for (int64_t c = 0; c < kExactCols; ++c) ev[c] = _mm512_maskz_loadu_ps(tail, ek[c] + full);
          for (int64_t j = 0; j < kExactRows; ++j) {
            const __m512 xv = _mm512_maskz_loadu_ps(tail, x[j] + full);
            for (int64_t c = 0; c < kExactCols; ++c) {
              const __m512 t = _mm512_sub_ps(xv, ev[c]);
              a[j][c] = _mm512_fmadd_ps(t, t, a[j][c]);
            }
          }
        }
        alignas(64) float v[kLanes];  // v[4c + j] = tree16(a[j][c])
        _mm512_store_ps(v, tree16_transposed(a));
        const int64_t nc = std::min(kExactCols, ke - k);
        for (int64_t j = 0; j < kExactRows; ++j)
          for (int64_t c = 0; c < nc; ++c)  // codes in index order: strict '<' keeps the lowest
            if (v[4 * c + j] < bv[j]) {
              bv[j] = v[4 * c + j];
              bi[j] = k + c;
            }
      }
      for (int64_t j = 0; j < kExactRows && t0 + j < T; ++j) {
        val[t0 + j] = bv[j];
        arg[t0 + j] = bi[j];
      }
    }
  }
}

#endif  // SGCVQ_X86

// The CPU's features alone pick the version (not SGCVQ_CPU_PORTABLE): every caller in a process
// must get the same bits, and the re-score, the exact fallback and sqdist all come through here.
bool sums_use_avx512() {
#if SGCVQ_X86
  static const bool yes = __builtin_cpu_supports("avx512f");
  return yes;
#else
  return false;
#endif
}

}  // namespace

#if SGCVQ_X86
namespace {
// direct_sqdist of 16 (token, code) pairs, D <= 8, as one vector: lane j is the distance of row
// xs + tok[j] D to row e + code[j] D, with direct_sqdist_avx512's bits. The squares two pairs a
// register (lanes 0-7 and 8-15, zeros past D, as its masked chunk gives them), then tree16's
// additions for all 16 at once, transposed: its first level adds lane l + 8, a zero here (exact,
// skipped); then dims l + (l + 4), + 2, + 1, in its association.
template <int64_t D>
__attribute__((target("avx512f,avx512dq,avx512vl"))) inline __m512 sqdist16_pairs(const float* xs, const float* e,
                                                                                   const int32_t* tok,
                                                                                   const int32_t* code) {
  const __mmask8 m8 = static_cast<__mmask8>(lane_mask(0, 0, D));
  __m512 q[8];
#pragma GCC unroll 8
  for (int j = 0; j < 8; ++j) {
    const __m512 x = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_maskz_loadu_ps(m8, xs + int64_t{tok[2 * j]} * D)),
                                        _mm256_maskz_loadu_ps(m8, xs + int64_t{tok[2 * j + 1]} * D), 1);
    const __m512 ev = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_maskz_loadu_ps(m8, e + int64_t{code[2 * j]} * D)),
                                         _mm256_maskz_loadu_ps(m8, e + int64_t{code[2 * j + 1]} * D), 1);
    const __m512 d = _mm512_sub_ps(x, ev);
    q[j] = _mm512_fmadd_ps(d, d, _mm512_setzero_ps());
  }
  // Register j's quarters: pair 2j dims 0-3, dims 4-7, pair 2j + 1 dims 0-3, dims 4-7.
  __m512 s[4], u[2];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i)  // quarter c: pair 4i + c, lane l: dims l + (l + 4)
    s[i] = _mm512_add_ps(_mm512_shuffle_f32x4(q[2 * i], q[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(q[2 * i], q[2 * i + 1], 0xDD));
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i)  // quarter c: lanes 0, 1 pair 8i + c (+ 2), lanes 2, 3 pair 8i + 4 + c
    u[i] = _mm512_add_ps(_mm512_shuffle_ps(s[2 * i], s[2 * i + 1], 0x44),
                         _mm512_shuffle_ps(s[2 * i], s[2 * i + 1], 0xEE));
  // (+ 1) quarter c, lane l: pair 4l + c; to lane j = pair j.
  const __m512 f = _mm512_add_ps(_mm512_shuffle_ps(u[0], u[1], 0x88), _mm512_shuffle_ps(u[0], u[1], 0xDD));
  const __m512i to_pair = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(to_pair, f);
}

// One token's list for D <= 16: direct_sqdist_avx512's single masked chunk and tree16 per listed
// code (its bits), the winner as rescore_lists takes it.
__attribute__((target("avx512f,avx512dq,avx512vl"))) inline void rescore_token16(const float* xs, int64_t t, int64_t D,
                                                                                  const float* e, const int32_t* idx,
                                                                                  const int32_t* n, int64_t stride,
                                                                                  float* val, int64_t* arg) {
  const __mmask16 m = static_cast<__mmask16>(lane_mask(0, 0, D));
  const __m512 x = _mm512_maskz_loadu_ps(m, xs + t * D);
  const int32_t* ids = idx + t * stride;
  float bv = std::numeric_limits<float>::infinity();
  int64_t bi = -1;
  for (int32_t j = 0; j < n[t * stride]; ++j) {
    const int64_t k = ids[j];
    const __m512 d = _mm512_sub_ps(x, _mm512_maskz_loadu_ps(m, e + k * D));
    const float v = tree16(_mm512_fmadd_ps(d, d, _mm512_setzero_ps()));
    const bool take = v < bv || (v == bv && k < bi);
    bv = take ? v : bv;
    bi = take ? k : bi;
  }
  val[t] = bv;
  arg[t] = bi;
}

// rescore_lists_small for D <= 8 (the window's D = 8 semantic search spends ~5% here).
template <int64_t D>
__attribute__((target("avx512f,avx512dq,avx512vl"))) void rescore_flat8(const float* xs, int64_t T, const float* e,
                                                                        const int32_t* idx, const int32_t* n,
                                                                        int64_t stride, float* val, int64_t* arg) {
  // Without a branch that depends on a list's length (at (65536, 16384, 8) with 16 groups the
  // window lists one code for 65% of tokens, two for 25%, more for 10%: a loop per token over
  // its list mispredicts its exit, ~6 ns a token): the lists laid out flat as (token, code)
  // pairs by masked stores, their distances 16 pairs at a time, and each token's winner as the
  // smallest key (distance bits << 32 | code, ~0 for a non-finite distance, which never wins).
  thread_local std::vector<int32_t> flat;
  thread_local std::vector<uint64_t> keys;
  constexpr int32_t kFlat = 16;  // longer lists (the caller's hold at most 12) go one by one (rescore_token16)
  const size_t cap = static_cast<size_t>(T * kFlat + 16);
  if (flat.size() < 2 * cap) flat.resize(2 * cap);
  if (keys.size() < static_cast<size_t>(T)) keys.resize(static_cast<size_t>(T));
  int32_t* const ptok = flat.data();
  int32_t* const pcode = flat.data() + cap;
  uint64_t* const key = keys.data();
  std::fill(key, key + T, ~uint64_t{0});
  int64_t P = 0;
  for (int64_t t = 0; t < T; ++t) {
    const int32_t nt = n[t * stride] > kFlat ? 0 : n[t * stride];  // < 0: none
    const __mmask16 in = static_cast<__mmask16>(nt > 0 ? (1u << nt) - 1u : 0u);
    _mm512_mask_storeu_epi32(pcode + P, in, _mm512_maskz_loadu_epi32(in, idx + t * stride));
    _mm512_mask_storeu_epi32(ptok + P, in, _mm512_set1_epi32(static_cast<int32_t>(t)));
    P += nt > 0 ? nt : 0;
  }
  // The last block's unused lanes score token 0 against code pcode[0] (valid rows; not kept).
  for (int64_t p = P; p < (P + 15) / 16 * 16; ++p) {
    ptok[p] = 0;
    pcode[p] = P > 0 ? pcode[0] : 0;
  }
  for (int64_t p0 = 0; p0 < P; p0 += 16) {
    const __m512i bits = _mm512_castps_si512(sqdist16_pairs<D>(xs, e, ptok + p0, pcode + p0));
    const __mmask16 finite = _mm512_cmplt_epu32_mask(bits, _mm512_set1_epi32(0x7F800000));
    const __m512i hi = _mm512_mask_blend_epi32(finite, _mm512_set1_epi32(-1), bits);
    const __m512i lo = _mm512_mask_blend_epi32(finite, _mm512_set1_epi32(-1), _mm512_loadu_si512(pcode + p0));
    alignas(64) uint64_t kv[16];
    _mm512_store_si512(kv, _mm512_unpacklo_epi32(lo, hi));      // pairs 0-1, 4-5, 8-9, 12-13
    _mm512_store_si512(kv + 8, _mm512_unpackhi_epi32(lo, hi));  // pairs 2-3, 6-7, 10-11, 14-15
    const int64_t m = std::min<int64_t>(16, P - p0);
#pragma GCC unroll 16
    for (int64_t j = 0; j < 16; ++j) {
      if (j >= m) break;
      // unpack's lane order: kv[0..7] = pairs 0, 1, 4, 5, 8, 9, 12, 13; kv[8..15] the others.
      const int64_t q = (j & 1) + ((j >> 2) << 1) + ((j & 2) << 2);
      uint64_t& best = key[ptok[p0 + j]];
      best = std::min(best, kv[q]);
    }
  }
  // Keys to (val, arg), eight tokens a register: none (~0) gives (inf, -1).
  const __m512i none = _mm512_set1_epi64(-1);
  for (int64_t t0 = 0; t0 < T; t0 += 8) {
    const __mmask8 in = static_cast<__mmask8>(T - t0 >= 8 ? 0xFFu : (1u << (T - t0)) - 1u);
    const __m512i k = _mm512_maskz_loadu_epi64(in, key + t0);
    const __mmask8 empty = _mm512_cmpeq_epi64_mask(k, none);
    const __m256 v = _mm256_castsi256_ps(_mm512_cvtepi64_epi32(_mm512_srli_epi64(k, 32)));
    _mm256_mask_storeu_ps(val + t0, in, _mm256_mask_blend_ps(empty, v, _mm256_set1_ps(std::numeric_limits<float>::infinity())));
    _mm512_mask_storeu_epi64(arg + t0, in, _mm512_mask_blend_epi64(empty, _mm512_and_si512(k, _mm512_set1_epi64(0xFFFFFFFF)), none));
  }
  for (int64_t t = 0; t < T; ++t)
    if (__builtin_expect(n[t * stride] > kFlat, 0)) rescore_token16(xs, t, D, e, idx, n, stride, val, arg);
}

// rescore_lists for D <= 16: direct_sqdist_avx512's single masked chunk, per listed code.
__attribute__((target("avx512f,avx512dq,avx512vl"))) void rescore_lists_small(const float* xs, int64_t T, int64_t D, const float* e,
                                                           const int32_t* idx, const int32_t* n, int64_t stride,
                                                           float* val, int64_t* arg) {
  if (D <= 8) {
    switch (D) {
      case 1: return rescore_flat8<1>(xs, T, e, idx, n, stride, val, arg);
      case 2: return rescore_flat8<2>(xs, T, e, idx, n, stride, val, arg);
      case 3: return rescore_flat8<3>(xs, T, e, idx, n, stride, val, arg);
      case 4: return rescore_flat8<4>(xs, T, e, idx, n, stride, val, arg);
      case 5: return rescore_flat8<5>(xs, T, e, idx, n, stride, val, arg);
      case 6: return rescore_flat8<6>(xs, T, e, idx, n, stride, val, arg);
      case 7: return rescore_flat8<7>(xs, T, e, idx, n, stride, val, arg);
      default: return rescore_flat8<8>(xs, T, e, idx, n, stride, val, arg);
    }
  }
  for (int64_t t = 0; t < T; ++t) rescore_token16(xs, t, D, e, idx, n, stride, val, arg);
}
}  // namespace
#endif  // SGCVQ_X86

void rescore_lists(const float* xs, int64_t T, int64_t D, const float* e, const int32_t* idx, const int32_t* n,
                   int64_t stride, float* val, int64_t* arg) {
#if SGCVQ_X86
  static const bool vl = __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (sums_use_avx512() && vl && D <= kLanes) return rescore_lists_small(xs, T, D, e, idx, n, stride, val, arg);
#endif
  for (int64_t t = 0; t < T; ++t) {
    float bv = std::numeric_limits<float>::infinity();
    int64_t bi = -1;
    for (int32_t j = 0; j < n[t * stride]; ++j) {
      const int64_t k = idx[t * stride + j];
      const float v = direct_sqdist(xs + t * D, e + k * D, D);
      if (v < bv || (v == bv && k < bi)) { bv = v; bi = k; }
    }
    val[t] = bv;
    arg[t] = bi;
  }
}

float direct_sqdist(const float* a, const float* b, int64_t D) {
#if SGCVQ_X86
  if (sums_use_avx512()) return direct_sqdist_avx512(a, b, D);
#endif
  if (cpu_has_avx2()) return direct_sqdist_avx2(a, b, D);  // the portable bits, faster
  return direct_sqdist_portable(a, b, D);
}

void exact_search(const float* xs, int64_t T, int64_t D, const float* e, const SmallDCodebook* lanes, int64_t k0,
                  int64_t k1, float* val, int64_t* arg) {
  if (T <= 0 || k1 <= k0) return;
  // The AVX-512 kernels reproduce direct_sqdist_avx512, so they run only where that is the one.
  if (sums_use_avx512() && scan_uses_avx512()) {
#if SGCVQ_X86
    if (lanes != nullptr && D <= kSmallMaxD) {
      const ExactLanesFn fn = pick_exact_lanes(D, std::make_integer_sequence<int, kSmallMaxD>{});
      if (fn != nullptr) return fn(xs, T, *lanes, k0, k1, val, arg);
    }
#endif
#if SGCVQ_X86
    return exact_rows_avx512(xs, T, D, e, k0, k1, val, arg);
#endif
  }
  // AVX2 CPUs: the portable bits, 8 codes a vector (D <= 16, the small-D layout).
  if (lanes != nullptr && lanes->blocks != nullptr && D <= kSmallMaxD && !sums_use_avx512() &&
      exact_lanes_avx2(xs, T, D, *lanes, k0, k1, val, arg))
    return;
  const int64_t kb_len = std::max<int64_t>(16, kExactBlockBytes / (D * static_cast<int64_t>(sizeof(float))));
  // AVX2 CPUs, any D: the same bits (direct_sqdist is direct_sqdist_avx2 there), no call per pair;
  // code blocks of ~24 KB, in L1 while every token passes (from L2, the code rows' loads were the
  // limit: 32 bytes a cycle for 8 FP operations).
  if (!sums_use_avx512() && cpu_has_avx2()) {
    const int64_t l1_len = std::max<int64_t>(4, (24 << 10) / (D * static_cast<int64_t>(sizeof(float))));
    return exact_rows_avx2(xs, T, D, e, k0, k1, l1_len, val, arg);
  }
  // Portable: direct_sqdist itself per pair, in the same cache-sized tiles.
  for (int64_t kb = k0; kb < k1; kb += kb_len) {
    const int64_t ke = std::min(k1, kb + kb_len);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t k = kb; k < ke; ++k) {
        const float v = direct_sqdist(xs + t * D, e + k * D, D);
        if (v < val[t]) {
          val[t] = v;
          arg[t] = k;
        }
      }
  }
}

float sum_squares(const float* a, int64_t D) {
#if SGCVQ_X86
  if (sums_use_avx512()) return sum_squares_avx512(a, D);
#endif
  if (cpu_has_avx2()) return sum_squares_avx2(a, D);  // the portable bits, faster
  return sum_squares_portable(a, D);
}

// SGCVQ_CPU_PORTABLE=1 forces the portable scans, so tests can cover them on an AVX-512 machine;
// SGCVQ_CPU_AVX2=1 the AVX2 ones (avx2/cpu_kind.h; read on every call).
bool scan_uses_avx512() {
  if (avx2_forced()) return false;
#if SGCVQ_X86
  static const bool yes = !cpu_options().portable && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512dq");
#else
  static const bool yes = false;
#endif
  return yes;
}

void small_d_scan(const float* xs, int64_t T, int64_t D, const SmallDCodebook& cb, int64_t k0,
                  int64_t k1, Top2* best) {
#if SGCVQ_X86
  if (scan_uses_avx512()) {
    const SmallFn fn = pick_small(D, std::make_integer_sequence<int, kSmallMaxD>{});
    if (fn != nullptr) return fn(xs, T, cb, k0, k1, best);
  }
#endif
  if (small_d_scan_avx2(xs, T, D, cb, k0, k1, best)) return;
  small_d_scan_portable(xs, T, D, cb, k0, k1, best);
}

void top2_rows(const float* S, int64_t ld, int64_t tn, int64_t kn, const float* norms,
               int64_t kbase, Top2* best) {
#if SGCVQ_X86
  if (scan_uses_avx512()) return top2_rows_avx512(S, ld, tn, kn, norms, kbase, best);
#endif
  top2_rows_portable(S, ld, tn, kn, norms, kbase, best);
}

}  // namespace cpu
}  // namespace sgcvq
