// Argument checks of each op, one function per op entry point, called first
// by both its CPU kernel (csrc/cpu/<op>.cpp) and its CUDA launcher
// (csrc/cuda/<op>.cu), so that every backend rejects bad input with the same
// messages in the same order. mcvd/ops/ raises the same messages for the
// reference backend (helpers in mcvd/ops/_checks.py), and the tests assert
// them on both layers. Checks that only one device needs (a CUDA tensor, the
// CUDA grid's limits) stay in that device's file and run after these, so that
// a device mismatch is named by the argument that differs.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>

#include "checks.h"

namespace mcvd {

// The dtype of the statistics a forward saves for its backward
// (spatin_norm's mean and rstd, attention's lse): float64 for float64 input,
// else float32.
inline at::ScalarType stat_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// ---------------------------------------------------------------- spatin_norm

// The layout of spatin_norm_fwd's y, and of spatin_norm_bwd's gradients of x,
// gamma and beta, on every backend: channels_last when x is channels_last (and
// not also contiguous, as when C or H * W is 1), so that a network in
// channels_last (inductor's layout for oneDNN convolutions) runs the norms
// without copies; contiguous for any other x. The fake implementations
// (mcvd/ops/spatin_norm.py) state the same rule.
inline at::MemoryFormat spatin_norm_output_format(const at::Tensor& x) {
  return x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous() ? at::MemoryFormat::ChannelsLast
                                                                               : at::MemoryFormat::Contiguous;
}

// x, num_groups and the optional tensors: what the forward and the backward share.
inline void check_spatin_norm_tensors(const at::Tensor& x, int64_t num_groups, const OptTensor& weight,
                                      const OptTensor& bias, const OptTensor& gamma, const OptTensor& beta,
                                      const OptTensor& scale, const OptTensor& shift) {
  check_rank(x, "x", 4, "[B, C, H, W]");
  check_float(x, "x");
  const int64_t B = x.size(0), C = x.size(1);
  TORCH_CHECK(num_groups > 0 && C % num_groups == 0, "num_groups: expected a positive divisor of the ", C,
              " channels of x, got ", num_groups);
  check_optional(weight, "weight", x, "x", {C});
  check_optional(bias, "bias", x, "x", {C});
  check_optional(gamma, "gamma", x, "x", x.sizes());
  check_optional(beta, "beta", x, "x", x.sizes());
  check_optional(scale, "scale", x, "x", {B, C});
  check_optional(shift, "shift", x, "x", {B, C});
}

inline void check_spatin_norm_args(const at::Tensor& x, int64_t num_groups, const OptTensor& weight,
                                   const OptTensor& bias, const OptTensor& gamma, const OptTensor& beta,
                                   const OptTensor& scale, const OptTensor& shift, double eps) {
  check_spatin_norm_tensors(x, num_groups, weight, bias, gamma, beta, scale, shift);
  // A negative eps can make the variance term negative (NaN rstd); NaN or inf
  // would give NaN or zeros everywhere.
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, "eps: expected a finite float >= 0, got ", eps);
}

// The forward's checks of the tensors, then grad_y like x, then mean and rstd
// as the forward returns them: [B, G] on x's device, in the statistics dtype.
inline void check_spatin_norm_bwd_args(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mean,
                                       const at::Tensor& rstd, int64_t num_groups, const OptTensor& weight,
                                       const OptTensor& bias, const OptTensor& gamma, const OptTensor& beta,
                                       const OptTensor& scale, const OptTensor& shift) {
  check_spatin_norm_tensors(x, num_groups, weight, bias, gamma, beta, scale, shift);
  check_like(grad_y, "grad_y", x, "x", x.sizes());
  auto check_stat = [&](const at::Tensor& t, const char* name) {
    check_same_device(t, name, x, "x");
    check_dtype(t, name, stat_dtype(x));
    check_shape(t, name, {x.size(0), num_groups});
  };
  check_stat(mean, "mean");
  check_stat(rstd, "rstd");
}

// ---------------------------------------------------------------- attention

inline void check_attention_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_rank(q, "q", 4, "[B, heads, N, D]");
  check_float(q, "q");
  TORCH_CHECK(q.size(3) >= 1, "q: expected a head size D >= 1 in [B, heads, N, D], got shape ", shape_str(q.sizes()));
  check_like(k, "k", q, "q", q.sizes());
  check_like(v, "v", q, "q", q.sizes());
}

inline void check_attention_scale(double scale) {
  TORCH_CHECK(std::isfinite(scale), "scale: expected a finite float, got ", scale);
}

inline void check_attention_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  check_attention_qkv(q, k, v);
  check_attention_scale(scale);
}

// q, k and v as in the forward, then the forward's outputs (lse in the
// statistics dtype, [B, heads, N]); scale last.
inline void check_attention_bwd_args(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                     const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, double scale) {
  check_attention_qkv(q, k, v);
  check_like(grad_out, "grad_out", q, "q", q.sizes());
  check_like(out, "out", q, "q", q.sizes());
  check_same_device(lse, "lse", q, "q");
  TORCH_CHECK(lse.scalar_type() == stat_dtype(q), "lse: expected dtype ", dtype_str(stat_dtype(q)),
              " (float64 for float64 q, else float32), got ", dtype_str(lse.scalar_type()));
  check_shape(lse, "lse", q.sizes().slice(0, 3));
  check_attention_scale(scale);
}

// ---------------------------------------------------------------- reverse_step

inline void check_reverse_step_args(const at::Tensor& x_t, const at::Tensor& eps, const OptTensor& noise,
                                    const at::Tensor& coef, std::optional<double> clip_lo,
                                    std::optional<double> clip_hi) {
  TORCH_CHECK(x_t.dim() >= 1, "x_t: expected a tensor with a batch dimension [B, ...], got a 0-d tensor");
  check_float(x_t, "x_t");
  check_like(eps, "eps", x_t, "x_t", x_t.sizes());
  check_optional(noise, "noise", x_t, "x_t", x_t.sizes());
  check_rank(coef, "coef", 2, "[5, B] (a, b, c_x0, c_xt, sigma)");
  check_shape(coef, "coef", {5, x_t.size(0)});
  check_same_device(coef, "coef", x_t, "x_t");
  TORCH_CHECK(coef.scalar_type() == at::kFloat || coef.scalar_type() == at::kDouble,
              "coef: expected dtype torch.float32 or torch.float64, got ", dtype_str(coef.scalar_type()));
  TORCH_CHECK(clip_lo.has_value() == clip_hi.has_value(), "clip_lo, clip_hi: expected both or neither to be given");
  TORCH_CHECK(!clip_lo.has_value() || *clip_lo <= *clip_hi, "clip_lo: expected clip_lo <= clip_hi, got clip_lo=",
              *clip_lo, ", clip_hi=", *clip_hi);
}

// ---------------------------------------------------------------- dropout

inline void check_dropout_args(const at::Tensor& x, double p, const at::Tensor& seed) {
  check_float(x, "x");
  TORCH_CHECK(std::isfinite(p) && p >= 0.0 && p < 1.0, "p: expected a probability in [0, 1), got ", p);
  check_same_device(seed, "seed", x, "x");
  check_dtype(seed, "seed", at::kLong);
  TORCH_CHECK(seed.dim() == 0, "seed: expected a 0-d tensor, got shape ", shape_str(seed.sizes()));
}

}  // namespace mcvd
