// cluster_stats on the CPU: counts[k] = #{i : index[i] = k}, sums[k] = sum_{index[i] = k} x[i].
//
// Deterministic whatever the thread count: tokens are counting-sorted by index (stable), the sorted
// sequence is cut into fixed pieces of kPiece tokens, and each piece sums its segments in token
// order. A segment wholly inside a piece is written straight to sums[k] (one writer); a segment
// crossing a piece boundary leaves per-piece partials that one sequential pass adds in piece order.
// The summation order therefore depends on N and the data only, never on the scheduling.
#include "../checks.h"

#include <ATen/Parallel.h>

#include <vector>

namespace sgcvq {
namespace {

constexpr int64_t kPiece = 2048;

// AVX-512 and AVX2 clones next to the baseline one on x86-64 (ifunc); one plain loop elsewhere.
#if defined(__x86_64__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void add_row(float* __restrict__ acc, const float* __restrict__ row, int64_t D) {
  for (int64_t d = 0; d < D; ++d) acc[d] += row[d];
}

template <typename scalar_t>
inline void add_row_any(float* acc, const scalar_t* row, int64_t D) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    add_row(acc, row, D);
  } else {
    // NOTE: float32 accumulation for half/bfloat16 inputs.
    for (int64_t d = 0; d < D; ++d) acc[d] += static_cast<float>(row[d]);
  }
}

template <typename scalar_t>
void cluster_stats_impl(const int64_t* ip, const scalar_t* xp, int64_t N, int64_t D, int64_t K,
                        float* counts, float* sums) {
  std::vector<int64_t> start(K + 1, 0);
  for (int64_t i = 0; i < N; ++i) {
    const int64_t k = ip[i];
    TORCH_CHECK(k >= 0 && k < K, "cluster_stats: index must be in [0, ", K, "), but index[", i,
                "] = ", k);
    ++start[k + 1];
  }
  for (int64_t k = 0; k < K; ++k) {
    counts[k] = static_cast<float>(start[k + 1]);
    start[k + 1] += start[k];
  }
  std::vector<int64_t> perm(N), fill(start.begin(), start.end() - 1);
  for (int64_t i = 0; i < N; ++i) perm[fill[ip[i]]++] = i;

  const int64_t pieces = (N + kPiece - 1) / kPiece;
  // Partials for the (at most two) boundary-crossing segments of each piece.
  std::vector<float> head(pieces * D, 0.f), tail(pieces * D, 0.f);
  std::vector<int64_t> head_k(pieces, -1), tail_k(pieces, -1);
  at::parallel_for(0, pieces, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t a = p * kPiece, b = std::min(N, a + kPiece);
      int64_t s = a;
      while (s < b) {
        const int64_t k = ip[perm[s]];
        const int64_t e = std::min(b, start[k + 1]);
        const bool crosses = start[k] < a || start[k + 1] > b;
        float* acc = !crosses ? sums + k * D : (s == a ? head.data() + p * D : tail.data() + p * D);
        if (crosses) (s == a ? head_k : tail_k)[p] = k;
        for (int64_t t = s; t < e; ++t) add_row_any(acc, xp + perm[t] * D, D);
        s = e;
      }
    }
  });
  for (int64_t p = 0; p < pieces; ++p) {
    if (head_k[p] >= 0) add_row(sums + head_k[p] * D, head.data() + p * D, D);
    if (tail_k[p] >= 0) add_row(sums + tail_k[p] * D, tail.data() + p * D, D);
  }
}

std::tuple<at::Tensor, at::Tensor> cluster_stats_cpu(const at::Tensor& index, const at::Tensor& x,
                                                     int64_t K, bool /*deterministic: always*/) {
  check_cluster_stats_shapes(index, x, K);
  const int64_t N = x.size(0), D = x.size(1);
  auto counts = at::zeros({K}, x.options().dtype(at::kFloat));
  auto sums = at::zeros({K, D}, x.options().dtype(at::kFloat));
  if (N == 0) return {counts, sums};
  const at::Tensor xc = x.contiguous(), ic = index.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "cluster_stats_cpu", [&] {
    cluster_stats_impl<scalar_t>(ic.data_ptr<int64_t>(), xc.data_ptr<scalar_t>(), N, D, K,
                                 counts.data_ptr<float>(), sums.data_ptr<float>());
  });
  return {counts, sums};
}

}  // namespace

TORCH_LIBRARY_IMPL(sgcvq, CPU, m) { m.impl("cluster_stats", &cluster_stats_cpu); }

}  // namespace sgcvq
