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
// exact_search's contract (nearest_code_scan.h) for any D with direct_sqdist_avx2's bits, code
// blocks of `block` codes (cache-sized), four codes a pass per token: the portable loop's answer
// without a call per pair (~3x faster at D = 256). Need cpu_has_avx2().
void exact_rows_avx2(const float* xs, int64_t T, int64_t D, const float* e, int64_t k0, int64_t k1, int64_t block,
                     float* val, int64_t* arg);

}  // namespace cpu
}  // namespace sgcvq
