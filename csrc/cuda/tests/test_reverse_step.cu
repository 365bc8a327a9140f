// Driver of the reverse_step kernel for float32, float64, float16 and
// bfloat16: scalar and 16-byte paths, per-sample coefficients, clip on and
// off, noise present and absent, against a float64 host reference.
// Usage: test_reverse_step [--quick]   (exit code 0 = every check passed)
#include "../reverse_step.cuh"
#include "harness.cuh"

namespace {

using harness::Buffer;
using harness::Host;
using harness::Report;

std::mt19937_64& rng() {
  static std::mt19937_64 r(20220527);
  return r;
}

template <typename T>
void run_case(Report& rep, int64_t batch, int64_t inner, bool with_noise, bool clip) {
  using A = mcvd::cuda::acc_t<T>;
  const size_t n = static_cast<size_t>(batch * inner);
  const std::vector<double> x_t = harness::quantize<T>(harness::normal(rng(), n));
  const std::vector<double> eps = harness::quantize<T>(harness::normal(rng(), n));
  const std::vector<double> noise = harness::quantize<T>(harness::normal(rng(), n));
  // Per-sample DDPM-like coefficients: a in (0, 1), b = sqrt(1 - a^2), ...
  std::uniform_real_distribution<double> u(0.05, 0.95);
  std::vector<double> coef(5 * batch);
  for (int64_t b = 0; b < batch; ++b) {
    const double a = u(rng());
    coef[b] = a;
    coef[batch + b] = std::sqrt(1.0 - a * a);
    coef[2 * batch + b] = u(rng());
    coef[3 * batch + b] = u(rng());
    coef[4 * batch + b] = 0.1 * u(rng());
  }
  const std::vector<double> coef_q = harness::quantize<A>(coef);
  const double lo = -1.0, hi = 1.0;

  std::vector<double> want_prev(n), want_x0(n);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t i = 0; i < inner; ++i) {
      const size_t e = static_cast<size_t>(b * inner + i);
      double x0 = (x_t[e] - coef_q[b] * eps[e]) / coef_q[batch + b];
      if (clip) x0 = std::min(std::max(x0, lo), hi);
      want_x0[e] = x0;
      want_prev[e] = coef_q[2 * batch + b] * x0 + coef_q[3 * batch + b] * x_t[e] +
                     (with_noise ? coef_q[4 * batch + b] * noise[e] : 0.0);
    }
  }

  Buffer<T> dx_t(x_t), deps(eps), dnoise(noise), prev(n), x0(n);
  Buffer<A> dcoef(coef_q);
  prev.poison();
  x0.poison();
  HARNESS_CUDA(mcvd::cuda::reverse_step<T>(dx_t.ptr, deps.ptr, with_noise ? dnoise.ptr : nullptr, dcoef.ptr, prev.ptr,
                                           x0.ptr, batch, inner, clip, lo, hi, 0));
  HARNESS_CUDA(cudaDeviceSynchronize());
  char tag[128];
  std::snprintf(tag, sizeof(tag), "%s B=%lld inner=%lld noise=%d clip=%d", Host<T>::name(), (long long)batch,
                (long long)inner, with_noise, clip);
  rep.compare(std::string(tag) + " x_prev", prev.download(), want_prev, Host<T>::tol());
  rep.compare(std::string(tag) + " x0", x0.download(), want_x0, Host<T>::tol());
}

template <typename T>
void run_dtype(Report& rep, bool quick) {
  const int64_t shapes[][2] = {{1, 1}, {3, 37}, {4, 64}, {2, 4096}, {70000, 3}, {5, 3 * 64 * 64}};
  const int count = quick ? 4 : 6;
  for (int i = 0; i < count; ++i)
    for (int variant = 0; variant < 4; ++variant)
      run_case<T>(rep, shapes[i][0], shapes[i][1], variant & 1, variant & 2);
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = harness::quick_mode(argc, argv);
  Report rep;
  run_dtype<float>(rep, quick);
  run_dtype<double>(rep, quick);
  run_dtype<__half>(rep, quick);
  run_dtype<__nv_bfloat16>(rep, quick);
  return rep.finish("test_reverse_step");
}
