// Autograd of the C++ forward ops spatin_norm_fwd and attention_fwd (their
// CPU and CUDA kernels): each backward is the op's *_bwd op. Registered here,
// at the Autograd key, rather than with torch.library.register_autograd,
// because the Python path costs every call a round trip from the dispatcher
// into Python and back (about 120 us per forward + backward on the CPU, more
// than the kernels at the network's small shapes; benchmarks/results/cpu.md).
// The Triton ops, which are Python ops, keep the Python registration in
// mcvd/ops/<op>.py, which saves the same tensors and calls the same backward
// schema; so does reverse_step, whose backward is a few elementwise PyTorch
// ops shared with its Triton op and which the samplers call without grad.
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <utility>

#include "checks.h"

namespace mcvd {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor or_undefined(const OptTensor& t) { return t.has_value() ? *t : at::Tensor(); }
OptTensor or_none(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// The gradient of an optional input: undefined when the input was absent
// (the backward op returns an empty placeholder for it).
at::Tensor grad_if(const at::Tensor& saved, const at::Tensor& grad) { return saved.defined() ? grad : at::Tensor(); }

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using SpatinFwd = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, int64_t, const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&,
    const OptTensor&, const OptTensor&, double, bool);
using SpatinBwd = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, const OptTensor&,
    const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&, bool);

// The statistics a forward saves for its backward leave the Function through
// an out-parameter (a pointer, which autograd does not track), not as outputs
// of its node: a node with non-differentiable outputs fails under compiled
// autograd (CppNode asserts that it has none), and the engine would otherwise
// materialise zero gradients for them.
using Stats = std::pair<at::Tensor, at::Tensor>;

struct SpatinNorm : torch::autograd::Function<SpatinNorm> {
  static constexpr bool is_traceable = true;

  static variable_list forward(AutogradContext* ctx, Stats* stats, const at::Tensor& x, int64_t num_groups,
                               const OptTensor& weight, const OptTensor& bias, const OptTensor& gamma,
                               const OptTensor& beta, const OptTensor& scale, const OptTensor& shift, double eps,
                               bool silu) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static const auto fwd = op<SpatinFwd>("mcvd::spatin_norm_fwd");
    auto [y, mean, rstd] = fwd.call(x, num_groups, weight, bias, gamma, beta, scale, shift, eps, silu);
    ctx->save_for_backward({x, mean, rstd, or_undefined(weight), or_undefined(bias), or_undefined(gamma),
                            or_undefined(beta), or_undefined(scale), or_undefined(shift)});
    ctx->saved_data["num_groups"] = num_groups;
    ctx->saved_data["silu"] = silu;
    *stats = {mean, rstd};
    return {y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto bwd = op<SpatinBwd>("mcvd::spatin_norm_bwd");
    const variable_list s = ctx->get_saved_variables();
    auto [gx, gw, gb, gg, gbe, gs, gsh] =
        bwd.call(grads[0].contiguous(), s[0], s[1], s[2], ctx->saved_data["num_groups"].toInt(), or_none(s[3]),
                 or_none(s[4]), or_none(s[5]), or_none(s[6]), or_none(s[7]), or_none(s[8]),
                 ctx->saved_data["silu"].toBool());
    // One per forward input: stats, x, num_groups, the six optionals, eps, silu.
    return {at::Tensor(),
            gx,
            at::Tensor(),
            grad_if(s[3], gw),
            grad_if(s[4], gb),
            grad_if(s[5], gg),
            grad_if(s[6], gbe),
            grad_if(s[7], gs),
            grad_if(s[8], gsh),
            at::Tensor(),
            at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> spatin_norm_fwd_autograd(
    const at::Tensor& x, int64_t num_groups, const OptTensor& weight, const OptTensor& bias, const OptTensor& gamma,
    const OptTensor& beta, const OptTensor& scale, const OptTensor& shift, double eps, bool silu) {
  Stats stats;
  const variable_list y = SpatinNorm::apply(&stats, x, num_groups, weight, bias, gamma, beta, scale, shift, eps, silu);
  return {y[0], stats.first, stats.second};
}

using AttnFwd = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&, double);
using AttnBwd = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                               const at::Tensor&, const at::Tensor&,
                                                               const at::Tensor&, double);

struct Attention : torch::autograd::Function<Attention> {
  static constexpr bool is_traceable = true;

  static variable_list forward(AutogradContext* ctx, at::Tensor* lse_out, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, double scale) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static const auto fwd = op<AttnFwd>("mcvd::attention_fwd");
    auto [out, lse] = fwd.call(q, k, v, scale);
    ctx->save_for_backward({q, k, v, out, lse});
    ctx->saved_data["scale"] = scale;
    *lse_out = lse;
    return {out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto bwd = op<AttnBwd>("mcvd::attention_bwd");
    const variable_list s = ctx->get_saved_variables();
    auto [dq, dk, dv] =
        bwd.call(grads[0].contiguous(), s[0], s[1], s[2], s[3], s[4], ctx->saved_data["scale"].toDouble());
    return {at::Tensor(), dq, dk, dv, at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> attention_fwd_autograd(const at::Tensor& q, const at::Tensor& k,
                                                          const at::Tensor& v, double scale) {
  at::Tensor lse;
  const variable_list out = Attention::apply(&lse, q, k, v, scale);
  return {out[0], lse};
}

}  // namespace
}  // namespace mcvd

TORCH_LIBRARY_IMPL(mcvd, Autograd, m) {
  m.impl("spatin_norm_fwd", &mcvd::spatin_norm_fwd_autograd);
  m.impl("attention_fwd", &mcvd::attention_fwd_autograd);
  // The backward formulas are first-order: a backward through a backward op
  // (a double backward, after create_graph=True) raises "derivative for ...
  // is not implemented" instead of the default fallback's warning and missing
  // gradient.
  m.impl("spatin_norm_bwd", torch::autograd::autogradNotImplementedFallback());
  m.impl("attention_bwd", torch::autograd::autogradNotImplementedFallback());
}
