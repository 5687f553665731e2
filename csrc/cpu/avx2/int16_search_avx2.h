// Certified int16 candidates for AVX2 CPUs (D > 16): the bf16 search's contract
// (nearest_code_bf16.h: CandList, Bf16Bound, every code outside a list provably farther than the
// best) from 16-bit integer GEMM tiles (vpmaddwd: twice the float32 FMA rate of multiply-adds).
//
// Quantisation: each centred row v (a token's x' = x - c, a code's e' = e - c) becomes s q with q
// integers of at most Q in magnitude and s a power of two (per token, per code), so s q, and the
// residual v - s q, are exact in float32; Q = min(32767, floor(sqrt((2^31 - 1) / Dp))) keeps every
// int32 sum of Dp products exact. The approximate distance of code k is
//     a_k = fl(||e'_k||^2 + (-2 s_x s_k) float(q_x . q_k)),
// whose only roundings are the int32 -> float conversion and one FMA: the bf16 bound
// (bf16_bound) covers them with its float32-accumulation term, and its quantisation terms with
// r = ||-2 s_x q_x + 2 x'|| and max_err = max_k ||s_k q_k - e'_k||, exactly as for bfloat16.
#pragma once
#include "../nearest_code_bf16.h"

#include <ATen/ATen.h>

#include <cstdint>

namespace sgcvq {
namespace cpu {

// The codebook for the int16 tiles (path kAvx2Int16): `packed` holds int16 [Kp / 16][Dp / 2][16]
// pairs (blocks of 16 codes, pairs of features interleaved per code), `code_scale` s_k, `norms`
// ||e'_k||^2, the bound's maxima as pack_bf16_codebook's. Kp = 16 ceil(K / 16); Dp = 2 ceil(D / 2).
Bf16Codebook pack_int16_codebook(const at::Tensor& E /* float32 [K, D] contiguous */);

// bf16_search_item's contract for an int16 codebook: out[t] and bounds[t] for tokens xs [tn, D]
// (float32 rows, not centred) against codes [k0, k1); the bound takes the maxima of [g0, g1).
// Returns how many lists overflowed. Needs avx2_kernels_on().
int64_t int16_search_item(const float* xs, int64_t tn, const Bf16Codebook& cb, int64_t k0, int64_t k1, int64_t g0,
                          int64_t g1, double g, CandList* out, Bf16Bound* bounds);

// The largest |q| for a dimension: every int32 sum of Dp products of two such values is exact.
int32_t int16_q_max(int64_t Dp);

}  // namespace cpu
}  // namespace sgcvq
