// Top-2 collectors for D > 16 from float32 GEMM tiles into an L2-sized scratch, then a top-2 pass
// over each tile's rows (top2_rows): oneDNN's brgemm ukernel (through ATen's cpublas) on AVX-512
// CPUs, 2.2x at::mm's MKL sgemm on an AMD EPYC Zen 5 (250 vs 110 GFLOP/s on one core at K = 64
// and 256; MKL takes its AVX2 code there); at::mm everywhere else, or where SGCVQ_CPU_F32_GEMM=mm.
#include "collector.h"

#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace sgcvq {
namespace cpu {
namespace {

constexpr int64_t kF32Block = 64;  // codes per brgemm call: the codebook packed as [K/64][D][64]

// s[t * lds + j] = xs[t] . e_{kb + j} for t < tn, j < 64 * blocks, from the packed codebook.
void f32_brgemm_tile(const float* xs, int64_t tn, int64_t D, const float* packed, int64_t kb, int64_t blocks, float* s,
                     int64_t lds) {
#if defined(CPUBLAS_BRGEMM_F32F32F32)
  for (int64_t b = 0; b < blocks; ++b)
    at::native::cpublas::brgemm(tn, kF32Block, D, D, kF32Block, lds, false, xs,
                                packed + (kb / kF32Block + b) * D * kF32Block, s + b * kF32Block, false);
#else
  (void)xs; (void)tn; (void)D; (void)packed; (void)kb; (void)blocks; (void)s; (void)lds;
  TORCH_CHECK(false, "sgcvq: f32_brgemm_tile needs torch's cpublas::brgemm for float");
#endif
}

// Whether the brgemm tiles round their inputs (oneDNN's fpmath mode): 1 + 2^-10 is exact in
// float32 but not in bfloat16.
bool brgemm_rounds_inputs(int64_t D) {
  std::vector<float> a(static_cast<size_t>(D), 1.f + std::ldexp(1.f, -10));
  std::vector<float> b(static_cast<size_t>(D * kF32Block), 1.f), s(kF32Block, 0.f);
  f32_brgemm_tile(a.data(), 1, D, b.data(), 0, 1, s.data(), kF32Block);
  return s[0] != static_cast<float>(D) * (1.f + std::ldexp(1.f, -10));
}

// Whether at::mm on float32 tiles of this shape rounds its inputs (oneDNN's bf32 mode, set by
// torch's float32 matmul precision): the same probe.
bool gemm_rounds_inputs(int64_t tn, int64_t D, int64_t kn) {
  const at::Tensor a = at::full({tn, D}, 1.0 + std::ldexp(1.0, -10), at::kFloat);
  const at::Tensor b = at::ones({kn, D}, at::kFloat);
  const float got = at::mm(a, b.t()).max().item<float>();
  return got != static_cast<float>(D) * (1.f + std::ldexp(1.f, -10));
}

class F32BrgemmCollector final : public Top2Collector {
 public:
  explicit F32BrgemmCollector(const FloatCodebook& cb) : norms_(cb.norms.data()), D_(cb.D) {
    // The codebook in blocks of 64 codes, [D][64] each, zero past K.
    const int64_t K = cb.K, D = cb.D, blocks = (K + kF32Block - 1) / kF32Block;
    const float* ep = cb.codes;
    packed_.assign(static_cast<size_t>(blocks * D * kF32Block), 0.f);
    at::parallel_for(0, blocks, 16, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        for (int64_t j = 0; j < kF32Block && b * kF32Block + j < K; ++j)
          for (int64_t d = 0; d < D; ++d)
            packed_[static_cast<size_t>((b * D + d) * kF32Block + j)] = ep[(b * kF32Block + j) * D + d];
    });
    rounds_ = brgemm_rounds_inputs(D);
  }
  bool rounds_inputs() const override { return rounds_; }
  int64_t scratch_floats() const override { return kTileN * kTileK; }
  void collect(const float* xs, int64_t tn, int64_t, int64_t k0, int64_t k1, Top2* best, float* scratch) const override {
    // Tiles of whole 64-code blocks; the scan reads the columns inside [k0, k1).
    const int64_t kend = (k1 + kF32Block - 1) / kF32Block * kF32Block;
    for (int64_t kb = k0 / kF32Block * kF32Block; kb < k1; kb += kTileK) {
      const int64_t ke = std::min(kb + kTileK, kend);
      f32_brgemm_tile(xs, tn, D_, packed_.data(), kb, (ke - kb) / kF32Block, scratch, kTileK);
      const int64_t j0 = std::max(k0, kb) - kb, j1 = std::min(k1, ke) - kb;
      top2_rows(scratch + j0, kTileK, tn, j1 - j0, norms_ + kb + j0, kb + j0, best);
    }
  }

 private:
  const float* norms_;
  int64_t D_;
  std::vector<float> packed_;
  bool rounds_ = false;
};

class F32MmCollector final : public Top2Collector {
 public:
  F32MmCollector(const FloatCodebook& cb, int64_t N)
      : E_(cb.E), norms_(cb.norms.data()), D_(cb.D),
        rounds_(gemm_rounds_inputs(std::min(N, kTileN), cb.D, std::min(cb.K, kTileK))) {}
  bool rounds_inputs() const override { return rounds_; }
  int64_t scratch_floats() const override { return kTileN * kTileK; }
  void collect(const float* xs, int64_t tn, int64_t, int64_t k0, int64_t k1, Top2* best, float* scratch) const override {
    const at::Tensor X = at::from_blob(const_cast<float*>(xs), {tn, D_}, at::kFloat);
    for (int64_t kb = k0; kb < k1; kb += kTileK) {
      const int64_t kn = std::min(kTileK, k1 - kb);
      at::Tensor S = at::from_blob(scratch, {tn, kn}, at::kFloat);
      at::mm_out(S, X, E_.narrow(0, kb, kn).t());
      top2_rows(scratch, kn, tn, kn, norms_ + kb, kb, best);
    }
  }

 private:
  at::Tensor E_;
  const float* norms_;
  int64_t D_;
  bool rounds_;
};

}  // namespace

bool f32_brgemm_serves(const CollectorSetup& s) {
#if defined(CPUBLAS_BRGEMM_F32F32F32)
  return s.D > kSmallMaxD && scan_uses_avx512() && s.opts.f32_gemm != "mm";
#else
  (void)s;
  return false;
#endif
}

std::unique_ptr<Top2Collector> make_f32_brgemm_collector(const CollectorSetup& s) {
  return std::make_unique<F32BrgemmCollector>(*s.f32);
}

std::unique_ptr<Top2Collector> make_f32_mm_collector(const CollectorSetup& s) {
  return std::make_unique<F32MmCollector>(*s.f32, s.plan.N);
}

}  // namespace cpu
}  // namespace sgcvq
