// Torch-free helpers shared by the CUDA kernels: accumulator types, dtype
// conversions, 16-byte vectors, warp and row reductions, Welford merging.
// Plain nvcc compiles this header; it never includes torch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>

// torch's 16-bit float types, declared (not included) so that this header
// stays torch-free; the launchers map them to CUDA's types with cuda_type_t.
namespace c10 {
struct Half;
struct BFloat16;
}  // namespace c10

namespace mcvd {
namespace cuda {

constexpr unsigned kFullMask = 0xffffffffu;

// Accumulation type: float for every float type except double.
template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccOf<T>::type;

// The CUDA type of a torch scalar type (bit-identical layouts).
template <typename S>
struct CudaType {
  using type = S;
};
template <>
struct CudaType<c10::Half> {
  using type = __half;
};
template <>
struct CudaType<c10::BFloat16> {
  using type = __nv_bfloat16;
};
template <typename S>
using cuda_type_t = typename CudaType<S>::type;

template <typename S>
cuda_type_t<S>* as_cuda(S* p) {
  return reinterpret_cast<cuda_type_t<S>*>(p);
}
template <typename S>
const cuda_type_t<S>* as_cuda(const S* p) {
  return reinterpret_cast<const cuda_type_t<S>*>(p);
}

// Explicit conversions: torch builds with __CUDA_NO_HALF_CONVERSIONS__ and
// __CUDA_NO_BFLOAT16_CONVERSIONS__, so implicit ones would not compile there.
template <typename A>
__device__ __forceinline__ A to_acc(float v) { return static_cast<A>(v); }
template <typename A>
__device__ __forceinline__ A to_acc(double v) { return static_cast<A>(v); }
template <typename A>
__device__ __forceinline__ A to_acc(__half v) { return static_cast<A>(__half2float(v)); }
template <typename A>
__device__ __forceinline__ A to_acc(__nv_bfloat16 v) { return static_cast<A>(__bfloat162float(v)); }

template <typename T>
struct Cast {
  template <typename A>
  __device__ __forceinline__ static T from(A v) { return static_cast<T>(v); }
};
template <>
struct Cast<__half> {
  template <typename A>
  __device__ __forceinline__ static __half from(A v) { return __float2half_rn(static_cast<float>(v)); }
};
template <>
struct Cast<__nv_bfloat16> {
  template <typename A>
  __device__ __forceinline__ static __nv_bfloat16 from(A v) { return __float2bfloat16_rn(static_cast<float>(v)); }
};
template <typename T, typename A>
__device__ __forceinline__ T from_acc(A v) { return Cast<T>::from(v); }

// exp and log in the accumulation type (fast intrinsics under --use_fast_math).
__device__ __forceinline__ float acc_exp(float v) { return expf(v); }
__device__ __forceinline__ double acc_exp(double v) { return exp(v); }
__device__ __forceinline__ float acc_log(float v) { return logf(v); }
__device__ __forceinline__ double acc_log(double v) { return log(v); }
__device__ __forceinline__ float acc_rsqrt(float v) { return rsqrtf(v); }
__device__ __forceinline__ double acc_rsqrt(double v) { return 1.0 / sqrt(v); }

template <typename A>
__device__ __forceinline__ A sigmoid(A v) { return A(1) / (A(1) + acc_exp(-v)); }

template <typename A>
__device__ __forceinline__ A neg_inf() { return -INFINITY; }

// W consecutive elements read or written as one access; W * sizeof(T) = 16
// gives 128-bit loads (the pointer must then be 16-byte aligned).
template <typename T, int W>
struct alignas(sizeof(T) * W) Vec {
  T v[W];
};
template <typename T>
constexpr int vec16() { return 16 / static_cast<int>(sizeof(T)); }

template <typename T, int W>
__device__ __forceinline__ Vec<T, W> load_vec(const T* p) { return *reinterpret_cast<const Vec<T, W>*>(p); }
// A 16-byte vector is stored with one st.global.v4: nvcc splits a plain
// struct store into 4-byte (or, for 16-bit types, 2 x 2-byte) stores in some
// kernels (seen in the PTX of spatin_apply_kernel). p must point to global
// memory, 16-byte aligned.
template <typename T, int W>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, W>& v) {
  if constexpr (sizeof(Vec<T, W>) == 16) {
    uint32_t w[4];
    memcpy(w, &v, sizeof(w));
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"l"(p), "r"(w[0]), "r"(w[1]), "r"(w[2]), "r"(w[3])
                 : "memory");
  } else {
    *reinterpret_cast<Vec<T, W>*>(p) = v;
  }
}

inline bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int next_pow2(int64_t v) {
  int p = 1;
  while (p < v) p <<= 1;
  return p;
}

// Number of multiprocessors of the current device (grids are sized to fill it).
inline cudaError_t sm_count(int* count) {
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  return cudaDeviceGetAttribute(count, cudaDevAttrMultiProcessorCount, dev);
}

// Kernels that want more than the default 48 KiB of dynamic shared memory
// must opt in first.
template <typename Kernel>
cudaError_t allow_smem(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

// The dynamic shared memory of a launch (its size is the launcher's third
// launch argument), carved up by each kernel that takes some.
extern __shared__ __align__(16) unsigned char dyn_smem[];

// ---- reductions -------------------------------------------------------------

// Welford triple (count, mean, sum of squared deviations), merged with Chan's
// formula so that partial statistics of any sizes combine without the
// cancellation of sum / sum-of-squares.
template <typename A>
struct Welford {
  A n, mean, m2;

  __device__ __forceinline__ static Welford zero() { return {A(0), A(0), A(0)}; }

  __device__ __forceinline__ Welford merge(const Welford& o) const {
    const A total = n + o.n;
    if (total == A(0)) return *this;
    const A delta = o.mean - mean;
    const A w = o.n / total;
    return {total, mean + delta * w, m2 + o.m2 + delta * delta * n * w};
  }

  __device__ __forceinline__ Welford shfl_xor(int offset) const {
    return {__shfl_xor_sync(kFullMask, n, offset), __shfl_xor_sync(kFullMask, mean, offset),
            __shfl_xor_sync(kFullMask, m2, offset)};
  }
};

// K running sums.
template <typename A, int K>
struct Sums {
  A v[K];

  __device__ __forceinline__ static Sums zero() {
    Sums s;
#pragma unroll
    for (int i = 0; i < K; ++i) s.v[i] = A(0);
    return s;
  }

  __device__ __forceinline__ Sums merge(const Sums& o) const {
    Sums s;
#pragma unroll
    for (int i = 0; i < K; ++i) s.v[i] = v[i] + o.v[i];
    return s;
  }

  __device__ __forceinline__ Sums shfl_xor(int offset) const {
    Sums s;
#pragma unroll
    for (int i = 0; i < K; ++i) s.v[i] = __shfl_xor_sync(kFullMask, v[i], offset);
    return s;
  }
};

// Row-parallel block layout: a block of kRowThreads threads holds
// rows_per_block rows of threads_per_row threads each (both powers of two), so
// that short rows do not leave most of a block idle.
constexpr int kRowThreads = 256;

struct RowLayout {
  int threads_per_row;
  int rows_per_block;
};

inline RowLayout row_layout(int64_t units_per_row) {
  const int tpr = next_pow2(units_per_row < 1 ? 1 : (units_per_row > kRowThreads ? kRowThreads : units_per_row));
  return {tpr, kRowThreads / tpr};
}

// Reduce `v` over the threads_per_row threads of each row of the block. Every
// thread of the block must call it (for rows of more than 32 threads it
// synchronises; for rows of a warp or less it does not, so a caller that
// needs a barrier sets its own); the result is valid in the row's first
// thread. `scratch` holds kRowThreads / 32 values.
template <typename V>
__device__ __forceinline__ V row_reduce(V v, int threads_per_row, V* scratch) {
  const int width = threads_per_row < 32 ? threads_per_row : 32;
  // xor offsets below the (aligned, power-of-two) row width stay inside the row.
  for (int offset = width / 2; offset > 0; offset /= 2) v = v.merge(v.shfl_xor(offset));
  if (threads_per_row <= 32) return v;
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) scratch[warp] = v;
  __syncthreads();
  const int warps_per_row = threads_per_row / 32;
  if (threadIdx.x % threads_per_row == 0) {
    for (int w = 1; w < warps_per_row; ++w) v = v.merge(scratch[warp + w]);
  }
  __syncthreads();  // scratch may be reused by the caller's next reduction
  return v;
}

// Reduce over a full warp; the result is valid in every lane.
template <typename V>
__device__ __forceinline__ V warp_reduce(V v) {
  for (int offset = 16; offset > 0; offset /= 2) v = v.merge(v.shfl_xor(offset));
  return v;
}

}  // namespace cuda
}  // namespace mcvd
