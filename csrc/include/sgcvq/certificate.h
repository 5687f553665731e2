// The certificate's rounding-error bounds, written once for every C++ and CUDA search.
//
// Every search ranks codes by a cheap approximate distance (the expansion ||e||^2 - 2 x.e, in
// float32 or from bfloat16 / TF32 operands), re-scores its candidates with the direct float32
// distance and then CERTIFIES the winner: from a rigorous bound on the approximation's error it
// proves that no code left out can have a smaller float32 distance. The functions below are those
// bounds; the derivation, term by term, is in docs/numerics.md, and sgcvq/reference.py holds a
// float64 model of each that the tests compare with (the Triton kernel's copy in
// kernels/nearest_code.py is tested against that model).
//
// Host and device code: no torch, no std:: calls (CUDA's device code has ::sqrt, not std::sqrt).
// NOTE: a function here must keep its operations and their order: nvcc and g++ compile each call
// inline, and the verified SASS of the Hopper search and the bit-for-bit AVX-512 copy of
// bf16_list_bound (nearest_code_bf16.cpp) rely on the arithmetic being exactly this.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define SGCVQ_BOUND_FN __host__ __device__ __forceinline__
#else
#define SGCVQ_BOUND_FN inline
#endif

namespace sgcvq {
namespace cert {

// float32 unit roundoff.
constexpr double kU = 0x1p-24;

// g: the relative error of a float32 sum of D non-negative terms in any order (and of a float32
// dot product's accumulation): (D - 1) u for the additions and u for each term's own rounding,
// (2D + 8) u leaves room for the final additions and for rounding the bound itself.
SGCVQ_BOUND_FN double sum_error(int64_t D) { return (2.0 * static_cast<double>(D) + 8.0) * kU; }

// The same for tensor-core accumulations, which may truncate instead of rounding: every step is
// charged a full ulp, 2u, and +16 leaves room for the final additions (the Hopper search; the
// Triton kernel's _sum_error is the same formula).
SGCVQ_BOUND_FN double accumulation_error(int D) { return (2.0 * D + 16.0) * kU; }

// An upper bound on max_k ||e_k||^2 from the largest float32 sum of squares (relative error <= g).
SGCVQ_BOUND_FN double max_norm2_up(double max_sum2, double g) { return max_sum2 * (1.001 + 2.0 * g); }

// An upper bound on a norm from its float32 sum of squares: sqrt(s (1 + g)), rounded up.
SGCVQ_BOUND_FN double norm_up(double sum2, double g) { return sqrt(sum2 * (1.0 + g)) * (1.0 + 1e-9); }

// ---- the float32 expansion (the CPU float32 candidates) ----------------------------------------
// a_k = fl(||e_k||^2) + sum_d (-2 x_d) e_kd in any summation order; a_k* its exact value.
//   |a_k - a_k*| <= g 2 max||e||^2 + (g + g_dot) 2 ||x|| max||e||,
// g = sum_error(D); g_dot = 0 for float32 products, 2^-7 + 2^-16 when the GEMM rounds its inputs
// to bfloat16 (oneDNN's bf32 mode); xx = fl(||x||^2), max_e2 = max_norm2_up(...), max_e its root.
SGCVQ_BOUND_FN double expansion_delta(double g, double g_dot, double max_e2, double max_e, float xx) {
  const double xx_hi = static_cast<double>(xx) * (1.0 + g);
  return g * 2.0 * max_e2 + (g + g_dot) * 2.0 * sqrt(xx_hi) * max_e;
}

// A lower bound on the float32 direct distance fl(d_k) of every code whose approximate value
// (a_k, computed) is >= thr, given |a_k - a_k*| <= delta and xx = fl(||x||^2):
//   fl(d_k) >= (1 - g) d_k* = (1 - g) (||x||^2 + a_k*) >= (1 - g) (xx (1 - g) + thr - delta).
// The best re-scored distance strictly below it is the float32 argmin (ties included).
SGCVQ_BOUND_FN double unlisted_floor(double xx, double thr, double delta, double g) {
  return (xx * (1.0 - g) + thr - delta) * (1.0 - g);
}

// The CPU certificate: true when `best` (the best re-scored float32 distance) is provably below
// the float32 distance of every code with approximate value >= thr. Non-finite values never hold.
SGCVQ_BOUND_FN bool certifies(float xx, float thr, float best, double delta, double g) {
  if (!isfinite(thr) || !isfinite(xx)) return false;
  return unlisted_floor(static_cast<double>(xx), static_cast<double>(thr), delta, g) > static_cast<double>(best);
}

// ---- skipping a leaf of codes by its box (the AVX2 leaf search, csrc/cpu/avx2/leaf_search_avx2.cpp) ----
// lb = fl(sum_d t_d^2), t_d = max(fl(lo_d - x_d), fl(x_d - hi_d), 0), is at most (1 + u)^(D + 2)
// times the box's exact squared distance LB (each t_d is rounded up by at most u, each square and
// add once); scaled by this factor (rounded down to a float, then rounded again by the multiply)
// it is <= LB, so a leaf whose scaled lb exceeds v2 + ||x||^2 holds no code with a* < v2.
SGCVQ_BOUND_FN double leaf_bound_scale(int64_t D) { return 1.0 - (2.0 * static_cast<double>(D) + 8.0) * kU; }

// ---- GPU tiles from a tensor-core dot (csrc/cuda/nearest_code.cu) -----------------------------
// delta for a_k = n_k - 2 x.e_k where the dot's products have relative error rho (the core's
// operand rounding) and the sums gamma = sum_error(D): nmax >= max_k n_k (rounded up), xx =
// fl(||x||^2); 2^-22 (nmax + 2p) covers the score arithmetic, the factor 2 is slack, and the
// last term products and partial sums that hardware may flush to zero.
SGCVQ_BOUND_FN double tile_delta(double gamma, double rho, double nmax, double xx, int D) {
  const double p = sqrt(xx * (1.0 + gamma) * nmax);  // >= ||x|| ||e_k|| >= sum_d |x_d e_kd|
  return 2.0 * (2.0 * gamma * nmax + 2.0 * rho * p + 0x1p-22 * (nmax + 2.0 * p)) + (D + 8) * 0x1p-118;
}

// ---- centred low-precision candidates with a margin (CPU bf16 lists) --------------------------
// x' = fl(x - c), e' = fl(e - c) (centred rows), candidates scored from bf16(-2x') and bf16(e').
// xx = fl||x'||^2, r2 = fl||bf16(-2x') + 2x'||^2 (float32 sums, relative error <= g), max_e2 >=
// max ||e'||^2, max_err >= max ||e' - bf16(e')||. value_rel: the scan moves each value by up to
// value_rel of its size (the branch-free window's code bits). delta bounds |a_k - a_k*|, margin is
// what the candidate rule adds to the running best (2 delta + slack).
struct ListBoundTerms {
  double delta, margin;
};
SGCVQ_BOUND_FN ListBoundTerms bf16_list_bound(float xx, float r2, int64_t D, double g, double max_e2, double max_err,
                                              double value_rel) {
  const double u = kU;
  const double xn = sqrt(static_cast<double>(xx) * (1.0 + g)) * (1.0 + 1e-9);
  const double r = sqrt(static_cast<double>(r2) * (1.0 + g)) * (1.0 + 1e-9);
  const double max_e = sqrt(max_e2), ah = 2.0 * xn + r;  // ||bf16(-2x')|| <= ah
  // 2g max_e2: fl(||e'||^2) and the norm's share of the add; r max_e + ah max_err: the bf16
  // roundings of x' and of the code; g ah (max_e + max_err): the float32 accumulation and the add;
  // 4u (xn + max_e)^2: rounding x - c and e - c (moves ||e'||^2, 2 x'.e' and ||x'||^2 by 2.1u each);
  // the last term: flushed subnormal inputs, products and partial sums (AMX runs DAZ/FTZ).
  const double sd = sqrt(static_cast<double>(D));
  double delta = 2.0 * g * max_e2 + r * max_e + ah * max_err + g * ah * (max_e + max_err) +
                 4.0 * u * (xn + max_e) * (xn + max_e) +
                 0x1p-120 * (static_cast<double>(D) + sd * (ah + max_e + max_err));
  if (value_rel > 0.0) {
    // |computed value| <= ||e'||^2 + ||bf16(-2x')|| ||bf16(e')|| plus its rounding; replacing its
    // low mantissa bits moves it by less than value_rel of that (and 2^-126 value_rel near zero).
    const double vmax = (max_e2 + ah * (max_e + max_err)) * (1.0 + 4.0 * g) + delta;
    delta += value_rel * vmax + value_rel * 0x1p-126;
  }
  const double slack = 8.0 * g * ((xn + max_e) * (xn + max_e) + delta) + 0x1p-120;
  const double margin = 2.0 * delta * (1.0 + 1e-6) + slack;
  return {delta * (1.0 + 1e-6), margin};
}

// ---- centred candidates with a margin E on the GPU (the Hopper search; Triton's _margin) -------
// E >= |(s_k + fl||x'||^2) - f_k| for every code: s_k the candidate score from rounded operands,
// f_k the direct float32 distance. xn >= ||x'||, r >= ||x' - c(x')||, me2 >= max ||e'||^2, merr >=
// max ||e' - c(e')||, g = accumulation_error(D), dot_g the dot's accumulation and product error
// (g for one exact-product pass; Triton: passes g + the product error). 1% slack on the whole.
// me = sqrt(me2), computed by the caller (where it computes it is part of the Hopper kernel's
// verified schedule).
SGCVQ_BOUND_FN double centred_margin(double xn, double r, double me2, double me, double merr, int D, double g,
                                     double dot_g) {
  const double u = kU;
  const double ah = 2.0 * (xn + r);  // >= ||2 c(x')||
  const double big = (xn + me) * (xn + me);
  const double dot = 2.0 * r * me + ah * merr + dot_g * ah * (me + merr);
  return (g * (xn * xn + me2) + dot + (1.01 * g + 12.0 * u) * big + (D + 8) * 0x1p-100) * 1.01;
}

}  // namespace cert
}  // namespace sgcvq

#undef SGCVQ_BOUND_FN
