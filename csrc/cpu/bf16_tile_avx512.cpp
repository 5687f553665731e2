// bfloat16 GEMM tiles on AVX512_BF16 (vdpbf16ps: AMD Zen 4/5, Intel Cooper Lake and later), for
// CPUs without AMX (see bf16_tile_avx512.h).
//
// The register block is 6 tokens x 64 codes: 24 float32 accumulators, 4 code vectors and one
// broadcast pair of the token fill the 32 vector registers. Per feature pair: 4 loads of the
// packed codes (an L1-resident block of 64 codes), 6 broadcasts, 24 vdpbf16ps.
// Compiled with function-level target attributes only, so the library still loads on CPUs
// without AVX512_BF16 (bf16_path() never picks this code there).
#include "bf16_tile_avx512.h"

#include <immintrin.h>

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace sgcvq {
namespace cpu {
namespace {

constexpr float kBf16Inf = std::numeric_limits<float>::infinity();

#define SGCVQ_BF16_TARGET __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512bf16")))

// Lanes of 16-code vector v (codes 16v .. 16v+15) inside [k0, k1).
inline __mmask16 lanes_in(int64_t v, int64_t k0, int64_t k1) {
  const int64_t lo = std::max<int64_t>(0, k0 - 16 * v), hi = std::min<int64_t>(16, k1 - 16 * v);
  if (hi <= lo) return 0;
  return static_cast<__mmask16>(((hi >= 16 ? 0x10000u : (1u << hi)) - 1u) & ~((1u << lo) - 1u));
}

// norms != nullptr: s = products + norms (codes v0 * 16 ..), and rowmin[r] (16 lanes) takes the
// lane-wise minimum of the row's values inside [k0, k1) (NaN values leave it alone).
template <int MR>
SGCVQ_BF16_TARGET inline void tile_6x64(const uint32_t* a, int64_t lda32, const uint32_t* b, int64_t pairs,
                                        float* s, int64_t lds, const float* norms, int64_t v0, int64_t k0,
                                        int64_t k1, float* rowmin) {
  __m512 acc[MR][4];
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t p = 0; p < pairs; ++p) {
    const uint32_t* bp = b + p * kBf16Block;
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(bp);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(bp + 16);
    const __m512bh b2 = (__m512bh)_mm512_loadu_si512(bp + 32);
    const __m512bh b3 = (__m512bh)_mm512_loadu_si512(bp + 48);
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[r * lda32 + p]));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
      acc[r][2] = _mm512_dpbf16_ps(acc[r][2], av, b2);
      acc[r][3] = _mm512_dpbf16_ps(acc[r][3], av, b3);
    }
  }
  if (norms == nullptr) {
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) _mm512_storeu_ps(s + r * lds + 16 * c, acc[r][c]);
    return;
  }
  __m512 nv[4];
  __mmask16 in[4];
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    nv[c] = _mm512_loadu_ps(norms + 16 * (v0 + c));
    in[c] = 16 * (v0 + c) >= k0 && 16 * (v0 + c + 1) <= k1 ? static_cast<__mmask16>(0xFFFF) : lanes_in(v0 + c, k0, k1);
  }
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) {
    __m512 mn = _mm512_loadu_ps(rowmin + 16 * r);
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      const __m512 v = _mm512_add_ps(acc[r][c], nv[c]);
      _mm512_storeu_ps(s + r * lds + 16 * c, v);
      mn = _mm512_mask_min_ps(mn, in[c], v, mn);  // min(v, mn) keeps mn where v is NaN
    }
    _mm512_storeu_ps(rowmin + 16 * r, mn);
  }
}

// Pair p of the codes of vector v: blocks of 64 codes, [P][64] uint32 each.
template <int P>
inline const uint32_t* pair_row(const uint32_t* b, int64_t v, int p) {
  const uint64_t uv = static_cast<uint64_t>(v);  // v >= 0: no sign fix-ups for / and %
  return b + (uv >> 2) * (64 * P) + p * 64 + (uv & 3u) * 16;
}

// ||e||^2 - 2 x.e of one token (x: its P pairs of bf16(-2x')) against NB vectors of 16 codes held
// in registers (ev: the codes' pairs, nv: their norms): the dot products of both small-D scans.
template <int P, int NB>
SGCVQ_BF16_TARGET __attribute__((always_inline)) inline void vector_scores(const uint32_t* x, const __m512i (&ev)[NB][P],
                                                                            const __m512 (&nv)[NB], __m512 (&acc)[NB]) {
#pragma GCC unroll 4
  for (int n = 0; n < NB; ++n) acc[n] = nv[n];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {
    const __m512bh xb = (__m512bh)_mm512_set1_epi32(static_cast<int>(x[p]));
#pragma GCC unroll 4
    for (int n = 0; n < NB; ++n) acc[n] = _mm512_dpbf16_ps(acc[n], xb, (__m512bh)ev[n][p]);
  }
}

constexpr int kSmallT = 8;        // tokens sharing each load of the codes
constexpr int kSeedVectors = 16;  // codes / 16 that seed each token's best

// NB vectors of 16 codes from v, already computed for one token (tmp: [NB][16]), through the
// slow path: the lanes below the token's threshold join its list, b falls to their minimum.
template <int NB>
SGCVQ_BF16_TARGET __attribute__((always_inline)) inline void take_step_hits(const float* tmp, int64_t v, float margin,
                                                                float& b, int32_t& count, int32_t* idx, float* val,
                                                                int32_t cap) {
  __m512 mn = _mm512_loadu_ps(tmp);
  for (int j = 1; j < NB; ++j) mn = _mm512_min_ps(mn, _mm512_loadu_ps(tmp + 16 * j));
  b = std::min(b, _mm512_reduce_min_ps(mn));  // NaN lanes: see small_step
  int32_t n = count;  // a local: through the reference every store waited on the last one
  if (n < 0) return;
  const float thr = b + margin;
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  // Usually one of the NB vectors has hits: every vector is compressed and stored whatever its
  // hits, so the only branch left is the rare full list (a branch per vector mispredicted about
  // once a call).
  __mmask16 hit[NB];
  int32_t total = 0;
  for (int j = 0; j < NB; ++j) {
    hit[j] = _mm512_cmp_ps_mask(_mm512_loadu_ps(tmp + 16 * j), _mm512_set1_ps(thr), _CMP_LT_OQ);
    total += __builtin_popcount(hit[j]);
  }
  if (__builtin_expect(n + total > cap, 0)) {  // full: drop the entries at or above the threshold
    n = drop_at_or_above(idx, val, n, thr);
    if (n + total > cap) {
      count = -1;
      return;
    }
  }
  for (int j = 0; j < NB; ++j) {
    const int32_t h = __builtin_popcount(hit[j]);
    const __m512i k = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(16 * (v + j))), iota);
    // NOTE: compress into a register, then a masked store: the memory form of vcompress is
    // microcoded on AMD Zen 4/5 (over 100 cycles), the register form takes two.
    const __mmask16 first = static_cast<__mmask16>((1u << h) - 1u);
    _mm512_mask_storeu_epi32(idx + n, first, _mm512_maskz_compress_epi32(hit[j], k));
    _mm512_mask_storeu_ps(val + n, first, _mm512_maskz_compress_ps(hit[j], _mm512_loadu_ps(tmp + 16 * j)));
    n += h;
  }
  count = n;
}

// One step of the small-D scan: NB vectors of 16 codes from v against 8 tokens. The codes' P
// pairs and norms stay in registers; each token's values cost P vdpbf16ps per vector (x's pair
// broadcast from memory), then one vector minimum over the NB vectors and one compare with the
// token's threshold (thr, in memory): a handful of instructions besides the dot products.
template <int P, int NB>
SGCVQ_BF16_TARGET __attribute__((always_inline)) inline void small_step(const uint32_t* a, int64_t lda32, const uint32_t* b, const float* norms,
                                         int64_t v, int64_t k0, int64_t k1, float* thr, const float* margin,
                                         float* best, int32_t* count, int32_t* idx, float* val, int32_t cap) {
  __m512i ev[NB][P];
  __m512 nv[NB];
#pragma GCC unroll 4
  for (int n = 0; n < NB; ++n) {
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) ev[n][p] = _mm512_loadu_si512(pair_row<P>(b, v + n, p));
    nv[n] = _mm512_loadu_ps(norms + 16 * (v + n));
    if (16 * (v + n) < k0 || 16 * (v + n + 1) > k1)
      nv[n] = _mm512_mask_blend_ps(lanes_in(v + n, k0, k1), _mm512_set1_ps(kBf16Inf), nv[n]);
  }
#pragma GCC unroll 8
  for (int i = 0; i < kSmallT; ++i) {
    __m512 acc[NB];
    vector_scores<P, NB>(a + i * lda32, ev, nv, acc);
    __m512 mn = acc[0];
#pragma GCC unroll 4
    for (int n = 1; n < NB; ++n) mn = _mm512_min_ps(mn, acc[n]);  // a NaN lane may hide: see below
    const __mmask16 hit = _mm512_cmp_ps_mask(mn, _mm512_set1_ps(thr[i]), _CMP_LT_OQ);
    // NOTE: min() returns its second operand when either is NaN, so a NaN lane can hide a lane
    // below the threshold. NaN arises only from non-finite x or codes, or products that overflow
    // float32; then ||x'||^2 or max ||e'||^2 is infinite, so is the token's margin, and the token
    // goes to the float32 search whatever its list holds.
    if (__builtin_expect(hit != 0, 0)) {
      alignas(64) float tmp[NB * 16];
#pragma GCC unroll 4
      for (int n = 0; n < NB; ++n) _mm512_store_ps(tmp + 16 * n, acc[n]);
      take_step_hits<NB>(tmp, v, margin[i], best[i], count[i], idx + i * cap, val + i * cap, cap);
      thr[i] = best[i] + margin[i];
    }
  }
}

// The orthant cell of a row of a = bf16(-2x'): bit d set where x'_d > 0, i.e. where the bf16 of
// -2x'_d is negative and not -0 (the codes' cells use e'_d > 0: see SmallSeedCells).
// near: the bit of the feature nearest to 0 (the neighbouring cell across it is c ^ near).
inline int32_t token_cell(const uint32_t* row, int bits, int32_t& near) {
  int32_t id = 0;
  uint32_t smallest = 0xFFFFu;
  near = 0;
  for (int d = 0; d < bits; ++d) {
    // NOTE: no branch: the signs are random, a branch mispredicted half the bits.
    const uint32_t h = (row[d >> 1] >> (16 * (d & 1))) & 0xFFFFu;
    id |= static_cast<int32_t>((static_cast<uint32_t>((h & 0x7FFFu) != 0u) & (h >> 15)) << d);
    const bool less = (h & 0x7FFFu) < smallest;  // bf16 magnitudes order as integers
    smallest = less ? (h & 0x7FFFu) : smallest;
    near = less ? (1 << d) : near;
  }
  return id;
}

template <int P>
SGCVQ_BF16_TARGET void small_scan(const uint32_t* a, int64_t lda32, int64_t T, const uint32_t* b,
                                  const float* norms, int64_t k0, int64_t k1, const float* margin, float* best,
                                  int32_t* count, int32_t* idx, float* val, int32_t cap,
                                  const SmallSeedCells* cells) {
  // NB * P code vectors, NB norms and NB accumulators fit the 32 registers.
  constexpr int NB = P <= 4 ? 4 : P == 5 ? 3 : 2;
  const int64_t v0 = k0 / 16, v1 = (k1 + 15) / 16;
  // Codes per L1 chunk: (P + 1) vectors of 64 bytes each per 16 codes, about 24 KB.
  const int64_t chunk = std::max<int64_t>(2, 24576 / (64 * (P + 1))) / NB * NB;
  for (int64_t t0 = 0; t0 < T; t0 += kSmallT) {
    const uint32_t* at = a + t0 * lda32;
    if (cells != nullptr) {
      // The seed from the token's orthant cells (up to 256 codes each): the values are computed as the
      // scan computes them (norm, then the pairs in order), so the best is a value the scan meets.
      for (int i = 0; i < kSmallT; ++i) {
        int32_t near = 0;
        const int32_t c = token_cell(at + i * lda32, cells->bits, near);
        __m512 mn = _mm512_set1_ps(kBf16Inf);
        // Its own cell and the one across its feature nearest to 0 (NOTES.md CPU entry 11: in a
        // model at K = 16384, 3.0 list entries a token instead of 3.65 with its own cell only).
        for (const int32_t cc : {c, c ^ near}) {
          const int64_t c0 = cells->start[cc], c1 = std::min<int64_t>(cells->start[cc + 1], c0 + kSeedVectors);
          for (int64_t v = c0; v < c1; ++v) {
            __m512 acc = _mm512_loadu_ps(cells->norms + 16 * v);
            for (int p = 0; p < P; ++p)
              acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_set1_epi32(static_cast<int>(at[i * lda32 + p])),
                                     (__m512bh)_mm512_loadu_si512(cells->pairs + (v * P + p) * 16));
            mn = _mm512_min_ps(acc, mn);  // NaN lanes (pads against non-finite x) keep mn
          }
        }
        best[t0 + i] = std::min(best[t0 + i], _mm512_reduce_min_ps(mn));
      }
      continue;
    }
    // The seed: each token's best over the first (up to) 256 codes, a plain vector minimum, so the
    // scan's thresholds start low: every later code that lowers the best takes the slow path
    // (about ln(K / 256) times per token), and the lists only take codes near the best.
    const int64_t vs = std::min(v1, v0 + kSeedVectors);
    for (int i = 0; i < kSmallT; ++i) {
      __m512 mn = _mm512_set1_ps(kBf16Inf);
      for (int64_t v = v0; v < vs; ++v) {
        __m512 acc = _mm512_maskz_loadu_ps(lanes_in(v, k0, k1), norms + 16 * v);
        for (int p = 0; p < P; ++p)
          acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_set1_epi32(static_cast<int>(at[i * lda32 + p])),
                                 (__m512bh)_mm512_loadu_si512(pair_row<P>(b, v, p)));
        mn = _mm512_mask_min_ps(mn, lanes_in(v, k0, k1), acc, mn);  // NaN lanes keep mn
      }
      best[t0 + i] = std::min(best[t0 + i], _mm512_reduce_min_ps(mn));
    }
  }
  for (int64_t c0 = v0; c0 < v1; c0 += chunk) {
    const int64_t c1 = std::min(v1, c0 + chunk);
    for (int64_t t0 = 0; t0 < T; t0 += kSmallT) {
      float thr[kSmallT];
      for (int i = 0; i < kSmallT; ++i) thr[i] = best[t0 + i] + margin[t0 + i];
      const uint32_t* at = a + t0 * lda32;
      int64_t v = c0;
      for (; v + NB <= c1; v += NB)
        small_step<P, NB>(at, lda32, b, norms, v, k0, k1, thr, margin + t0, best + t0, count + t0,
                          idx + t0 * cap, val + t0 * cap, cap);
      for (; v < c1; ++v)
        small_step<P, 1>(at, lda32, b, norms, v, k0, k1, thr, margin + t0, best + t0, count + t0,
                         idx + t0 * cap, val + t0 * cap, cap);
    }
  }
}

// The branch-free form of the small-D scan (bf16_small_window_avx512): per token and lane the
// smallest value m1 and the second smallest m2, the values carrying their vector number in the
// low mantissa bits (one vpternlogd), so three vector ops per 16 codes keep both (min, max, min)
// next to the P vdpbf16ps, and not one data-dependent branch. kW tokens share each load of the
// codes and hold their pairs of x in registers.
//
// Software-pipelined: the dot products of vector v are issued before the bookkeeping of vector
// v - 1. In source order (one step's products, then its bookkeeping) each step's min/max waits
// ~30 cycles on its 4-deep vdpbf16ps chains and the scheduler fills up behind them; a Zen 5 ran
// that mix at 0.70 ns a (token, vector) against 0.64 pipelined (NOTES.md CPU entry 15).
// Vector v's values of kW tokens, each with the vector's number (v - v0) in the low mantissa bits
// ((acc & keep) | tag, one vpternlogd; +-inf becomes NaN). Tagged here, at the end of the
// vdpbf16ps chain, the vpternlogd writes its own input: tagged where the values are kept, GCC
// copied each value to a new register first (6 moves per 6 values).
template <int P, int kW>
SGCVQ_BF16_TARGET __attribute__((always_inline)) inline void window_scores(const __m512bh (&xb)[kW][P],
                                                                            const uint32_t* b, const float* norms,
                                                                            int64_t v, int64_t v0, __m512i keep,
                                                                            __m512 (&acc)[kW]) {
  const __m512i tag = _mm512_set1_epi32(static_cast<int32_t>(v - v0));
  __m512i ev[P];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) ev[p] = _mm512_loadu_si512(pair_row<P>(b, v, p));
  const __m512 nv = _mm512_loadu_ps(norms + 16 * v);
#pragma GCC unroll 8
  for (int i = 0; i < kW; ++i) {
    acc[i] = nv;
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) acc[i] = _mm512_dpbf16_ps(acc[i], xb[i][p], (__m512bh)ev[p]);
    acc[i] = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(_mm512_castps_si512(acc[i]), keep, tag, 0xEA));
  }
}

// Vector v's tagged values of kW tokens into their (m1, m2). Edge: v may hold codes outside
// [k0, k1).
template <int kW, bool Edge>
SGCVQ_BF16_TARGET __attribute__((always_inline)) inline void window_keep(const __m512 (&acc)[kW], int64_t v,
                                                                          int64_t k0, int64_t k1, __m512* m1,
                                                                          __m512* m2) {
#pragma GCC unroll 8
  for (int i = 0; i < kW; ++i) {
    __m512 w = acc[i];
    if constexpr (Edge) w = _mm512_mask_blend_ps(lanes_in(v, k0, k1), _mm512_set1_ps(kBf16Inf), w);
    // min(w, m) and max(w, m) give m for a NaN w: a NaN lane never enters m1, and can only lower
    // m2 to m1 (m2 stays a lower bound of the lane's other codes). Values carrying distinct
    // tags never tie, so m1 is one code's.
    m2[i] = _mm512_min_ps(_mm512_max_ps(w, m1[i]), m2[i]);
    m1[i] = _mm512_min_ps(w, m1[i]);
  }
}

// Vectors [c0, c1) (c0 < c1) against kW tokens from a. Only the range's first and last vectors
// can hold codes outside [k0, k1): they are taken on their own, so that the pipelined loop
// has no branch but its own.
template <int P, int kW>
SGCVQ_BF16_TARGET __attribute__((always_inline)) inline void window_run(const uint32_t* a, int64_t lda32, const uint32_t* b,
                                                                         const float* norms, int64_t c0, int64_t c1,
                                                                         int64_t v0, int64_t k0, int64_t k1, __m512i keep,
                                                                         __m512* m1, __m512* m2) {
  __m512bh xb[kW][P];
#pragma GCC unroll 8
  for (int i = 0; i < kW; ++i)
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) xb[i][p] = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[i * lda32 + p]));
  __m512 va[kW], vb[kW];
  if (16 * c0 < k0) {
    window_scores<P, kW>(xb, b, norms, c0, v0, keep, va);
    window_keep<kW, true>(va, c0, k0, k1, m1, m2);
    if (++c0 == c1) return;
  }
  if (16 * c1 > k1) {
    window_scores<P, kW>(xb, b, norms, c1 - 1, v0, keep, va);
    window_keep<kW, true>(va, c1 - 1, k0, k1, m1, m2);
    if (--c1 == c0) return;
  }
  // Two sets of values in turn (unrolled by two: no register copies between the sets).
  window_scores<P, kW>(xb, b, norms, c0, v0, keep, va);
  int64_t v = c0;
  for (; v + 2 < c1; v += 2) {
    window_scores<P, kW>(xb, b, norms, v + 1, v0, keep, vb);
    window_keep<kW, false>(va, v, k0, k1, m1, m2);
    window_scores<P, kW>(xb, b, norms, v + 2, v0, keep, va);
    window_keep<kW, false>(vb, v + 1, k0, k1, m1, m2);
  }
  if (v + 1 < c1) {
    window_scores<P, kW>(xb, b, norms, v + 1, v0, keep, vb);
    window_keep<kW, false>(va, v, k0, k1, m1, m2);
    window_keep<kW, false>(vb, v + 1, k0, k1, m1, m2);
  } else {
    window_keep<kW, false>(va, v, k0, k1, m1, m2);
  }
}

// Tokens [t0, t0 + kW) over vectors [c0, c1): their (m1, m2) from st (or +inf at the range's
// first chunk), back to st after.
template <int P, int kW>
SGCVQ_BF16_TARGET __attribute__((always_inline)) inline void window_tokens(const uint32_t* a, int64_t lda32, const uint32_t* b,
                                                                            const float* norms, int64_t t0, int64_t c0,
                                                                            int64_t c1, int64_t v0, int64_t k0, int64_t k1,
                                                                            __m512i keep, float* st) {
  __m512 m1[kW], m2[kW];
#pragma GCC unroll 8
  for (int i = 0; i < kW; ++i) {
    m1[i] = c0 == v0 ? _mm512_set1_ps(kBf16Inf) : _mm512_loadu_ps(st + 32 * (t0 + i));
    m2[i] = c0 == v0 ? _mm512_set1_ps(kBf16Inf) : _mm512_loadu_ps(st + 32 * (t0 + i) + 16);
  }
  window_run<P, kW>(a + t0 * lda32, lda32, b, norms, c0, c1, v0, k0, k1, keep, m1, m2);
#pragma GCC unroll 8
  for (int i = 0; i < kW; ++i) {
    _mm512_storeu_ps(st + 32 * (t0 + i), m1[i]);
    _mm512_storeu_ps(st + 32 * (t0 + i) + 16, m2[i]);
  }
}

// Tokens per block: their pairs of x, (m1, m2), two vectors of values and the codes' P pairs in
// the 32 registers.
template <int P>
constexpr int window_tokens_per_block() {
  return P == 1 ? 5 : P <= 2 ? 4 : P <= 4 ? 3 : 2;
}

// Appends to a list every code of lane l in [k0, k1) whose value (computed as the window computes
// it, without the tag) is below thr; false when the list would pass cap (the caller then sends the
// token to the float32 search).
template <int P>
SGCVQ_BF16_TARGET bool lane_below(const uint32_t* x, const SmallLaneCodes& lanes, int l, float thr, int64_t k0,
                                  int64_t k1, int32_t& n, int32_t* idx, int32_t cap) {
  if (k1 - 1 < l) return true;
  // Vectors v with 16 v + l in [k0, k1), inclusive bounds.
  const int64_t vlo = k0 <= l ? 0 : (k0 - l + 15) / 16, vhi = (k1 - 1 - l) / 16;
  __m512bh xb[P];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) xb[p] = (__m512bh)_mm512_set1_epi32(static_cast<int>(x[p]));
  const __m512 tv = _mm512_set1_ps(thr);
  const __m512i iota16 = _mm512_slli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), 4);
  for (int64_t blk = vlo / 16; blk <= vhi / 16; ++blk) {
    const int64_t row = blk * 16 + l;
    __m512 acc = _mm512_loadu_ps(lanes.norms + row * 16);
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p)
      acc = _mm512_dpbf16_ps(acc, xb[p], (__m512bh)_mm512_loadu_si512(lanes.pairs + (row * P + p) * 16));
    const int64_t j0 = std::max<int64_t>(0, vlo - 16 * blk), j1 = std::min<int64_t>(15, vhi - 16 * blk);
    const __mmask16 valid = static_cast<__mmask16>(((2u << j1) - 1u) & ~((1u << j0) - 1u));
    const __mmask16 below = _mm512_mask_cmp_ps_mask(valid, acc, tv, _CMP_LT_OQ);
    const int32_t h = __builtin_popcount(below);
    if (h == 0) continue;
    if (n + h > cap) return false;
    const __m512i code = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(256 * blk + l)), iota16);
    const __mmask16 first = static_cast<__mmask16>((1u << h) - 1u);
    _mm512_mask_storeu_epi32(idx + n, first, _mm512_maskz_compress_epi32(below, code));
    n += h;
  }
  return true;
}

template <int P>
SGCVQ_BF16_TARGET int64_t small_window(const uint32_t* a, int64_t lda32, int64_t T, const uint32_t* b,
                                    const float* norms, const SmallLaneCodes& lanes, int64_t k0, int64_t k1,
                                    const float* margin, float* best, int32_t* count, int32_t* idx, int64_t stride,
                                    int32_t cap) {
  constexpr int kW = window_tokens_per_block<P>();
  const int64_t v0 = k0 / 16, v1 = (k1 + 15) / 16;
  const int bits = bf16_window_bits(k1 - k0);
  const uint32_t low = (1u << bits) - 1u;
  const __m512i keep = _mm512_set1_epi32(static_cast<int32_t>(~low));
  // Codes per L1 chunk, about 24 KB ((P + 1) vectors of 64 bytes per 16 codes: a group of 1024
  // codes at D = 8 in one chunk; 4% faster than 16 KB on a Zen 5, still inside a 32 KB L1); each
  // token's state goes to memory between chunks (2 vectors).
  const int64_t chunk = std::max<int64_t>(1, 24576 / (64 * (P + 1)));
  thread_local std::vector<float> state;  // [T][2][16]: m1, m2
  if (static_cast<int64_t>(state.size()) < 32 * T) state.resize(static_cast<size_t>(32 * T));
  float* st = state.data();
  for (int64_t c0 = v0; c0 < v1; c0 += chunk) {
    const int64_t c1 = std::min(v1, c0 + chunk);
    int64_t t0 = 0;
    for (; t0 + kW <= T; t0 += kW) window_tokens<P, kW>(a, lda32, b, norms, t0, c0, c1, v0, k0, k1, keep, st);
    for (; t0 < T; ++t0) window_tokens<P, 1>(a, lda32, b, norms, t0, c0, c1, v0, k0, k1, keep, st);
  }
  // Each token's list: the lane winners below b + margin. Every other code of a lane is >= that
  // lane's m2, so a lane whose m2 is not below b + margin adds its winner alone; a lane whose m2 is
  // adds every code below b + margin, found by lane_below (the values without the tag: both are
  // within the bound of the exact ones). A list that overflows sends the token to the float32
  // search (count -1).
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i lowv = _mm512_set1_epi32(static_cast<int32_t>(low)), v0v = _mm512_set1_epi32(static_cast<int32_t>(v0));
  int64_t overflowed = 0;
  for (int64_t t = 0; t < T; ++t) {
    const __m512 m1 = _mm512_loadu_ps(st + 32 * t), m2 = _mm512_loadu_ps(st + 32 * t + 16);
    const float bt = _mm512_reduce_min_ps(m1);
    best[t * stride] = bt;
    const float thr = bt + margin[t];
    const __m512 tv = _mm512_set1_ps(thr);
    const __mmask16 twice = _mm512_cmp_ps_mask(m2, tv, _CMP_LT_OQ);
    const __mmask16 hit = _mm512_mask_cmp_ps_mask(static_cast<__mmask16>(~twice), m1, tv, _CMP_LT_OQ);
    int32_t n = 0;
    if (__builtin_expect(twice != 0, 0)) {
      bool fits = true;
      for (uint32_t w = twice; w != 0 && fits; w &= w - 1)
        fits = lane_below<P>(a + t * lda32, lanes, __builtin_ctz(w), thr, k0, k1, n, idx + t * stride, cap);
      if (!fits) {
        count[t * stride] = -1;
        ++overflowed;
        continue;
      }
    }
    const int32_t h = __builtin_popcount(hit);
    if (n + h > cap) {
      count[t * stride] = -1;
      ++overflowed;
      continue;
    }
    // Code of lane l: 16 (v0 + the vector number in its low bits) + l. Compressed in registers and
    // stored under a mask, with no loop over the hits (their number varies by token).
    const __m512i code = _mm512_add_epi32(
        _mm512_slli_epi32(_mm512_add_epi32(_mm512_and_si512(_mm512_castps_si512(m1), lowv), v0v), 4), iota);
    const __mmask16 first = static_cast<__mmask16>((1u << h) - 1u);
    _mm512_mask_storeu_epi32(idx + t * stride + n, first, _mm512_maskz_compress_epi32(hit, code));
    count[t * stride] = n + h;
  }
  return overflowed;
}

}  // namespace

int bf16_window_bits(int64_t codes) {
  const int64_t vectors = (codes + 15) / 16 + 1;  // k0 need not be a multiple of 16
  int bits = 1;
  while ((int64_t{1} << bits) < vectors) ++bits;
  return bits;
}

namespace {
// f(std::integral_constant<int, P>{}) for P = Dp / 2 pairs, 1 .. kBf16SmallMaxPairs: the small-D
// kernels' one instance per pair count.
template <typename F>
decltype(auto) with_pairs(const char* who, int64_t Dp, F&& f) {
  TORCH_CHECK(Dp / 2 >= 1 && Dp / 2 <= kBf16SmallMaxPairs, who, ": D must be at most ", 2 * kBf16SmallMaxPairs,
              ", got Dp = ", Dp);
  static_assert(kBf16SmallMaxPairs == 8, "one case per pair count below");
  switch (Dp / 2) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    default: return f(std::integral_constant<int, 8>{});
  }
}
}  // namespace

int64_t bf16_small_window_avx512(const c10::BFloat16* a, int64_t lda, int64_t T, const c10::BFloat16* packed,
                                 int64_t Dp, const float* norms, const SmallLaneCodes& lanes, int64_t k0, int64_t k1,
                                 const float* margin, float* best, int32_t* count, int32_t* idx, int64_t stride,
                                 int32_t cap) {
  const uint32_t* a32 = reinterpret_cast<const uint32_t*>(a);
  const uint32_t* b32 = reinterpret_cast<const uint32_t*>(packed);
  return with_pairs("bf16_small_window_avx512", Dp, [&](auto pairs) {
    return small_window<decltype(pairs)::value>(a32, lda / 2, T, b32, norms, lanes, k0, k1, margin, best, count, idx,
                                                stride, cap);
  });
}

void bf16_small_scan_avx512(const c10::BFloat16* a, int64_t lda, int64_t T, const c10::BFloat16* packed,
                            int64_t Dp, const float* norms, int64_t k0, int64_t k1, const float* margin,
                            float* best, int32_t* count, int32_t* idx, float* val, int32_t cap,
                            const SmallSeedCells* cells) {
  const uint32_t* a32 = reinterpret_cast<const uint32_t*>(a);
  const uint32_t* b32 = reinterpret_cast<const uint32_t*>(packed);
  with_pairs("bf16_small_scan_avx512", Dp, [&](auto pairs) {
    small_scan<decltype(pairs)::value>(a32, lda / 2, T, b32, norms, k0, k1, margin, best, count, idx, val, cap, cells);
  });
}

bool cpu_has_avx512_bf16() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512bf16");
  return yes;
}

void bf16_tile_avx512(const c10::BFloat16* a, int64_t lda, int64_t mm, const c10::BFloat16* b,
                      int64_t Dp, int64_t blocks, float* s, int64_t lds, const float* norms, int64_t kb,
                      int64_t k0, int64_t k1, float* rowmin) {
  const uint32_t* a32 = reinterpret_cast<const uint32_t*>(a);
  const int64_t lda32 = lda / 2, pairs = Dp / 2;
  for (int64_t j = 0; j < blocks; ++j) {
    const uint32_t* bj = reinterpret_cast<const uint32_t*>(b + j * kBf16Block * Dp);
    float* sj = s + j * kBf16Block;
    const int64_t v0 = (kb + j * kBf16Block) / 16;
    int64_t r = 0;
#define SGCVQ_TILE(MR) \
  tile_6x64<MR>(a32 + r * lda32, lda32, bj, pairs, sj + r * lds, lds, norms, v0, k0, k1, rowmin + 16 * r)
    for (; r + 6 <= mm; r += 6) SGCVQ_TILE(6);
    switch (mm - r) {
      case 5: SGCVQ_TILE(5); break;
      case 4: SGCVQ_TILE(4); break;
      case 3: SGCVQ_TILE(3); break;
      case 2: SGCVQ_TILE(2); break;
      case 1: SGCVQ_TILE(1); break;
      default: break;
    }
#undef SGCVQ_TILE
  }
}

}  // namespace cpu
}  // namespace sgcvq
