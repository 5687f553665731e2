// The dispatch table of candidate collectors (collector.h): the first that serves a call runs it.
#include "collector.h"

#include <c10/util/Exception.h>

namespace sgcvq {
namespace cpu {
namespace {

bool always(const CollectorSetup&) { return true; }
bool small_d(const CollectorSetup& s) { return s.D <= kSmallMaxD; }

// Fastest first. A low-precision collector goes above the float32 ones and decides in serves()
// whether it pays (low_precision_pays) and whether this CPU runs it.
const CollectorEntry kCollectors[] = {
    {"bf16", bf16_serves, make_bf16_collector, nullptr},                    // AMX / AVX512_BF16 lists
    {"f32_small_d_leaves", f32_leaves_serves, nullptr, make_f32_leaves_collector},  // D <= 16, AVX2: k-d leaves
    {"f32_small_d_scan", small_d, nullptr, make_f32_scan_collector},      // D <= 16: register-blocked scan
    {"f32_brgemm", f32_brgemm_serves, nullptr, make_f32_brgemm_collector},  // AVX-512: oneDNN brgemm tiles
    {"f32_mm", always, nullptr, make_f32_mm_collector},                     // at::mm tiles
};

}  // namespace

const CollectorEntry& choose_collector(const CollectorSetup& s) {
  for (const CollectorEntry& e : kCollectors)
    if (e.serves(s)) return e;
  TORCH_CHECK(false, "sgcvq: no CPU candidate collector serves this call");  // f32_mm serves every call
}

std::vector<const char*> collector_names() {
  std::vector<const char*> names;
  for (const CollectorEntry& e : kCollectors) names.push_back(e.name);
  return names;
}

bool low_precision_pays(const CollectorSetup& s, int64_t min_codes) {
  if (s.want == Candidates::kFp32 || s.plan.N < kLowPrecisionMinTokens) return false;
  return s.want == Candidates::kLowPrecision || s.plan.work >= min_codes * s.plan.N;
}

}  // namespace cpu
}  // namespace sgcvq
