// Stage 1 of the CPU search: partition the tokens and cut the work into items.
//
// Without labels every token searches all K codes, in order. With labels the tokens are
// counting-sorted by class, so each class's tokens are adjacent and search only their class's
// codes (the cost is sum_c n_c K_c D). Each run of up to kTileN tokens of one group becomes one
// work item per code split (the codes are split too when the runs are too few for the threads).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

namespace sgcvq {
namespace cpu {

constexpr int64_t kTileN = 512;  // tokens per work item (the GEMM packs each code tile once per 512)
constexpr int64_t kTileK = 512;  // codes per GEMM tile (scratch: kTileN * kTileK floats = 1 MB, in L2)

struct WorkItem {
  int64_t t0, t1;  // positions in the (possibly label-sorted) token order
  int64_t k0, k1;  // code range searched
  int64_t split;   // which candidate slot this item writes (code-range split)
  int64_t g0, g1;  // the tokens' whole code range (the union of their items' [k0, k1))
};

struct SearchPlan {
  int64_t N = 0, K = 0;
  std::vector<int64_t> perm;  // position -> token (empty: identity order)
  std::vector<int64_t> off;   // [C + 1] the class groups' code offsets (empty without labels)
  at::Tensor labels;          // int64 [N] (undefined without labels)
  const int64_t* lp = nullptr;
  std::vector<WorkItem> items;  // biggest first
  int64_t splits = 1;           // code splits per token run
  int64_t work = 0;             // token x code pairs searched
  int64_t item_codes = 0;       // the largest item's code range

  int64_t token(int64_t pos) const { return perm.empty() ? pos : perm[static_cast<size_t>(pos)]; }
  // The code range token i searches: its class's group, or every code (label -1, no labels).
  int64_t lo(int64_t i) const { return lp == nullptr || lp[i] < 0 ? 0 : off[static_cast<size_t>(lp[i])]; }
  int64_t hi(int64_t i) const { return lp == nullptr || lp[i] < 0 ? K : off[static_cast<size_t>(lp[i] + 1)]; }
  bool any_item_over_all_codes() const;
};

// labels [N] and offsets [C + 1] (int32 or int64) as checked by check_nearest_code_shapes; checks
// what needs their values (offsets 0..K and non-decreasing, labels in [-1, C) naming non-empty
// groups) and throws naming the first bad one.
SearchPlan plan_search(int64_t N, int64_t K, const std::optional<at::Tensor>& labels,
                       const std::optional<at::Tensor>& offsets, int64_t threads);

}  // namespace cpu
}  // namespace sgcvq
