// The CPU bf16 search (the default mode where the CPU has bf16 dot products, and fast_exact):
// bfloat16 GEMM tiles on AMX (oneDNN's brgemm ukernel through ATen's cpublas) or on AVX512_BF16
// (our own vdpbf16ps tiles, bf16_tile_avx512.h; at D <= 16 a fused scan there), candidates
// chosen with a per-token rigorous error margin, then the same float32 re-score and certificate
// as the float32 path (certify.h; collect_bf16.cpp is its collector).
//
// Why a margin and not a top-2: rounding x and the codes to bfloat16 moves a dot product by up to
// ||x - bf16(x)|| ||e|| + ||x|| ||e - bf16(e)||, about 2^-9 of ||x|| ||e||, which on spread-out
// data is larger than the gap between the best and the second code. Every code whose approximate
// distance lies within 2 * delta (+ slack) of the running best is kept; all others are provably
// farther than the best, so the re-scored best is the float32 argmin.
#pragma once
#include "candidates.h"
#include "options.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace sgcvq {
namespace cpu {

// Which GEMM gives the bf16 candidates: AMX tiles through oneDNN's brgemm ukernel (ATen's
// cpublas; Intel Sapphire Rapids and later), our own AVX512_BF16 tiles (bf16_tile_avx512.h: AMD
// Zen 4/5, Intel without AMX), or none (the float32 candidates only).
// On AVX2 CPUs without AVX-512 the same contract comes from int16 tiles (kAvx2Int16,
// avx2/int16_search_avx2.h: per-token and per-code power-of-two scales, exact int32 sums).
enum class Bf16Path { kOff, kAmx, kAvx512Bf16, kAvx2Int16 };
// The path's name in SGCVQ_CPU_BF16 and cpu_capabilities() (one spelling for every build,
// nearest_code_bf16.cpp and portable/bf16_off.cpp alike).
inline const char* bf16_path_name(Bf16Path p) {
  switch (p) {
    case Bf16Path::kAmx: return "amx";
    case Bf16Path::kAvx512Bf16: return "avx512bf16";
    case Bf16Path::kAvx2Int16: return "avx2int16";
    default: return "off";
  }
}
// The fastest path this CPU runs, unless SGCVQ_CPU_BF16 (opts.bf16) forces one: "amx",
// "avx512bf16", "avx2int16", or "off" (also "0"). Forcing a path this CPU (or this torch build) cannot run
// raises an error that says so. SGCVQ_CPU_PORTABLE=1 (the portable scans) turns the bf16 paths off.
Bf16Path bf16_path(const CpuOptions& opts);
// The paths this CPU and torch build can run, fastest first (kOff always last).
std::vector<Bf16Path> bf16_paths_here();

// How many tokens the last bf16 call could not certify and re-searched exactly (a statistic for
// tests and benchmarks; -1 before the first call).
// searched: the tokens the bf16 tiles searched (fewer than N when the call gave up early).
void note_fast_exact_redo(int64_t n, int64_t searched);  // also counts the call
int64_t last_fast_exact_redo();
int64_t last_bf16_searched();
int64_t bf16_search_calls();  // calls that took the bf16 path since the library loaded

// The codebook centred and rounded to bfloat16, packed for brgemm: blocks of 64 codes, each
// [Dp/2][64][2] (VNNI), codes and features zero-padded to Kp = 64 * ceil(K / 64), Dp = 2 * ceil(D / 2).
// Distances do not change when x and every code move by the same c, and centring on the codebook's
// mean keeps bf16's relative error small where all features share a large offset (post-ReLU
// features, say), which would otherwise send every token to the exact search.
struct Bf16Codebook {
  Bf16Path path = Bf16Path::kOff;  // which GEMM searches it
  at::Tensor packed;         // bfloat16 [Kp * Dp], rows bf16(e_k - c)
  at::Tensor center;         // float32 [D], c
  std::vector<float> norms;  // [K] ||e_k - c||^2 (float32 sums)
  int64_t K = 0, D = 0, Kp = 0, Dp = 0;
  double max_err = 0.0;  // max_k ||e'_k - bf16(e'_k)||, rounded up (e' = e - c in float32)
  double max_e2 = 0.0;   // max_k ||e'_k||^2, rounded up
  // Per block of 64 codes, the float32 sums behind the two (range_maxima takes a code range's).
  std::vector<float> block_err2, block_e2;
  // D <= 16 on AVX512_BF16: the codes by orthant cell, the branchy small-D scan's seed
  // (SmallSeedCells in bf16_tile_avx512.h); empty otherwise.
  std::vector<uint32_t> cell_pairs;  // [vectors][Dp / 2][16]
  std::vector<float> cell_norms;     // [vectors * 16], +inf in the pads
  std::vector<int32_t> cell_start;   // [2^cell_bits + 1]
  int cell_bits = 0;
  // D <= 16 on AVX512_BF16 with the branch-free window: the codes lane by lane (SmallLaneCodes in
  // bf16_tile_avx512.h), where it searches a lane holding two codes near the best; empty otherwise.
  std::vector<uint32_t> lane_pairs;  // [ceil(K / 256)][16][Dp / 2][16]
  std::vector<float> lane_norms;     // [ceil(K / 256)][16][16], +inf past K
  // D <= 16, set by the caller for the whole call (so a token's code splits agree): the
  // branch-free window (small_d_window) rather than the branchy scan, and the branchy scan's
  // orthant seed (seed_cells_enabled).
  bool small_window = false;
  bool seed_cells_on = true;
  // kAvx2Int16: `packed` holds int16 codes, code_scale[k] the power of two s_k (int16_search_avx2.h).
  std::vector<float> code_scale;  // [Kp]
};
// bf16_values: x and E hold bfloat16 values (centring is then kept for large offsets only);
// seed_cells: also the orthant cells (D <= 16 on
// AVX512_BF16, for a branchy scan over every code).
// lane_codes: also the lane-by-lane codes (D <= 16, for the branch-free window).
Bf16Codebook pack_bf16_codebook(const at::Tensor& E /* float32 [K, D] contiguous */, bool bf16_values, Bf16Path path,
                                bool seed_cells = false, bool lane_codes = false);
// True when the packing above writes the layout itself (always on the AVX512_BF16 path; on AMX
// checked once against oneDNN's pack, which it uses instead where the layouts differ).
bool bf16_own_pack();

// The bound of a token's bf16 candidates (candidates.h; the arithmetic is cert::bf16_list_bound).
using Bf16Bound = ListBound;
// From the token's float32 sums xx = sum x'^2 and r2 = sum (bf16(-2x') + 2x')^2; g =
// cert::sum_error(D) as in the float32 certificate, max_e2 = max ||e'_k||^2 (rounded up).
// value_rel: the scan moves each approximate value by up to value_rel of its size before it is
// compared (the branch-free window writes the code's place into the low mantissa bits); the bound
// covers that too.
Bf16Bound bf16_bound(float xx, float r2, int64_t D, double g, double max_e2, double max_err,
                     double value_rel = 0.0);

// Searches tokens xs [tn, D] (float32 rows, not scaled, not centred) against codes [k0, k1) of
// `cb`: out[t] and bounds[t] for t < tn. Every code outside out[t] has an approximate distance
// >= b + margin (the margin as a float, rounded up). Scratch is per thread; call bf16_release()
// when a thread is done with its items.
// D <= 16: which fused scan searches a token's codes [k0, k1): the branch-free window
// (bf16_small_window_avx512) up to kSmallWindowMaxCodes codes, the branchy list scan above;
// SGCVQ_CPU_SMALLD=window / branchy (opts.smalld) forces one.
constexpr int64_t kSmallWindowMaxCodes = 4096;
bool small_d_window(const CpuOptions& opts, int64_t codes);
// The branchy scan over every code seeds each token's best from its orthant cell
// (SmallSeedCells) unless SGCVQ_CPU_SMALLD_SEED=first (opts.smalld_seed: the range's first 256
// codes; "cells" is the default).
bool seed_cells_enabled(const CpuOptions& opts);

// max_e2 and max_err as above over the codes [k0, k1) only (the blocks of 64 codes that hold them),
// rounded up the same way; the codebook's when it holds a non-finite code.
void range_maxima(const Bf16Codebook& cb, int64_t k0, int64_t k1, double& max_e2, double& max_err);

// call_codes: the largest code range of any item of this call (D <= 16 picks the scan and its
// bound from it, the same for every item). [g0, g1): every code any of these tokens searches (its
// group: the union of its items' ranges); their bound takes that range's maxima (range_maxima),
// not the codebook's: for a group of smaller codes than the codebook's largest, a smaller margin,
// and the same bound in each of a token's code splits. Returns how many lists overflowed
// (out[t].n = -1).
int64_t bf16_search_item(const float* xs, int64_t tn, const Bf16Codebook& cb, int64_t k0, int64_t k1, int64_t g0,
                         int64_t g1, int64_t call_codes, double g, CandList* out, Bf16Bound* bounds);
void bf16_release(const Bf16Codebook& cb);

}  // namespace cpu
}  // namespace sgcvq
