// The exact search of uncertified tokens at D <= 16 on AVX2 CPUs, with the portable
// direct_sqdist's bits (nearest_code_scan.h: 16 lane-wise partial sums, then the tree 8, 4, 2, 1).
#pragma once
#include "../nearest_code_scan.h"

#include <cstdint>

namespace sgcvq {
namespace cpu {

// exact_search's contract for D <= kSmallMaxD over the small-D layout: for t < T, (val[t], arg[t])
// <- the first code k in [k0, k1) whose direct_sqdist(xs + t D, e_k) is below val[t] and smallest
// (ties to the lowest index, NaN never wins). Only valid where direct_sqdist is the portable one
// (no AVX-512 on this CPU); false (nothing written) where the AVX2 kernels are off or D > 16.
bool exact_lanes_avx2(const float* xs, int64_t T, int64_t D, const SmallDCodebook& cb, int64_t k0, int64_t k1,
                      float* val, int64_t* arg);

}  // namespace cpu
}  // namespace sgcvq
