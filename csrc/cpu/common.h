// What the CPU kernels (csrc/cpu/<op>.cpp) share. Their op wrappers take
// every tensor input through .contiguous(): the kernels read raw pointers, so
// a strided view is copied rather than read wrongly.
//
// Each kernel file includes only the ATen headers it uses, and defines
// AT_PER_OPERATOR_HEADERS and TORCH_ASSERT_ONLY_METHOD_OPERATORS first, which
// together make ATen/ATen.h an #error there (the second alone does nothing
// outside PyTorch's own build). ATen/ATen.h's declarations of every operator
// took each file 12.6 s to parse with torch/library.h, against 7.3 s for the
// headers used (gcc 12), and the build is most of a fresh machine's set-up
// (benchmarks/bench_build.py).
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cstdint>

namespace mcvd {

// ATen's SIMD vector of T: AVX2 or AVX-512 as setup.py's CPU_CAPABILITY
// flags select, a plain array without them.
template <typename T>
using Vec = at::vec::Vectorized<T>;

// Elements per block of the elementwise passes: small enough that a block of
// every stream stays in L1 (float16 / bfloat16 blocks are widened into float
// buffers of this size on the stack), and a multiple of every vector width,
// so that only a row's last block has a tail.
constexpr int64_t kBlock = 1024;

}  // namespace mcvd
