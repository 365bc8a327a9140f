// Autograd of the C++ forward ops (their CPU and CUDA kernels): each
// backward is the op's *_bwd op. Registered here, at the Autograd key, rather
// than with torch.library.register_autograd, because the Python path costs
// every call a round trip from the dispatcher into Python and back (about
// 150 us per forward + backward on the CPU, several times the kernels at the
// network's small shapes; benchmarks/results/cpu.md). The Triton ops, which
// are Python ops, keep the Python registration in mcvd/ops/<op>.py, which
// saves the same tensors and calls the same backward schema.
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>

namespace mcvd {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = c10::optional<at::Tensor>;

at::Tensor or_undefined(const OptTensor& t) { return t.has_value() ? *t : at::Tensor(); }
OptTensor or_none(const at::Tensor& t) { return t.defined() ? OptTensor(t) : c10::nullopt; }

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

struct SpatinNorm : torch::autograd::Function<SpatinNorm> {
  static constexpr bool is_traceable = true;

  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, int64_t num_groups, const OptTensor& weight,
                               const OptTensor& bias, const OptTensor& gamma, const OptTensor& beta,
                               const OptTensor& scale, const OptTensor& shift, double eps, bool silu) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static const auto fwd = op<SpatinFwd>("mcvd::spatin_norm_fwd");
    auto [y, mean, rstd] = fwd.call(x, num_groups, weight, bias, gamma, beta, scale, shift, eps, silu);
    ctx->save_for_backward({x, mean, rstd, or_undefined(weight), or_undefined(bias), or_undefined(gamma),
                            or_undefined(beta), or_undefined(scale), or_undefined(shift)});
    ctx->saved_data["num_groups"] = num_groups;
    ctx->saved_data["silu"] = silu;
    ctx->mark_non_differentiable({mean, rstd});
    ctx->set_materialize_grads(false);  // no zero tensors for the statistics' (unused) gradients
    return {y, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(10);  // y unused: every gradient is zero
    static const auto bwd = op<SpatinBwd>("mcvd::spatin_norm_bwd");
    const variable_list s = ctx->get_saved_variables();
    auto [gx, gw, gb, gg, gbe, gs, gsh] =
        bwd.call(grads[0].contiguous(), s[0], s[1], s[2], ctx->saved_data["num_groups"].toInt(), or_none(s[3]),
                 or_none(s[4]), or_none(s[5]), or_none(s[6]), or_none(s[7]), or_none(s[8]),
                 ctx->saved_data["silu"].toBool());
    // One per forward input: x, num_groups, the six optionals, eps, silu.
    return {gx,
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
  const variable_list out = SpatinNorm::apply(x, num_groups, weight, bias, gamma, beta, scale, shift, eps, silu);
  return {out[0], out[1], out[2]};
}

using AttnFwd = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&, double);
using AttnBwd = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                               const at::Tensor&, const at::Tensor&,
                                                               const at::Tensor&, double);

struct Attention : torch::autograd::Function<Attention> {
  static constexpr bool is_traceable = true;

  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               double scale) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static const auto fwd = op<AttnFwd>("mcvd::attention_fwd");
    auto [out, lse] = fwd.call(q, k, v, scale);
    ctx->save_for_backward({q, k, v, out, lse});
    ctx->saved_data["scale"] = scale;
    ctx->mark_non_differentiable({lse});
    ctx->set_materialize_grads(false);
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(4);
    static const auto bwd = op<AttnBwd>("mcvd::attention_bwd");
    const variable_list s = ctx->get_saved_variables();
    auto [dq, dk, dv] =
        bwd.call(grads[0].contiguous(), s[0], s[1], s[2], s[3], s[4], ctx->saved_data["scale"].toDouble());
    return {dq, dk, dv, at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> attention_fwd_autograd(const at::Tensor& q, const at::Tensor& k,
                                                          const at::Tensor& v, double scale) {
  const variable_list out = Attention::apply(q, k, v, scale);
  return {out[0], out[1]};
}

}  // namespace
}  // namespace mcvd

TORCH_LIBRARY_IMPL(mcvd, Autograd, m) {
  m.impl("spatin_norm_fwd", &mcvd::spatin_norm_fwd_autograd);
  m.impl("attention_fwd", &mcvd::attention_fwd_autograd);
}
