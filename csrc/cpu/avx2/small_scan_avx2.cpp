// The AVX2 small-D scan (see small_scan_avx2.h): the AVX-512 scan's two phases with 8 codes a
// vector.
//
// Codes are taken 8 at a time (half of a 16-code block of the small-D layout). The first ~40 KB of
// a range (the window: a whole group of up to ~1100 codes at D = 8) keep a per-lane top-2 without
// a data-dependent branch: each mispredicted top-2 update costs ~15 cycles, and a branchy scan
// pays about 2 ln(n) of them per token, as much as the FMAs of a 512-code group. After the window
// the running second best is low, and one compare per 8 codes decides whether the rare scalar
// update runs: D FMAs + 2 ops per 8 codes, the FMA rate's limit for D >= 4.
//
// Compiled for AVX2 + FMA by the pragma below (after every include, so no inline function of a
// shared header is emitted with AVX2 code), never by flags for the whole library; called only
// where avx2_kernels_on() says the CPU has them.
#include "small_scan_avx2.h"

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

constexpr int64_t kV = 8;  // codes per AVX2 vector

// No std::min / std::max in here: a template instantiated under the pragma could be emitted with
// AVX2 code and shared (COMDAT) with callers on CPUs without it.
inline int64_t lo64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t hi64(int64_t a, int64_t b) { return a > b ? a : b; }

// Feature 0 of code vector c (codes 8c .. 8c + 7) in the [blocks][D][16] layout; feature d is
// d * 16 floats further.
inline const float* vec_codes(const SmallDCodebook& cb, int64_t D, int64_t c) {
  return cb.blocks + (c >> 1) * D * kLanes + (c & 1) * kV;
}

// The norms of code vector c with +inf in the lanes outside [k0, k1) (only the range's first and
// last vectors have such lanes; the pads past K hold zero norms and zero codes).
inline __m256 vec_norms(const SmallDCodebook& cb, int64_t c, int64_t k0, int64_t k1) {
  const __m256 nv = _mm256_loadu_ps(cb.norms + c * kV);
  if (c * kV >= k0 && (c + 1) * kV <= k1) return nv;
  const __m256i code = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(c * kV)),
                                        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  const __m256i in = _mm256_and_si256(_mm256_cmpgt_epi32(code, _mm256_set1_epi32(static_cast<int32_t>(k0 - 1))),
                                      _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(k1)), code));
  return _mm256_blendv_ps(_mm256_set1_ps(kInf), nv, _mm256_castsi256_ps(in));
}

// a0 += x0 e, a1 += x1 e with e loaded once and x0, x1 broadcast from memory, as one asm
// statement (as intrinsics GCC kept every code vector and broadcast of a step live at once and
// spilled the top-2 state: a load and a store per vector).
__attribute__((always_inline)) inline void load_bcast_fma2(const float* e, const float& x0, const float& x1, __m256& a0,
                                                           __m256& a1) {
  __m256 ev, xb;
  asm("vmovups %[e], %[ev]\n\t"
      "vbroadcastss %[x0], %[xb]\n\tvfmadd231ps %[ev], %[xb], %[a0]\n\t"
      "vbroadcastss %[x1], %[xb]\n\tvfmadd231ps %[ev], %[xb], %[a1]"
      : [a0] "+x"(a0), [a1] "+x"(a1), [ev] "=&x"(ev), [xb] "=&x"(xb)
      : [e] "m"(*reinterpret_cast<const __m256*>(e)), [x0] "m"(x0), [x1] "m"(x1));
}


// The window over code vectors [c0, cw): per token and lane the smallest value m1 (with the vector
// it came from) and the second smallest m2 (five vector ops per 8 codes next to the FMAs). Then
// the token's top-2: i1, i2 the two best lane winners, v2 = min(second winner, every lane's m2),
// which bounds every other code from below (Top2's invariants, as the AVX-512 window_top2).
// Strict '<' keeps NaN out; max(acc, m1) returns m1 for a NaN acc.
// Two tokens a pass, each with 3 state vectors and two accumulators (even and odd features: half
// the dependent FMA chain). Three tokens with one accumulator each (1.33 loads per FMA instead of
// 1.5) measured no faster.
template <int D>
void window_pass(const float* xs, int64_t t0, const SmallDCodebook& cb, int64_t c0, int64_t cw, int64_t k0,
                 int64_t k1, Top2* best) {
  constexpr int kW = 2;
  const __m256 inf = _mm256_set1_ps(kInf);
  const __m256i lane_ids = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  alignas(32) int32_t ids[kV];
  {
    __m256 m1[kW], m2[kW], id[kW];
    for (int i = 0; i < kW; ++i) {
      m1[i] = inf;
      m2[i] = inf;
      id[i] = _mm256_setzero_ps();
    }
    alignas(32) float x[kW * D];  // broadcasts from the stack pointer plus a constant
    for (int i = 0; i < kW * D; ++i) x[i] = xs[t0 * D + i];
    for (int64_t c = c0; c < cw; ++c) {
      const float* e = vec_codes(cb, D, c);
      const __m256 nv = vec_norms(cb, c, k0, k1);
      const __m256 cid = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int32_t>(c - c0)));
      __m256 a0[kW], a1[kW];
#pragma GCC unroll 2
      for (int i = 0; i < kW; ++i) {
        a0[i] = nv;
        a1[i] = _mm256_setzero_ps();
      }
#pragma GCC unroll 16
      for (int d = 0; d < D; ++d) {
        if (d % 2 == 0)
          load_bcast_fma2(e + d * kLanes, x[d], x[D + d], a0[0], a0[1]);
        else
          load_bcast_fma2(e + d * kLanes, x[d], x[D + d], a1[0], a1[1]);
      }
#pragma GCC unroll 2
      for (int i = 0; i < kW; ++i) {
        const __m256 acc = D > 1 ? _mm256_add_ps(a0[i], a1[i]) : a0[i];
        const __m256 lt = _mm256_cmp_ps(acc, m1[i], _CMP_LT_OQ);
        m2[i] = _mm256_min_ps(_mm256_max_ps(acc, m1[i]), m2[i]);
        m1[i] = _mm256_min_ps(acc, m1[i]);  // acc where below; m1 for a NaN acc and ties
        id[i] = _mm256_blendv_ps(id[i], cid, lt);
      }
    }
    for (int i = 0; i < kW; ++i) {
      // Vector reductions, no data-dependent branch (the scalar loops over the lanes mispredicted
      // a few times a token: a tenth of a 512-code group's search).
      _mm256_store_si256(reinterpret_cast<__m256i*>(ids), _mm256_castps_si256(id[i]));
      Top2& o = best[t0 + i];
      o = Top2{};
      const float v1 = hmin(m1[i]);
      if (!(v1 < kInf)) continue;  // nothing finite in the window: the branchy scan starts afresh
      const int l1 = __builtin_ctz(static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(m1[i], _mm256_set1_ps(v1), _CMP_EQ_OQ))));
      const __m256 rest = _mm256_blendv_ps(m1[i], inf, _mm256_castsi256_ps(_mm256_cmpeq_epi32(lane_ids, _mm256_set1_epi32(l1))));
      const float w2 = hmin(rest), lane2 = hmin(m2[i]);
      o.v1 = v1;
      o.i1 = (c0 + ids[l1]) * kV + l1;
      o.v2 = w2 < lane2 ? w2 : lane2;
      if (w2 < kInf) {
        const int l2 = __builtin_ctz(static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(rest, _mm256_set1_ps(w2), _CMP_EQ_OQ))));
        o.i2 = (c0 + ids[l2]) * kV + l2;
      }
    }
  }
}

template <int D>
void window_top2(const float* xs, int64_t T, const SmallDCodebook& cb, int64_t c0, int64_t cw, int64_t k0,
                 int64_t k1, Top2* best) {
  for (int64_t t0 = 0; t0 < T; t0 += 2) window_pass<D>(xs, t0, cb, c0, cw, k0, k1, best);  // T is even
}

// a0 += x e0, a1 += x e1 with x broadcast from memory, as one asm statement: written as
// intrinsics, GCC kept the 4 D broadcast addresses in spilled registers (a load more per FMA pair,
// and loads are what this loop is short of).
__attribute__((always_inline)) inline void bcast_fma2(const float& x, __m256 e0, __m256 e1, __m256& a0, __m256& a1) {
  __m256 xb;
  asm("vbroadcastss %[x], %[xb]\n\tvfmadd231ps %[e0], %[xb], %[a0]\n\tvfmadd231ps %[e1], %[xb], %[a1]"
      : [a0] "+x"(a0), [a1] "+x"(a1), [xb] "=&x"(xb)
      : [x] "m"(x), [e0] "x"(e0), [e1] "x"(e1));
}

// The branchy scan over the 16-code blocks [b0, b1) for tokens [0, T) (T a multiple of 8): a
// register block of 4 tokens x 16 codes (8 accumulators, the two code vectors of a feature and a
// broadcast of x: 4 + 2 loads per 8 FMAs), then per token the minimum of its 16 values against
// its running second best, and one branch per block (rarely taken once the top-2 settles).
template <int D>
void branchy_top2(const float* xs, int64_t T, const SmallDCodebook& cb, int64_t b0, int64_t b1, int64_t k0,
                  int64_t k1, Top2* best) {
  constexpr int kR = 4;
  alignas(32) float tmp[2 * kV];
  // The tokens' features in a local array: broadcasts from the stack pointer plus a constant (with
  // xs + t0 D + r D + d GCC kept 4 D addresses in spilled registers, a load more per broadcast).
  alignas(32) float x[kR * D];
  for (int64_t t0 = 0; t0 < T; t0 += kR) {
    for (int i = 0; i < kR * D; ++i) x[i] = xs[t0 * D + i];
    Top2* bt = best + t0;
    __m256 thr[kR];
#pragma GCC unroll 4
    for (int r = 0; r < kR; ++r) thr[r] = _mm256_set1_ps(bt[r].v2);
    for (int64_t b = b0; b < b1; ++b) {
      const float* e = cb.blocks + b * D * kLanes;
      const __m256 n0 = vec_norms(cb, 2 * b, k0, k1), n1 = vec_norms(cb, 2 * b + 1, k0, k1);
      __m256 a0[kR], a1[kR];
#pragma GCC unroll 4
      for (int r = 0; r < kR; ++r) {
        a0[r] = n0;
        a1[r] = n1;
      }
#pragma GCC unroll 16
      for (int d = 0; d < D; ++d) {
        const __m256 e0 = _mm256_loadu_ps(e + d * kLanes), e1 = _mm256_loadu_ps(e + d * kLanes + kV);
#pragma GCC unroll 4
        for (int r = 0; r < kR; ++r) bcast_fma2(x[r * D + d], e0, e1, a0[r], a1[r]);
      }
      __m256 hit = _mm256_cmp_ps(_mm256_min_ps(a0[0], a1[0]), thr[0], _CMP_LT_OQ);
#pragma GCC unroll 4
      for (int r = 1; r < kR; ++r) hit = _mm256_or_ps(hit, _mm256_cmp_ps(_mm256_min_ps(a0[r], a1[r]), thr[r], _CMP_LT_OQ));
      if (__builtin_expect(_mm256_movemask_ps(hit) == 0, 1)) continue;
      for (int r = 0; r < kR; ++r) {
        const int h = _mm256_movemask_ps(_mm256_cmp_ps(a0[r], thr[r], _CMP_LT_OQ)) |
                      _mm256_movemask_ps(_mm256_cmp_ps(a1[r], thr[r], _CMP_LT_OQ)) << kV;
        if (h == 0) continue;
        _mm256_store_ps(tmp, a0[r]);
        _mm256_store_ps(tmp + kV, a1[r]);
        for (int m = h; m != 0; m &= m - 1) {
          const int l = __builtin_ctz(static_cast<unsigned>(m));
          keep(bt[r], tmp[l], b * kLanes + l);
        }
        thr[r] = _mm256_set1_ps(bt[r].v2);
      }
    }
  }
}

template <int D>
void scan(const float* xs, int64_t T, const SmallDCodebook& cb, int64_t k0, int64_t k1, Top2* best) {
  const int64_t c0 = k0 / kV, c1 = (k1 + kV - 1) / kV;
  // The window: about 40 KB of codes (L1 holds them while every token passes over them), ending
  // on a 16-code block (the branchy scan's unit).
  int64_t cw = lo64(c1, c0 + hi64(4, 40960 / (32 * (D + 1))));
  if (cw < c1) cw += cw & 1;
  window_top2<D>(xs, T, cb, c0, cw, k0, k1, best);
  // Blocks per chunk: codes + norms of a chunk take about 24 KB, inside the 32 KB L1.
  const int64_t chunk = hi64(2, 24576 / (64 * (D + 1)));
  const int64_t b1 = (k1 + kLanes - 1) / kLanes;
  for (int64_t a = cw / 2; a < b1; a += chunk) branchy_top2<D>(xs, T, cb, a, lo64(b1, a + chunk), k0, k1, best);
}

using ScanFn = void (*)(const float*, int64_t, const SmallDCodebook&, int64_t, int64_t, Top2*);
template <int... Ds>
ScanFn pick_scan(int64_t D, std::integer_sequence<int, Ds...>) {
  ScanFn fn = nullptr;
  ((D == Ds + 1 ? (fn = &scan<Ds + 1>, 0) : 0), ...);
  return fn;
}

}  // namespace

bool small_d_scan_avx2(const float* xs, int64_t T, int64_t D, const SmallDCodebook& cb, int64_t k0, int64_t k1,
                       Top2* best) {
  if (!avx2_kernels_on()) return false;
  const ScanFn fn = pick_scan(D, std::make_integer_sequence<int, kSmallMaxD>{});
  if (fn == nullptr) return false;
  if (k1 <= k0) {
    for (int64_t t = 0; t < T; ++t) best[t] = Top2{};
    return true;
  }
  fn(xs, T, cb, k0, k1, best);
  return true;
}

}  // namespace cpu
}  // namespace sgcvq

#pragma GCC pop_options

#else  // not x86-64: no AVX2 kernels

namespace sgcvq {
namespace cpu {
bool small_d_scan_avx2(const float*, int64_t, int64_t, const SmallDCodebook&, int64_t, int64_t, Top2*) { return false; }
}  // namespace cpu
}  // namespace sgcvq

#endif
