// Which kernels run on this CPU (see cpu_kind.h).
#include "cpu_kind.h"

#include "../nearest_code_scan.h"
#include "../options.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

namespace sgcvq {
namespace cpu {
namespace {

// SGCVQ_CPU_AVX2: -1 unset (or empty), 0 or 1.
int avx2_setting() {
  const std::string value = cpu_options().avx2;
  const char* env = value.c_str();
  if (env[0] == '\0') return -1;
  if (std::strcmp(env, "1") == 0) return 1;
  TORCH_CHECK(std::strcmp(env, "0") == 0,
              "SGCVQ_CPU_AVX2 must be '1' (force the AVX2 kernels) or '0' (turn them off), got '", env, "'");
  return 0;
}

bool portable_forced() { return cpu_options().portable; }

}  // namespace

bool cpu_has_avx2() {
#if defined(__x86_64__)
  static const bool yes =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return yes;
#else
  return false;
#endif
}

bool avx2_forced() {
  if (avx2_setting() != 1) return false;
  TORCH_CHECK(cpu_has_avx2(), "SGCVQ_CPU_AVX2=1 but this CPU has no AVX2 + FMA + F16C");
  return true;
}

bool avx2_kernels_on() {
  if (portable_forced()) return false;
  const int s = avx2_setting();
  if (s == 0) return false;
  if (s == 1) return avx2_forced();
  return cpu_has_avx2() && !scan_uses_avx512();
}

}  // namespace cpu
}  // namespace sgcvq
