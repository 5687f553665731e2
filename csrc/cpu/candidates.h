// What a candidate collector hands to the certificate, per token and code range (FAISS's "result
// handlers"): the two best codes by a float32 approximate distance (Top2), or every code within a
// per-token margin of the best by a low-precision one (CandList with its ListBound).
#pragma once
#include <cstdint>
#include <cstring>
#include <limits>

namespace sgcvq {
namespace cpu {

constexpr float kInf = std::numeric_limits<float>::infinity();

// The two smallest (value, index). Codes arrive in increasing index order, so strict '<' keeps the
// lowest index among equal values. Every code not kept has a value >= v2: the certificate's
// threshold.
struct Top2 {
  float v1 = kInf, v2 = kInf;
  int64_t i1 = -1, i2 = -1;
  inline void push(float v, int64_t i) {
    if (v < v1) {
      v2 = v1; i2 = i1; v1 = v; i1 = i;
    } else if (v < v2) {
      v2 = v; i2 = i;
    }
  }
};

// A token's candidates from one code range: b is the smallest approximate distance seen, idx[0, n)
// every code whose approximate distance was below b + margin; n = -1 when more than kMaxCand were
// (the token then goes to the exact search).
constexpr int kMaxCand = 12;
struct CandList {
  float b;
  int32_t n;
  int32_t idx[kMaxCand];
};
constexpr int64_t kCandWords = static_cast<int64_t>(sizeof(CandList) / sizeof(int32_t));  // its stride in int32
static_assert(sizeof(CandList) % sizeof(int32_t) == 0, "CandList must be whole int32 words");

// delta bounds |approximate - exact| of every code's a_k = ||e||^2 - 2 x.e for one token; margin
// = 2 delta + slack is what the candidate rule adds to the running best, and what the certificate
// (certify.h) needs for the lists to prove the answer. A collector that centres its data (the bf16
// one) reports ||x'||^2 of the centred row as xx: the certificate compares ||x'||^2 + a_k with the
// re-scored float32 distances.
struct ListBound {
  double delta, margin;
  float xx;
  float margin_up;  // margin as a float, rounded up: what the scans and the certificate add to b
};

// Drops a candidate list's entries at or above thr (keeping their order); returns the new size.
// A plain scalar loop: it is inlined into the SIMD scans of every ISA file, and its own
// out-of-line (COMDAT) copy is generic code, whichever file the linker keeps it from.
inline int32_t drop_at_or_above(int32_t* idx, float* val, int32_t n, float thr) {
  int32_t m = 0;
  for (int32_t j = 0; j < n; ++j)
    if (val[j] < thr) {
      idx[m] = idx[j];
      val[m] = val[j];
      ++m;
    }
  return m;
}

// std::nextafter(x, +inf) without the libm call (it showed in profiles: a call per token).
inline float next_up(float x) {
  if (!(x < std::numeric_limits<float>::infinity())) return x;  // +inf, NaN
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  if (x == 0.f)
    u = 1u;  // the smallest subnormal, from +0 and -0
  else if (x > 0.f)
    ++u;
  else
    --u;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}

}  // namespace cpu
}  // namespace sgcvq
