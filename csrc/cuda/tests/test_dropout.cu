// Driver of the dropout kernel for float32, float64, float16 and bfloat16:
// Philox4x32-10's published known answers (Random123's kat_vectors) on the
// host and on the device, then the kernel's output against a host reference
// that draws the mask by csrc/philox.h's rule, at sizes with and without a
// partial last counter.
// Usage: test_dropout [--quick]   (exit code 0 = every check passed)
#include "../dropout.cuh"
#include "harness.cuh"

namespace {

using harness::Buffer;
using harness::Host;
using harness::Report;

struct Kat {
  uint32_t ctr[4], key[2], out[4];
};
constexpr Kat kKats[] = {
    {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
    {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff},
     {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
    {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0},
     {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
};
constexpr int kKatCount = sizeof(kKats) / sizeof(kKats[0]);

__global__ void kat_kernel(const Kat* kats, uint32_t* out) {
  const Kat& k = kats[threadIdx.x];
  uint32_t s[4] = {k.ctr[0], k.ctr[1], k.ctr[2], k.ctr[3]};
  mcvd::philox::block(s[0], s[1], s[2], s[3], k.key[0], k.key[1]);
  for (int q = 0; q < 4; ++q) out[4 * threadIdx.x + q] = s[q];
}

void check_kats(Report& rep) {
  for (const Kat& k : kKats) {
    uint32_t s[4] = {k.ctr[0], k.ctr[1], k.ctr[2], k.ctr[3]};
    mcvd::philox::block(s[0], s[1], s[2], s[3], k.key[0], k.key[1]);
    rep.expect("philox4x32-10 known answer (host)",
               s[0] == k.out[0] && s[1] == k.out[1] && s[2] == k.out[2] && s[3] == k.out[3]);
  }
  Kat* dkats = nullptr;
  uint32_t* dout = nullptr;
  HARNESS_CUDA(cudaMalloc(&dkats, sizeof(kKats)));
  HARNESS_CUDA(cudaMalloc(&dout, sizeof(uint32_t) * 4 * kKatCount));
  HARNESS_CUDA(cudaMemcpy(dkats, kKats, sizeof(kKats), cudaMemcpyHostToDevice));
  kat_kernel<<<1, kKatCount>>>(dkats, dout);
  HARNESS_CUDA(cudaGetLastError());
  uint32_t got[4 * kKatCount];
  HARNESS_CUDA(cudaMemcpy(got, dout, sizeof(got), cudaMemcpyDeviceToHost));
  for (int i = 0; i < kKatCount; ++i)
    rep.expect("philox4x32-10 known answer (device)", got[4 * i] == kKats[i].out[0] &&
                                                          got[4 * i + 1] == kKats[i].out[1] &&
                                                          got[4 * i + 2] == kKats[i].out[2] &&
                                                          got[4 * i + 3] == kKats[i].out[3]);
  HARNESS_CUDA(cudaFree(dkats));
  HARNESS_CUDA(cudaFree(dout));
}

std::mt19937_64& rng() {
  static std::mt19937_64 r(20220527);
  return r;
}

template <typename T>
void run_case(Report& rep, int64_t n, double p, int64_t seed) {
  const std::vector<double> x = harness::quantize<T>(harness::normal(rng(), static_cast<size_t>(n)));
  const uint64_t key = static_cast<uint64_t>(seed);
  const uint32_t threshold = mcvd::philox::dropout_threshold(p);
  const double scale = static_cast<double>(static_cast<mcvd::cuda::acc_t<T>>(1.0 / (1.0 - p)));
  std::vector<double> want(static_cast<size_t>(n));
  int64_t kept = 0;
  for (int64_t c = 0; 4 * c < n; ++c) {
    uint32_t w[4] = {static_cast<uint32_t>(c), static_cast<uint32_t>(static_cast<uint64_t>(c) >> 32), 0, 0};
    mcvd::philox::block(w[0], w[1], w[2], w[3], static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32));
    for (int q = 0; q < 4 && 4 * c + q < n; ++q) {
      const bool keep = w[q] >= threshold;
      kept += keep;
      want[static_cast<size_t>(4 * c + q)] = keep ? x[static_cast<size_t>(4 * c + q)] * scale : 0.0;
    }
  }
  Buffer<T> dx(x), y(static_cast<size_t>(n));
  Buffer<int64_t> dseed(1);
  HARNESS_CUDA(cudaMemcpy(dseed.ptr, &seed, sizeof(int64_t), cudaMemcpyHostToDevice));
  y.poison();
  HARNESS_CUDA(mcvd::cuda::dropout<T>(dx.ptr, y.ptr, n, dseed.ptr, threshold, 1.0 / (1.0 - p), 0));
  HARNESS_CUDA(cudaDeviceSynchronize());
  const std::vector<double> got = y.download();
  char tag[128];
  std::snprintf(tag, sizeof(tag), "%s n=%lld p=%g", Host<T>::name(), (long long)n, p);
  rep.compare(tag, got, want, Host<T>::tol());
  bool same_mask = true;
  for (size_t i = 0; i < got.size(); ++i) same_mask = same_mask && ((got[i] == 0.0) == (want[i] == 0.0) || x[i] == 0.0);
  rep.expect(std::string(tag) + " mask", same_mask);
  if (n >= 100000) {  // the kept fraction within 6 standard deviations of 1 - p
    const double sd = std::sqrt(p * (1 - p) / static_cast<double>(n));
    rep.expect(std::string(tag) + " kept fraction", std::fabs(kept / static_cast<double>(n) - (1 - p)) < 6 * sd);
  }
}

template <typename T>
void run_dtype(Report& rep, bool quick) {
  const int64_t sizes[] = {1, 3, 4, 1025, 4 * 65536 + 2, 8 * 128 * 64 * 64};
  const int count = quick ? 5 : 6;
  for (int i = 0; i < count; ++i)
    for (double p : {0.0, 0.1, 0.5}) run_case<T>(rep, sizes[i], p, 0x1234567890abcdefLL);
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = harness::quick_mode(argc, argv);
  Report rep;
  check_kats(rep);
  run_dtype<float>(rep, quick);
  run_dtype<double>(rep, quick);
  run_dtype<__half>(rep, quick);
  run_dtype<__nv_bfloat16>(rep, quick);
  return rep.finish("test_dropout");
}
