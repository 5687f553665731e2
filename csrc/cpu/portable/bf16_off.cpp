// The bf16 search where its kernels cannot exist (not x86-64: aarch64 hosts, Apple silicon): the
// path is always off, so nearest_code takes the float32 candidates and the portable scans. The
// build compiles this file instead of nearest_code_bf16.cpp and bf16_tile_avx512.cpp there
// (setup.py, CMakeLists.txt); it keeps their declarations' promises for the callers that stay
// (nearest_code_cpu.cpp, csrc/ops.cpp).
#include "../bf16_tile_avx512.h"
#include "../nearest_code_bf16.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

namespace sgcvq {
namespace cpu {

std::vector<Bf16Path> bf16_paths_here() { return {Bf16Path::kOff}; }

Bf16Path bf16_path(const CpuOptions& opts) {
  const char* env = opts.bf16.c_str();
  TORCH_CHECK(env[0] == '\0' || std::strcmp(env, "off") == 0 || std::strcmp(env, "0") == 0,
              "SGCVQ_CPU_BF16=", env, " but this CPU (not x86-64) runs only: off");
  return Bf16Path::kOff;
}

bool cpu_has_avx512_bf16() { return false; }
bool bf16_own_pack() { return false; }

void note_fast_exact_redo(int64_t, int64_t) {}
int64_t last_fast_exact_redo() { return -1; }
int64_t last_bf16_searched() { return -1; }
int64_t bf16_search_calls() { return 0; }
int64_t bf16_bounds_mismatches() { return 0; }

bool small_d_window(const CpuOptions&, int64_t codes) { return codes <= kSmallWindowMaxCodes; }
bool seed_cells_enabled(const CpuOptions&) { return true; }

Bf16Bound bf16_bound(float, float, int64_t, double, double, double, double) {
  TORCH_CHECK(false, "sgcvq: the bf16 bound belongs to the bf16 search, which needs an x86-64 CPU");
}

Bf16Codebook pack_bf16_codebook(const at::Tensor&, bool, Bf16Path, bool, bool) {
  TORCH_CHECK(false, "sgcvq: the bf16 search needs an x86-64 CPU");
}
int64_t bf16_search_item(const float*, int64_t, const Bf16Codebook&, int64_t, int64_t, int64_t, int64_t, int64_t,
                         double, CandList*, Bf16Bound*) {
  TORCH_CHECK(false, "sgcvq: the bf16 search needs an x86-64 CPU");
}
void range_maxima(const Bf16Codebook& cb, int64_t, int64_t, double& max_e2, double& max_err) {
  max_e2 = cb.max_e2;
  max_err = cb.max_err;
}
void bf16_release(const Bf16Codebook&) {}

const char* bf16_path_now() { return "off"; }
std::vector<const char*> bf16_path_names_here() { return {"off"}; }

}  // namespace cpu
}  // namespace sgcvq
