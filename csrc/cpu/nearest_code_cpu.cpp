// nearest_code on the CPU: the torch glue (validation, mode, registration). The search itself is
// the pipeline of search_pipeline.h: plan the tokens, collect candidates, certify, re-search.
#include "../checks.h"
#include "options.h"
#include "search_pipeline.h"

namespace sgcvq {
namespace {

std::tuple<at::Tensor, at::Tensor> nearest_code_cpu(const at::Tensor& x, const at::Tensor& codebook,
                                                    const std::optional<at::Tensor>& labels,
                                                    const std::optional<at::Tensor>& offsets,
                                                    c10::string_view mode) {
  check_nearest_code_shapes(x, codebook, labels, offsets, mode);
  TORCH_CHECK(x.device().is_cpu(), "nearest_code (CPU kernel): x is on ", x.device());
  // 'exact' and 'fast_exact' take low-precision candidates where this CPU has them (the bf16
  // collector where it has bf16 dot products), 'exact_fp32' the float32 ones; every mode returns
  // the float32 argmin.
  const cpu::Candidates want = mode == "exact_fp32"   ? cpu::Candidates::kFp32
                               : mode == "fast_exact" ? cpu::Candidates::kLowPrecision
                                                      : cpu::Candidates::kFastest;
  return cpu::search_nearest_codes(x, codebook, labels, offsets, want, cpu::cpu_options());
}

}  // namespace

TORCH_LIBRARY_IMPL(sgcvq, CPU, m) { m.impl("nearest_code", &nearest_code_cpu); }

}  // namespace sgcvq
