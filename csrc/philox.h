// Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers: as easy as
// 1, 2, 3"; the generator of cuRAND and of Triton's tl.rand), and the rule
// by which mcvd::dropout reads it. Torch-free, for the CPU kernel and the
// CUDA kernel alike.
//
// Element i of a tensor (its index in row-major order, whatever its strides)
// reads word i % 4 of the block of counter (i / 4, 0) under the key (the
// seed's low and high 32 bits), and is kept when that word is at least
// dropout_threshold(p). The Triton kernel (mcvd/kernels/dropout.py) reads
// tl.philox the same way, so every backend draws the same mask from a seed.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MCVD_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MCVD_HOST_DEVICE inline
#endif

namespace mcvd {
namespace philox {

constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;  // the round multipliers
constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;  // the key schedule's increments
constexpr int kRounds = 10;

// One round on the counter (s0, s1, s2, s3) under the key (k0, k1). Written
// on scalars so that the CPU kernel's loop over many counters vectorises.
MCVD_HOST_DEVICE void apply_round(uint32_t& s0, uint32_t& s1, uint32_t& s2, uint32_t& s3, uint32_t k0, uint32_t k1) {
  const uint64_t p0 = static_cast<uint64_t>(kMul0) * s0;
  const uint64_t p1 = static_cast<uint64_t>(kMul1) * s2;
  const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ s1 ^ k0;
  const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ s3 ^ k1;
  s1 = static_cast<uint32_t>(p1);
  s3 = static_cast<uint32_t>(p0);
  s0 = n0;
  s2 = n2;
}

// The four words of counter (c0, c1, c2, c3) under key (k0, k1), in place.
MCVD_HOST_DEVICE void block(uint32_t& s0, uint32_t& s1, uint32_t& s2, uint32_t& s3, uint32_t k0, uint32_t k1) {
  for (int r = 0; r < kRounds; ++r) {
    apply_round(s0, s1, s2, s3, k0, k1);
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
}

// Words below the threshold drop their element: P(drop) = threshold / 2^32,
// p rounded to the nearest multiple of 2^-32 (p in [0, 1)).
inline uint32_t dropout_threshold(double p) {
  const double t = std::nearbyint(p * 4294967296.0);
  return t >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<uint32_t>(t);
}

}  // namespace philox
}  // namespace mcvd
