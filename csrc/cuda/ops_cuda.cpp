// The torch glue of the CUDA backend: validation (csrc/checks.h), contiguous inputs, allocations
// through torch (outputs and scratch come from the caching allocator), the current stream, and the
// TORCH_LIBRARY_IMPL(sgcvq, CUDA, m) registrations under the schemas of csrc/ops.cpp. The kernels
// live behind the plain launchers of nearest_code.h, cluster_stats.h and ema_update.h.
//
// Value checks that would synchronise with the host (label range, offsets, index range,
// finiteness) are not repeated here: sgcvq/ops.py makes them before dispatch. A C++ caller must
// pass labels in [-1, C), valid offsets and indices in [0, K): out-of-range values make the
// kernels read and write out of bounds.
//
// Built into the Python module sgcvq._C_cuda (setup.py), imported after sgcvq._C, which defines
// the schemas; and into the CMake library when SGCVQ_WITH_CUDA=ON.
#include <Python.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>

#include "../checks.h"
#include "cluster_stats.h"
#include "cuda_options.h"
#include "ema_update.h"
#include "nearest_code.h"

// No pybind11: the module has no functions, importing it runs the registrations below.
extern "C" PyMODINIT_FUNC PyInit__C_cuda(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

namespace sgcvq {
namespace {

#define SGCVQ_CHECK_LAUNCH(op, expr)                                                           \
  do {                                                                                         \
    const cudaError_t err_ = (expr);                                                           \
    TORCH_CHECK(err_ == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err_)); \
  } while (0)

gpu::ScalarKind scalar_kind(at::ScalarType t) {
  if (t == at::kBFloat16) return gpu::ScalarKind::kBFloat16;
  if (t == at::kHalf) return gpu::ScalarKind::kFloat16;
  TORCH_CHECK(t == at::kFloat, "sgcvq: unsupported dtype ", t);
  return gpu::ScalarKind::kFloat32;
}

// "exact" (default): the fastest certified path; "fast_exact": low-precision candidates;
// "exact_fp32": float32 candidates. check_nearest_code_shapes has already rejected anything else.
gpu::SearchMode search_mode(c10::string_view mode) {
  if (mode == "fast_exact") return gpu::SearchMode::kLowPrecision;
  if (mode == "exact_fp32") return gpu::SearchMode::kFloat32;
  return gpu::SearchMode::kFastest;
}

void check_cuda(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.is_cuda(), op, " (CUDA kernel): ", name, " is on ", t.device(), ", expected a CUDA device");
}

// The search with its kernel chosen by the caller: want_sm90 takes the Hopper kernel where it
// applies (nearest_code.h, nearest_code_uses_sm90), else the generic one.
std::tuple<at::Tensor, at::Tensor> nearest_code_search(const at::Tensor& x, const at::Tensor& codebook,
                                                       const std::optional<at::Tensor>& labels,
                                                       const std::optional<at::Tensor>& offsets,
                                                       c10::string_view mode, bool want_sm90) {
  check_nearest_code_shapes(x, codebook, labels, offsets, mode);
  check_cuda("nearest_code", "x", x);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), D = x.size(1), K = codebook.size(0);
  constexpr int64_t kMax32 = std::numeric_limits<int32_t>::max();
  TORCH_CHECK(N <= kMax32 && K <= kMax32 && D <= kMax32, "nearest_code (CUDA kernel): x is ", x.sizes(),
              " and codebook is ", codebook.sizes(), ": N, K and D must be below 2^31");
  auto index = at::empty({N}, x.options().dtype(at::kLong));
  auto sqdist = at::empty({N}, x.options().dtype(at::kFloat));
  if (N == 0) return {index, sqdist};
  const at::Tensor xc = x.contiguous();        // [N, D]
  const at::Tensor ec = codebook.contiguous();  // [K, D]
  at::Tensor lab, off;                          // [N] int32, [C + 1] int32
  int64_t C = 0;
  if (labels.has_value()) {
    lab = labels->to(at::kInt).contiguous();
    off = offsets->to(at::kInt).contiguous();
    C = off.size(0) - 1;
  }
  const gpu::SearchMode smode = search_mode(mode);
  const bool sm90 = gpu::nearest_code_uses_sm90(scalar_kind(x.scalar_type()), D, smode, want_sm90);
  auto workspace = at::empty({static_cast<int64_t>(gpu::nearest_code_workspace_bytes(N, K, C, D, sm90))},
                             x.options().dtype(at::kByte));
  SGCVQ_CHECK_LAUNCH(
      "nearest_code",
      gpu::nearest_code_launch(xc.data_ptr(), ec.data_ptr(), scalar_kind(x.scalar_type()),
                               C > 0 ? lab.data_ptr<int32_t>() : nullptr,
                               C > 0 ? off.data_ptr<int32_t>() : nullptr, N, D, K, C, smode, sm90,
                               workspace.data_ptr(), index.data_ptr<int64_t>(), sqdist.data_ptr<float>(),
                               c10::cuda::getCurrentCUDAStream().stream()));
  return {index, sqdist};
}

// The plain op (C++ callers): the Hopper kernel only where SGCVQ_CUDA_SM90=1 (cuda_options.h).
std::tuple<at::Tensor, at::Tensor> nearest_code_cuda(const at::Tensor& x, const at::Tensor& codebook,
                                                     const std::optional<at::Tensor>& labels,
                                                     const std::optional<at::Tensor>& offsets,
                                                     c10::string_view mode) {
  TORCH_CHECK(*gpu::cuda_options_error() == '\0', "sgcvq: ", gpu::cuda_options_error());
  return nearest_code_search(x, codebook, labels, offsets, mode, gpu::cuda_options().sm90);
}

// The op sgcvq/ops.py calls: kernel "generic" or "sm90", chosen per call by sgcvq/gpu_dispatch.py.
std::tuple<at::Tensor, at::Tensor> nearest_code_kernel_cuda(const at::Tensor& x, const at::Tensor& codebook,
                                                            const std::optional<at::Tensor>& labels,
                                                            const std::optional<at::Tensor>& offsets,
                                                            c10::string_view mode, c10::string_view kernel) {
  TORCH_CHECK(kernel == "generic" || kernel == "sm90",
              "nearest_code (CUDA kernel): kernel must be 'generic' or 'sm90', got '", kernel, "'");
  return nearest_code_search(x, codebook, labels, offsets, mode, kernel == "sm90");
}

std::tuple<at::Tensor, at::Tensor> cluster_stats_cuda(const at::Tensor& index, const at::Tensor& x, int64_t K,
                                                      bool deterministic) {
  check_cluster_stats_shapes(index, x, K);
  check_cuda("cluster_stats", "x", x);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), D = x.size(1);
  constexpr int64_t kMax32 = std::numeric_limits<int32_t>::max();
  TORCH_CHECK(N <= kMax32 && K < kMax32 && D <= kMax32, "cluster_stats (CUDA kernel): x is ", x.sizes(),
              " with K = ", K, ": N, K and D must be below 2^31");
  auto counts = at::empty({K}, x.options().dtype(at::kFloat));
  auto sums = at::empty({K, D}, x.options().dtype(at::kFloat));
  const at::Tensor ic = index.contiguous();  // [N] int64
  const at::Tensor xc = x.contiguous();      // [N, D]
  auto workspace = at::empty({static_cast<int64_t>(gpu::cluster_stats_workspace_bytes(N, D, K, deterministic))},
                             x.options().dtype(at::kByte));
  // The launcher zeroes counts and sums itself (also for N == 0).
  SGCVQ_CHECK_LAUNCH("cluster_stats",
                     gpu::cluster_stats_launch(ic.data_ptr<int64_t>(), xc.data_ptr(), scalar_kind(x.scalar_type()),
                                               N, D, K, deterministic, workspace.data_ptr(),
                                               counts.data_ptr<float>(), sums.data_ptr<float>(),
                                               c10::cuda::getCurrentCUDAStream().stream()));
  return {counts, sums};
}

void ema_update_cuda(const at::Tensor& cluster_size, const at::Tensor& embed_sum, const at::Tensor& codebook,
                     const at::Tensor& counts_in, const at::Tensor& sums_in, double decay, double eps) {
  check_ema_update_shapes(cluster_size, embed_sum, codebook, counts_in, sums_in, decay, eps);
  check_cuda("ema_update", "embed_sum", embed_sum);
  const c10::cuda::CUDAGuard guard(embed_sum.device());
  const int64_t K = embed_sum.size(0), D = embed_sum.size(1);
  const at::Tensor counts = counts_in.contiguous();  // [K]
  const at::Tensor sums = sums_in.contiguous();      // [K, D]
  auto workspace = at::empty({static_cast<int64_t>(gpu::ema_update_workspace_bytes())},
                             embed_sum.options().dtype(at::kByte));
  SGCVQ_CHECK_LAUNCH("ema_update",
                     gpu::ema_update_launch(cluster_size.data_ptr<float>(), embed_sum.data_ptr<float>(),
                                            codebook.data_ptr<float>(), counts.data_ptr<float>(),
                                            sums.data_ptr<float>(), K, D, decay, eps, workspace.data_ptr(),
                                            c10::cuda::getCurrentCUDAStream().stream()));
}

}  // namespace

// Defined here, not in csrc/ops.cpp: only a build with the CUDA backend has it (sgcvq/ops.py
// checks for it and registers its fake and autograd).
TORCH_LIBRARY_FRAGMENT(sgcvq, m) {
  m.def("nearest_code_kernel(Tensor x, Tensor codebook, Tensor? labels=None, Tensor? offsets=None, "
        "str mode='exact', str kernel='generic') -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(sgcvq, CUDA, m) {
  m.impl("nearest_code_kernel", &nearest_code_kernel_cuda);
  m.impl("nearest_code", &nearest_code_cuda);
  m.impl("cluster_stats", &cluster_stats_cuda);
  m.impl("ema_update", &ema_update_cuda);
}

}  // namespace sgcvq
