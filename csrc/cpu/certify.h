// Stage 3 of the CPU search: certify a token's re-scored candidates.
//
// Each token's candidates are re-scored with the direct float32 distance (direct_sqdist) and the
// best is CERTIFIED when a rigorous bound on the approximate distances' error
// (csrc/include/sgcvq/certificate.h; derivation in docs/numerics.md) proves that no code outside
// the candidates can have a smaller float32 distance. A token that fails (true near-ties,
// non-finite values) goes to the exact search. The result is therefore the argmin of the direct
// float32 distance, ties to the lowest index, whichever collector ran.
#pragma once
#include "candidates.h"
#include "nearest_code_scan.h"

#include "../include/sgcvq/certificate.h"

#include <cmath>
#include <cstdint>

namespace sgcvq {
namespace cpu {

struct Certificate {
  double g, g_dot, max_e2, max_e;
  // D: the features; max_norm2: the largest float32 norm fl(||e_k||^2) (0 for list collectors,
  // whose bounds come per token); rounds_to_bf16: the top-2 collector's GEMM rounds its inputs to
  // bfloat16 (torch's float32 matmul precision "medium" makes oneDNN do that).
  Certificate(int64_t D, double max_norm2, bool rounds_to_bf16)
      : g(cert::sum_error(D)),
        g_dot(rounds_to_bf16 ? std::ldexp(1.0, -7) + std::ldexp(1.0, -16) : 0.0),
        max_e2(cert::max_norm2_up(max_norm2, g)), max_e(std::sqrt(max_e2)) {}
  // Top-2 candidates: every other code has an approximate value >= thr; xx = fl(||x||^2).
  bool holds(float xx, float thr, float best) const {
    return holds_with(xx, thr, best, cert::expansion_delta(g, g_dot, max_e2, max_e, xx));
  }
  // The same test with the caller's bound delta on |a_k - a_k*| (a list's, per token).
  bool holds_with(float xx, float thr, float best, double delta) const {
    return cert::certifies(xx, thr, best, delta, g);
  }
  // A complete list of `listed` of the range's `codes` settles the token: it holds every code of
  // the range, or every unlisted one is provably farther than best (b: the smallest approximate
  // value, the list's threshold b + margin).
  bool settles_list(int64_t listed, int64_t codes, const ListBound& bound, float b, float best) const {
    return listed >= codes || holds_with(bound.xx, b + bound.margin_up, best, bound.delta);
  }
};

// Where the answers go: index [N] int64 and sqdist [N] float32.
struct Answers {
  int64_t* index;
  float* sqdist;
  const float* codes;  // float32 [K, D]
  int64_t D;
  // bi < 0 (no candidate had a finite distance: only non-finite inputs get here): the range's
  // first code lo and its (NaN) distance, from row xr.
  void set(int64_t i, int64_t bi, float bv, int64_t lo, const float* xr) const {
    if (bi < 0) {
      bi = lo;
      bv = direct_sqdist(xr, codes + bi * D, D);
    }
    index[i] = bi;
    sqdist[i] = bv;
  }
};

// How many tokens the last call with top-2 candidates could not certify and searched exactly (a
// statistic for tests and benchmarks, sgcvq._C.last_float32_uncertified; -1 before the first).
void note_float32_uncertified(int64_t n);
int64_t last_float32_uncertified();

}  // namespace cpu
}  // namespace sgcvq
