// Top-2 collector for D <= 16: the register-blocked SIMD scan (nearest_code_scan.cpp) over the
// small-D layout, no GEMM tiles.
#include "collector.h"

namespace sgcvq {
namespace cpu {
namespace {

class F32ScanCollector final : public Top2Collector {
 public:
  explicit F32ScanCollector(const FloatCodebook& cb) : cb_(cb.lanes()), D_(cb.D) {}
  int64_t row_multiple() const override { return kSmallTokens; }
  void collect(const float* xs, int64_t, int64_t tpad, int64_t k0, int64_t k1, Top2* best, float*) const override {
    small_d_scan(xs, tpad, D_, cb_, k0, k1, best);
  }

 private:
  SmallDCodebook cb_;
  int64_t D_;
};

}  // namespace

std::unique_ptr<Top2Collector> make_f32_scan_collector(const CollectorSetup& s) {
  return std::make_unique<F32ScanCollector>(*s.f32);
}

}  // namespace cpu
}  // namespace sgcvq
