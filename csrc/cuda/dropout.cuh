// Torch-free CUDA kernel of mcvd::dropout (the mask's rule in csrc/philox.h):
//
//   y[i] = x[i] * scale  if word i % 4 of counter i / 4 >= threshold,  else 0
//
// One thread per counter, i.e. per four elements. The seed is read from device
// memory, so that a CUDA graph replaying the launch reads each step's new seed.
#pragma once

#include "../philox.h"
#include "common.cuh"

namespace mcvd {
namespace cuda {

template <typename T>
__global__ void __launch_bounds__(256) dropout_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n,
                                                      const int64_t* __restrict__ seed, uint32_t threshold,
                                                      acc_t<T> scale) {
  using A = acc_t<T>;
  const uint64_t key = static_cast<uint64_t>(*seed);
  const uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  const int64_t counters = ceil_div(n, 4);
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < counters;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint32_t w[4] = {static_cast<uint32_t>(c), static_cast<uint32_t>(static_cast<uint64_t>(c) >> 32), 0u, 0u};
    philox::block(w[0], w[1], w[2], w[3], k0, k1);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int64_t i = 4 * c + q;
      if (i < n) y[i] = from_acc<T>(w[q] >= threshold ? to_acc<A>(x[i]) * scale : A(0));
    }
  }
}

// Launch on `stream`; seed: one int64 in device memory.
template <typename T>
cudaError_t dropout(const T* x, T* y, int64_t n, const int64_t* seed, uint32_t threshold, double scale,
                    cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const int64_t blocks = ceil_div(ceil_div(n, 4), kThreads);
  const unsigned grid = static_cast<unsigned>(blocks < 65535 * 32 ? blocks : 65535 * 32);
  dropout_kernel<T><<<grid, kThreads, 0, stream>>>(x, y, n, seed, threshold, static_cast<acc_t<T>>(scale));
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace mcvd
