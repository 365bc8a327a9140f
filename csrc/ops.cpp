// Schemas of every mcvd op, registered once, and the Python module that
// reports what this build holds. Kernels register their implementations in
// csrc/cpu/<op>.cpp (CPU) and csrc/cuda/<op>.cu (CUDA).
// Python's C API and the few ATen headers this file uses, not torch/extension.h or pybind11: the whole
// C++ API that the first pulls in made this file take 15.7 s to compile instead of 5.5 s, and pybind11
// for one function doubled the rest (13.8 s against 7.0 s on a slower machine; gcc 12, -O3 -g0).
#include <Python.h>

#include <ATen/Version.h>
#include <torch/library.h>
#include <torch/version.h>

#include <string>

#ifndef MCVD_VERSION
#define MCVD_VERSION "0.0.0"
#endif

TORCH_LIBRARY(mcvd, m) {
  // GroupNorm (no affine) -> per-channel affine -> SPATIN maps -> scale/shift
  // -> SiLU. Returns y and the per-(batch, group) statistics, float32 (float64
  // for float64 input), which the backward reuses.
  m.def(
      "spatin_norm_fwd(Tensor x, int num_groups, Tensor? weight=None, "
      "Tensor? bias=None, Tensor? gamma=None, Tensor? beta=None, "
      "Tensor? scale=None, Tensor? shift=None, float eps=1e-6, "
      "bool silu=False) -> (Tensor y, Tensor mean, Tensor rstd)");
  // Gradients of x, weight, bias, gamma, beta, scale, shift. A gradient whose
  // input was None is an empty tensor of shape [0].
  m.def(
      "spatin_norm_bwd(Tensor grad_y, Tensor x, Tensor mean, Tensor rstd, "
      "int num_groups, Tensor? weight=None, Tensor? bias=None, "
      "Tensor? gamma=None, Tensor? beta=None, Tensor? scale=None, "
      "Tensor? shift=None, bool silu=False) -> (Tensor grad_x, "
      "Tensor grad_weight, Tensor grad_bias, Tensor grad_gamma, "
      "Tensor grad_beta, Tensor grad_scale, Tensor grad_shift)");
  // Softmax attention over N positions; lse is the per-row log-sum-exp of the
  // scaled logits, float32 (float64 for float64 input), [B, heads, N].
  m.def(
      "attention_fwd(Tensor q, Tensor k, Tensor v, float scale) -> "
      "(Tensor out, Tensor lse)");
  m.def(
      "attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, "
      "Tensor out, Tensor lse, float scale) -> (Tensor grad_q, "
      "Tensor grad_k, Tensor grad_v)");
  // coef: [5, B] rows (a, b, c_x0, c_xt, sigma), float32 or float64, on the
  // device of x_t. noise may be None only when sigma is all zero.
  m.def(
      "reverse_step(Tensor x_t, Tensor eps, Tensor? noise, Tensor coef, "
      "float? clip_lo=None, float? clip_hi=None) -> (Tensor x_prev, "
      "Tensor x0)");
  // y = x / (1 - p) where the element's Philox word from `seed` (a 0-d
  // int64 tensor on x's device) is at least p * 2^32, else 0 (csrc/philox.h).
  // Linear in x: its backward is this op on the gradient with the same seed.
  m.def("dropout(Tensor x, float p, Tensor seed) -> Tensor");
}

namespace {

// The vector ISA this build's CPU kernels were compiled for (setup.py: -march=native unless MCVD_PORTABLE=1).
#if defined(__AVX512F__)
constexpr const char* kCpuIsa = "compiled:avx512";
#elif defined(__AVX2__)
constexpr const char* kCpuIsa = "compiled:avx2";
#elif defined(__aarch64__)
constexpr const char* kCpuIsa = "compiled:neon";
#else
constexpr const char* kCpuIsa = "compiled:baseline";
#endif

// mcvd._C.build_info(): a dict of what this build holds.
PyObject* build_info(PyObject*, PyObject*) {
  PyObject* info = PyDict_New();
  bool ok = info != nullptr;
  auto put = [&](const char* key, PyObject* value) {  // takes the reference to value
    ok = ok && value != nullptr && PyDict_SetItemString(info, key, value) == 0;
    Py_XDECREF(value);
  };
  put("version", PyUnicode_FromString(MCVD_VERSION));
#ifdef MCVD_WITH_CUDA
  put("backends", Py_BuildValue("[ss]", "cpu", "cuda"));
  put("cuda_archs", PyUnicode_FromString(MCVD_CUDA_ARCHS));
#else
  put("backends", Py_BuildValue("[s]", "cpu"));
  put("cuda_archs", PyUnicode_FromString(""));
#endif
  put("cpu_isa", PyUnicode_FromString(kCpuIsa));
  put("cpu_capability", PyUnicode_FromString(at::get_cpu_capability().c_str()));
  put("torch", PyUnicode_FromString(TORCH_VERSION));
  if (!ok) Py_CLEAR(info);  // a Python error is set
  return info;
}

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS, "What this build of mcvd._C holds: version, backends, CPU ISA."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "mcvd's compiled ops (registered with torch.library).", -1,
                      methods};

}  // namespace

PyMODINIT_FUNC PyInit__C() { return PyModule_Create(&module); }
