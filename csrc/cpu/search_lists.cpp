// Stages 2-3 of the CPU search with a list collector (search_pipeline.h).
#include "nearest_code_bf16.h"
#include "search_pipeline.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <vector>

namespace sgcvq {
namespace cpu {
namespace {

// A list collector gives up early when its lists overflow for more than this share of the first
// kRedoSample tokens (near-duplicate codebooks): the rest of the tokens then take the float32
// candidates once, instead of paying for low-precision tiles and then the float32 search again.
constexpr int64_t kRedoSample = 2048;
constexpr double kRedoGiveUp = 0.25;

// The answer of one token from its re-scored lists, or a flag for the float32 search.
struct ListSettler {
  const SearchPlan& plan;
  const TokenRows& rows;
  const float* codes;
  int64_t D;
  const Certificate& cert;
  const Answers& out;
  std::vector<uint8_t>& redo;

  // (bv, bi): the listed code nearest by the float32 distance (bi = -1: none finite), found: the
  // codes listed, b: the smallest approximate value, complete: no list overflowed.
  void settle(int64_t i, float b, bool complete, int64_t found, float bv, int64_t bi, const ListBound& bound,
              int64_t lo, int64_t hi, const float* xr) const {
    // The approximate distances are centred: ||x - e||^2 = ||x'||^2 + a'_k.
    if (!(complete && cert.settles_list(found, hi - lo, bound, b, bv))) {
      redo[static_cast<size_t>(i)] = 1;
      return;
    }
    out.set(i, bi, bv, lo, xr);
  }
  // Token i's lists from every code split, at lists[s * N + i] (a final pass once all are done).
  void finish(int64_t i, float* buf, const CandList* lists, const ListBound& bound) const {
    const float* xr = rows.row(i, buf);
    float bv = kInf, b = kInf;
    int64_t bi = -1, found = 0;
    bool complete = true;
    for (int64_t s = 0; s < plan.splits; ++s) {
      const CandList& c = lists[s * plan.N];
      complete = complete && c.n >= 0;
      b = std::min(b, c.b);
      for (int32_t j = 0; j < c.n; ++j) {
        const int64_t k = c.idx[j];
        ++found;
        const float v = direct_sqdist(xr, codes + k * D, D);
        if (v < bv || (v == bv && k < bi)) {  // lists are not in index order
          bv = v;
          bi = k;
        }
      }
    }
    settle(i, b, complete, found, bv, bi, bound, plan.lo(i), plan.hi(i), xr);
  }
};

}  // namespace

std::vector<int64_t> run_list_search(const SearchPlan& plan, const TokenRows& rows, const float* E,
                                     const ListCollector& c, const Answers& out) {
  const int64_t N = plan.N, D = rows.D;
  const Certificate cert(D, 0.0, false);  // the lists bring their own bound per token
  const bool stored = plan.splits > 1;
  std::vector<CandList> lists(stored ? static_cast<size_t>(plan.splits * N) : 0, CandList{kInf, 0, {}});
  std::vector<ListBound> token_bound(stored ? static_cast<size_t>(N) : 0);  // from split 0
  std::vector<uint8_t> redo(static_cast<size_t>(N), 0);
  const ListSettler settler{plan, rows, E, D, cert, out, redo};

  // The early give-up (kRedoGiveUp): tokens searched and lists that overflowed so far.
  std::atomic<int64_t> seen{0}, overflowed{0};
  std::atomic<bool> give_up{false};
  std::atomic<size_t> next{0};
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    std::vector<float> xt(static_cast<size_t>(kTileN * D), 0.f);
    std::vector<ListBound> bounds(static_cast<size_t>(kTileN));
    std::vector<CandList> found(static_cast<size_t>(kTileN));
    std::vector<float> rs_val(static_cast<size_t>(kTileN));
    std::vector<int64_t> rs_arg(static_cast<size_t>(kTileN));
    for (size_t w = next.fetch_add(1); w < plan.items.size(); w = next.fetch_add(1)) {
      const WorkItem& it = plan.items[w];
      const int64_t tn = it.t1 - it.t0;
      if (give_up.load(std::memory_order_relaxed)) {
        if (!stored)  // these tokens go to the float32 search (stored: every token does)
          for (int64_t t = 0; t < tn; ++t) redo[static_cast<size_t>(plan.token(it.t0 + t))] = 1;
        continue;
      }
      const float* xs = xt.data();
      if (rows.f32 != nullptr && plan.perm.empty()) {
        xs = rows.f32 + it.t0 * D;  // the tokens' rows, in place
      } else {
        for (int64_t t = 0; t < tn; ++t) {
          if (!plan.perm.empty() && t + kGatherAhead < tn) rows.prefetch(plan.token(it.t0 + t + kGatherAhead));
          rows.load(plan.token(it.t0 + t), 1.f, xt.data() + t * D);
        }
      }
      const int64_t over = c.collect(xs, tn, it, found.data(), bounds.data());
      const int64_t s_now = seen.fetch_add(tn) + tn, o_now = overflowed.fetch_add(over) + over;
      if (s_now >= kRedoSample && static_cast<double>(o_now) > kRedoGiveUp * static_cast<double>(s_now))
        give_up.store(true, std::memory_order_relaxed);
      if (stored) {
        for (int64_t t = 0; t < tn; ++t) {
          const int64_t tok = plan.token(it.t0 + t);
          lists[static_cast<size_t>(it.split * N + tok)] = found[t];
          if (it.split == 0) token_bound[static_cast<size_t>(tok)] = bounds[t];
        }
        continue;
      }
      // One code split: finish each token from the worker's own buffers.
      rescore_lists(xs, tn, D, E, found[0].idx, &found[0].n, kCandWords, rs_val.data(), rs_arg.data());
      // The common case in a tight loop over local copies (the captures are reloaded after every
      // store through the index pointer): a listed finite winner that the certificate settles.
      // Everything else (overflow, non-finite values, a failed certificate) takes settle().
      const Certificate c_loc = cert;
      const int64_t codes = it.k1 - it.k0;
      const int64_t* pp = plan.perm.empty() ? nullptr : plan.perm.data() + it.t0;
      int64_t* const ip_loc = out.index;
      float* const dp_loc = out.sqdist;
      for (int64_t t = 0; t < tn; ++t) {
        const int64_t tok = pp != nullptr ? pp[t] : it.t0 + t;
        const CandList& cl = found[t];
        const ListBound& bd = bounds[t];
        const float bv = rs_val[t];
        const int64_t bi = rs_arg[t];
        if (__builtin_expect(cl.n > 0 && bi >= 0 && c_loc.settles_list(cl.n, codes, bd, cl.b, bv), 1)) {
          ip_loc[tok] = bi;
          dp_loc[tok] = bv;
          continue;
        }
        settler.settle(tok, cl.b, cl.n >= 0, std::max<int32_t>(cl.n, 0), bv, bi, bd, it.k0, it.k1, xs + t * D);
      }
    }
    c.release_thread();
  });

  if (stored && give_up.load()) {
    std::fill(redo.begin(), redo.end(), 1);  // some splits are missing: every token goes float32
  } else if (stored) {
    at::parallel_for(0, N, 256, [&](int64_t i0, int64_t i1) {
      std::vector<float> xr(static_cast<size_t>(D));
      for (int64_t i = i0; i < i1; ++i)
        settler.finish(i, xr.data(), &lists[static_cast<size_t>(i)], token_bound[static_cast<size_t>(i)]);
    });
  }
  std::vector<int64_t> left;
  for (int64_t i = 0; i < N; ++i)
    if (redo[static_cast<size_t>(i)]) left.push_back(i);
  note_fast_exact_redo(static_cast<int64_t>(left.size()), seen.load());
  return left;
}

}  // namespace cpu
}  // namespace sgcvq
