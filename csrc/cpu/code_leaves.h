// The codebook cut into leaves of nearby codes (a k-d split), for searches that skip whole leaves.
//
// At small D a token's nearest codes sit in a small region, and a box around each leaf's codes
// bounds every code in it from below: ||x - e||^2 >= dist(x, box)^2. A search that has found a
// good runner-up v2 can then prove a whole leaf holds no code with an approximate value below v2
// and skip it (the bound, with its rounding: avx2/leaf_search_avx2.cpp). The split is
// deterministic, so the search is the same on every run.
#pragma once
#include "collector.h"

#include <cstdint>
#include <vector>

namespace sgcvq {
namespace cpu {

constexpr int64_t kLeafCodes = 64;  // codes per leaf: 8 AVX2 vectors

struct CodeLeaves {
  int64_t D = 0, leaves = 0;
  int64_t leaves_pad = 0;      // leaves rounded up to a multiple of 8 (the box arrays' stride)
  std::vector<float> codes;    // [leaves][D][64]: codes along the lanes, zero in pad slots
  std::vector<float> norms;    // [leaves][64]: fl(||e||^2) as the float codebook has it; +inf in pad slots
  std::vector<int32_t> index;  // [leaves][64]: the code's index in the codebook; -1 in pad slots
  std::vector<float> lo, hi;   // [D][leaves_pad]: each leaf's box; -inf / +inf for a leaf with a
                               // non-finite coordinate (never skipped), +inf / +inf past `leaves`
  // The k-d tree that cut them, to find a token's own leaf: internal node n splits on feature
  // dim[n] at cut[n] (x <= cut: child[2n], else child[2n + 1]); a child c >= 0 is a node, c < 0
  // the leaf -1 - c. Node 0 is the root (no nodes when there is one leaf).
  std::vector<int32_t> dim, child;
  std::vector<float> cut;
  int32_t home(const float* x) const;  // the leaf on x's side of every cut (x: D floats)

  // The arrays as plain pointers, for kernels compiled under a target pragma (which must not
  // instantiate std::vector's members: a COMDAT copy with AVX2 code could serve every caller).
  struct View {
    int64_t D, leaves, leaves_pad;
    const float *codes, *norms, *lo, *hi;
    const int32_t* index;
  };
  View view() const { return {D, leaves, leaves_pad, codes.data(), norms.data(), lo.data(), hi.data(), index.data()}; }
};

// The codes [k0, k1) of cb (float32 [K, D], D <= kSmallMaxD) as leaves: each split halves the
// leaves along the feature with the widest finite range, the lower codes (ties: the lower index)
// left.
CodeLeaves build_code_leaves(const FloatCodebook& cb, int64_t k0, int64_t k1);

}  // namespace cpu
}  // namespace sgcvq
