// The CPU search's driver (search_pipeline.h): plan, pick the collector, run its passes.
#include "search_pipeline.h"

#include <ATen/Parallel.h>

namespace sgcvq {
namespace cpu {

std::tuple<at::Tensor, at::Tensor> search_nearest_codes(const at::Tensor& x_in, const at::Tensor& cb_in,
                                                        const std::optional<at::Tensor>& labels,
                                                        const std::optional<at::Tensor>& offsets, Candidates want,
                                                        const CpuOptions& opts) {
  const int64_t N = x_in.size(0), D = x_in.size(1), K = cb_in.size(0);
  auto index = at::empty({N}, x_in.options().dtype(at::kLong));
  auto sqdist = at::empty({N}, x_in.options().dtype(at::kFloat));
  if (N == 0) return {index, sqdist};

  const at::Tensor x = x_in.contiguous();
  // detach(): the GEMM tiles run at::mm_out on worker threads, where the caller's "below autograd"
  // dispatch state does not hold; a codebook that requires grad would make autograd refuse out=.
  const at::Tensor E = cb_in.detach().to(at::kFloat).contiguous();  // [K, D] float32
  const SearchPlan plan = plan_search(N, K, labels, offsets, at::get_num_threads());
  const TokenRows rows = token_rows(x);
  const Answers out{index.data_ptr<int64_t>(), sqdist.data_ptr<float>(), E.data_ptr<float>(), D};

  CollectorSetup setup{plan, opts, want, D, E, x.scalar_type() == at::kBFloat16, nullptr};
  const CollectorEntry& entry = choose_collector(setup);
  if (entry.make_list != nullptr) {
    const std::unique_ptr<ListCollector> collector = entry.make_list(setup);
    const std::vector<int64_t> left = run_list_search(plan, rows, E.data_ptr<float>(), *collector, out);
    // Tokens the lists could not certify (near-ties closer than the low precision resolves, lists
    // that overflowed, non-finite values) take the float32 candidates, as one batch.
    if (!left.empty()) {
      const at::Tensor sel = at::tensor(left, at::kLong);
      std::optional<at::Tensor> sub_labels;
      if (labels.has_value()) sub_labels = labels->index_select(0, sel);
      auto [sub_index, sub_dist] =
          search_nearest_codes(x.index_select(0, sel), cb_in, sub_labels, offsets, Candidates::kFp32, opts);
      index.index_copy_(0, sel, sub_index);
      sqdist.index_copy_(0, sel, sub_dist);
    }
    return {index, sqdist};
  }
  const FloatCodebook cb = prepare_float_codebook(E, D <= kSmallMaxD);
  setup.f32 = &cb;
  const std::unique_ptr<Top2Collector> collector = entry.make_top2(setup);
  run_top2_search(plan, rows, cb, *collector, opts, out);
  return {index, sqdist};
}

}  // namespace cpu
}  // namespace sgcvq
