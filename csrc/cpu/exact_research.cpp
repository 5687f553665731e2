// Stage 4 of the CPU search (exact_research.h).
#include "exact_research.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <utility>

namespace sgcvq {
namespace cpu {

void exact_research(const SearchPlan& plan, const TokenRows& rows, const FloatCodebook& cb,
                    const std::vector<uint8_t>& flagged, const Answers& out) {
  // Tokens the certificate could not settle (taming's uniform(-1/K, 1/K) codebook: nearly all of
  // them), in label-sorted order so a group's tokens are adjacent.
  const int64_t N = plan.N, D = cb.D;
  std::vector<int64_t> todo;
  for (int64_t p = 0; p < N; ++p) {
    const int64_t i = plan.token(p);
    if (flagged[static_cast<size_t>(i)]) todo.push_back(i);
  }
  if (todo.empty()) return;
  auto range_of = [&](int64_t i) { return std::make_pair(plan.lo(i), plan.hi(i)); };
  std::vector<int64_t> tile_start;
  for (size_t j = 0; j < todo.size(); ++j)
    if (j == 0 || range_of(todo[j]) != range_of(todo[j - 1]) || static_cast<int64_t>(j) - tile_start.back() >= kExactTile)
      tile_start.push_back(static_cast<int64_t>(j));
  tile_start.push_back(static_cast<int64_t>(todo.size()));
  const int64_t tiles = static_cast<int64_t>(tile_start.size()) - 1;
  const SmallDCodebook lanes = cb.lanes();
  const SmallDCodebook* lanes_or_null = cb.blocks.empty() ? nullptr : &lanes;
  at::parallel_for(0, tiles, 1, [&](int64_t a, int64_t b) {
    std::vector<float> xs(static_cast<size_t>(kExactTile * D)), val(kExactTile);
    std::vector<int64_t> arg(kExactTile);
    for (int64_t tile = a; tile < b; ++tile) {
      const int64_t j0 = tile_start[tile], tn = tile_start[tile + 1] - j0;
      for (int64_t t = 0; t < tn; ++t) rows.load(todo[j0 + t], 1.f, xs.data() + t * D);
      std::fill(val.begin(), val.end(), kInf);
      std::fill(arg.begin(), arg.end(), int64_t{-1});
      const auto [lo, hi] = range_of(todo[j0]);
      exact_search(xs.data(), tn, D, cb.codes, lanes_or_null, lo, hi, val.data(), arg.data());
      for (int64_t t = 0; t < tn; ++t) out.set(todo[j0 + t], arg[t], val[t], lo, xs.data() + t * D);
    }
  });
}

void exact_research_one(const float* xr, const FloatCodebook& cb, int64_t lo, int64_t hi, float& bv, int64_t& bi) {
  bv = kInf;
  bi = -1;
  for (int64_t k = lo; k < hi; ++k) {
    const float v = direct_sqdist(xr, cb.codes + k * cb.D, cb.D);
    if (v < bv) {
      bv = v;
      bi = k;
    }
  }
}

}  // namespace cpu
}  // namespace sgcvq
