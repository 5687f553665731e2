// The op schemas of the `sgcvq` namespace, defined once. Every backend (CPU here, CUDA in
// csrc/cuda, Triton in kernels/) registers an implementation under these names.
//
// This file also makes `sgcvq._C` an importable (empty) Python module: importing it runs the
// static registrations below and those of the CPU kernels linked into the same library.
#include <Python.h>
#include <torch/library.h>

#include <string>
#include <utility>
#include <vector>

namespace sgcvq::cpu {
bool scan_uses_avx512();
const char* bf16_path_now();
std::vector<const char*> bf16_path_names_here();
bool bf16_own_pack();
int64_t last_fast_exact_redo();
int64_t last_bf16_searched();
int64_t bf16_search_calls();
int64_t bf16_bounds_mismatches();
bool probe_float32_certificate(int64_t D, double max_norm2, bool rounds_to_bf16, float xx, float thr, float best,
                               double out[4]);
std::vector<std::pair<const char*, std::string>> cpu_option_values();
std::vector<const char*> collector_names();
int64_t last_float32_uncertified();
std::pair<int64_t, int64_t> last_leaf_visits();
int64_t leaf_search_calls();
}  // namespace sgcvq::cpu

// No pybind11: the ops go through torch.ops.sgcvq; the module itself only answers what the CPU
// kernels can do here, for tests and benchmarks.
static PyObject* cpu_capabilities(PyObject*, PyObject*) {
  const char* path = nullptr;
  bool own_pack = false;
  try {
    path = sgcvq::cpu::bf16_path_now();  // raises for an SGCVQ_CPU_BF16 this CPU cannot run
    own_pack = sgcvq::cpu::bf16_own_pack();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
  const std::vector<const char*> names = sgcvq::cpu::bf16_path_names_here();
  PyObject* paths = PyTuple_New(static_cast<Py_ssize_t>(names.size()));
  for (size_t i = 0; i < names.size(); ++i)
    PyTuple_SET_ITEM(paths, static_cast<Py_ssize_t>(i), PyUnicode_FromString(names[i]));  // steals
  const bool on = std::string(path) != "off";
  return Py_BuildValue("{s:O,s:O,s:s,s:N,s:O}", "avx512", sgcvq::cpu::scan_uses_avx512() ? Py_True : Py_False,
                       "bf16_gemm", on ? Py_True : Py_False, "bf16_path", path, "bf16_paths", paths,
                       "bf16_own_pack", own_pack ? Py_True : Py_False);
}
static PyObject* last_fast_exact_redo(PyObject*, PyObject*) {
  return PyLong_FromLongLong(static_cast<long long>(sgcvq::cpu::last_fast_exact_redo()));
}
static PyObject* last_float32_uncertified(PyObject*, PyObject*) {
  return PyLong_FromLongLong(static_cast<long long>(sgcvq::cpu::last_float32_uncertified()));
}
static PyObject* last_leaf_visits(PyObject*, PyObject*) {
  const auto [visits, possible] = sgcvq::cpu::last_leaf_visits();
  return Py_BuildValue("(LL)", static_cast<long long>(visits), static_cast<long long>(possible));
}
static PyObject* leaf_search_calls(PyObject*, PyObject*) {
  return PyLong_FromLongLong(static_cast<long long>(sgcvq::cpu::leaf_search_calls()));
}
static PyObject* last_bf16_searched(PyObject*, PyObject*) {
  return PyLong_FromLongLong(static_cast<long long>(sgcvq::cpu::last_bf16_searched()));
}
static PyObject* bf16_search_calls(PyObject*, PyObject*) {
  return PyLong_FromLongLong(static_cast<long long>(sgcvq::cpu::bf16_search_calls()));
}
static PyObject* bf16_bounds_mismatches(PyObject*, PyObject*) {
  return PyLong_FromLongLong(static_cast<long long>(sgcvq::cpu::bf16_bounds_mismatches()));
}
// The CPU search's settings as this call would read them (csrc/cpu/options.h: one place), and the
// collectors of its dispatch table in the order they are tried.
static PyObject* cpu_options(PyObject*, PyObject*) {
  PyObject* env = PyDict_New();
  for (const auto& [name, value] : sgcvq::cpu::cpu_option_values()) {
    PyObject* v = value.empty() ? Py_NewRef(Py_None) : PyUnicode_FromString(value.c_str());
    PyDict_SetItemString(env, name, v);
    Py_DECREF(v);
  }
  const std::vector<const char*> names = sgcvq::cpu::collector_names();
  PyObject* collectors = PyTuple_New(static_cast<Py_ssize_t>(names.size()));
  for (size_t i = 0; i < names.size(); ++i)
    PyTuple_SET_ITEM(collectors, static_cast<Py_ssize_t>(i), PyUnicode_FromString(names[i]));  // steals
  return Py_BuildValue("{s:N,s:N}", "env", env, "collectors", collectors);
}
static PyObject* float32_certificate(PyObject*, PyObject* args) {
  long long D;
  double max_norm2, xx, thr, best;
  int rounds;
  if (!PyArg_ParseTuple(args, "Ldpddd", &D, &max_norm2, &rounds, &xx, &thr, &best)) return nullptr;
  double out[4];
  const bool holds = sgcvq::cpu::probe_float32_certificate(D, max_norm2, rounds != 0, static_cast<float>(xx),
                                                           static_cast<float>(thr), static_cast<float>(best), out);
  return Py_BuildValue("{s:d,s:d,s:d,s:d,s:O}", "g", out[0], "max_e2", out[1], "delta", out[2], "floor", out[3],
                       "holds", holds ? Py_True : Py_False);
}
static PyMethodDef kMethods[] = {
    {"cpu_capabilities", cpu_capabilities, METH_NOARGS,
     "{'avx512': the AVX-512 scans run, 'bf16_gemm': modes 'exact' and 'fast_exact' take certified bf16 "
     "candidates, 'bf16_path': which ('amx', 'avx512bf16' or 'off'; SGCVQ_CPU_BF16 forces one), "
     "'bf16_paths': the paths this CPU runs, fastest first, "
     "'bf16_own_pack': the bf16 codebook is packed by sgcvq, not by oneDNN's slower per-block pack}"},
    {"cpu_options", cpu_options, METH_NOARGS,
     "{'env': {SGCVQ_CPU_* name: its value as the CPU search reads it now, or None}, 'collectors': the "
     "candidate collectors of the CPU dispatch table, in the order they are tried}"},
    {"float32_certificate", float32_certificate, METH_VARARGS,
     "float32_certificate(D, max_norm2, rounds_to_bf16, xx, thr, best) -> {'g', 'max_e2', 'delta', 'floor', "
     "'holds'}: the CPU float32 certificate's terms for one token (xx, thr, best rounded to float32), for tests."},
    {"last_fast_exact_redo", last_fast_exact_redo, METH_NOARGS,
     "Tokens the last CPU bf16 call sent to the float32 search (-1: none ran yet)."},
    {"last_float32_uncertified", last_float32_uncertified, METH_NOARGS,
     "Tokens the last CPU call with float32 (top-2) candidates could not certify and searched exactly "
     "(-1: none ran yet)."},
    {"last_leaf_visits", last_leaf_visits, METH_NOARGS,
     "(visits, possible) of the last CPU call the k-d leaf search served: the (token, leaf) visits it made and "
     "tokens x leaves (the tokens it handed to the scan count in neither); (-1, -1) before the first."},
    {"leaf_search_calls", leaf_search_calls, METH_NOARGS,
     "nearest_code calls the CPU k-d leaf search served since the library was loaded."},
    {"last_bf16_searched", last_bf16_searched, METH_NOARGS,
     "Tokens (times code splits) the last CPU bf16 call searched with bf16 tiles: fewer than N when "
     "it gave up early on near-duplicate codes and sent the rest to the float32 search (-1: none ran yet)."},
    {"bf16_search_calls", bf16_search_calls, METH_NOARGS,
     "nearest_code calls that took the CPU bf16 path since the library was loaded."},
    {"bf16_bounds_mismatches", bf16_bounds_mismatches, METH_NOARGS,
     "Tokens whose bf16 bound differs, bit for bit, between the AVX-512 batch and the scalar bf16_bound "
     "(a self-check over extreme values; 0 expected)."},
    {nullptr, nullptr, 0, nullptr}};

// PyMODINIT_FUNC exports the symbol although the library is built with -fvisibility=hidden.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, kMethods};
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
