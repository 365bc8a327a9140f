// CUDA launchers of mcvd::attention_fwd / attention_bwd: argument checks,
// contiguous inputs, outputs and workspace, dtype dispatch, and the launch of
// the kernels of attention.cuh on the current stream.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "attention.cuh"
#include "checks.h"

namespace mcvd {
namespace {

void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_cuda(q, "q");
  check_rank(q, "q", 4, "[B, heads, N, D]");
  check_float(q, "q");
  check_optional(k, "k", q, "q", q.sizes());
  check_optional(v, "v", q, "q", q.sizes());
  TORCH_CHECK(q.size(3) > 0, "q: expected a head dim D >= 1, got shape ", shape_str(q.sizes()));
  TORCH_CHECK(cuda::attn_sizes_ok(q.size(0) * q.size(1), q.size(2)),
              "q: expected B * heads * ceil(N / 32) below 2^31 (the CUDA grid), got shape ", shape_str(q.sizes()));
}

at::ScalarType stat_dtype(const at::Tensor& q) { return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

std::tuple<at::Tensor, at::Tensor> attention_fwd_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                                      const at::Tensor& v_in, double scale) {
  check_qkv(q_in, k_in, v_in);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = MCVD_CONTIG(q_in), k = MCVD_CONTIG(k_in), v = MCVD_CONTIG(v_in);
  const int64_t bh = q.size(0) * q.size(1), n = q.size(2), d = q.size(3);
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({q.size(0), q.size(1), n}, q.options().dtype(stat_dtype(q)));
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
  check_qkv(q_in, k_in, v_in);
  check_optional(grad_out, "grad_out", q_in, "q", q_in.sizes());
  check_optional(out_in, "out", q_in, "q", q_in.sizes());
  check_same_device(lse_in, "lse", q_in, "q");
  check_shape(lse_in, "lse", q_in.sizes().slice(0, 3));
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = MCVD_CONTIG(q_in), k = MCVD_CONTIG(k_in), v = MCVD_CONTIG(v_in);
  const at::Tensor dout = MCVD_CONTIG(grad_out), out = MCVD_CONTIG(out_in);
  // lse comes from the forward; any float dtype is read as the statistics dtype.
  const at::Tensor lse = MCVD_CONTIG(lse_in.to(stat_dtype(q)));
  const int64_t bh = q.size(0) * q.size(1), n = q.size(2), d = q.size(3);
  at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
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
