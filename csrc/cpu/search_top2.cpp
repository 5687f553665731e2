// Stages 2-4 of the CPU search with a top-2 collector (search_pipeline.h).
#include "exact_research.h"
#include "search_pipeline.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <vector>

namespace sgcvq {
namespace cpu {
namespace {

// The answer of one token from its top-2 candidates: the float32 re-score and the certificate;
// a token that fails is flagged for the exact search (or, with SGCVQ_CPU_RESEARCH=loop, searched
// at once, alone).
struct Top2Settler {
  const SearchPlan& plan;
  const TokenRows& rows;
  const FloatCodebook& cb;
  const Certificate& cert;
  const Answers& out;
  std::vector<uint8_t>& flagged;
  bool loop_research;
  std::atomic<int64_t>& uncertified;

  // tops: split s's candidates at [s * stride]; row, lo, hi: the token's float32 row and code
  // range where the caller has them at hand (a worker with one code split: its gathered row and
  // its item's range), else nullptr and -1: the label-sorted order makes x's row and the label a
  // cache miss each.
  void finish(int64_t i, float* buf, const Top2* tops, int64_t stride, const float* row = nullptr, int64_t lo = -1,
              int64_t hi = -1) const {
    const int64_t D = cb.D;
    const float* xr = row != nullptr ? row : rows.row(i, buf);
    if (lo < 0) {
      lo = plan.lo(i);
      hi = plan.hi(i);
    }
    float bv = kInf, thr = kInf;
    int64_t bi = -1, found = 0;
    for (int64_t s = 0; s < plan.splits; ++s) {
      const Top2& c = tops[s * stride];
      thr = std::min(thr, c.v2);
      for (const int64_t k : {c.i1, c.i2})
        if (k >= 0) {
          ++found;
          const float v = direct_sqdist(xr, cb.codes + k * D, D);
          if (v < bv || (v == bv && k < bi)) {
            bv = v;
            bi = k;
          }
        }
    }
    const bool certified = found >= hi - lo || cert.holds(sum_squares(xr, D), thr, bv);
    if (!certified) {
      uncertified.fetch_add(1, std::memory_order_relaxed);
      if (!loop_research) {  // searched below with the other uncertified tokens, in tiles
        flagged[static_cast<size_t>(i)] = 1;
        return;
      }
      exact_research_one(xr, cb, lo, hi, bv, bi);
    }
    out.set(i, bi, bv, lo, xr);
  }
};

}  // namespace

void run_top2_search(const SearchPlan& given, const TokenRows& rows, const FloatCodebook& cb, const Top2Collector& c,
                     const CpuOptions& opts, const Answers& out) {
  // The collector's token order, where it has one (the tokens then gather through perm, as the
  // class-sorted order does).
  SearchPlan ordered;
  const bool reorder = given.perm.empty() && given.off.empty() && c.order_tokens(rows, given.N, ordered.perm);
  if (reorder) {
    std::vector<int64_t> perm = std::move(ordered.perm);
    ordered = given;
    ordered.perm = std::move(perm);
  }
  const SearchPlan& plan = reorder ? ordered : given;
  const int64_t N = plan.N, D = cb.D;
  const Certificate cert(D, cb.max_norm2, c.rounds_inputs());
  // With one code split the worker finishes each token straight from its own buffers; with
  // several, [splits][N] candidates wait until every split is done.
  const bool stored = plan.splits > 1;
  std::vector<Top2> cand(stored ? static_cast<size_t>(plan.splits * N) : 0);
  std::vector<uint8_t> flagged(static_cast<size_t>(N), 0);
  std::atomic<int64_t> uncertified{0};
  const Top2Settler settle{plan, rows, cb, cert, out, flagged, opts.research == "loop", uncertified};

  std::atomic<size_t> next{0};
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    const int64_t pad = c.row_multiple();
    std::vector<float> xt(static_cast<size_t>((kTileN + pad) * D), 0.f);
    std::vector<float> scratch(static_cast<size_t>(c.scratch_floats()));
    std::vector<Top2> best;
    std::vector<float> xr(static_cast<size_t>(D));
    for (size_t w = next.fetch_add(1); w < plan.items.size(); w = next.fetch_add(1)) {
      const WorkItem& it = plan.items[w];
      const int64_t tn = it.t1 - it.t0, tpad = (tn + pad - 1) / pad * pad;
      // The rows as -2 x (exact), gathered in the plan's order.
      for (int64_t t = 0; t < tn; ++t) {
        if (!plan.perm.empty() && t + kGatherAhead < tn) rows.prefetch(plan.token(it.t0 + t + kGatherAhead));
        rows.load(plan.token(it.t0 + t), -2.f, xt.data() + t * D);
      }
      std::fill(xt.begin() + tn * D, xt.begin() + tpad * D, 0.f);
      best.assign(static_cast<size_t>(tpad), Top2{});
      c.collect(xt.data(), tn, tpad, it.k0, it.k1, best.data(), scratch.data());
      for (int64_t t = 0; t < tn; ++t) {
        const int64_t tok = plan.token(it.t0 + t);
        if (stored)
          cand[static_cast<size_t>(it.split * N + tok)] = best[t];
        else
          settle.finish(tok, xr.data(), &best[t], 0, nullptr, it.k0, it.k1);
      }
    }
  });
  if (stored)
    at::parallel_for(0, N, 256, [&](int64_t i0, int64_t i1) {
      std::vector<float> xr(static_cast<size_t>(D));
      for (int64_t i = i0; i < i1; ++i) settle.finish(i, xr.data(), &cand[static_cast<size_t>(i)], N);
    });
  exact_research(plan, rows, cb, flagged, out);
  note_float32_uncertified(uncertified.load());
}

}  // namespace cpu
}  // namespace sgcvq
