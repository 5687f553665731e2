// The CPU nearest_code search as a pipeline (FAISS's exhaustive_L2sqr_blas shape):
//   1. plan: partition the tokens (all codes, or counting-sorted class groups) into work items
//      (search_plan.h);
//   2. collect: the first collector of the dispatch table that serves the call (collector.h)
//      searches each item by an approximate distance and keeps top-2 values or margin lists;
//   3. certify: each token's candidates are re-scored with the direct float32 distance and the
//      best is certified against the bound (certify.h);
//   4. re-search: tokens left uncertified are searched exactly (exact_research.h); a list
//      collector's go through the pipeline again with float32 candidates.
// The result is the argmin of the direct float32 distance, ties to the lowest index, on every path.
#pragma once
#include "certify.h"
#include "collector.h"
#include "options.h"
#include "search_plan.h"
#include "token_rows.h"

#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <vector>

namespace sgcvq {
namespace cpu {

// index [N] int64, sqdist [N] float32 for x [N, D] and codebook [K, D] as checked by
// check_nearest_code_shapes (labels / offsets: the class groups, or none).
std::tuple<at::Tensor, at::Tensor> search_nearest_codes(const at::Tensor& x, const at::Tensor& codebook,
                                                        const std::optional<at::Tensor>& labels,
                                                        const std::optional<at::Tensor>& offsets, Candidates want,
                                                        const CpuOptions& opts);

// Stages 2-4 with a top-2 collector: every token ends with its answer in `out`.
void run_top2_search(const SearchPlan& plan, const TokenRows& rows, const FloatCodebook& cb, const Top2Collector& c,
                     const CpuOptions& opts, const Answers& out);

// Stages 2-3 with a list collector: returns the tokens it could not certify (in increasing order),
// whose answers in `out` are not written. E: float32 [K, D] codes for the re-score.
std::vector<int64_t> run_list_search(const SearchPlan& plan, const TokenRows& rows, const float* E,
                                     const ListCollector& c, const Answers& out);

}  // namespace cpu
}  // namespace sgcvq
