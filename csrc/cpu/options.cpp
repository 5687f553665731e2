// Every getenv of the CPU search (options.h).
#include "options.h"

#include <cstdlib>
#include <cstring>

namespace sgcvq {
namespace cpu {
namespace {

std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

}  // namespace

CpuOptions cpu_options() {
  // Once per process: the scans' dispatch (scan_uses_avx512) is fixed at load.
  static const bool portable = [] {
    const std::string v = env_or_empty("SGCVQ_CPU_PORTABLE");
    return !v.empty() && v != "0";
  }();
  CpuOptions o;
  o.portable = portable;
  o.bf16 = env_or_empty("SGCVQ_CPU_BF16");
  o.f32_gemm = env_or_empty("SGCVQ_CPU_F32_GEMM");
  o.smalld = env_or_empty("SGCVQ_CPU_SMALLD");
  o.smalld_seed = env_or_empty("SGCVQ_CPU_SMALLD_SEED");
  o.research = env_or_empty("SGCVQ_CPU_RESEARCH");
  o.avx2 = env_or_empty("SGCVQ_CPU_AVX2");
  o.leaves = env_or_empty("SGCVQ_CPU_LEAVES");
  return o;
}

std::vector<std::pair<const char*, std::string>> cpu_option_values() {
  const CpuOptions o = cpu_options();
  return {{"SGCVQ_CPU_PORTABLE", o.portable ? "1" : ""}, {"SGCVQ_CPU_BF16", o.bf16},
          {"SGCVQ_CPU_F32_GEMM", o.f32_gemm},           {"SGCVQ_CPU_SMALLD", o.smalld},
          {"SGCVQ_CPU_SMALLD_SEED", o.smalld_seed},     {"SGCVQ_CPU_RESEARCH", o.research},
          {"SGCVQ_CPU_AVX2", o.avx2},                   {"SGCVQ_CPU_LEAVES", o.leaves}};
}

}  // namespace cpu
}  // namespace sgcvq
