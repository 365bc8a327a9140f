// CUDA launchers of mcvd::attention_fwd / attention_bwd: argument checks,
// contiguous inputs, outputs and workspace, dtype dispatch, and the launch of
// the kernels of attention.cuh on the current stream.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "attention.cuh"
#include "checks.h"
#include "op_checks.h"

namespace mcvd {
namespace {

// The checks of this device, after the shared ones (csrc/op_checks.h), so
// that the other inputs' device checks name a mismatch before q's is checked.
void check_cuda_q(const at::Tensor& q) {
  check_cuda(q, "q");
  TORCH_CHECK(cuda::attn_sizes_ok(q.size(0) * q.size(1), q.size(2)),
              "q: expected B * heads * ceil(N / 32) below 2^31 (the CUDA grid), got shape ", shape_str(q.sizes()));
}

std::tuple<at::Tensor, at::Tensor> attention_fwd_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                                      const at::Tensor& v_in, double scale) {
  check_attention_args(q_in, k_in, v_in, scale);
  check_cuda_q(q_in);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const int64_t bh = q.size(0) * q.size(1), n = q.size(2), d = q.size(3);
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({q.size(0), q.size(1), n}, q.options().dtype(stat_dtype(q)));
  if (q.numel() == 0) {
    // No features: every logit is 0, so each row's lse is log(N).
    if (d == 0) lse.fill_(std::log(static_cast<double>(n)));
    return {out, lse};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "attention_fwd_cuda", [&] {
    using T = cuda::cuda_type_t<scalar_t>;
    using A = cuda::acc_t<T>;
    C10_CUDA_CHECK(cuda::attention_fwd<T>(cuda::as_cuda(q.const_data_ptr<scalar_t>()),
                                          cuda::as_cuda(k.const_data_ptr<scalar_t>()),
                                          cuda::as_cuda(v.const_data_ptr<scalar_t>()),
                                          cuda::as_cuda(out.data_ptr<scalar_t>()), lse.data_ptr<A>(), bh, n, d, scale,
                                          stream));
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& q_in,
                                                                  const at::Tensor& k_in, const at::Tensor& v_in,
                                                                  const at::Tensor& out_in, const at::Tensor& lse_in,
                                                                  double scale) {
  check_attention_bwd_args(grad_out, q_in, k_in, v_in, out_in, lse_in, scale);
  check_cuda_q(q_in);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const at::Tensor dout = grad_out.contiguous(), out = out_in.contiguous(), lse = lse_in.contiguous();
  const int64_t bh = q.size(0) * q.size(1), n = q.size(2), d = q.size(3);
  at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  if (q.numel() == 0) return {dq, dk, dv};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "attention_bwd_cuda", [&] {
    using T = cuda::cuda_type_t<scalar_t>;
    using A = cuda::acc_t<T>;
    at::Tensor ws = at::empty({static_cast<int64_t>(cuda::attention_bwd_workspace<T>(bh, n))},
                              q.options().dtype(at::kByte));
    C10_CUDA_CHECK(cuda::attention_bwd<T>(
        cuda::as_cuda(dout.const_data_ptr<scalar_t>()), cuda::as_cuda(q.const_data_ptr<scalar_t>()),
        cuda::as_cuda(k.const_data_ptr<scalar_t>()), cuda::as_cuda(v.const_data_ptr<scalar_t>()),
        cuda::as_cuda(out.const_data_ptr<scalar_t>()), lse.const_data_ptr<A>(), cuda::as_cuda(dq.data_ptr<scalar_t>()),
        cuda::as_cuda(dk.data_ptr<scalar_t>()), cuda::as_cuda(dv.data_ptr<scalar_t>()), bh, n, d, scale,
        ws.data_ptr(), stream));
  });
  return {dq, dk, dv};
}

}  // namespace
}  // namespace mcvd

TORCH_LIBRARY_IMPL(mcvd, CUDA, m) {
  m.impl("attention_fwd", &mcvd::attention_fwd_cuda);
  m.impl("attention_bwd", &mcvd::attention_bwd_cuda);
}
