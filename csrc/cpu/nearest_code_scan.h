// The inner scans of the CPU nearest_code: approximate distances ||e||^2 - 2 x.e, top-2 per token.
//
// Both scans see x already scaled by -2 (exact in floating point), so the approximate distance of
// code k is norms[k] + (-2x).e_k. They keep the two smallest approximate values per token; the
// caller re-scores those in fp32 and certifies the result (certify.h). Each scan has an
// AVX-512 version (chosen at run time) and a portable one, so the library runs on any x86-64 (and,
// without the x86 kernels, on other architectures: SGCVQ_X86 is 0 there).
#pragma once
#include "candidates.h"

#if defined(__x86_64__)
#define SGCVQ_X86 1
#include <immintrin.h>
#else
#define SGCVQ_X86 0
#endif

#include <cstdint>

namespace sgcvq {
namespace cpu {

#if SGCVQ_X86
// Lane 0 <- the sum of lanes 0-7 and lane 8 <- the sum of lanes 8-15, by three shuffle-adds (4, 2,
// 1 apart): the last three levels of direct_sqdist's tree for two rows of up to 8 terms at once.
__attribute__((target("avx512f"))) inline __m512 sum_halves(__m512 s) {
  s = _mm512_add_ps(s, _mm512_shuffle_f32x4(s, s, 0xB1));
  s = _mm512_add_ps(s, _mm512_permute_ps(s, 0x4E));
  return _mm512_add_ps(s, _mm512_permute_ps(s, 0xB1));
}
#endif
constexpr int64_t kLanes = 16;      // codes per block of the small-D layout
constexpr int64_t kSmallMaxD = 16;  // at or below this D the register-blocked scan beats the GEMM

// The codebook in the small-D layout: blocks of 16 codes, each block [D][16] (codes along the
// vector lanes), zero-padded to a whole block; norms [blocks][16].
struct SmallDCodebook {
  const float* blocks;  // [ceil(K/16), D, 16]
  const float* norms;   // [ceil(K/16), 16]
};

// best[t] <- top-2 of norms[k] + xs[t] . e_k over codes k in [k0, k1), for t < T.
// xs is [T][D] (-2 x), T a multiple of kSmallTokens (pad rows are searched and ignored).
constexpr int64_t kSmallTokens = 8;
void small_d_scan(const float* xs, int64_t T, int64_t D, const SmallDCodebook& cb, int64_t k0,
                  int64_t k1, Top2* best);

// best[t] <- top-2 over j < kn of S[t * ld + j] + norms[j] (code index kbase + j), for t < tn.
void top2_rows(const float* S, int64_t ld, int64_t tn, int64_t kn, const float* norms,
               int64_t kbase, Top2* best);

// NOTE: the definition of "the fp32 distance" on the CPU: 16 lane-wise partial sums (lane d % 16)
// added by a fixed tree, so it vectorises and gives the same bits wherever it is called (the
// re-score, the exact fallback and sqdist all use it).
float direct_sqdist(const float* a, const float* b, int64_t D);
// The same summation for sum_d a[d]^2.
float sum_squares(const float* a, int64_t D);

// Re-scores candidate lists: for t < T, (val[t], arg[t]) <- the smallest direct_sqdist(xs + t * D,
// e + k * D, D) over the codes k = idx[t * stride + j], j < n[t * stride] (ties to the lower code;
// NaN never wins; none: inf, -1). The same bits as direct_sqdist; for D <= 16 on AVX-512 it is
// inlined (one masked chunk and the tree), with no call or dispatch per pair.
void rescore_lists(const float* xs, int64_t T, int64_t D, const float* e, const int32_t* idx, const int32_t* n,
                   int64_t stride, float* val, int64_t* arg);

// The exact search of tokens the certificate could not settle: for t < T, (val[t], arg[t]) <- the
// first k in [k0, k1) whose direct_sqdist(xs + t * D, e + k * D, D) is below val[t] and smallest
// (codes visited in index order, strict '<': ties to the lowest index, NaN never wins). The caller
// sets val = inf, arg = -1 (or carries them over from an earlier code range). The values are
// direct_sqdist's bits: the AVX-512 kernels repeat its operations per pair, many pairs at a time
// (cache-sized code blocks; for D <= 16 codes across the lanes of `lanes`, which may be null).
void exact_search(const float* xs, int64_t T, int64_t D, const float* e, const SmallDCodebook* lanes, int64_t k0,
                  int64_t k1, float* val, int64_t* arg);

// True when the AVX-512 versions run: the CPU has AVX-512F/DQ and SGCVQ_CPU_PORTABLE is unset.
bool scan_uses_avx512();

}  // namespace cpu
}  // namespace sgcvq
