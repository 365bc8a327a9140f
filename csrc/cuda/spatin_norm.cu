// CUDA launchers of mcvd::spatin_norm_fwd / spatin_norm_bwd: argument checks,
// contiguous inputs, outputs and workspace, dtype dispatch, and the launch of
// the kernels of spatin_norm.cuh on the current stream.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <tuple>

#include "checks.h"
#include "op_checks.h"
#include "spatin_norm.cuh"

namespace mcvd {
namespace {

// The optional inputs (weight, bias, gamma, beta, scale, shift), contiguous.
std::array<OptTensor, 6> contig_optionals(std::array<OptTensor, 6> opt) {
  for (auto& t : opt)
    if (t) t = t->contiguous();
  return opt;
}

template <typename S>
cuda::SpatinInputs<cuda::cuda_type_t<S>> inputs_of(const at::Tensor& x, int64_t groups,
                                                   const std::array<OptTensor, 6>& opt, bool silu) {
  using T = cuda::cuda_type_t<S>;
  auto ptr = [](const OptTensor& t) -> const T* { return t ? cuda::as_cuda(t->const_data_ptr<S>()) : nullptr; };
  return {cuda::as_cuda(x.const_data_ptr<S>()),
          ptr(opt[0]),
          ptr(opt[1]),
          ptr(opt[2]),
          ptr(opt[3]),
          ptr(opt[4]),
          ptr(opt[5]),
          x.size(0),
          x.size(1),
          x.size(2) * x.size(3),
          groups,
          silu};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> spatin_norm_fwd_cuda(
    const at::Tensor& x_in, int64_t num_groups, const OptTensor& weight, const OptTensor& bias, const OptTensor& gamma,
    const OptTensor& beta, const OptTensor& scale, const OptTensor& shift, double eps, bool silu) {
  // The shared checks (csrc/op_checks.h), then x's device: last, as the
  // optional inputs' device checks name a mismatch first.
  check_spatin_norm_args(x_in, num_groups, weight, bias, gamma, beta, scale, shift, eps);
  check_cuda(x_in, "x");
  const auto opt = contig_optionals({weight, bias, gamma, beta, scale, shift});
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = at::empty({x.size(0), num_groups}, x.options().dtype(stat_dtype(x)));
  at::Tensor rstd = at::empty_like(mean);
  // Groups of no elements: mean 0 and variance 0, as the CPU op computes them (rstd = 1 / sqrt(eps)).
  if (x.numel() == 0) return {y, mean.zero_(), rstd.fill_(1.0 / std::sqrt(eps))};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spatin_norm_fwd_cuda", [&] {
    using T = cuda::cuda_type_t<scalar_t>;
    using A = cuda::acc_t<T>;
    const auto in = inputs_of<scalar_t>(x, num_groups, opt, silu);
    size_t bytes = 0;
    C10_CUDA_CHECK(cuda::spatin_norm_fwd_workspace<T>(in.batch, in.channels, in.hw, in.groups, &bytes));
    at::Tensor ws = at::empty({static_cast<int64_t>(bytes)}, x.options().dtype(at::kByte));
    C10_CUDA_CHECK(cuda::spatin_norm_fwd<T>(in, cuda::as_cuda(y.data_ptr<scalar_t>()), mean.data_ptr<A>(),
                                            rstd.data_ptr<A>(), eps, ws.data_ptr(), stream));
  });
  // The layout every backend gives y (op_checks.h); these kernels compute it contiguous.
  return {y.contiguous(spatin_norm_output_format(x_in)), mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> spatin_norm_bwd_cuda(
    const at::Tensor& grad_y, const at::Tensor& x_in, const at::Tensor& mean_in, const at::Tensor& rstd_in,
    int64_t num_groups, const OptTensor& weight, const OptTensor& bias, const OptTensor& gamma, const OptTensor& beta,
    const OptTensor& scale, const OptTensor& shift, bool silu) {
  // As in the forward: the shared checks, then x's device.
  check_spatin_norm_bwd_args(grad_y, x_in, mean_in, rstd_in, num_groups, weight, bias, gamma, beta, scale, shift);
  check_cuda(x_in, "x");
  const auto opt = contig_optionals({weight, bias, gamma, beta, scale, shift});
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor mean = mean_in.contiguous(), rstd = rstd_in.contiguous();
  const at::Tensor x = x_in.contiguous(), dy = grad_y.contiguous();

  // An absent input's gradient is an empty [0] tensor.
  std::array<at::Tensor, 6> grads;
  for (size_t i = 0; i < grads.size(); ++i)
    grads[i] = opt[i] ? at::empty_like(*opt[i]) : at::empty({0}, x.options());
  at::Tensor dx = at::empty_like(x);
  if (x.numel() != 0) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spatin_norm_bwd_cuda", [&] {
      using T = cuda::cuda_type_t<scalar_t>;
      using A = cuda::acc_t<T>;
      const auto in = inputs_of<scalar_t>(x, num_groups, opt, silu);
      auto out_ptr = [&](size_t i) -> T* { return opt[i] ? cuda::as_cuda(grads[i].data_ptr<scalar_t>()) : nullptr; };
      const cuda::SpatinGrads<T> out = {cuda::as_cuda(dx.data_ptr<scalar_t>()), out_ptr(0), out_ptr(1), out_ptr(2),
                                        out_ptr(3), out_ptr(4), out_ptr(5)};
      size_t bytes = 0;
      C10_CUDA_CHECK(cuda::spatin_norm_bwd_workspace<T>(in.batch, in.channels, in.hw, in.groups, &bytes));
      at::Tensor ws = at::empty({static_cast<int64_t>(bytes)}, x.options().dtype(at::kByte));
      C10_CUDA_CHECK(cuda::spatin_norm_bwd<T>(in, cuda::as_cuda(dy.const_data_ptr<scalar_t>()),
                                              mean.const_data_ptr<A>(), rstd.const_data_ptr<A>(), out,
                                              ws.data_ptr(), stream));
    });
  } else {
    // Sums over no elements.
    for (size_t i = 0; i < grads.size(); ++i)
      if (opt[i]) grads[i].zero_();
  }
  // The layout every backend gives the gradients of x, gamma and beta (op_checks.h); computed contiguous here.
  const at::MemoryFormat format = spatin_norm_output_format(x_in);
  for (size_t i : {2, 3})  // gamma, beta: [B, C, H, W] when given
    if (opt[i]) grads[i] = grads[i].contiguous(format);
  return {dx.contiguous(format), grads[0], grads[1], grads[2], grads[3], grads[4], grads[5]};
}

}  // namespace
}  // namespace mcvd

TORCH_LIBRARY_IMPL(mcvd, CUDA, m) {
  m.impl("spatin_norm_fwd", &mcvd::spatin_norm_fwd_cuda);
  m.impl("spatin_norm_bwd", &mcvd::spatin_norm_bwd_cuda);
}
