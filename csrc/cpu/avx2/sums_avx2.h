// "The fp32 distance" (nearest_code_scan.h) on AVX2 CPUs: the portable sums' bits, two 8-lane
// registers for its 16 partial sums.
#pragma once
#include <cstdint>

namespace sgcvq {
namespace cpu {

// direct_sqdist_portable and sum_squares_portable bit for bit: lane l (= d % 16) accumulates
// t * t (a multiply, then an add: no FMA, as those loops are compiled), then the tree 8, 4, 2, 1.
// Need cpu_has_avx2().
float direct_sqdist_avx2(const float* a, const float* b, int64_t D);
float sum_squares_avx2(const float* a, int64_t D);

}  // namespace cpu
}  // namespace sgcvq
