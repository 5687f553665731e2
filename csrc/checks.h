// Boundary validation shared by the CPU and CUDA glue. Messages name the argument and the shapes;
// the Python layer (sgcvq/ops.py) raises the same errors before dispatch, these are for C++ users.
#pragma once
#include <torch/library.h>
#include <ATen/ATen.h>

namespace sgcvq {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}
inline bool is_label_int(at::ScalarType t) { return t == at::kInt || t == at::kLong; }

inline void check_nearest_code_shapes(const at::Tensor& x, const at::Tensor& codebook,
                                      const std::optional<at::Tensor>& labels,
                                      const std::optional<at::Tensor>& offsets,
                                      c10::string_view mode) {
  TORCH_CHECK(x.dim() == 2, "nearest_code: x must be [N, D], got ", x.sizes());
  TORCH_CHECK(codebook.dim() == 2, "nearest_code: codebook must be [K, D], got ", codebook.sizes());
  TORCH_CHECK(x.size(1) == codebook.size(1), "nearest_code: x is ", x.sizes(), " but codebook is ",
              codebook.sizes(), ": D must match");
  TORCH_CHECK(codebook.size(0) > 0, "nearest_code: codebook is empty (K = 0)");
  TORCH_CHECK(is_supported_float(x.scalar_type()),
              "nearest_code: x must be float32, bfloat16 or float16, got ", x.scalar_type());
  TORCH_CHECK(x.scalar_type() == codebook.scalar_type(), "nearest_code: x is ", x.scalar_type(),
              " but codebook is ", codebook.scalar_type(), ": dtypes must match");
  TORCH_CHECK(x.device() == codebook.device(), "nearest_code: x is on ", x.device(),
              " but codebook is on ", codebook.device());
  TORCH_CHECK(mode == "exact" || mode == "fast_exact" || mode == "exact_fp32",
              "nearest_code: mode must be 'exact', 'fast_exact' or 'exact_fp32', got '", mode, "'");
  TORCH_CHECK(labels.has_value() == offsets.has_value(),
              "nearest_code: labels and offsets go together: pass both or neither");
  if (labels.has_value()) {
    const auto& l = *labels;
    const auto& o = *offsets;
    TORCH_CHECK(l.dim() == 1 && l.size(0) == x.size(0), "nearest_code: labels must be [N] = [",
                x.size(0), "], got ", l.sizes());
    TORCH_CHECK(is_label_int(l.scalar_type()), "nearest_code: labels must be int32 or int64, got ",
                l.scalar_type());
    TORCH_CHECK(o.dim() == 1 && o.size(0) >= 2, "nearest_code: offsets must be [C+1] with C >= 1, got ",
                o.sizes());
    TORCH_CHECK(is_label_int(o.scalar_type()), "nearest_code: offsets must be int32 or int64, got ",
                o.scalar_type());
    TORCH_CHECK(l.device() == x.device() && o.device() == x.device(),
                "nearest_code: labels and offsets must be on x's device ", x.device());
  }
}

inline void check_cluster_stats_shapes(const at::Tensor& index, const at::Tensor& x, int64_t K) {
  TORCH_CHECK(x.dim() == 2, "cluster_stats: x must be [N, D], got ", x.sizes());
  TORCH_CHECK(index.dim() == 1 && index.size(0) == x.size(0), "cluster_stats: index must be [N] = [",
              x.size(0), "], got ", index.sizes());
  TORCH_CHECK(index.scalar_type() == at::kLong, "cluster_stats: index must be int64, got ",
              index.scalar_type());
  TORCH_CHECK(is_supported_float(x.scalar_type()),
              "cluster_stats: x must be float32, bfloat16 or float16, got ", x.scalar_type());
  TORCH_CHECK(K > 0, "cluster_stats: K must be positive, got ", K);
  TORCH_CHECK(index.device() == x.device(), "cluster_stats: index is on ", index.device(),
              " but x is on ", x.device());
}

inline void check_ema_update_shapes(const at::Tensor& cluster_size, const at::Tensor& embed_sum,
                                    const at::Tensor& codebook, const at::Tensor& counts,
                                    const at::Tensor& sums, double decay, double eps) {
  TORCH_CHECK(embed_sum.dim() == 2, "ema_update: embed_sum must be [K, D], got ", embed_sum.sizes());
  const auto K = embed_sum.size(0);
  TORCH_CHECK(cluster_size.dim() == 1 && cluster_size.size(0) == K,
              "ema_update: cluster_size must be [K] = [", K, "], got ", cluster_size.sizes());
  TORCH_CHECK(codebook.sizes() == embed_sum.sizes() && sums.sizes() == embed_sum.sizes(),
              "ema_update: codebook ", codebook.sizes(), " and sums ", sums.sizes(),
              " must match embed_sum ", embed_sum.sizes());
  TORCH_CHECK(counts.sizes() == cluster_size.sizes(), "ema_update: counts ", counts.sizes(),
              " must match cluster_size ", cluster_size.sizes());
  for (const at::Tensor* t : {&cluster_size, &embed_sum, &codebook, &counts, &sums}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat, "ema_update: every tensor must be float32, got ",
                t->scalar_type());
    TORCH_CHECK(t->device() == embed_sum.device(), "ema_update: every tensor must be on ",
                embed_sum.device());
  }
  for (const at::Tensor* t : {&cluster_size, &embed_sum, &codebook})
    TORCH_CHECK(t->is_contiguous(), "ema_update: the buffers updated in place must be contiguous");
  TORCH_CHECK(decay >= 0.0 && decay <= 1.0, "ema_update: decay must be in [0, 1], got ", decay);
  TORCH_CHECK(eps >= 0.0, "ema_update: eps must be >= 0, got ", eps);
}

}  // namespace sgcvq
