// The small-D float32 search over k-d leaves (code_leaves.h) for AVX2 CPUs: a token scans its own
// leaf, then only the leaves whose box might hold a code with an approximate value below its
// running second best.
#pragma once
#include "../code_leaves.h"

#include <cstdint>

namespace sgcvq {
namespace cpu {

// For t = order[i], i < n: best[t] <- a top-2 of norms[k] + xs[t] . e_k over every code k of the
// leaves (xs: rows of -2 x, D floats apart), with Top2's invariants (every code other than i1, i2
// has a value >= v2: a skipped leaf provably so, see leaf_search_avx2.cpp). home[t]: the token's
// own leaf (CodeLeaves::home); order: the tokens sorted by it (neighbours then visit the same
// leaves). bound, list: scratch of L.leaves_pad floats and L.leaves_pad + 8 int32s. Returns how
// many (token, leaf) visits it made (at most n * leaves), or -1 (nothing written) where the AVX2
// kernels are off or D > kSmallMaxD.
int64_t leaf_search_avx2(const float* xs, const int32_t* order, const int32_t* home, int64_t n,
                         const CodeLeaves::View& L, float* bound, int32_t* list, Top2* best);

}  // namespace cpu
}  // namespace sgcvq
