// Torch-free CUDA kernel of the reverse-diffusion update (mcvd::reverse_step):
//
//   x0     = (x_t - a * eps) / b                  (clamped to [lo, hi] if clip)
//   x_prev = c_x0 * x0 + c_xt * x_t + sigma * noise
//
// with per-sample coefficients from a [5, B] table (rows a, b, c_x0, c_xt,
// sigma) in the accumulation type. One pass over memory, 16-byte accesses when
// the sample size and every pointer allow them.
#pragma once

#include "common.cuh"

namespace mcvd {
namespace cuda {

// Clamp that keeps NaN (as torch.clamp does): both comparisons fail for NaN.
template <typename A>
__device__ __forceinline__ A clamp_keep_nan(A v, A lo, A hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// grid.x strides over the W-element units of one sample, grid.y over samples.
// x_t, eps, noise, x_prev, x0: [B, inner]; noise may be null (no sigma term).
template <typename T, int W>
__global__ void __launch_bounds__(256, 1) reverse_step_kernel(const T* __restrict__ x_t, const T* __restrict__ eps,
                                                           const T* __restrict__ noise,
                                                           const acc_t<T>* __restrict__ coef, T* __restrict__ x_prev,
                                                           T* __restrict__ x0, int64_t batch, int64_t inner, bool clip,
                                                           acc_t<T> lo, acc_t<T> hi) {
  using A = acc_t<T>;
  const int64_t units = inner / W;
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const A ca = coef[b], cb = coef[batch + b], c_x0 = coef[2 * batch + b], c_xt = coef[3 * batch + b];
    const A sigma = coef[4 * batch + b];
    const int64_t base = b * inner;
    for (int64_t u = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; u < units;
         u += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t i = base + u * W;
      const Vec<T, W> xv = load_vec<T, W>(x_t + i);
      const Vec<T, W> ev = load_vec<T, W>(eps + i);
      Vec<T, W> nv;
      if (noise != nullptr) nv = load_vec<T, W>(noise + i);
      Vec<T, W> pv, zv;
#pragma unroll
      for (int j = 0; j < W; ++j) {
        const A xt = to_acc<A>(xv.v[j]);
        A z = (xt - ca * to_acc<A>(ev.v[j])) / cb;
        if (clip) z = clamp_keep_nan(z, lo, hi);
        A p = c_x0 * z + c_xt * xt;
        if (noise != nullptr) p += sigma * to_acc<A>(nv.v[j]);
        pv.v[j] = from_acc<T>(p);
        zv.v[j] = from_acc<T>(z);
      }
      store_vec<T, W>(x_prev + i, pv);
      store_vec<T, W>(x0 + i, zv);
    }
  }
}

// Launch on `stream`. coef: [5, batch] in acc_t<T>; noise may be null.
template <typename T>
cudaError_t reverse_step(const T* x_t, const T* eps, const T* noise, const acc_t<T>* coef, T* x_prev, T* x0,
                         int64_t batch, int64_t inner, bool clip, double lo, double hi, cudaStream_t stream) {
  if (batch == 0 || inner == 0) return cudaSuccess;
  using A = acc_t<T>;
  constexpr int kThreads = 256, kUnitsPerThread = 4, V = vec16<T>();
  const bool vec = inner % V == 0 && aligned16(x_t) && aligned16(eps) && aligned16(noise) && aligned16(x_prev) &&
                   aligned16(x0);
  const int64_t units = vec ? inner / V : inner;
  const int64_t blocks_x = ceil_div(units, kThreads * kUnitsPerThread);
  const dim3 grid(static_cast<unsigned>(blocks_x < 0x7fffffff ? blocks_x : 0x7fffffff),
                  static_cast<unsigned>(batch < 65535 ? batch : 65535));
  if (vec) {
    reverse_step_kernel<T, V><<<grid, kThreads, 0, stream>>>(x_t, eps, noise, coef, x_prev, x0, batch, inner, clip,
                                                             A(lo), A(hi));
  } else {
    reverse_step_kernel<T, 1><<<grid, kThreads, 0, stream>>>(x_t, eps, noise, coef, x_prev, x0, batch, inner, clip,
                                                             A(lo), A(hi));
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace mcvd
