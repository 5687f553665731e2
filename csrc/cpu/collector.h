// Stage 2 of the CPU search: candidate collectors (FAISS's exhaustive_L2sqr_blas with a pluggable
// result handler is the model).
//
// A collector searches one work item (a run of tokens x a code range) by an approximate distance
// ||e||^2 - 2 x.e and keeps, per token, what the certificate (certify.h) needs to prove the
// float32 argmin is among its candidates:
//   - a Top2Collector the two smallest float32 approximate values (Top2; every other code has a
//     value >= v2, and the float32 certificate bounds the values' error from ||x|| and max ||e||);
//   - a ListCollector every code within a per-token margin of the best by a low-precision value
//     (CandList), with that token's rigorous bound (ListBound).
// The pipeline (search_pipeline.cpp) partitions the tokens, runs the first collector of the
// dispatch table that serves the call, certifies, and re-searches the rest exactly.
//
// Adding a collector: write one file (collect_<name>.cpp) with a class deriving from one of the
// two interfaces and a factory, and add one line to kCollectors in collectors.cpp.
#pragma once
#include "candidates.h"
#include "nearest_code_scan.h"
#include "options.h"
#include "search_plan.h"
#include "token_rows.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

namespace sgcvq {
namespace cpu {

// Which candidates a call asks for: the fastest certified (mode 'exact'), low-precision ones
// ('fast_exact': a list collector whatever the work), or float32 ones ('exact_fp32', and the
// re-search of tokens a list collector could not certify).
enum class Candidates { kFastest, kLowPrecision, kFp32 };

// The codebook as the float32 collectors and the exact search read it, prepared once per call.
struct FloatCodebook {
  at::Tensor E;                 // float32 [K, D], contiguous
  const float* codes = nullptr;  // E's data
  int64_t K = 0, D = 0;
  std::vector<float> norms;   // fl(||e_k||^2) [K]; for D <= kSmallMaxD padded to whole 16-code blocks
  std::vector<float> blocks;  // D <= kSmallMaxD: the small-D layout (SmallDCodebook), else empty
  float max_norm2 = 0.f;      // max_k norms[k]
  SmallDCodebook lanes() const { return {blocks.empty() ? nullptr : blocks.data(), norms.data()}; }
};
// E: float32 [K, D] contiguous. small_layout: also the small-D layout (D <= kSmallMaxD).
FloatCodebook prepare_float_codebook(const at::Tensor& E, bool small_layout);

// What a collector's factory and its `serves` test see.
struct CollectorSetup {
  const SearchPlan& plan;
  const CpuOptions& opts;
  Candidates want;
  int64_t D;
  const at::Tensor& E;       // float32 [K, D], contiguous
  bool bf16_values;          // x and the codebook hold bfloat16 values (their products are exact)
  const FloatCodebook* f32;  // Top2 collectors: the prepared codebook (null for list collectors)
};

class Top2Collector {
 public:
  virtual ~Top2Collector() = default;
  // The token rows of a call are padded to a multiple of this (pad rows are zero and ignored).
  virtual int64_t row_multiple() const { return 1; }
  // True when the dot products round their inputs to bfloat16 (oneDNN's bf32 mode): the
  // certificate then charges their error (cert::expansion_delta's g_dot).
  virtual bool rounds_inputs() const { return false; }
  // Floats of per-thread scratch that collect() needs.
  virtual int64_t scratch_floats() const { return 0; }
  // An order for the tokens of a call over all codes (no class groups), when the collector is
  // faster on tokens in that order: perm [N] <- the tokens, position by position. False: as given.
  virtual bool order_tokens(const TokenRows&, int64_t /*N*/, std::vector<int64_t>& /*perm*/) const { return false; }
  // best[t] <- the top-2 over codes k in [k0, k1) of norms[k] + xs[t] . e_k, for t < tpad (best
  // arrives as Top2{}). xs: [tpad, D] rows of -2 x (exact), the first tn real. Called from worker
  // threads, each with its own scratch.
  virtual void collect(const float* xs, int64_t tn, int64_t tpad, int64_t k0, int64_t k1, Top2* best,
                       float* scratch) const = 0;
};

class ListCollector {
 public:
  virtual ~ListCollector() = default;
  // out[t] and bounds[t] for t < tn: every code of [it.k0, it.k1) outside out[t]'s list has an
  // approximate value >= out[t].b + bounds[t].margin_up, and bounds[t] is the same in each code
  // split of the token (it covers the token's whole range [it.g0, it.g1)). xs: [tn, D] float32
  // rows (not scaled). Returns how many lists overflowed (n = -1). Called from worker threads.
  virtual int64_t collect(const float* xs, int64_t tn, const WorkItem& it, CandList* out, ListBound* bounds) const = 0;
  // A worker thread is done with its items (AMX gives its tile state back).
  virtual void release_thread() const {}
};

// One row of the dispatch table: the first entry whose serves() holds runs the call; it has
// exactly one of the two factories.
struct CollectorEntry {
  const char* name;
  bool (*serves)(const CollectorSetup& s);
  std::unique_ptr<ListCollector> (*make_list)(const CollectorSetup& s);
  std::unique_ptr<Top2Collector> (*make_top2)(const CollectorSetup& s);
};
const CollectorEntry& choose_collector(const CollectorSetup& s);
// The table's names, in order (for sgcvq._C.cpu_options and error messages).
std::vector<const char*> collector_names();

// Whether low-precision candidates pay for this call: mode 'fast_exact' asks for them whatever
// the work; 'exact' from kLowPrecisionMinTokens tokens and min_codes codes per token on (the class
// groups' sizes, averaged over the tokens); 'exact_fp32' never.
constexpr int64_t kLowPrecisionMinTokens = 256;
bool low_precision_pays(const CollectorSetup& s, int64_t min_codes);

// The factories of the collectors in this library (one file each).
std::unique_ptr<Top2Collector> make_f32_scan_collector(const CollectorSetup& s);    // collect_f32_scan.cpp
std::unique_ptr<Top2Collector> make_f32_leaves_collector(const CollectorSetup& s);  // collect_f32_leaves.cpp
bool f32_leaves_serves(const CollectorSetup& s);                                    // collect_f32_leaves.cpp
// Where the leaf search serves by default (SGCVQ_CPU_LEAVES unset): from this many codes and tokens
// on (below them the tree's build and the box bounds cost more than the leaves they skip).
constexpr int64_t kLeavesMinCodes = 2048;
constexpr int64_t kLeavesMinTokens = 512;
// (token, leaf) visits of the last call the leaf search served, and how many a scan would make
// (tokens x leaves; the tokens the scan took over count in neither); -1, -1 before the first.
void note_leaf_visits(int64_t visits, int64_t possible);
std::pair<int64_t, int64_t> last_leaf_visits();
int64_t leaf_search_calls();  // calls the leaf search served since the library was loaded
std::unique_ptr<Top2Collector> make_f32_brgemm_collector(const CollectorSetup& s);  // collect_f32_gemm.cpp
std::unique_ptr<Top2Collector> make_f32_mm_collector(const CollectorSetup& s);      // collect_f32_gemm.cpp
bool f32_brgemm_serves(const CollectorSetup& s);                                    // collect_f32_gemm.cpp
std::unique_ptr<ListCollector> make_bf16_collector(const CollectorSetup& s);        // collect_bf16.cpp
bool bf16_serves(const CollectorSetup& s);                                          // collect_bf16.cpp

}  // namespace cpu
}  // namespace sgcvq
