// List collector from bfloat16 candidates (nearest_code_bf16.h): AMX tiles through oneDNN's
// brgemm, or our AVX512_BF16 tiles, or on AVX2 CPUs int16 tiles with the same contract
// (avx2/int16_search_avx2.h, D > 16 only); at D <= 16 a fused AVX512_BF16 scan (the branch-free window
// for code ranges up to kSmallWindowMaxCodes, the branchy scan above). Where the CPU has bf16 dot
// products this is the default mode's path, from the sizes where it beats the float32 candidates.
#include "avx2/int16_search_avx2.h"
#include "bf16_tile_avx512.h"
#include "collector.h"
#include "nearest_code_bf16.h"

#include "../include/sgcvq/certificate.h"

#include <type_traits>

namespace sgcvq {
namespace cpu {
namespace {

// Mode 'exact' takes the bf16 candidates from this many codes per token on (the class groups'
// sizes, averaged over the tokens): below it the float32 candidates are faster
// (benchmarks/group_sweep.py, AMD EPYC Zen 5: at D = 8 the fused bf16 scan wins from groups of
// about 4096 codes, at D = 64 the bf16 tiles from 64). 'fast_exact' ignores these.
constexpr int64_t kBf16MinCodesSmallD = 512;
constexpr int64_t kBf16MinCodes = 64;

class Bf16Collector final : public ListCollector {
 public:
  explicit Bf16Collector(const CollectorSetup& s) : item_codes_(s.plan.item_codes), g_(cert::sum_error(s.D)) {
    const bool small = s.D <= kSmallMaxD;
    const bool window = small && small_d_window(s.opts, item_codes_);
    // The orthant cells seed the branchy small-D scan over every code (the only scan that uses
    // them); the lane-by-lane codes serve the branch-free window (item ranges up to
    // kSmallWindowMaxCodes).
    const bool cells = small && !window && s.plan.any_item_over_all_codes();
    const Bf16Path path = bf16_path(s.opts);
    cb_ = path == Bf16Path::kAvx2Int16 ? pack_int16_codebook(s.E)
                                       : pack_bf16_codebook(s.E, s.bf16_values, path, cells, window);
    cb_.small_window = window;
    cb_.seed_cells_on = seed_cells_enabled(s.opts);
  }
  int64_t collect(const float* xs, int64_t tn, const WorkItem& it, CandList* out, ListBound* bounds) const override {
    return bf16_search_item(xs, tn, cb_, it.k0, it.k1, it.g0, it.g1, item_codes_, g_, out, bounds);
  }
  void release_thread() const override { bf16_release(cb_); }

 private:
  int64_t item_codes_;
  double g_;
  Bf16Codebook cb_;
};

}  // namespace

bool bf16_serves(const CollectorSetup& s) {
  const bool small = s.D <= kSmallMaxD;
  if (!low_precision_pays(s, small ? kBf16MinCodesSmallD : kBf16MinCodes)) return false;
  // bf16_path raises for an SGCVQ_CPU_BF16 this CPU cannot run. At D <= 16 the candidates come
  // from a fused AVX512_BF16 scan (AMX machines all have AVX512_BF16), no GEMM tiles; AVX2 CPUs
  // take the float32 scan there (avx2/small_scan_avx2.h).
  const Bf16Path path = bf16_path(s.opts);
  return path != Bf16Path::kOff && !(small && (path == Bf16Path::kAvx2Int16 || !cpu_has_avx512_bf16()));
}

std::unique_ptr<ListCollector> make_bf16_collector(const CollectorSetup& s) {
  return std::make_unique<Bf16Collector>(s);
}

}  // namespace cpu
}  // namespace sgcvq
