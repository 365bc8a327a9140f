// CUDA launcher of mcvd::reverse_step: argument checks, contiguous inputs,
// outputs, dtype dispatch, and the launch of reverse_step.cuh on the current
// stream. A sigma row without noise is ignored (the Python wrapper rejects a
// non-zero float sigma without noise; per-sample sigma tensors are not read
// back to the host to check).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "checks.h"
#include "op_checks.h"
#include "reverse_step.cuh"

namespace mcvd {
namespace {

std::tuple<at::Tensor, at::Tensor> reverse_step_cuda(const at::Tensor& x_t_in, const at::Tensor& eps_in,
                                                     const OptTensor& noise_in, const at::Tensor& coef_in,
                                                     std::optional<double> clip_lo, std::optional<double> clip_hi) {
  // The shared checks (csrc/op_checks.h), then x_t's device: last, as the
  // other inputs' device checks name a mismatch first.
  check_reverse_step_args(x_t_in, eps_in, noise_in, coef_in, clip_lo, clip_hi);
  check_cuda(x_t_in, "x_t");
  const int64_t batch = x_t_in.size(0);
  const bool clip = clip_lo.has_value();

  const c10::cuda::CUDAGuard guard(x_t_in.device());
  const at::Tensor x_t = x_t_in.contiguous(), eps = eps_in.contiguous();
  const OptTensor noise = noise_in.has_value() ? OptTensor(noise_in->contiguous()) : std::nullopt;
  // Coefficients in the accumulation type: float64 for float64 data, else float32.
  const at::Tensor coef = coef_in.to(x_t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat).contiguous();
  at::Tensor x_prev = at::empty_like(x_t), x0 = at::empty_like(x_t);
  const int64_t inner = batch == 0 ? 0 : x_t.numel() / batch;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_t.scalar_type(), "reverse_step_cuda", [&] {
    using T = cuda::cuda_type_t<scalar_t>;
    using A = cuda::acc_t<T>;
    C10_CUDA_CHECK(cuda::reverse_step<T>(
        cuda::as_cuda(x_t.const_data_ptr<scalar_t>()), cuda::as_cuda(eps.const_data_ptr<scalar_t>()),
        noise ? cuda::as_cuda(noise->const_data_ptr<scalar_t>()) : nullptr, coef.const_data_ptr<A>(),
        cuda::as_cuda(x_prev.data_ptr<scalar_t>()), cuda::as_cuda(x0.data_ptr<scalar_t>()), batch, inner, clip,
        clip ? *clip_lo : 0.0, clip ? *clip_hi : 0.0, stream));
  });
  return {x_prev, x0};
}

}  // namespace
}  // namespace mcvd

TORCH_LIBRARY_IMPL(mcvd, CUDA, m) { m.impl("reverse_step", &mcvd::reverse_step_cuda); }
