// nearest_code on the CPU: fused tiled search that never materialises the N x K distances.
//
// Work is a list of items (a run of <= kTileN tokens, a code range). Without labels the runs are
// consecutive tokens over all K codes; with labels, tokens are counting-sorted by class first and
// each run searches only its class's codes, so the cost is sum_c n_c * K_c * D.
//
// Every item keeps the two best codes per token by the approximate distance ||e||^2 - 2 x.e
// (x pre-scaled by -2, exact): for D > 16 from GEMM tiles (ATen at::mm_out into a thread-local,
// L2-sized scratch), for D <= 16 from a register-blocked SIMD scan (nearest_code_scan.cpp);
// where the CPU has bf16 dot products (AMX or AVX512_BF16) the default mode 'exact' (and
// 'fast_exact') at D > 16 instead keeps every code within a per-token margin of the best from
// bf16 GEMM tiles (nearest_code_bf16.cpp); 'exact_fp32' forces the float32 candidates. Each token's candidates are then re-scored with the
// direct fp32 sum of squared differences and the winner is CERTIFIED: from a rigorous bound on the
// expansion's rounding error it checks that no other code can have a smaller fp32 distance; a token
// that fails the check (true near-ties, non-finite values) is re-searched exactly. The result is
// therefore the argmin of the direct fp32 distance, ties to the lowest index, on every path.
#include "../checks.h"
#include "avx2/int16_search_avx2.h"
#include "bf16_tile_avx512.h"
#include "nearest_code_bf16.h"
#include "nearest_code_scan.h"

#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

namespace sgcvq {
namespace {

using cpu::kInf;
using cpu::Top2;

constexpr int64_t kTileN = 512;  // tokens per work item (the GEMM packs each code tile once per 512)
constexpr int64_t kTileK = 512;  // codes per GEMM tile (scratch: kTileN * kTileK floats = 1 MB, in L2)
constexpr int64_t kExactTile = 64;  // tokens per tile of the exact search of uncertified tokens
constexpr int64_t kBf16MinTokens = 256;  // the bf16 path from this many tokens on
// ...and in mode 'exact' from this many codes per token on (the class groups' sizes, averaged over
// the tokens): below it the float32 candidates are faster (benchmarks/group_sweep.py, AMD EPYC
// Zen 5: at D = 8 the fused bf16 scan wins from groups of about 4096 codes, at D = 64 the bf16
// tiles from 64). 'fast_exact' ignores these.
constexpr int64_t kBf16MinCodesSmallD = 512;
constexpr int64_t kBf16MinCodes = 64;

// Which candidates a call asks for: the fastest certified (the default 'exact'), bf16 ones
// ('fast_exact'), or float32 ones ('exact_fp32', and the re-search of uncertified tokens).
enum class Candidates { kFastest, kBf16, kFp32 };
// The bf16 path gives up early when its lists overflow for more than this share of the first
// kRedoSample tokens (near-duplicate codebooks): the rest of the tokens then take the float32
// candidates once, instead of paying for bf16 tiles and then the float32 search again.
constexpr int64_t kRedoSample = 2048;
constexpr double kRedoGiveUp = 0.25;

struct WorkItem {
  int64_t t0, t1;  // positions in the (possibly label-sorted) token order
  int64_t k0, k1;  // code range searched
  int64_t split;   // which candidate slot this item writes (code-range split)
  int64_t g0, g1;  // the tokens' whole code range (the union of their items' [k0, k1))
};

// Reads row `row` of x (any supported dtype) into float32, times `scale` (a power of two: exact).
template <typename scalar_t>
inline void load_row(const scalar_t* x, int64_t row, int64_t D, float scale, float* out) {
  const scalar_t* src = x + row * D;
  for (int64_t d = 0; d < D; ++d) out[d] = scale * static_cast<float>(src[d]);
}

// The label-sorted gather reads x's rows in random order, each a cache miss: prefetching the row
// kGatherAhead tokens ahead hides them (13% of the grouped search at D = 64 went to this copy).
constexpr int64_t kGatherAhead = 8;
// CandList as int32 words, for cpu::rescore_lists (its n and idx fields at this stride).
constexpr int64_t kCandStride = cpu::kCandWords;
template <typename scalar_t>
inline void prefetch_row(const scalar_t* x, int64_t row, int64_t D) {
  const char* p = reinterpret_cast<const char*>(x + row * D);
  for (int64_t b = 0; b < D * static_cast<int64_t>(sizeof(scalar_t)); b += 64) __builtin_prefetch(p + b);
}

using cpu::direct_sqdist;

// Rounding-error model of the certificate (unit roundoff u = 2^-24, rounded up generously).
// Approximate distance a_k = fl(||e_k||^2) + sum_d (-2 x_d) e_{kd}, any summation order:
//   |a_k - a_k*| <= g 2 ||e_k||^2 + (g + g_dot) 2 ||x|| ||e_k|| =: delta, with g = (2D + 8) u,
// and g_dot = 0 for a float32 GEMM, 2^-7 + 2^-16 when the GEMM rounds its inputs to bfloat16
// (torch.set_float32_matmul_precision("medium") makes oneDNN do that on the CPU).
// Direct fp32 distance of D non-negative rounded terms: fl(d_k) >= (1 - g) d_k*.
// Every code outside the candidates has a_k >= thr, so fl(d_k) >= (||x||^2 + thr - delta)(1 - g);
// when that exceeds the best re-scored distance, the best is the fp32 argmin.
struct Certificate {
  double g, g_dot, max_e2, max_e;
  Certificate(int64_t D, double max_norm2, bool mm_rounds_to_bf16)
      : g((2.0 * static_cast<double>(D) + 8.0) * std::ldexp(1.0, -24)),
        g_dot(mm_rounds_to_bf16 ? std::ldexp(1.0, -7) + std::ldexp(1.0, -16) : 0.0),
        max_e2(max_norm2 * (1.001 + 2.0 * g)), max_e(std::sqrt(max_e2)) {}
  // xx: ||x||^2 as summed in fp32 (relative error <= g, accounted for here).
  bool holds(float xx, float thr, float best) const {
    const double xx_hi = static_cast<double>(xx) * (1.0 + g);
    return holds_with(xx, thr, best, g * 2.0 * max_e2 + (g + g_dot) * 2.0 * std::sqrt(xx_hi) * max_e);
  }
  // The same test with the caller's bound delta on |a_k - a_k*| (the bf16 path's, per token).
  bool holds_with(float xx, float thr, float best, double delta) const {
    if (!std::isfinite(thr) || !std::isfinite(xx)) return false;
    const double xx_lo = static_cast<double>(xx) * (1.0 - g);
    return (xx_lo + static_cast<double>(thr) - delta) * (1.0 - g) > static_cast<double>(best);
  }
  // A complete bf16 list of `listed` of the range's `codes` settles the token: it holds every code
  // of the range, or every unlisted one is provably farther than best (b: the smallest
  // approximate value, the lists' threshold b + margin).
  bool settles_bf16(int64_t listed, int64_t codes, const cpu::Bf16Bound& bound, float b, float best) const {
    return listed >= codes || holds_with(bound.xx, b + bound.margin_up, best, bound.delta);
  }
};

// The float32 GEMM tiles of the exact path: oneDNN's brgemm ukernel (through ATen's cpublas) on
// AVX-512 CPUs, 2.2x at::mm's MKL sgemm on an AMD EPYC Zen 5 (250 vs 110 GFLOP/s on one core at
// K = 64 and 256; MKL takes its AVX2 code there). SGCVQ_CPU_F32_GEMM=mm keeps at::mm (MKL).
constexpr int64_t kF32Block = 64;  // codes per brgemm call: the codebook packed as [K/64][D][64]
bool f32_brgemm_here() {
#if defined(CPUBLAS_BRGEMM_F32F32F32)
  const char* env = std::getenv("SGCVQ_CPU_F32_GEMM");
  return cpu::scan_uses_avx512() && !(env != nullptr && std::strcmp(env, "mm") == 0);
#else
  return false;
#endif
}

// s[t * lds + j] = xs[t] . e_{kb + j} for t < tn, j < 64 * blocks, from the packed codebook.
void f32_brgemm_tile(const float* xs, int64_t tn, int64_t D, const float* packed, int64_t kb, int64_t blocks,
                     float* s, int64_t lds) {
#if defined(CPUBLAS_BRGEMM_F32F32F32)
  for (int64_t b = 0; b < blocks; ++b)
    at::native::cpublas::brgemm(tn, kF32Block, D, D, kF32Block, lds, false, xs,
                                packed + (kb / kF32Block + b) * D * kF32Block, s + b * kF32Block, false);
#else
  (void)xs; (void)tn; (void)D; (void)packed; (void)kb; (void)blocks; (void)s; (void)lds;
  TORCH_CHECK(false, "sgcvq: f32_brgemm_tile needs torch's cpublas::brgemm for float");
#endif
}

// Whether the brgemm tiles round their inputs (oneDNN's fpmath mode): the same probe as below.
bool brgemm_rounds_inputs(int64_t D) {
  std::vector<float> a(static_cast<size_t>(D), 1.f + std::ldexp(1.f, -10));
  std::vector<float> b(static_cast<size_t>(D * kF32Block), 1.f), s(kF32Block, 0.f);
  f32_brgemm_tile(a.data(), 1, D, b.data(), 0, 1, s.data(), kF32Block);
  return s[0] != static_cast<float>(D) * (1.f + std::ldexp(1.f, -10));
}

// Whether at::mm on float32 tiles of this shape rounds its inputs (oneDNN's bf32 mode, set by
// torch's float32 matmul precision): 1 + 2^-10 is exact in float32 but not in bfloat16.
bool gemm_rounds_inputs(int64_t tn, int64_t D, int64_t kn) {
  const at::Tensor a = at::full({tn, D}, 1.0 + std::ldexp(1.0, -10), at::kFloat);
  const at::Tensor b = at::ones({kn, D}, at::kFloat);
  const float got = at::mm(a, b.t()).max().item<float>();
  return got != static_cast<float>(D) * (1.f + std::ldexp(1.f, -10));
}

template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor> nearest_code_impl(const at::Tensor& x_in, const at::Tensor& cb_in,
                                                     const std::optional<at::Tensor>& labels,
                                                     const std::optional<at::Tensor>& offsets,
                                                     Candidates cands) {
  const int64_t N = x_in.size(0), D = x_in.size(1), K = cb_in.size(0);
  auto index = at::empty({N}, x_in.options().dtype(at::kLong));
  auto sqdist = at::empty({N}, x_in.options().dtype(at::kFloat));
  if (N == 0) return {index, sqdist};

  const at::Tensor x = x_in.contiguous();
  const scalar_t* xp = x.data_ptr<scalar_t>();
  // detach(): the GEMM tiles run at::mm_out on worker threads, where the caller's "below autograd"
  // dispatch state does not hold; a codebook that requires grad would make autograd refuse out=.
  const at::Tensor E = cb_in.detach().to(at::kFloat).contiguous();  // [K, D] float32
  const float* ep = E.data_ptr<float>();

  // ---- token order and code ranges -------------------------------------------------------
  std::vector<int64_t> perm;                        // empty: identity order
  std::vector<std::pair<int64_t, int64_t>> groups;  // (token end position, class) runs
  std::vector<int64_t> off;
  if (labels.has_value()) {
    const at::Tensor lab = labels->to(at::kLong).contiguous();
    const at::Tensor offt = offsets->to(at::kLong).contiguous();
    const int64_t* lp = lab.data_ptr<int64_t>();
    const int64_t C = offt.size(0) - 1;
    off.assign(offt.data_ptr<int64_t>(), offt.data_ptr<int64_t>() + C + 1);
    TORCH_CHECK(off[0] == 0 && off[C] == K, "nearest_code: offsets must start at 0 and end at K = ", K,
                ", got ", off[0], " .. ", off[C]);
    for (int64_t c = 0; c < C; ++c)
      TORCH_CHECK(off[c] <= off[c + 1], "nearest_code: offsets must be non-decreasing, but offsets[",
                  c, "] = ", off[c], " > offsets[", c + 1, "] = ", off[c + 1]);
    // Counting sort by class; bucket 0 holds the ignore label -1 (searches all codes). A label
    // is checked by one table lookup (usable[l + 1]: -1 or a non-empty group), the first bad one
    // named after the pass.
    std::vector<int64_t> count(C + 2, 0);
    std::vector<uint8_t> usable(static_cast<size_t>(C + 1), 1);
    for (int64_t c = 0; c < C; ++c) usable[static_cast<size_t>(c + 1)] = off[c + 1] > off[c];
    bool all_usable = true;
    for (int64_t i = 0; i < N; ++i) {
      const uint64_t l1 = static_cast<uint64_t>(lp[i] + 1);  // [0, C] for a label in [-1, C)
      const bool ok = l1 <= static_cast<uint64_t>(C) && usable[l1];
      all_usable &= ok;
      ++count[ok ? l1 + 1 : 0];  // a bad label's count is never used: the pass below throws
    }
    if (!all_usable)
      for (int64_t i = 0; i < N; ++i) {
        const int64_t l = lp[i];
        TORCH_CHECK(l >= -1 && l < C, "nearest_code: labels must be in [-1, ", C, "), but labels[", i,
                    "] = ", l);
        TORCH_CHECK(l < 0 || off[l + 1] > off[l], "nearest_code: labels[", i, "] = ", l,
                    " points to an empty code group");
      }
    for (int64_t b = 1; b < C + 2; ++b) count[b] += count[b - 1];
    perm.resize(N);
    std::vector<int64_t> fill(count.begin(), count.end() - 1);
    for (int64_t i = 0; i < N; ++i) perm[fill[lp[i] + 1]++] = i;
    for (int64_t b = 0; b < C + 1; ++b)
      if (count[b + 1] > count[b]) groups.emplace_back(count[b + 1], b - 1);
  } else {
    groups.emplace_back(N, -1);
  }

  // ---- work items: token runs x code ranges; split the codes too when runs are few --------
  std::vector<WorkItem> items;
  const int64_t threads = at::get_num_threads();
  int64_t runs = 0;
  for (size_t g = 0; g < groups.size(); ++g) {
    const int64_t begin = g == 0 ? 0 : groups[g - 1].first;
    runs += (groups[g].first - begin + kTileN - 1) / kTileN;
  }
  const int64_t want = 4 * threads;
  const int64_t splits = runs >= want ? 1 : std::min<int64_t>((want + runs - 1) / runs,
                                                              std::max<int64_t>(1, K / kTileK));
  for (size_t g = 0; g < groups.size(); ++g) {
    const int64_t begin = g == 0 ? 0 : groups[g - 1].first, end = groups[g].first;
    const int64_t c = groups[g].second;
    const int64_t k0 = c < 0 ? 0 : off[c], k1 = c < 0 ? K : off[c + 1];
    const int64_t s_here = std::min<int64_t>(splits, k1 - k0);
    for (int64_t t = begin; t < end; t += kTileN)
      for (int64_t s = 0; s < s_here; ++s)
        items.push_back({t, std::min(end, t + kTileN), k0 + (k1 - k0) * s / s_here,
                         k0 + (k1 - k0) * (s + 1) / s_here, s, k0, k1});
  }
  // Biggest items first, so the dynamic schedule ends balanced.
  std::stable_sort(items.begin(), items.end(), [](const WorkItem& a, const WorkItem& b) {
    return (a.t1 - a.t0) * (a.k1 - a.k0) > (b.t1 - b.t0) * (b.k1 - b.k0);
  });

  const bool small = D <= cpu::kSmallMaxD;
  // Above the small-D scan: bf16 GEMM tiles and margin candidates (nearest_code_bf16.h) unless
  // the mode is 'exact_fp32'. (For bfloat16 inputs the products are exact, so only the float32
  // accumulation enters the margin.) Below kBf16MinTokens tokens, rounding and packing the
  // codebook costs more than bf16 saves.
  constexpr bool bf16_input = std::is_same_v<scalar_t, c10::BFloat16>;
  // At D <= 16 the bf16 candidates come from a fused AVX512_BF16 scan (on AMX machines too: they
  // all have AVX512_BF16), no GEMM tiles.
  int64_t work = 0, item_codes = 0;  // token x code pairs searched; the largest item's code range
  for (const WorkItem& it : items) {
    work += (it.t1 - it.t0) * (it.k1 - it.k0);
    item_codes = std::max(item_codes, it.k1 - it.k0);
  }
  const int64_t min_codes = cands == Candidates::kBf16 ? 0 : small ? kBf16MinCodesSmallD : kBf16MinCodes;
  cpu::Bf16Path path = cands == Candidates::kFp32 || N < kBf16MinTokens || work < min_codes * N
                           ? cpu::Bf16Path::kOff
                           : cpu::bf16_path();
  // At D <= 16 the AVX2 CPUs take the float32 scan (avx2/small_scan_avx2.h).
  if (small && (path == cpu::Bf16Path::kAvx2Int16 || !cpu::cpu_has_avx512_bf16())) path = cpu::Bf16Path::kOff;
  const bool bf16 = path != cpu::Bf16Path::kOff;
  // ||e_k||^2 in float32 (any summation order is within the certificate's g), for the float32
  // path (the bf16 path packs its own, of the centred codes); for D <= 16 padded to whole 16-code
  // blocks, the norms of the small-D layout (nearest_code_scan.h, built below).
  const int64_t nblocks = (K + cpu::kLanes - 1) / cpu::kLanes;
  std::vector<float> enorm(bf16 ? 0 : static_cast<size_t>(small ? nblocks * cpu::kLanes : K), 0.f);
  if (!bf16)
    at::parallel_for(0, K, 2048, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) enorm[static_cast<size_t>(k)] = cpu::sum_squares(ep + k * D, D);
    });
  const float* np_ = enorm.data();
  // The certificate's max_e2 serves the float32 path only (the bf16 one brings its own bound).
  const float max_norm2 = bf16 ? 0.f : *std::max_element(enorm.begin(), enorm.begin() + K);
  // The float32 path's at::mm may round its inputs to bf16 (matmul precision "medium"): probe it.
  const bool f32_brgemm = !small && !bf16 && f32_brgemm_here();
  const bool mm_rounds = !small && !bf16 &&
                         (f32_brgemm ? brgemm_rounds_inputs(D) : gemm_rounds_inputs(std::min(N, kTileN), D, std::min(K, kTileK)));
  // The codebook for the brgemm tiles: blocks of 64 codes, [D][64] each, zero past K.
  const int64_t f32_blocks = f32_brgemm ? (K + kF32Block - 1) / kF32Block : 0;
  std::vector<float> f32_packed(static_cast<size_t>(f32_blocks * D * kF32Block), 0.f);
  if (f32_brgemm)
    at::parallel_for(0, f32_blocks, 16, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        for (int64_t j = 0; j < kF32Block && b * kF32Block + j < K; ++j)
          for (int64_t d = 0; d < D; ++d)
            f32_packed[static_cast<size_t>((b * D + d) * kF32Block + j)] = ep[(b * kF32Block + j) * D + d];
    });
  const Certificate cert(D, max_norm2, mm_rounds);
  const double g = cert.g;
  cpu::Bf16Codebook cb16;
  if (bf16) {
    // The orthant cells seed the branchy small-D scan over every code (the only scan that uses them).
    const bool cells = small && !cpu::small_d_window(item_codes) &&
                       std::any_of(items.begin(), items.end(), [&](const WorkItem& it) { return it.k0 == 0 && it.k1 == K; });
    // The lane-by-lane codes for the branch-free window (item ranges up to kSmallWindowMaxCodes).
    const bool lane_codes = small && cpu::small_d_window(item_codes);
    cb16 = path == cpu::Bf16Path::kAvx2Int16 ? cpu::pack_int16_codebook(E)
                                             : cpu::pack_bf16_codebook(E, bf16_input, path, cells, lane_codes);
  }

  // ---- candidates per code split: top-2 by the approximate distance (bf16: margin lists) ----
  // With one split the worker finishes each token straight from its own buffers; with several,
  // [splits][N] arrays hold them until every split is done.
  const bool stored = splits > 1;
  std::vector<Top2> cand(stored && !bf16 ? static_cast<size_t>(splits * N) : 0);
  std::vector<cpu::CandList> lists(stored && bf16 ? static_cast<size_t>(splits * N) : 0, cpu::CandList{kInf, 0, {}});
  std::vector<cpu::Bf16Bound> token_bound(stored && bf16 ? static_cast<size_t>(N) : 0);  // from split 0
  // The small-D layout, for the float32 scan and the exact search only (the bf16 path packs its
  // own codebook; its uncertified tokens go to a float32 call of their own).
  std::vector<float> blocks(static_cast<size_t>(small && !bf16 ? nblocks * cpu::kLanes * D : 0), 0.f);
  if (small && !bf16)
    at::parallel_for(0, K, 2048, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k)
        for (int64_t d = 0; d < D; ++d)
          blocks[static_cast<size_t>(((k / cpu::kLanes) * D + d) * cpu::kLanes + k % cpu::kLanes)] = ep[k * D + d];
    });
  const cpu::SmallDCodebook small_cb{small && !bf16 ? blocks.data() : nullptr, small ? enorm.data() : nullptr};

  // ---- the answer of token i: fp32 re-score, certificate, exact re-search where it fails -----
  // Called by the worker right after the token's item when there is one code split (its row is
  // still in cache), else by a final pass once every split has written its candidates.
  int64_t* ip = index.data_ptr<int64_t>();
  float* dp = sqdist.data_ptr<float>();
  const int64_t* lp = nullptr;
  at::Tensor lab;
  if (labels.has_value()) {
    lab = labels->to(at::kLong).contiguous();
    lp = lab.data_ptr<int64_t>();
  }
  std::vector<uint8_t> redo(bf16 ? static_cast<size_t>(N) : 0, 0);  // bf16 tokens left uncertified
  std::vector<uint8_t> exact(bf16 ? 0 : static_cast<size_t>(N), 0);  // float32 ones: exact search
  // SGCVQ_CPU_RESEARCH=loop: the former exact re-search, one token at a time (benchmarks, tests).
  const char* research_env = std::getenv("SGCVQ_CPU_RESEARCH");
  const bool loop_research = research_env != nullptr && std::strcmp(research_env, "loop") == 0;
  // Row i of x as float32: in place for float32 input, else converted into buf.
  auto row_f32 = [&](int64_t i, float* buf) -> const float* {
    if constexpr (std::is_same_v<scalar_t, float>) {
      (void)buf;
      return xp + i * D;
    } else {
      load_row(xp, i, D, 1.f, buf);
      return buf;
    }
  };
  // The bf16 answer of token i from its re-scored lists: (bv, bi) the listed code nearest by the
  // float32 distance (bi = -1: none finite), found the codes listed, b the smallest approximate
  // value, complete: no list overflowed. Uncertified tokens go to the float32 search (redo).
  auto settle_bf16 = [&](int64_t i, float b, bool complete, int64_t found, float bv, int64_t bi,
                         const cpu::Bf16Bound& bound, int64_t lo, int64_t hi, const float* xr) {
    // The approximate distances are centred: ||x - e||^2 = ||x'||^2 + a'_k.
    if (!(complete && cert.settles_bf16(found, hi - lo, bound, b, bv))) {
      redo[static_cast<size_t>(i)] = 1;
      return;
    }
    if (bi < 0) {  // only non-finite inputs get here: report the first code and its (NaN) distance
      bi = lo;
      bv = direct_sqdist(xr, ep + bi * D, D);
    }
    ip[i] = bi;
    dp[i] = bv;
  };
  // tops / found: split s's candidates at [s * stride]; bound: the token's bf16 bound. row, lo,
  // hi: the token's float32 row and code range where the caller has them at hand (a worker with
  // one code split: its gathered rows and its item's range), else nullptr and -1: the label-sorted
  // order makes x's row and the label a cache miss each.
  auto finish_token = [&](int64_t i, float* buf, const Top2* tops, const cpu::CandList* found_lists,
                          const cpu::Bf16Bound* bound_of, int64_t stride, const float* row = nullptr,
                          int64_t lo = -1, int64_t hi = -1) {
    const float* xr = row != nullptr ? row : row_f32(i, buf);
    if (lo < 0) {
      lo = lp == nullptr || lp[i] < 0 ? 0 : off[lp[i]];
      hi = lp == nullptr || lp[i] < 0 ? K : off[lp[i] + 1];
    }
    float bv = kInf, thr = kInf;
    int64_t bi = -1, found = 0;
    auto rescore = [&](int64_t k) {
      ++found;
      const float v = direct_sqdist(xr, ep + k * D, D);
      if (v < bv || (v == bv && k < bi)) { bv = v; bi = k; }
    };
    bool certified;
    if (bf16) {
      // Every code outside the lists has an approximate distance >= b_s + margin >= b + margin.
      bool complete = true;
      float b = kInf;
      for (int64_t s = 0; s < splits; ++s) {
        const cpu::CandList& c = found_lists[s * stride];
        complete = complete && c.n >= 0;
        b = std::min(b, c.b);
        for (int32_t j = 0; j < c.n; ++j) rescore(c.idx[j]);
      }
      settle_bf16(i, b, complete, found, bv, bi, *bound_of, lo, hi, xr);
      return;
    } else {
      for (int64_t s = 0; s < splits; ++s) {
        const Top2& c = tops[s * stride];
        thr = std::min(thr, c.v2);
        for (const int64_t k : {c.i1, c.i2})
          if (k >= 0) rescore(k);
      }
      certified = found >= hi - lo || cert.holds(cpu::sum_squares(xr, D), thr, bv);
    }
    if (!certified) {
      if (!loop_research) {  // searched below with the other uncertified tokens, in tiles
        exact[static_cast<size_t>(i)] = 1;
        return;
      }
      bv = kInf; bi = -1;  // SGCVQ_CPU_RESEARCH=loop: the token alone, its codes in index order
      for (int64_t k = lo; k < hi; ++k) {
        const float v = direct_sqdist(xr, ep + k * D, D);
        if (v < bv) { bv = v; bi = k; }
      }
    }
    if (bi < 0) {  // only non-finite inputs get here: report the first code and its (NaN) distance
      bi = lo;
      bv = direct_sqdist(xr, ep + bi * D, D);
    }
    ip[i] = bi;
    dp[i] = bv;
  };

  // The bf16 path's early give-up (kRedoGiveUp): tokens searched and lists that overflowed so far.
  std::atomic<int64_t> seen{0}, overflowed{0};
  std::atomic<bool> give_up{false};
  std::atomic<size_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    const int64_t pad = small ? cpu::kSmallTokens : 1;
    std::vector<float> xt(static_cast<size_t>((kTileN + pad) * D), 0.f);
    std::vector<float> scratch(small ? 0 : static_cast<size_t>(kTileN * kTileK));
    std::vector<Top2> best;
    std::vector<float> xr(static_cast<size_t>(D));
    std::vector<cpu::Bf16Bound> bounds(bf16 ? static_cast<size_t>(kTileN) : 0);
    std::vector<cpu::CandList> found(bf16 ? static_cast<size_t>(kTileN) : 0);
    std::vector<float> rs_val(bf16 ? static_cast<size_t>(kTileN) : 0);
    std::vector<int64_t> rs_arg(bf16 ? static_cast<size_t>(kTileN) : 0);
    for (size_t w = next.fetch_add(1); w < items.size(); w = next.fetch_add(1)) {
      const WorkItem& it = items[w];
      const int64_t tn = it.t1 - it.t0, tpad = (tn + pad - 1) / pad * pad;
      if (bf16 && give_up.load(std::memory_order_relaxed)) {
        if (!stored)  // these tokens go to the float32 search below (stored: every token does)
          for (int64_t t = 0; t < tn; ++t) redo[static_cast<size_t>(perm.empty() ? it.t0 + t : perm[it.t0 + t])] = 1;
        continue;
      }
      if (bf16) {
        const float* rows = xt.data();
        if (std::is_same_v<scalar_t, float> && perm.empty())
          rows = reinterpret_cast<const float*>(xp) + it.t0 * D;  // the tokens' rows, in place
        else
          for (int64_t t = 0; t < tn; ++t) {
            const int64_t row = perm.empty() ? it.t0 + t : perm[it.t0 + t];
            if (!perm.empty() && t + kGatherAhead < tn) prefetch_row(xp, perm[it.t0 + t + kGatherAhead], D);
            load_row(xp, row, D, 1.f, xt.data() + t * D);
          }
        const int64_t over = cpu::bf16_search_item(rows, tn, cb16, it.k0, it.k1, it.g0, it.g1, item_codes, g, found.data(),
                                                   bounds.data());
        const int64_t s_now = seen.fetch_add(tn) + tn, o_now = overflowed.fetch_add(over) + over;
        if (s_now >= kRedoSample && static_cast<double>(o_now) > kRedoGiveUp * static_cast<double>(s_now))
          give_up.store(true, std::memory_order_relaxed);
        if (!stored) {  // one code split: finish each token from the worker's own buffers
          cpu::rescore_lists(rows, tn, D, ep, found[0].idx, &found[0].n, kCandStride, rs_val.data(), rs_arg.data());
          // The common case in a tight loop over local copies (the lambda's captures are reloaded
          // after every store through ip): a listed finite winner that the certificate settles.
          // Everything else (overflow, non-finite values, a failed certificate) takes settle_bf16.
          const Certificate c_loc = cert;
          const int64_t codes = it.k1 - it.k0;
          const int64_t* pp = perm.empty() ? nullptr : perm.data() + it.t0;
          int64_t* const ip_loc = ip;
          float* const dp_loc = dp;
          for (int64_t t = 0; t < tn; ++t) {
            const int64_t tok = pp != nullptr ? pp[t] : it.t0 + t;
            const cpu::CandList& c = found[t];
            const cpu::Bf16Bound& bd = bounds[t];
            const float bv = rs_val[t];
            const int64_t bi = rs_arg[t];
            if (__builtin_expect(c.n > 0 && bi >= 0 && c_loc.settles_bf16(c.n, codes, bd, c.b, bv), 1)) {
              ip_loc[tok] = bi;
              dp_loc[tok] = bv;
              continue;
            }
            settle_bf16(tok, c.b, c.n >= 0, std::max<int32_t>(c.n, 0), bv, bi, bd, it.k0, it.k1, rows + t * D);
          }
          continue;
        }
        for (int64_t t = 0; t < tn; ++t) {
          const int64_t tok = perm.empty() ? it.t0 + t : perm[it.t0 + t];
          lists[static_cast<size_t>(it.split * N + tok)] = found[t];
          if (it.split == 0) token_bound[static_cast<size_t>(tok)] = bounds[t];
        }
        continue;
      }
      for (int64_t t = 0; t < tn; ++t) {
        const int64_t row = perm.empty() ? it.t0 + t : perm[it.t0 + t];
        if (!perm.empty() && t + kGatherAhead < tn) prefetch_row(xp, perm[it.t0 + t + kGatherAhead], D);
        load_row(xp, row, D, -2.f, xt.data() + t * D);
      }
      std::fill(xt.begin() + tn * D, xt.begin() + tpad * D, 0.f);
      best.assign(static_cast<size_t>(tpad), Top2{});
      if (small) {
        cpu::small_d_scan(xt.data(), tpad, D, small_cb, it.k0, it.k1, best.data());
      } else if (f32_brgemm) {
        // Tiles of whole 64-code blocks; the scan reads the columns inside [k0, k1).
        const int64_t kend = (it.k1 + kF32Block - 1) / kF32Block * kF32Block;
        for (int64_t kb = it.k0 / kF32Block * kF32Block; kb < it.k1; kb += kTileK) {
          const int64_t ke = std::min(kb + kTileK, kend);
          f32_brgemm_tile(xt.data(), tn, D, f32_packed.data(), kb, (ke - kb) / kF32Block, scratch.data(), kTileK);
          const int64_t j0 = std::max(it.k0, kb) - kb, j1 = std::min(it.k1, ke) - kb;
          cpu::top2_rows(scratch.data() + j0, kTileK, tn, j1 - j0, np_ + kb + j0, kb + j0, best.data());
        }
      } else {
        const at::Tensor X = at::from_blob(xt.data(), {tn, D}, at::kFloat);
        for (int64_t kb = it.k0; kb < it.k1; kb += kTileK) {
          const int64_t kn = std::min(kTileK, it.k1 - kb);
          at::Tensor S = at::from_blob(scratch.data(), {tn, kn}, at::kFloat);
          at::mm_out(S, X, E.narrow(0, kb, kn).t());
          cpu::top2_rows(scratch.data(), kn, tn, kn, np_ + kb, kb, best.data());
        }
      }
      for (int64_t t = 0; t < tn; ++t) {
        const int64_t tok = perm.empty() ? it.t0 + t : perm[it.t0 + t];
        if (stored)
          cand[static_cast<size_t>(it.split * N + tok)] = best[t];
        else
          finish_token(tok, xr.data(), &best[t], nullptr, nullptr, 0, nullptr, it.k0, it.k1);
      }
    }
    if (bf16) cpu::bf16_release(cb16);
  });

  if (stored && give_up.load()) {
    std::fill(redo.begin(), redo.end(), 1);  // some splits are missing: every token goes float32
  } else if (stored) {
    at::parallel_for(0, N, 256, [&](int64_t i0, int64_t i1) {
      std::vector<float> xr(static_cast<size_t>(D));
      for (int64_t i = i0; i < i1; ++i) {
        const size_t at = static_cast<size_t>(i);
        if (bf16)
          finish_token(i, xr.data(), nullptr, &lists[at], &token_bound[at], N);
        else
          finish_token(i, xr.data(), &cand[at], nullptr, nullptr, N);
      }
    });
  }
  if (!bf16) {
    // Tokens the certificate could not settle (taming's uniform(-1/K, 1/K) codebook: nearly all of
    // them) are searched exactly in tiles of up to kExactTile tokens of one code group, each code
    // row read once per tile (cpu::exact_search: the same bits as direct_sqdist per pair).
    std::vector<int64_t> todo;  // in label-sorted order, so a group's tokens are adjacent
    for (int64_t p = 0; p < N; ++p) {
      const int64_t i = perm.empty() ? p : perm[p];
      if (exact[static_cast<size_t>(i)]) todo.push_back(i);
    }
    auto range_of = [&](int64_t i) {
      const bool all = lp == nullptr || lp[i] < 0;
      return std::make_pair(all ? int64_t{0} : off[lp[i]], all ? K : off[lp[i] + 1]);
    };
    std::vector<int64_t> tile_start;
    for (size_t j = 0; j < todo.size(); ++j)
      if (j == 0 || range_of(todo[j]) != range_of(todo[j - 1]) ||
          static_cast<int64_t>(j) - tile_start.back() >= kExactTile)
        tile_start.push_back(static_cast<int64_t>(j));
    tile_start.push_back(static_cast<int64_t>(todo.size()));
    const int64_t tiles = static_cast<int64_t>(tile_start.size()) - 1;
    at::parallel_for(0, tiles, 1, [&](int64_t a, int64_t b) {
      std::vector<float> rows(static_cast<size_t>(kExactTile * D)), val(kExactTile);
      std::vector<int64_t> arg(kExactTile);
      for (int64_t tile = a; tile < b; ++tile) {
        const int64_t j0 = tile_start[tile], tn = tile_start[tile + 1] - j0;
        for (int64_t t = 0; t < tn; ++t) load_row(xp, todo[j0 + t], D, 1.f, rows.data() + t * D);
        std::fill(val.begin(), val.end(), kInf);
        std::fill(arg.begin(), arg.end(), int64_t{-1});
        const auto [lo, hi] = range_of(todo[j0]);
        cpu::exact_search(rows.data(), tn, D, ep, small ? &small_cb : nullptr, lo, hi, val.data(), arg.data());
        for (int64_t t = 0; t < tn; ++t) {
          const int64_t i = todo[j0 + t];
          if (arg[t] < 0) {  // only non-finite inputs get here: the first code and its (NaN) distance
            ip[i] = lo;
            dp[i] = direct_sqdist(rows.data() + t * D, ep + lo * D, D);
          } else {
            ip[i] = arg[t];
            dp[i] = val[t];
          }
        }
      }
    });
  }
  if (bf16) {
    // Tokens the bf16 candidates could not certify (near-ties closer than bf16 resolves, lists
    // that overflowed, non-finite values) take the exact float32 path, as one batch.
    std::vector<int64_t> rows;
    for (int64_t i = 0; i < N; ++i)
      if (redo[static_cast<size_t>(i)]) rows.push_back(i);
    cpu::note_fast_exact_redo(static_cast<int64_t>(rows.size()), seen.load());
    if (!rows.empty()) {
      const at::Tensor sel = at::tensor(rows, at::kLong);
      std::optional<at::Tensor> sub_labels;
      if (labels.has_value()) sub_labels = labels->index_select(0, sel);
      auto [sub_index, sub_dist] =
          nearest_code_impl<scalar_t>(x.index_select(0, sel), cb_in, sub_labels, offsets, Candidates::kFp32);
      index.index_copy_(0, sel, sub_index);
      sqdist.index_copy_(0, sel, sub_dist);
    }
  }
  return {index, sqdist};
}

std::tuple<at::Tensor, at::Tensor> nearest_code_cpu(const at::Tensor& x, const at::Tensor& codebook,
                                                    const std::optional<at::Tensor>& labels,
                                                    const std::optional<at::Tensor>& offsets,
                                                    c10::string_view mode) {
  check_nearest_code_shapes(x, codebook, labels, offsets, mode);
  TORCH_CHECK(x.device().is_cpu(), "nearest_code (CPU kernel): x is on ", x.device());
  // 'exact' and 'fast_exact' take the bf16 candidates where this CPU has bf16 dot products
  // (cpu::bf16_path()), 'exact_fp32' the float32 ones; every mode returns the float32 argmin.
  const Candidates want = mode == "exact_fp32"   ? Candidates::kFp32
                          : mode == "fast_exact" ? Candidates::kBf16
                                                 : Candidates::kFastest;
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "nearest_code_cpu",
                                         [&] { return nearest_code_impl<scalar_t>(x, codebook, labels, offsets, want); });
}

}  // namespace

TORCH_LIBRARY_IMPL(sgcvq, CPU, m) { m.impl("nearest_code", &nearest_code_cpu); }

}  // namespace sgcvq
