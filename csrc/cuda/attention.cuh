// Torch-free CUDA kernels of mcvd::attention: flash-style softmax attention
// over [BH, N, D] (batch and heads flattened), forward and backward.
//
//   S = scale * Q K^T,  P = softmax_rows(S),  O = P V,  lse = logsumexp_rows(S)
//   backward: Dsum = rowsum(dO * O), dV = P^T dO, dP = dO V^T,
//             dS = P * (dP - Dsum), dQ = scale * dS K, dK = scale * dS^T Q
//
// The forward streams key tiles with an online softmax and keeps lse; the
// backward recomputes P = exp(S - lse) tile by tile: one kernel per key tile
// accumulates dK and dV over every query tile, one per query tile accumulates
// dQ over every key tile. No N x N matrix is stored and no atomics are used.
//
// Two implementations, one file each:
//  - attention_simt.cuh: any dtype, any D (32 x 32 tiles in shared memory);
//  - attention_mma.cuh: tensor cores (bfloat16 / float16, D in {32, 64, 128},
//    16-byte aligned rows, sm_80+).
// attention_fwd and attention_bwd below take the tensor-core path wherever it
// applies (attn_use_mma) and the SIMT path otherwise.
#pragma once

#include "attention_mma.cuh"
#include "attention_simt.cuh"
#include "common.cuh"

#include <climits>

namespace mcvd {
namespace cuda {

// Grids put query / key tiles (32 rows on the SIMT path, 64 on the tensor-core
// path) times BH on grid.x, which must fit 2^31 - 1.
inline bool attn_sizes_ok(int64_t bh, int64_t n) {
  return n <= INT_MAX && bh * ceil_div(n, kTile) <= INT_MAX;
}

// Forward on `stream`. q, k, v, out: [bh, n, d]; lse: [bh, n] in acc_t<T>.
template <typename T>
cudaError_t attention_fwd(const T* q, const T* k, const T* v, T* out, acc_t<T>* lse, int64_t bh, int64_t n,
                          int64_t d, double scale, cudaStream_t stream) {
  if (bh == 0 || n == 0) return cudaSuccess;
  if (d <= 0 || !attn_sizes_ok(bh, n)) return cudaErrorInvalidValue;
  bool mma = false;
  cudaError_t err = attn_use_mma<T>(d, {q, k, v, out}, &mma);
  if (err != cudaSuccess) return err;
  const int ni = static_cast<int>(n), di = static_cast<int>(d);
  if constexpr (is_half_type<T>()) {
    if (mma) return attention_fwd_mma<T>(q, k, v, out, lse, bh, ni, di, scale, stream);
  }
  return attention_fwd_simt<T>(q, k, v, out, lse, bh, ni, di, scale, stream);
}

// One warp per row: dsum = rowsum(dout * out). dout, out: [rows, d].
template <typename T>
__global__ void __launch_bounds__(128) attn_dsum_kernel(const T* __restrict__ dout, const T* __restrict__ out,
                                                        acc_t<T>* __restrict__ dsum, int64_t rows, int d) {
  using A = acc_t<T>;
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // uniform over the warp
  Sums<A, 1> acc = Sums<A, 1>::zero();
  for (int c = lane; c < d; c += 32) acc.v[0] += to_acc<A>(dout[row * d + c]) * to_acc<A>(out[row * d + c]);
  acc = warp_reduce(acc);
  if (lane == 0) dsum[row] = acc.v[0];
}

// Workspace bytes of attention_bwd (the rowsum(dO * O) vector).
template <typename T>
size_t attention_bwd_workspace(int64_t bh, int64_t n) {
  return sizeof(acc_t<T>) * static_cast<size_t>(bh * n);
}

// Backward on `stream`: dq, dk, dv [bh, n, d] from dout, the inputs, out and
// the forward's lse; workspace of attention_bwd_workspace bytes.
template <typename T>
cudaError_t attention_bwd(const T* dout, const T* q, const T* k, const T* v, const T* out, const acc_t<T>* lse,
                          T* dq, T* dk, T* dv, int64_t bh, int64_t n, int64_t d, double scale, void* workspace,
                          cudaStream_t stream) {
  using A = acc_t<T>;
  if (bh == 0 || n == 0) return cudaSuccess;
  if (d <= 0 || !attn_sizes_ok(bh, n)) return cudaErrorInvalidValue;
  A* dsum = static_cast<A*>(workspace);
  const int64_t rows = bh * n;
  attn_dsum_kernel<T><<<static_cast<unsigned>(ceil_div(rows, 4)), 128, 0, stream>>>(dout, out, dsum, rows,
                                                                                    static_cast<int>(d));
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  bool mma = false;
  if ((err = attn_use_mma<T>(d, {q, k, v, dout, dq, dk, dv}, &mma)) != cudaSuccess) return err;
  const int ni = static_cast<int>(n), di = static_cast<int>(d);
  if constexpr (is_half_type<T>()) {
    if (mma) return attention_bwd_mma<T>(q, k, v, dout, lse, dsum, dq, dk, dv, bh, ni, di, scale, stream);
  }
  return attention_bwd_simt<T>(q, k, v, dout, lse, dsum, dq, dk, dv, bh, ni, di, scale, stream);
}

}  // namespace cuda
}  // namespace mcvd
