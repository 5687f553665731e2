// Times the branch-free small-D window (csrc/cpu/bf16_tile_avx512.cpp, bf16_small_window_avx512)
// alone: one tile of tokens against one code group, in ns a token and a 16-code vector, with the
// kernel file linked on its own against libc10. A/B timings through Python move by ~5% on a shared
// VM; this moves by ~1%. Build and run: benchmarks/kernels/run_window_harness.sh [K] [D] [tokens].
//
// Each token's list is checked against a brute-force pass over the same bf16 values (the window's
// own arithmetic: norm, then the pairs in order): every code below b + margin must be listed, and
// the smallest value must be b (up to the tag in the low mantissa bits), unless count is -1. Codes
// within 1e-4 |thr| of the threshold are not checked: their tagged values may lie on either side.
#include "bf16_tile_avx512.h"

#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

using sgcvq::cpu::SmallLaneCodes;

// One (token, code) value as the window computes it: the norm, then each pair's vdpbf16ps in order.
__attribute__((target("avx512f,avx512bf16"))) float window_value(float norm, const uint32_t* x, const uint32_t* e,
                                                                 int64_t P) {
  __m512 acc = _mm512_set1_ps(norm);
  for (int64_t p = 0; p < P; ++p)
    acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_set1_epi32(static_cast<int>(x[p])),
                           (__m512bh)_mm512_set1_epi32(static_cast<int>(e[p])));
  return _mm512_cvtss_f32(acc);
}

int main(int argc, char** argv) {
  const int64_t K = argc > 1 ? std::atoll(argv[1]) : 1024, D = argc > 2 ? std::atoll(argv[2]) : 8;
  const int64_t T = argc > 3 ? std::atoll(argv[3]) : 128;  // a multiple of 8, as the caller pads
  if (D < 1 || D > 16 || T % 8 != 0 || K < 1) {
    std::fprintf(stderr, "usage: window_harness [K] [D <= 16] [tokens, a multiple of 8]\n");
    return 2;
  }
  if (!__builtin_cpu_supports("avx512bf16")) {
    std::fprintf(stderr, "this CPU has no AVX512_BF16\n");
    return 0;
  }
  const int64_t Dp = (D + 1) / 2 * 2, P = Dp / 2, lda = 16, Kp = (K + 63) / 64 * 64, cap = 32;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  // Codes: bf16 rows packed as the library packs them, blocks of 64 codes [P][64] of pairs.
  std::vector<c10::BFloat16> rows(static_cast<size_t>(Kp * Dp), c10::BFloat16(0.f));
  for (int64_t k = 0; k < K; ++k)
    for (int64_t d = 0; d < D; ++d) rows[static_cast<size_t>(k * Dp + d)] = c10::BFloat16(nd(rng));
  std::vector<uint32_t> packed(static_cast<size_t>(Kp * P));
  std::vector<float> norms(static_cast<size_t>(Kp), 0.f);
  auto pair_of = [&](int64_t k, int64_t p) {
    uint32_t w;
    std::memcpy(&w, &rows[static_cast<size_t>(k * Dp + 2 * p)], sizeof(w));
    return w;
  };
  for (int64_t k = 0; k < Kp; ++k) {
    for (int64_t p = 0; p < P; ++p) packed[static_cast<size_t>((k / 64) * 64 * P + p * 64 + k % 64)] = pair_of(k, p);
    float s = 0.f;
    for (int64_t d = 0; d < D; ++d) s += static_cast<float>(rows[static_cast<size_t>(k * Dp + d)]) * static_cast<float>(rows[static_cast<size_t>(k * Dp + d)]);
    norms[static_cast<size_t>(k)] = s;
  }
  // The lane-by-lane copy (build_lane_codes in nearest_code_bf16.cpp).
  const int64_t blocks = (K + 255) / 256;
  std::vector<uint32_t> lane_pairs(static_cast<size_t>(blocks * 16 * P * 16), 0u);
  std::vector<float> lane_norms(static_cast<size_t>(blocks * 16 * 16), INFINITY);
  for (int64_t k = 0; k < K; ++k) {
    const int64_t row = (k / 256) * 16 + k % 16, j = (k / 16) % 16;
    for (int64_t p = 0; p < P; ++p) lane_pairs[static_cast<size_t>((row * P + p) * 16 + j)] = pair_of(k, p);
    lane_norms[static_cast<size_t>(row * 16 + j)] = norms[static_cast<size_t>(k)];
  }
  const SmallLaneCodes lanes{lane_pairs.data(), lane_norms.data()};
  // Tokens: bf16(-2 x), and a margin of the size the bound gives at this scale.
  std::vector<c10::BFloat16> a(static_cast<size_t>(T * lda), c10::BFloat16(0.f));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t d = 0; d < D; ++d) a[static_cast<size_t>(t * lda + d)] = c10::BFloat16(-2.f * nd(rng));
  // Each token's record as the library lays out its CandLists: b, count, then cap codes.
  const int64_t stride = 2 + cap;
  std::vector<float> margin(static_cast<size_t>(T), 0.05f);
  std::vector<int32_t> rec(static_cast<size_t>(T * stride));
  auto best_of = [&](int64_t t) {
    float b;
    std::memcpy(&b, &rec[static_cast<size_t>(t * stride)], sizeof(b));
    return b;
  };
  auto count_of = [&](int64_t t) { return rec[static_cast<size_t>(t * stride + 1)]; };
  auto idx_of = [&](int64_t t) { return rec.begin() + t * stride + 2; };
  auto run = [&] {
    sgcvq::cpu::bf16_small_window_avx512(a.data(), lda, T, reinterpret_cast<const c10::BFloat16*>(packed.data()), Dp,
                                         norms.data(), lanes, 0, K, margin.data(), reinterpret_cast<float*>(rec.data()),
                                         rec.data() + 1, rec.data() + 2, stride, static_cast<int32_t>(cap));
  };
  double fastest = 1e9;
  for (int r = 0; r < 3000; ++r) {
    const auto s = std::chrono::steady_clock::now();
    run();
    fastest = std::min(fastest, std::chrono::duration<double>(std::chrono::steady_clock::now() - s).count());
  }
  // The check, with the window's arithmetic per (token, code).
  int64_t bad = 0, redo = 0, listed = 0;
  for (int64_t t = 0; t < T; ++t) {
    std::vector<float> v(static_cast<size_t>(K));
    std::vector<uint32_t> xw(static_cast<size_t>(P)), ew(static_cast<size_t>(P));
    std::memcpy(xw.data(), &a[static_cast<size_t>(t * lda)], static_cast<size_t>(P) * sizeof(uint32_t));
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t p = 0; p < P; ++p) ew[static_cast<size_t>(p)] = pair_of(k, p);
      v[static_cast<size_t>(k)] = window_value(norms[static_cast<size_t>(k)], xw.data(), ew.data(), P);
    }
    if (count_of(t) < 0) {
      ++redo;
      continue;
    }
    const float b = *std::min_element(v.begin(), v.end()), thr = best_of(t) + margin[static_cast<size_t>(t)];
    bad += std::fabs(best_of(t) - b) > 1e-3f * std::fabs(b) + 1e-6f;
    listed += count_of(t);
    for (int64_t k = 0; k < K; ++k)
      if (v[static_cast<size_t>(k)] < thr - 1e-4f * std::fabs(thr) - 1e-6f &&
          std::find(idx_of(t), idx_of(t) + count_of(t), k) == idx_of(t) + count_of(t))
        ++bad;
  }
  std::printf("K=%ld D=%ld tokens=%ld: %.1f ns a token, %.3f ns a token x 16 codes; listed %.2f a token, redo %ld, "
              "check %s (%ld)\n",
              static_cast<long>(K), static_cast<long>(D), static_cast<long>(T), fastest * 1e9 / T,
              fastest * 1e9 / (T * ((K + 15) / 16)), static_cast<double>(listed) / T, static_cast<long>(redo),
              bad == 0 ? "ok" : "FAILED", static_cast<long>(bad));
  return bad == 0 ? 0 : 1;
}
