// The EMA codebook update (docs/method.md §1.6) fused into one pass over [K, D]:
//   N <- decay N + (1 - decay) counts;  M <- decay M + (1 - decay) sums
//   codebook[k] = M[k] / ((N[k] + eps) / (sum N + K eps) * sum N)     (Laplace smoothing)
#include "../checks.h"

#include <ATen/Parallel.h>

namespace sgcvq {
namespace {

void ema_update_cpu(const at::Tensor& cluster_size, const at::Tensor& embed_sum,
                    const at::Tensor& codebook, const at::Tensor& counts_in, const at::Tensor& sums_in,
                    double decay, double eps) {
  check_ema_update_shapes(cluster_size, embed_sum, codebook, counts_in, sums_in, decay, eps);
  const int64_t K = embed_sum.size(0), D = embed_sum.size(1);
  const at::Tensor counts = counts_in.contiguous(), sums = sums_in.contiguous();
  float* n = cluster_size.data_ptr<float>();
  float* m = embed_sum.data_ptr<float>();
  float* e = codebook.data_ptr<float>();
  const float* c = counts.data_ptr<float>();
  const float* s = sums.data_ptr<float>();
  const float g = static_cast<float>(decay), h = static_cast<float>(1.0 - decay);
  double total = 0.0;  // NOTE: one sequential sum in double: deterministic, no fp32 drift at large K
  for (int64_t k = 0; k < K; ++k) {
    n[k] = g * n[k] + h * c[k];
    total += n[k];
  }
  const float tot = static_cast<float>(total);
  const float denom = static_cast<float>(total + K * eps);
  const float fe = static_cast<float>(eps);
  at::parallel_for(0, K, 64, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const float smoothed = (n[k] + fe) / denom * tot;
      for (int64_t d = 0; d < D; ++d) {
        const int64_t j = k * D + d;
        m[j] = g * m[j] + h * s[j];
        e[j] = m[j] / smoothed;  // a division, as vector-quantize-pytorch does
      }
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(sgcvq, CPU, m) { m.impl("ema_update", &ema_update_cpu); }

}  // namespace sgcvq
