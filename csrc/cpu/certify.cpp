// A view of the float32 certificate for tests (sgcvq._C.float32_certificate, csrc/ops.cpp): the
// tests compare these numbers with the float64 model in sgcvq/reference.py.
#include "certify.h"

#include <atomic>

namespace sgcvq {
namespace cpu {

// out: g, max_e2 (rounded up), delta (the expansion's bound for this token), the floor on every
// unlisted code's float32 distance; returns whether `best` is certified against thr.
bool probe_float32_certificate(int64_t D, double max_norm2, bool rounds_to_bf16, float xx, float thr, float best,
                               double out[4]) {
  const Certificate c(D, max_norm2, rounds_to_bf16);
  const double delta = cert::expansion_delta(c.g, c.g_dot, c.max_e2, c.max_e, xx);
  out[0] = c.g;
  out[1] = c.max_e2;
  out[2] = delta;
  out[3] = cert::unlisted_floor(static_cast<double>(xx), static_cast<double>(thr), delta, c.g);
  return c.holds(xx, thr, best);
}

namespace {
std::atomic<int64_t> g_last_uncertified{-1};
}  // namespace
void note_float32_uncertified(int64_t n) { g_last_uncertified.store(n); }
int64_t last_float32_uncertified() { return g_last_uncertified.load(); }

}  // namespace cpu
}  // namespace sgcvq
