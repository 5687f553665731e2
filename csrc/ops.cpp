// The op schemas of the `sgcvq` namespace, defined once. Every backend (CPU here, CUDA in
// csrc/cuda, Triton in kernels/) registers an implementation under these names.
//
// This file also makes `sgcvq._C` an importable (empty) Python module: importing it runs the
// static registrations below and those of the CPU kernels linked into the same library.
#include <Python.h>
#include <torch/library.h>

// No pybind11: the module has no functions, everything goes through torch.ops.sgcvq.
// PyMODINIT_FUNC exports the symbol although the library is built with -fvisibility=hidden.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(sgcvq, m) {
  // x [N, D], codebook [K, D] (same float dtype), labels [N] int32/int64 in [-1, C),
  // offsets [C+1] int32/int64 -> index [N] int64, sqdist [N] float32.
  m.def(
      "nearest_code(Tensor x, Tensor codebook, Tensor? labels=None, Tensor? offsets=None, "
      "str mode='exact') -> (Tensor, Tensor)");
  // index [N] int64 in [0, K), x [N, D] -> counts [K] float32, sums [K, D] float32.
  // deterministic: bit-identical sums run to run (GPU backends then use sorted segments instead of
  // atomics; the CPU kernel is always deterministic).
  m.def("cluster_stats(Tensor index, Tensor x, int K, bool deterministic=False) -> (Tensor, Tensor)");
  // In place on the float32 buffers: N <- decay N + (1-decay) counts, M <- decay M + (1-decay) sums,
  // codebook <- M / laplace_smooth(N, eps).
  m.def(
      "ema_update(Tensor(a!) cluster_size, Tensor(b!) embed_sum, Tensor(c!) codebook, "
      "Tensor counts, Tensor sums, float decay, float eps) -> ()");
}
