// nearest_code on the CPU: fused tiled search that never materialises the N x K distances.
//
// Work is a list of items (a run of <= kTileN tokens, a code range). Without labels the runs are
// consecutive tokens over all K codes; with labels, tokens are counting-sorted by class first and
// each run searches only its class's codes, so the cost is sum_c n_c * K_c * D.
//
// Large D: per item, S = X_tile @ E_tile^T through ATen's GEMM into a thread-local scratch of
// kTileN x kTileK floats (L2-sized), then one fused pass computes ||e||^2 - 2 x.e and keeps the two
// best (value, index) per token. The expansion loses precision to cancellation, so the final pass
// re-scores the candidates with the direct fp32 sum of squared differences: the returned index is
// the fp32 argmin unless the true best and second best are closer than the expansion's error bound.
// Small D: a direct difference-square loop, exact as is.
#include "../checks.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

namespace sgcvq {
namespace {

constexpr int64_t kTileN = 256;      // tokens per work item
constexpr int64_t kTileK = 512;      // codes per GEMM tile (scratch: kTileN * kTileK floats = 512 KB)
constexpr int64_t kDirectMaxD = 16;  // at or below this D the direct loop beats the GEMM path
constexpr int64_t kDirectBlockK = 64;
constexpr float kInf = std::numeric_limits<float>::infinity();

struct WorkItem {
  int64_t t0, t1;  // positions in the (possibly label-sorted) token order
  int64_t k0, k1;  // code range searched
  int64_t split;   // which candidate slot this item writes (code-range split)
};

// Reads row `row` of x (any supported dtype) into float32.
template <typename scalar_t>
inline void load_row(const scalar_t* x, int64_t row, int64_t D, float* out) {
  const scalar_t* src = x + row * D;
  for (int64_t d = 0; d < D; ++d) out[d] = static_cast<float>(src[d]);
}

// NOTE: this sequential fp32 sum is the definition of "the fp32 distance" on the CPU: the direct
// path and the re-score use it, so both paths agree bit for bit.
inline float direct_sqdist(const float* a, const float* b, int64_t D) {
  float s = 0.f;
  for (int64_t d = 0; d < D; ++d) {
    const float t = a[d] - b[d];
    s += t * t;
  }
  return s;
}

// vals[j] = norms[j] - 2 * dots[j], in place; returns min(vals). Vectorised per CPU (ifunc).
__attribute__((target_clones("avx512f", "avx2", "default")))
float expand_and_min(float* __restrict__ dots, const float* __restrict__ norms, int64_t n) {
  float m = kInf;
  for (int64_t j = 0; j < n; ++j) {
    const float v = norms[j] - 2.f * dots[j];
    dots[j] = v;
    m = std::min(m, v);
  }
  return m;
}

// acc[j] = sum_d (x[d] - et[d * ldk + j])^2 for j < n (codes stored transposed, [D][K]).
__attribute__((target_clones("avx512f", "avx2", "default")))
void direct_block(const float* __restrict__ x, const float* __restrict__ et, int64_t ldk, int64_t D,
                  int64_t n, float* __restrict__ acc) {
  for (int64_t j = 0; j < n; ++j) acc[j] = 0.f;
  for (int64_t d = 0; d < D; ++d) {
    const float xd = x[d];
    const float* e = et + d * ldk;
    for (int64_t j = 0; j < n; ++j) {
      const float t = xd - e[j];
      acc[j] += t * t;
    }
  }
}

__attribute__((target_clones("avx512f", "avx2", "default")))
float row_min(const float* __restrict__ v, int64_t n) {
  float m = kInf;
  for (int64_t j = 0; j < n; ++j) m = std::min(m, v[j]);
  return m;
}

// Keeps the two smallest (value, index); codes arrive in increasing index order, so strict '<'
// keeps the lowest index among equal values.
struct Top2 {
  float v1 = kInf, v2 = kInf;
  int64_t i1 = -1, i2 = -1;
  inline void scan(const float* vals, int64_t n, int64_t base) {
    for (int64_t j = 0; j < n; ++j) {
      const float v = vals[j];
      if (v < v1) {
        v2 = v1; i2 = i1; v1 = v; i1 = base + j;
      } else if (v < v2) {
        v2 = v; i2 = base + j;
      }
    }
  }
};

template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor> nearest_code_impl(const at::Tensor& x_in, const at::Tensor& cb_in,
                                                     const std::optional<at::Tensor>& labels,
                                                     const std::optional<at::Tensor>& offsets) {
  const int64_t N = x_in.size(0), D = x_in.size(1), K = cb_in.size(0);
  auto index = at::empty({N}, x_in.options().dtype(at::kLong));
  auto sqdist = at::empty({N}, x_in.options().dtype(at::kFloat));
  if (N == 0) return {index, sqdist};

  const at::Tensor x = x_in.contiguous();
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const at::Tensor E = cb_in.to(at::kFloat).contiguous();  // [K, D] float32 (a view if already so)
  const float* ep = E.data_ptr<float>();
  const bool direct = D <= kDirectMaxD;

  // ---- token order and code ranges -------------------------------------------------------
  std::vector<int64_t> perm;                        // empty: identity order
  std::vector<std::pair<int64_t, int64_t>> groups;  // (token end position, class) runs
  std::vector<int64_t> off;
  if (labels.has_value()) {
    const at::Tensor lab = labels->to(at::kLong).contiguous();
    const at::Tensor offt = offsets->to(at::kLong).contiguous();
    const int64_t* lp = lab.data_ptr<int64_t>();
    const int64_t C = offt.size(0) - 1;
    off.assign(offt.data_ptr<int64_t>(), offt.data_ptr<int64_t>() + C + 1);
    TORCH_CHECK(off[0] == 0 && off[C] == K, "nearest_code: offsets must start at 0 and end at K = ", K,
                ", got ", off[0], " .. ", off[C]);
    for (int64_t c = 0; c < C; ++c)
      TORCH_CHECK(off[c] <= off[c + 1], "nearest_code: offsets must be non-decreasing, but offsets[",
                  c, "] = ", off[c], " > offsets[", c + 1, "] = ", off[c + 1]);
    // Counting sort by class; bucket 0 holds the ignore label -1 (searches all codes).
    std::vector<int64_t> count(C + 2, 0);
    for (int64_t i = 0; i < N; ++i) {
      const int64_t l = lp[i];
      TORCH_CHECK(l >= -1 && l < C, "nearest_code: labels must be in [-1, ", C, "), but labels[", i,
                  "] = ", l);
      TORCH_CHECK(l < 0 || off[l + 1] > off[l], "nearest_code: labels[", i, "] = ", l,
                  " points to an empty code group");
      ++count[l + 2];
    }
    for (int64_t b = 1; b < C + 2; ++b) count[b] += count[b - 1];
    perm.resize(N);
    std::vector<int64_t> fill(count.begin(), count.end() - 1);
    for (int64_t i = 0; i < N; ++i) perm[fill[lp[i] + 1]++] = i;
    for (int64_t b = 0; b < C + 1; ++b)
      if (count[b + 1] > count[b]) groups.emplace_back(count[b + 1], b - 1);
  } else {
    groups.emplace_back(N, -1);
  }

  // ---- work items: token runs x code ranges; split the codes too when runs are few --------
  std::vector<WorkItem> items;
  const int64_t threads = at::get_num_threads();
  int64_t runs = 0;
  for (size_t g = 0; g < groups.size(); ++g) {
    const int64_t begin = g == 0 ? 0 : groups[g - 1].first;
    runs += (groups[g].first - begin + kTileN - 1) / kTileN;
  }
  const int64_t want = 4 * threads;
  const int64_t splits = runs >= want ? 1 : std::min<int64_t>((want + runs - 1) / runs,
                                                              std::max<int64_t>(1, K / kTileK));
  for (size_t g = 0; g < groups.size(); ++g) {
    const int64_t begin = g == 0 ? 0 : groups[g - 1].first, end = groups[g].first;
    const int64_t c = groups[g].second;
    const int64_t k0 = c < 0 ? 0 : off[c], k1 = c < 0 ? K : off[c + 1];
    const int64_t s_here = std::min<int64_t>(splits, k1 - k0);
    for (int64_t t = begin; t < end; t += kTileN)
      for (int64_t s = 0; s < s_here; ++s)
        items.push_back({t, std::min(end, t + kTileN), k0 + (k1 - k0) * s / s_here,
                         k0 + (k1 - k0) * (s + 1) / s_here, s});
  }
  // Biggest items first, so the dynamic schedule ends balanced.
  std::stable_sort(items.begin(), items.end(), [](const WorkItem& a, const WorkItem& b) {
    return (a.t1 - a.t0) * (a.k1 - a.k0) > (b.t1 - b.t0) * (b.k1 - b.k0);
  });

  // ---- candidates: [splits][N][2] (index, value) -----------------------------------------
  std::vector<int64_t> cand_i(static_cast<size_t>(splits * N * 2), -1);
  std::vector<float> cand_v(static_cast<size_t>(splits * N * 2), kInf);

  at::Tensor Et, enorm;
  if (direct) {
    Et = E.t().contiguous();  // [D, K]: codes along the vector lanes
  } else {
    enorm = E.pow(2).sum(1);  // [K]
  }
  const float* etp = direct ? Et.data_ptr<float>() : nullptr;
  const float* np_ = direct ? nullptr : enorm.data_ptr<float>();

  std::atomic<size_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    std::vector<float> xt(static_cast<size_t>(kTileN * D));
    std::vector<float> scratch(static_cast<size_t>(direct ? kDirectBlockK : kTileN * kTileK));
    for (size_t w = next.fetch_add(1); w < items.size(); w = next.fetch_add(1)) {
      const WorkItem& it = items[w];
      const int64_t tn = it.t1 - it.t0;
      for (int64_t t = 0; t < tn; ++t) {
        const int64_t row = perm.empty() ? it.t0 + t : perm[it.t0 + t];
        load_row(xp, row, D, xt.data() + t * D);
      }
      std::vector<Top2> best(static_cast<size_t>(tn));
      if (direct) {
        for (int64_t t = 0; t < tn; ++t) {
          Top2& b = best[t];
          for (int64_t kb = it.k0; kb < it.k1; kb += kDirectBlockK) {
            const int64_t kn = std::min(kDirectBlockK, it.k1 - kb);
            direct_block(xt.data() + t * D, etp + kb, K, D, kn, scratch.data());
            if (row_min(scratch.data(), kn) < b.v1) {
              for (int64_t j = 0; j < kn; ++j)
                if (scratch[j] < b.v1) { b.v1 = scratch[j]; b.i1 = kb + j; }
            }
          }
        }
      } else {
        const at::Tensor X = at::from_blob(xt.data(), {tn, D}, at::kFloat);
        for (int64_t kb = it.k0; kb < it.k1; kb += kTileK) {
          const int64_t kn = std::min(kTileK, it.k1 - kb);
          at::Tensor S = at::from_blob(scratch.data(), {tn, kn}, at::kFloat);
          at::mm_out(S, X, E.narrow(0, kb, kn).t());
          for (int64_t t = 0; t < tn; ++t) {
            float* row = scratch.data() + t * kn;
            if (expand_and_min(row, np_ + kb, kn) < best[t].v2) best[t].scan(row, kn, kb);
          }
        }
      }
      for (int64_t t = 0; t < tn; ++t) {
        const int64_t tok = perm.empty() ? it.t0 + t : perm[it.t0 + t];
        const size_t slot = static_cast<size_t>((it.split * N + tok) * 2);
        cand_i[slot] = best[t].i1; cand_v[slot] = best[t].v1;
        cand_i[slot + 1] = best[t].i2; cand_v[slot + 1] = best[t].v2;
      }
    }
  });

  // ---- final pass: exact fp32 re-score of the candidates, ties to the lowest index ---------
  int64_t* ip = index.data_ptr<int64_t>();
  float* dp = sqdist.data_ptr<float>();
  std::vector<int64_t> first_code(labels.has_value() ? N : 0, 0);
  if (labels.has_value()) {
    const at::Tensor lab = labels->to(at::kLong).contiguous();
    const int64_t* lp = lab.data_ptr<int64_t>();
    for (int64_t i = 0; i < N; ++i) first_code[i] = lp[i] < 0 ? 0 : off[lp[i]];
  }
  at::parallel_for(0, N, 256, [&](int64_t i0, int64_t i1) {
    std::vector<float> xr(static_cast<size_t>(D));
    for (int64_t i = i0; i < i1; ++i) {
      load_row(xp, i, D, xr.data());
      float bv = kInf;
      int64_t bi = -1;
      for (int64_t s = 0; s < splits; ++s) {
        for (int r = 0; r < 2; ++r) {
          const size_t slot = static_cast<size_t>((s * N + i) * 2 + r);
          const int64_t c = cand_i[slot];
          if (c < 0) continue;
          const float v = direct ? cand_v[slot] : direct_sqdist(xr.data(), ep + c * D, D);
          if (v < bv || (v == bv && c < bi)) { bv = v; bi = c; }
        }
      }
      if (bi < 0) {  // only non-finite inputs get here: report the first code and its (NaN) distance
        bi = first_code.empty() ? 0 : first_code[i];
        bv = direct_sqdist(xr.data(), ep + bi * D, D);
      }
      ip[i] = bi;
      dp[i] = bv;
    }
  });
  return {index, sqdist};
}

std::tuple<at::Tensor, at::Tensor> nearest_code_cpu(const at::Tensor& x, const at::Tensor& codebook,
                                                    const std::optional<at::Tensor>& labels,
                                                    const std::optional<at::Tensor>& offsets,
                                                    c10::string_view mode) {
  check_nearest_code_shapes(x, codebook, labels, offsets, mode);
  TORCH_CHECK(x.device().is_cpu(), "nearest_code (CPU kernel): x is on ", x.device());
  // NOTE: 'fast_exact' runs the exact fp32 path on the CPU for now; both return the fp32 argmin.
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "nearest_code_cpu",
                                         [&] { return nearest_code_impl<scalar_t>(x, codebook, labels, offsets); });
}

}  // namespace

TORCH_LIBRARY_IMPL(sgcvq, CPU, m) { m.impl("nearest_code", &nearest_code_cpu); }

}  // namespace sgcvq
