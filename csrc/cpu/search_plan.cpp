// Stage 1 of the CPU search (search_plan.h).
#include "search_plan.h"

#include <algorithm>

namespace sgcvq {
namespace cpu {
namespace {

// Counting sort by class; bucket 0 holds the ignore label -1 (searches all codes). A label is
// checked by one table lookup (usable[l + 1]: -1 or a non-empty group), the first bad one named
// after the pass. Returns the groups as (token end position, class) runs.
std::vector<std::pair<int64_t, int64_t>> sort_by_class(SearchPlan& p) {
  const int64_t N = p.N, C = static_cast<int64_t>(p.off.size()) - 1;
  const int64_t* lp = p.lp;
  const std::vector<int64_t>& off = p.off;
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
      TORCH_CHECK(l >= -1 && l < C, "nearest_code: labels must be in [-1, ", C, "), but labels[", i, "] = ", l);
      TORCH_CHECK(l < 0 || off[l + 1] > off[l], "nearest_code: labels[", i, "] = ", l,
                  " points to an empty code group");
    }
  for (int64_t b = 1; b < C + 2; ++b) count[b] += count[b - 1];
  p.perm.resize(N);
  std::vector<int64_t> fill(count.begin(), count.end() - 1);
  for (int64_t i = 0; i < N; ++i) p.perm[fill[lp[i] + 1]++] = i;
  std::vector<std::pair<int64_t, int64_t>> groups;
  for (int64_t b = 0; b < C + 1; ++b)
    if (count[b + 1] > count[b]) groups.emplace_back(count[b + 1], b - 1);
  return groups;
}

// Token runs x code ranges; the codes are split too when the runs are few.
void cut_items(SearchPlan& p, const std::vector<std::pair<int64_t, int64_t>>& groups, int64_t threads) {
  const int64_t K = p.K;
  int64_t runs = 0;
  for (size_t g = 0; g < groups.size(); ++g) {
    const int64_t begin = g == 0 ? 0 : groups[g - 1].first;
    runs += (groups[g].first - begin + kTileN - 1) / kTileN;
  }
  const int64_t want = 4 * threads;
  p.splits = runs >= want ? 1 : std::min<int64_t>((want + runs - 1) / runs, std::max<int64_t>(1, K / kTileK));
  for (size_t g = 0; g < groups.size(); ++g) {
    const int64_t begin = g == 0 ? 0 : groups[g - 1].first, end = groups[g].first;
    const int64_t c = groups[g].second;
    const int64_t k0 = c < 0 ? 0 : p.off[c], k1 = c < 0 ? K : p.off[c + 1];
    const int64_t s_here = std::min<int64_t>(p.splits, k1 - k0);
    for (int64_t t = begin; t < end; t += kTileN)
      for (int64_t s = 0; s < s_here; ++s)
        p.items.push_back({t, std::min(end, t + kTileN), k0 + (k1 - k0) * s / s_here,
                           k0 + (k1 - k0) * (s + 1) / s_here, s, k0, k1});
  }
  // Biggest items first, so the dynamic schedule ends balanced.
  std::stable_sort(p.items.begin(), p.items.end(), [](const WorkItem& a, const WorkItem& b) {
    return (a.t1 - a.t0) * (a.k1 - a.k0) > (b.t1 - b.t0) * (b.k1 - b.k0);
  });
  for (const WorkItem& it : p.items) {
    p.work += (it.t1 - it.t0) * (it.k1 - it.k0);
    p.item_codes = std::max(p.item_codes, it.k1 - it.k0);
  }
}

}  // namespace

bool SearchPlan::any_item_over_all_codes() const {
  return std::any_of(items.begin(), items.end(), [&](const WorkItem& it) { return it.k0 == 0 && it.k1 == K; });
}

SearchPlan plan_search(int64_t N, int64_t K, const std::optional<at::Tensor>& labels,
                       const std::optional<at::Tensor>& offsets, int64_t threads) {
  SearchPlan p;
  p.N = N;
  p.K = K;
  std::vector<std::pair<int64_t, int64_t>> groups;
  if (labels.has_value()) {
    p.labels = labels->to(at::kLong).contiguous();
    p.lp = p.labels.data_ptr<int64_t>();
    const at::Tensor offt = offsets->to(at::kLong).contiguous();
    const int64_t C = offt.size(0) - 1;
    p.off.assign(offt.data_ptr<int64_t>(), offt.data_ptr<int64_t>() + C + 1);
    TORCH_CHECK(p.off[0] == 0 && p.off[C] == K, "nearest_code: offsets must start at 0 and end at K = ", K,
                ", got ", p.off[0], " .. ", p.off[C]);
    for (int64_t c = 0; c < C; ++c)
      TORCH_CHECK(p.off[c] <= p.off[c + 1], "nearest_code: offsets must be non-decreasing, but offsets[", c,
                  "] = ", p.off[c], " > offsets[", c + 1, "] = ", p.off[c + 1]);
    groups = sort_by_class(p);
  } else {
    groups.emplace_back(N, -1);
  }
  cut_items(p, groups, threads);
  return p;
}

}  // namespace cpu
}  // namespace sgcvq
