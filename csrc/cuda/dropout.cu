// CUDA launcher of mcvd::dropout: argument checks, a contiguous input, the
// output, dtype dispatch, and the launch of dropout.cuh on the current stream.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "checks.h"
#include "dropout.cuh"
#include "op_checks.h"

namespace mcvd {
namespace {

at::Tensor dropout_cuda(const at::Tensor& x_in, double p, const at::Tensor& seed) {
  check_dropout_args(x_in, p, seed);
  check_cuda(x_in, "x");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty_like(x);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dropout_cuda", [&] {
    using T = cuda::cuda_type_t<scalar_t>;
    C10_CUDA_CHECK(cuda::dropout<T>(cuda::as_cuda(x.const_data_ptr<scalar_t>()), cuda::as_cuda(y.data_ptr<scalar_t>()),
                                    x.numel(), seed.const_data_ptr<int64_t>(), philox::dropout_threshold(p),
                                    1.0 / (1.0 - p), stream));
  });
  return y;
}

}  // namespace
}  // namespace mcvd

TORCH_LIBRARY_IMPL(mcvd, CUDA, m) { m.impl("dropout", &mcvd::dropout_cuda); }
