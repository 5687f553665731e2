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

// The window over code vectors [c0, cw): per token and lane the smallest value m1 (with the vector
// it came from) and the second smallest m2 (five vector ops per 8 codes next to the FMAs). Then
// the token's top-2: i1, i2 the two best lane winners, v2 = min(second winner, every lane's m2),
// which bounds every other code from below (Top2's invariants, as the AVX-512 window_top2).
// Strict '<' keeps NaN out; max(acc, m1) returns m1 for a NaN acc.
template <int D>
void window_top2(const float* xs, int64_t T, const SmallDCodebook& cb, int64_t c0, int64_t cw, int64_t k0,
                 int64_t k1, Top2* best) {
  constexpr int kW = 2;  // tokens per pass: 3 state vectors each, next to the code vectors
  const __m256 inf = _mm256_set1_ps(kInf);
  alignas(32) float v1s[kV], v2s[kV];
  alignas(32) int32_t ids[kV];
  for (int64_t t0 = 0; t0 < T; t0 += kW) {
    __m256 m1[kW], m2[kW], id[kW];
    for (int i = 0; i < kW; ++i) {
      m1[i] = inf;
      m2[i] = inf;
      id[i] = _mm256_setzero_ps();
    }
    const float* x = xs + t0 * D;
    for (int64_t c = c0; c < cw; ++c) {
      const float* e = vec_codes(cb, D, c);
      const __m256 nv = vec_norms(cb, c, k0, k1);
      const __m256 cid = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int32_t>(c - c0)));
#pragma GCC unroll 2
      for (int i = 0; i < kW; ++i) {
        __m256 acc = nv;
#pragma GCC unroll 16
        for (int d = 0; d < D; ++d) acc = _mm256_fmadd_ps(_mm256_set1_ps(x[i * D + d]), _mm256_loadu_ps(e + d * kLanes), acc);
        const __m256 lt = _mm256_cmp_ps(acc, m1[i], _CMP_LT_OQ);
        m2[i] = _mm256_min_ps(_mm256_max_ps(acc, m1[i]), m2[i]);
        m1[i] = _mm256_blendv_ps(m1[i], acc, lt);
        id[i] = _mm256_blendv_ps(id[i], cid, lt);
      }
    }
    for (int i = 0; i < kW; ++i) {
      _mm256_store_ps(v1s, m1[i]);
      _mm256_store_ps(v2s, m2[i]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(ids), _mm256_castps_si256(id[i]));
      int l1 = 0;
      for (int l = 1; l < kV; ++l) l1 = v1s[l] < v1s[l1] ? l : l1;  // the lowest lane of the minimum
      Top2& o = best[t0 + i];
      o = Top2{};
      if (!(v1s[l1] < kInf)) continue;  // nothing finite in the window: the branchy scan starts afresh
      int l2 = -1;
      float w2 = kInf, lane2 = kInf;
      for (int l = 0; l < kV; ++l) {
        lane2 = v2s[l] < lane2 ? v2s[l] : lane2;
        if (l != l1 && v1s[l] < w2) {
          w2 = v1s[l];
          l2 = l;
        }
      }
      o.v1 = v1s[l1];
      o.i1 = (c0 + ids[l1]) * kV + l1;
      o.v2 = w2 < lane2 ? w2 : lane2;
      if (l2 >= 0) o.i2 = (c0 + ids[l2]) * kV + l2;
    }
  }
}

// The branchy scan over code vectors [c0, c1) for tokens [0, T) (T a multiple of 8): the
// vector's D code rows stay in registers while 8 tokens pass (each broadcast of x feeds one FMA);
// one compare against the token's running second best per 8 codes.
template <int D>
void branchy_top2(const float* xs, int64_t T, const SmallDCodebook& cb, int64_t c0, int64_t c1, int64_t k0,
                  int64_t k1, Top2* best) {
  constexpr int kT = static_cast<int>(kSmallTokens);
  alignas(32) float tmp[kV];
  for (int64_t t0 = 0; t0 < T; t0 += kT) {
    const float* x = xs + t0 * D;
    Top2* bt = best + t0;
    alignas(32) float thr[kT];
    for (int i = 0; i < kT; ++i) thr[i] = bt[i].v2;
    for (int64_t c = c0; c < c1; ++c) {
      const float* e = vec_codes(cb, D, c);
      __m256 ev[D];
#pragma GCC unroll 16
      for (int d = 0; d < D; ++d) ev[d] = _mm256_loadu_ps(e + d * kLanes);
      const __m256 nv = vec_norms(cb, c, k0, k1);
#pragma GCC unroll 8
      for (int i = 0; i < kT; ++i) {
        __m256 acc = nv;
#pragma GCC unroll 16
        for (int d = 0; d < D; ++d) acc = _mm256_fmadd_ps(_mm256_broadcast_ss(x + i * D + d), ev[d], acc);
        const int hit = _mm256_movemask_ps(_mm256_cmp_ps(acc, _mm256_broadcast_ss(thr + i), _CMP_LT_OQ));
        if (__builtin_expect(hit != 0, 0)) {
          _mm256_store_ps(tmp, acc);
          for (int h = hit; h != 0; h &= h - 1) {
            const int l = __builtin_ctz(static_cast<unsigned>(h));
            bt[i].push(tmp[l], c * kV + l);
          }
          thr[i] = bt[i].v2;
        }
      }
    }
  }
}

template <int D>
void scan(const float* xs, int64_t T, const SmallDCodebook& cb, int64_t k0, int64_t k1, Top2* best) {
  const int64_t c0 = k0 / kV, c1 = (k1 + kV - 1) / kV;
  // The window: about 40 KB of codes (L1 holds them while every token passes over them).
  const int64_t cw = lo64(c1, c0 + hi64(4, 40960 / (32 * (D + 1))));
  window_top2<D>(xs, T, cb, c0, cw, k0, k1, best);
  // Vectors per chunk: codes + norms of a chunk take about 24 KB, inside the 32 KB L1.
  const int64_t chunk = hi64(4, 24576 / (32 * (D + 1)));
  for (int64_t a = cw; a < c1; a += chunk) branchy_top2<D>(xs, T, cb, a, lo64(c1, a + chunk), k0, k1, best);
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
