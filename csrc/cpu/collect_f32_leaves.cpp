// Top-2 collector for D <= 16 on AVX2 CPUs: the k-d leaf search (code_leaves.h,
// avx2/leaf_search_avx2.h), which skips the leaves a token's box bounds rule out.
//
// It pays where a token's nearest codes are a small part of the codebook and the box bounds can
// see it: low D (the k-d split's leaves are tight) and many codes. On data where they cannot
// (tokens far from every code, all at about the same distance) a token visits nearly every leaf
// and the register-blocked scan (collect_f32_scan.cpp) is faster: once the work items done so far
// have visited more than kMaxVisitShare of their leaves, the rest of the call takes the scan.
#include "avx2/cpu_kind.h"
#include "avx2/leaf_search_avx2.h"
#include "code_leaves.h"
#include "collector.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <vector>

namespace sgcvq {
namespace cpu {
namespace {

// Measured at (65536, 16384, 8), 2 threads, AMD Zen 3: the leaf search and the scan take the same
// time where tokens visit ~40% of the leaves (x = randn + 5); randn tokens visit 16.5%.
constexpr double kMaxVisitShare = 0.35;

class F32LeavesCollector final : public Top2Collector {
 public:
  // One set of leaves per code range of the plan's items (all codes, or the code splits that give
  // the threads work when the tokens are few).
  explicit F32LeavesCollector(const CollectorSetup& s) : lanes_(s.f32->lanes()), D_(s.D) {
    for (const WorkItem& it : s.plan.items) {
      bool known = false;
      for (const Range& r : ranges_) known = known || (r.k0 == it.k0 && r.k1 == it.k1);
      if (!known) ranges_.push_back({it.k0, it.k1, build_code_leaves(*s.f32, it.k0, it.k1)});
    }
    for (const Range& r : ranges_) most_leaves_ = std::max(most_leaves_, r.leaves.leaves_pad);
  }
  ~F32LeavesCollector() override { note_leaf_visits(visits_.load(), possible_.load()); }
  int64_t row_multiple() const override { return kSmallTokens; }  // the scan's, when it takes over
  int64_t scratch_floats() const override { return most_leaves_; }
  // The tokens in the order of their own leaves (of the first range): a work item's tokens then
  // share most of the leaves they visit.
  bool order_tokens(const TokenRows& rows, int64_t N, std::vector<int64_t>& perm) const override {
    const CodeLeaves& L = ranges_.front().leaves;
    std::vector<int32_t> home(static_cast<size_t>(N));
    std::vector<int64_t> start(static_cast<size_t>(L.leaves + 1), 0);
    at::parallel_for(0, N, 4096, [&](int64_t i0, int64_t i1) {
      std::vector<float> x(static_cast<size_t>(D_));
      for (int64_t i = i0; i < i1; ++i) {
        rows.load(i, 1.f, x.data());
        home[static_cast<size_t>(i)] = L.home(x.data());
      }
    });
    for (int64_t i = 0; i < N; ++i) ++start[static_cast<size_t>(home[static_cast<size_t>(i)] + 1)];
    for (int64_t b = 0; b < L.leaves; ++b) start[static_cast<size_t>(b + 1)] += start[static_cast<size_t>(b)];
    perm.resize(static_cast<size_t>(N));
    for (int64_t i = 0; i < N; ++i) perm[static_cast<size_t>(start[static_cast<size_t>(home[static_cast<size_t>(i)])]++)] = i;
    return true;
  }
  void collect(const float* xs, int64_t tn, int64_t tpad, int64_t k0, int64_t k1, Top2* best,
               float* scratch) const override {
    if (!scan_instead_.load(std::memory_order_relaxed))
      for (const Range& r : ranges_)
        if (r.k0 == k0 && r.k1 == k1 && search(r.leaves, xs, tn, best, scratch)) return;
    small_d_scan(xs, tpad, D_, lanes_, k0, k1, best);
  }

 private:
  struct Range {
    int64_t k0, k1;
    CodeLeaves leaves;
  };

  bool search(const CodeLeaves& L, const float* xs, int64_t tn, Top2* best, float* scratch) const {
    // The tokens in the order of their own leaves (a counting sort).
    std::vector<int32_t> home(static_cast<size_t>(tn)), order(static_cast<size_t>(tn));
    std::vector<int32_t> start(static_cast<size_t>(L.leaves + 1), 0);
    std::vector<int32_t> list(static_cast<size_t>(L.leaves_pad + 8));
    std::vector<float> x(static_cast<size_t>(D_));
    for (int64_t t = 0; t < tn; ++t) {
      for (int64_t d = 0; d < D_; ++d) x[static_cast<size_t>(d)] = -0.5f * xs[t * D_ + d];  // exact
      const int32_t h = L.home(x.data());
      home[static_cast<size_t>(t)] = h;
      ++start[static_cast<size_t>(h + 1)];
    }
    for (int64_t b = 0; b < L.leaves; ++b) start[static_cast<size_t>(b + 1)] += start[static_cast<size_t>(b)];
    for (int64_t t = 0; t < tn; ++t)
      order[static_cast<size_t>(start[static_cast<size_t>(home[static_cast<size_t>(t)])]++)] = static_cast<int32_t>(t);
    const int64_t v = leaf_search_avx2(xs, order.data(), home.data(), tn, L.view(), scratch, list.data(), best);
    if (v < 0) return false;
    const int64_t seen = visits_.fetch_add(v, std::memory_order_relaxed) + v;
    const int64_t all = possible_.fetch_add(tn * L.leaves, std::memory_order_relaxed) + tn * L.leaves;
    if (static_cast<double>(seen) > kMaxVisitShare * static_cast<double>(all))
      scan_instead_.store(true, std::memory_order_relaxed);
    return true;
  }

  std::vector<Range> ranges_;
  int64_t most_leaves_ = 0;
  SmallDCodebook lanes_;
  int64_t D_;
  mutable std::atomic<int64_t> visits_{0}, possible_{0};
  mutable std::atomic<bool> scan_instead_{false};
};

std::atomic<int64_t> g_last_visits{-1}, g_last_possible{-1}, g_calls{0};

}  // namespace

void note_leaf_visits(int64_t visits, int64_t possible) {
  g_calls.fetch_add(1);
  g_last_possible.store(possible);
  g_last_visits.store(visits);
}
std::pair<int64_t, int64_t> last_leaf_visits() { return {g_last_visits.load(), g_last_possible.load()}; }
int64_t leaf_search_calls() { return g_calls.load(); }

bool f32_leaves_serves(const CollectorSetup& s) {
  if (s.D > kSmallMaxD || !avx2_kernels_on()) return false;
  // All codes (no class groups); each code range (all codes, or one code split) of two leaves or more.
  if (!s.plan.off.empty() || s.opts.leaves == "0" || s.plan.item_codes < 2 * kLeafCodes) return false;
  for (const WorkItem& it : s.plan.items)
    if (it.k1 - it.k0 < 2 * kLeafCodes) return false;
  if (s.opts.leaves == "1") return true;
  return s.plan.K >= kLeavesMinCodes && s.plan.N >= kLeavesMinTokens;
}

std::unique_ptr<Top2Collector> make_f32_leaves_collector(const CollectorSetup& s) {
  return std::make_unique<F32LeavesCollector>(s);
}

}  // namespace cpu
}  // namespace sgcvq
