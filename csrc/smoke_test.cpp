// C++ smoke test of the op library built by CMake: the ops resolve through the dispatcher and agree
// with a brute-force search on random data.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <iostream>

int main() {
  torch::manual_seed(0);
  const auto x = torch::randn({300, 24});
  const auto codebook = torch::randn({70, 24});
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("sgcvq::nearest_code", "")
                .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                          const std::optional<at::Tensor>&,
                                                          const std::optional<at::Tensor>&,
                                                          c10::string_view)>();
  const auto expected = torch::cdist(x.to(torch::kDouble), codebook.to(torch::kDouble)).argmin(1);
  // Every mode gives the same answer: "exact" takes the CPU's bf16 path where it has one (300
  // tokens, 70 codes), "exact_fp32" the float32 tiles.
  int64_t wrong = 0;
  at::Tensor index;
  for (const char* mode : {"exact", "fast_exact", "exact_fp32"}) {
    index = std::get<0>(op.call(x, codebook, std::nullopt, std::nullopt, mode));
    const int64_t w = (index != expected).sum().item<int64_t>();
    if (w != 0) std::cout << "nearest_code mode " << mode << ": " << w << " mismatches" << std::endl;
    wrong += w;
  }
  auto stats = c10::Dispatcher::singleton()
                   .findSchemaOrThrow("sgcvq::cluster_stats", "")
                   .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t, bool)>();
  auto [counts, sums] = stats.call(index, x, 70, false);
  const bool counts_ok = counts.sum().item<float>() == 300.f;
  std::cout << "nearest_code mismatches: " << wrong << ", counts sum ok: " << counts_ok << std::endl;
  return (wrong == 0 && counts_ok) ? 0 : 1;
}
