// Small torch-free harness for the CUDA kernel drivers: device buffers that
// round-trip through the kernel's dtype, a seeded RNG, and error reports
// against float64 host references. Each driver exits 0 when every check
// passes, 1 otherwise, so that compute-sanitizer and CTest can run it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace harness {

#define HARNESS_CUDA(expr)                                                                       \
  do {                                                                                           \
    const cudaError_t err_ = (expr);                                                             \
    if (err_ != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(err_)); \
      std::exit(1);                                                                              \
    }                                                                                            \
  } while (0)

template <typename T>
struct Host {
  static T to(double v) { return static_cast<T>(v); }
  static double from(T v) { return static_cast<double>(v); }
  static const char* name();
  static double tol();  // bound of max|got - want| / max|want| for the drivers
};
template <>
inline const char* Host<float>::name() { return "float32"; }
template <>
inline const char* Host<double>::name() { return "float64"; }
template <>
inline double Host<float>::tol() { return 2e-4; }
template <>
inline double Host<double>::tol() { return 1e-9; }
template <>
struct Host<__half> {
  static __half to(double v) { return __float2half_rn(static_cast<float>(v)); }
  static double from(__half v) { return __half2float(v); }
  static const char* name() { return "float16"; }
  static double tol() { return 1e-2; }
};
template <>
struct Host<__nv_bfloat16> {
  static __nv_bfloat16 to(double v) { return __float2bfloat16_rn(static_cast<float>(v)); }
  static double from(__nv_bfloat16 v) { return __bfloat162float(v); }
  static const char* name() { return "bfloat16"; }
  static double tol() { return 4e-2; }
};

// Values rounded to T and back, so the host reference sees the kernel's input.
template <typename T>
std::vector<double> quantize(std::vector<double> v) {
  for (double& x : v) x = Host<T>::from(Host<T>::to(x));
  return v;
}

inline std::vector<double> normal(std::mt19937_64& rng, size_t n, double mean = 0.0, double std = 1.0) {
  std::normal_distribution<double> dist(mean, std);
  std::vector<double> v(n);
  for (double& x : v) x = dist(rng);
  return v;
}

// Device array of T (allocated even when empty, so a pointer always exists).
template <typename T>
struct Buffer {
  T* ptr = nullptr;
  size_t n = 0;
  explicit Buffer(size_t count) : n(count) { HARNESS_CUDA(cudaMalloc(&ptr, std::max<size_t>(count, 1) * sizeof(T))); }
  explicit Buffer(const std::vector<double>& v) : Buffer(v.size()) { upload(v); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { cudaFree(ptr); }
  void upload(const std::vector<double>& v) {
    std::vector<T> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) h[i] = Host<T>::to(v[i]);
    HARNESS_CUDA(cudaMemcpy(ptr, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  // Poison with NaN so that an element the kernel forgets to write fails the check.
  void poison() { HARNESS_CUDA(cudaMemset(ptr, 0xff, std::max<size_t>(n, 1) * sizeof(T))); }
  std::vector<double> download() const {
    std::vector<T> h(n);
    HARNESS_CUDA(cudaMemcpy(h.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
    std::vector<double> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = Host<T>::from(h[i]);
    return v;
  }
};

struct Report {
  int checks = 0, failures = 0;

  // max|got - want| / max(max|want|, floor) <= tol; NaN fails.
  void compare(const std::string& what, const std::vector<double>& got, const std::vector<double>& want, double tol,
               double floor = 1e-6) {
    ++checks;
    double err = 0.0, scale = floor;
    bool finite = got.size() == want.size();
    for (size_t i = 0; finite && i < got.size(); ++i) {
      if (!std::isfinite(got[i])) finite = false;
      err = std::max(err, std::fabs(got[i] - want[i]));
      scale = std::max(scale, std::fabs(want[i]));
    }
    const double rel = err / scale;
    const bool ok = finite && rel <= tol;
    if (!ok) ++failures;
    if (!ok || std::getenv("HARNESS_VERBOSE"))
      std::printf("%s %-72s rel err %.3e (tol %.1e)%s\n", ok ? "ok  " : "FAIL", what.c_str(), rel, tol,
                  finite ? "" : " non-finite or size mismatch");
  }

  void expect(const std::string& what, bool ok) {
    ++checks;
    if (!ok) {
      ++failures;
      std::printf("FAIL %s\n", what.c_str());
    }
  }

  int finish(const char* driver) const {
    std::printf("%s: %d checks, %d failures\n", driver, checks, failures);
    return failures == 0 ? 0 : 1;
  }
};

inline bool quick_mode(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--quick") == 0) return true;
  return false;
}

}  // namespace harness
