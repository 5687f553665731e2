// The float32 small-D scan (D <= 16) for AVX2 CPUs: small_d_scan's contract (nearest_code_scan.h)
// with 8-lane vectors, for CPUs where the AVX-512 scan cannot run.
#pragma once
#include "../nearest_code_scan.h"

#include <cstdint>

namespace sgcvq {
namespace cpu {

// best[t] <- a top-2 of norms[k] + xs[t] . e_k over codes k in [k0, k1), for t < T (T a multiple
// of kSmallTokens; xs is [T][D], -2 x), with Top2's invariants: every code other than i1, i2 has a
// value >= v2, and v1 is i1's value (what the certificate needs). Overwrites best. False (and
// nothing written) where the AVX2 kernels are off or D > kSmallMaxD.
bool small_d_scan_avx2(const float* xs, int64_t T, int64_t D, const SmallDCodebook& cb, int64_t k0, int64_t k1,
                       Top2* best);

}  // namespace cpu
}  // namespace sgcvq
