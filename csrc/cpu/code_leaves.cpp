// The k-d split of the codebook into leaves (code_leaves.h). Portable C++: no intrinsics.
#include "code_leaves.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace sgcvq {
namespace cpu {
namespace {

// NaN sorts as +inf (a strict weak order for nth_element; such a leaf is never skipped anyway).
inline float sort_key(float v) { return std::isnan(v) ? std::numeric_limits<float>::infinity() : v; }

struct Builder {
  const float* E;
  int64_t D;
  CodeLeaves& out;
  std::vector<int32_t>& ids;  // code indices, reordered in place into leaf order
  int32_t next_leaf = 0;

  // Cuts ids[b, e) into n leaves; returns the child reference of that subtree (node or -1 - leaf).
  int32_t split(int64_t b, int64_t e, int64_t n) {
    if (n == 1) return -1 - next_leaf++;
    int64_t best_d = 0;
    float best_w = -1.f;
    for (int64_t d = 0; d < D; ++d) {
      float lo = std::numeric_limits<float>::infinity(), hi = -lo;
      for (int64_t i = b; i < e; ++i) {
        const float v = E[ids[static_cast<size_t>(i)] * D + d];
        if (std::isfinite(v)) {
          lo = std::min(lo, v);
          hi = std::max(hi, v);
        }
      }
      const float w = hi - lo;  // -inf when no finite value
      if (w > best_w) {
        best_w = w;
        best_d = d;
      }
    }
    // The left subtree takes n / 2 full leaves; the right the rest (the last leaf may be short).
    const int64_t nl = n / 2, m = b + nl * kLeafCodes;
    auto less = [&](int32_t a, int32_t c) {
      const float va = sort_key(E[a * D + best_d]), vc = sort_key(E[c * D + best_d]);
      return va < vc || (va == vc && a < c);
    };
    std::nth_element(ids.begin() + b, ids.begin() + m, ids.begin() + e, less);
    float cut = -std::numeric_limits<float>::infinity();
    for (int64_t i = b; i < m; ++i) cut = std::max(cut, sort_key(E[ids[static_cast<size_t>(i)] * D + best_d]));
    const int32_t node = static_cast<int32_t>(out.dim.size());
    out.dim.push_back(static_cast<int32_t>(best_d));
    out.cut.push_back(cut);
    out.child.push_back(0);
    out.child.push_back(0);
    const int32_t left = split(b, m, nl);
    const int32_t right = split(m, e, n - nl);
    out.child[static_cast<size_t>(2 * node)] = left;
    out.child[static_cast<size_t>(2 * node + 1)] = right;
    return node;
  }
};

}  // namespace

int32_t CodeLeaves::home(const float* x) const {
  if (dim.empty()) return 0;
  int32_t c = 0;
  while (c >= 0) {
    const size_t n = static_cast<size_t>(c);
    // A NaN feature goes right (x <= cut is false): any leaf will do, the search visits them all.
    c = child[2 * n + (x[dim[n]] <= cut[n] ? 0 : 1)];
  }
  return -1 - c;
}

CodeLeaves build_code_leaves(const FloatCodebook& cb, int64_t k0, int64_t k1) {
  CodeLeaves L;
  const int64_t D = cb.D, n = k1 - k0;
  L.D = D;
  L.leaves = (n + kLeafCodes - 1) / kLeafCodes;
  L.leaves_pad = (L.leaves + 7) / 8 * 8;
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = static_cast<int32_t>(k0 + i);
  if (L.leaves > 0) Builder{cb.codes, D, L, ids}.split(0, n, L.leaves);

  const float inf = std::numeric_limits<float>::infinity();
  L.codes.assign(static_cast<size_t>(L.leaves * D * kLeafCodes), 0.f);
  L.norms.assign(static_cast<size_t>(L.leaves * kLeafCodes), inf);
  L.index.assign(static_cast<size_t>(L.leaves * kLeafCodes), -1);
  L.lo.assign(static_cast<size_t>(D * L.leaves_pad), inf);
  L.hi.assign(static_cast<size_t>(D * L.leaves_pad), inf);
  for (int64_t b = 0; b < L.leaves; ++b) {
    bool finite = true;
    for (int64_t d = 0; d < D; ++d) {
      L.lo[static_cast<size_t>(d * L.leaves_pad + b)] = inf;
      L.hi[static_cast<size_t>(d * L.leaves_pad + b)] = -inf;
    }
    for (int64_t j = 0; j < kLeafCodes && b * kLeafCodes + j < n; ++j) {
      const int32_t k = ids[static_cast<size_t>(b * kLeafCodes + j)];
      L.index[static_cast<size_t>(b * kLeafCodes + j)] = k;
      L.norms[static_cast<size_t>(b * kLeafCodes + j)] = cb.norms[static_cast<size_t>(k)];
      for (int64_t d = 0; d < D; ++d) {
        const float v = cb.codes[k * D + d];
        L.codes[static_cast<size_t>((b * D + d) * kLeafCodes + j)] = v;
        finite = finite && std::isfinite(v);
        float& lo = L.lo[static_cast<size_t>(d * L.leaves_pad + b)];
        float& hi = L.hi[static_cast<size_t>(d * L.leaves_pad + b)];
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
    }
    if (!finite)
      for (int64_t d = 0; d < D; ++d) {
        L.lo[static_cast<size_t>(d * L.leaves_pad + b)] = -inf;
        L.hi[static_cast<size_t>(d * L.leaves_pad + b)] = inf;
      }
  }
  return L;
}

}  // namespace cpu
}  // namespace sgcvq
