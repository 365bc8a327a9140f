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

namespace mcvd {
namespace {

// The checks and messages of the CPU kernels (csrc/cpu/attention.cpp), in the
// same order; q's device is checked after k's and v's name any mismatch.
void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_rank(q, "q", 4, "[B, heads, N, D]");
  check_float(q, "q");
  check_like(k, "k", q, "q", q.sizes());
  check_like(v, "v", q, "q", q.sizes());
  check_cuda(q, "q");
  TORCH_CHECK(cuda::attn_sizes_ok(q.size(0) * q.size(1), q.size(2)),
              "q: expected B * heads * ceil(N / 32) below 2^31 (the CUDA grid), got shape ", shape_str(q.sizes()));
}

void check_scale(double scale) { TORCH_CHECK(std::isfinite(scale), "scale: expected a finite float, got ", scale); }

at::ScalarType stat_dtype(const at::Tensor& q) { return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

std::tuple<at::Tensor, at::Tensor> attention_fwd_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                                      const at::Tensor& v_in, double scale) {
  check_qkv(q_in, k_in, v_in);
  check_scale(scale);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = MCVD_CONTIG(q_in), k = MCVD_CONTIG(k_in), v = MCVD_CONTIG(v_in);
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
  check_qkv(q_in, k_in, v_in);
  check_like(grad_out, "grad_out", q_in, "q", q_in.sizes());
  check_like(out_in, "out", q_in, "q", q_in.sizes());
  check_same_device(lse_in, "lse", q_in, "q");
  TORCH_CHECK(lse_in.scalar_type() == stat_dtype(q_in), "lse: expected dtype ", dtype_str(stat_dtype(q_in)),
              " (float64 for float64 q, else float32), got ", dtype_str(lse_in.scalar_type()));
  check_shape(lse_in, "lse", q_in.sizes().slice(0, 3));
  check_scale(scale);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = MCVD_CONTIG(q_in), k = MCVD_CONTIG(k_in), v = MCVD_CONTIG(v_in);
  const at::Tensor dout = MCVD_CONTIG(grad_out), out = MCVD_CONTIG(out_in), lse = MCVD_CONTIG(lse_in);
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
