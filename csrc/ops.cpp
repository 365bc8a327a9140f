// Schemas of every mcvd op, registered once, and the pybind11 module that
// reports what this build holds. Kernels register their implementations in
// csrc/cpu/<op>.cpp (CPU) and csrc/cuda/<op>.cu (CUDA).
// pybind11 and the few ATen headers this file uses, not torch/extension.h: the whole C++ API that one
// pulls in made this file take 15.7 s to compile instead of 5.5 s (gcc 12, -O3 -g0).
#include <ATen/Version.h>
#include <pybind11/pybind11.h>
#include <torch/library.h>
#include <torch/version.h>

#include <sstream>
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

std::string cpu_isa() {
  // ATen reports the vector ISA its CPU kernels dispatch to at run time.
  std::ostringstream isa;
#if defined(__AVX512F__)
  isa << "compiled:avx512";
#elif defined(__AVX2__)
  isa << "compiled:avx2";
#elif defined(__aarch64__)
  isa << "compiled:neon";
#else
  isa << "compiled:baseline";
#endif
  return isa.str();
}

}  // namespace

PYBIND11_MODULE(_C, mod) {
  mod.def("build_info", []() {
    pybind11::dict info;
    info["version"] = MCVD_VERSION;
    pybind11::list backends;
    backends.append("cpu");
#ifdef MCVD_WITH_CUDA
    backends.append("cuda");
    info["cuda_archs"] = std::string(MCVD_CUDA_ARCHS);
#else
    info["cuda_archs"] = std::string("");
#endif
    info["backends"] = backends;
    info["cpu_isa"] = cpu_isa();
    info["cpu_capability"] = at::get_cpu_capability();
    info["torch"] = std::string(TORCH_VERSION);
    return info;
  });
}
