// Tensor-core implementation of the attention kernels (entry points and the
// math in attention.cuh): bfloat16 / float16, D in {32, 64, 128}, sm_80+.
// Warp-level mma.sync m16n8k16 with float accumulation; each warp owns 16
// rows, and the score fragment is reused in registers as the A operand of
// P V (the FlashAttention-2 layout).
#pragma once

#include "common.cuh"

#include <type_traits>

namespace mcvd {
namespace cuda {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// mma.sync m16n8k16 fragments (lane = 4 g + t):
//   A 16x16: a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..)
//   B 16x8:  b0 (k 2t..2t+1, n g), b1 (k 2t+8.., n g)
//   C 16x8:  c0, c1 (g, 2t..2t+1), c2, c3 (g+8, 2t..2t+1)
// Shared tiles are [rows][D + 8]: the 16-byte pad puts the 8 row addresses of
// every ldmatrix in distinct banks.

constexpr int kMmaThreads = 128;  // 4 warps x 16 rows
constexpr int kMmaRows = 64;

template <typename T>
constexpr bool is_half_type() {
  return std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value;
}

template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  uint32_t r;
  if constexpr (std::is_same<T, __half>::value) {
    const __half2 h = __floats2half2_rn(lo, hi);
    r = *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    r = *reinterpret_cast<const uint32_t*>(&h);
  }
  return r;
}

template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same<T, __half>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#else
  __trap();  // the launchers never pick this path below sm_80
#endif
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// A fragment of rows [r0, r0 + 16) x columns [c0, c0 + 16) of a shared
// [.][LD] tile stored row-major (rows = the product's M dimension).
template <int LD, typename T>
__device__ __forceinline__ void frag_a(uint32_t (&a)[4], const T* tile, int r0, int c0, int lane) {
  ldmatrix_x4(a, tile + (r0 + lane % 16) * LD + c0 + (lane / 16) * 8);
}

// B fragments of two n-blocks (n0..n0+7 -> b[0], b[1]; n0+8..n0+15 -> b[2],
// b[3]) for k in [k0, k0 + 16), from a tile stored [n][k] (B = tile^T).
template <int LD, typename T>
__device__ __forceinline__ void frag_b_nk(uint32_t (&b)[4], const T* tile, int n0, int k0, int lane) {
  ldmatrix_x4(b, tile + (n0 + lane % 8 + 8 * (lane / 16)) * LD + k0 + ((lane / 8) % 2) * 8);
}

// The same two n-blocks from a tile stored [k][n] (B = tile).
template <int LD, typename T>
__device__ __forceinline__ void frag_b_kn(uint32_t (&b)[4], const T* tile, int k0, int n0, int lane) {
  ldmatrix_x4_trans(b, tile + (k0 + lane % 16) * LD + n0 + (lane / 16) * 8);
}

// Accumulator fragments of two adjacent n-blocks (16 columns) as the A
// fragment of the next product, whose k runs over those 16 columns.
template <typename T>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = pack2<T>(c0[0], c0[1]);
  a[1] = pack2<T>(c0[2], c0[3]);
  a[2] = pack2<T>(c1[0], c1[1]);
  a[3] = pack2<T>(c1[2], c1[3]);
}

// Asynchronous 16-byte copies global -> shared (sm_80+), which leave the
// registers free and overlap the copy of the next tile with the math on this
// one. A copy with valid = false writes 16 zero bytes and reads nothing (its
// source address is not dereferenced, but stays inside the matrix anyway).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(src), "r"(valid ? 16 : 0)
               : "memory");
#else
  __trap();  // the launchers never pick this path below sm_80
#endif
}

// The same for one 4-byte word (through L1: .cg takes 16-byte copies only).
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(addr), "l"(src), "r"(valid ? 4 : 0)
               : "memory");
#else
  __trap();
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Wait until at most N committed groups of this thread are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// Rows [r0, r0 + R) of a row-major [n, D] matrix into shared [R][D + 8], zero
// rows past n, with 16-byte cp.async copies (D is a multiple of 8, the source
// aligned): issued, not waited for.
template <int R, int D, typename T>
__device__ __forceinline__ void mma_load_async(T* dst, const T* src, int n, int r0) {
  constexpr int kPerRow = D / 8;
  for (int idx = threadIdx.x; idx < R * kPerRow; idx += blockDim.x) {
    const int r = idx / kPerRow, c = (idx % kPerRow) * 8;
    const bool valid = r0 + r < n;
    cp_async16(dst + r * (D + 8) + c, src + (valid ? static_cast<int64_t>(r0 + r) * D + c : 0), valid);
  }
}

// K and V rows [r0, r0 + R) into a buffer [2][R][D + 8] (K, then V).
template <int R, int D, typename T>
__device__ __forceinline__ void kv_load_async(T* buf, const T* k, const T* v, int n, int r0) {
  mma_load_async<R, D>(buf, k, n, r0);
  mma_load_async<R, D>(buf + R * (D + 8), v, n, r0);
}

// One step of the double-buffered pipeline of the tensor-core kernels: when
// there is a next tile, issue its copies (issue_next, into the buffer the
// previous iteration finished reading before its closing barrier) and wait
// for all but that group; on the last tile wait for everything. Then a
// barrier makes every thread's copies of the current tile visible.
template <typename F>
__device__ __forceinline__ void pipeline_step(bool has_next, F issue_next) {
  if (has_next) {
    issue_next();
    cp_async_commit();
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  __syncthreads();
}

// grid.x: query tiles of 64 x BH. lse: [BH, n] float, natural log. K and V
// tiles are double-buffered: the copy of tile j + 1 runs during the products
// of tile j (the FlashAttention-2 pipeline).
template <typename T, int D, int BN>
__global__ void __launch_bounds__(kMmaThreads, 1)
    attn_fwd_mma_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                        T* __restrict__ out, float* __restrict__ lse, int n, int tiles, float scale_log2) {
  constexpr int LD = D + 8;
  T* qs = reinterpret_cast<T*>(dyn_smem);  // [64][LD]
  T* kv = qs + kMmaRows * LD;              // buffer b: K at kv + 2 b BN LD, V after it, each [BN][LD]
  const int q0 = (blockIdx.x % tiles) * kMmaRows;
  const int64_t bh = blockIdx.x / tiles, base = bh * n * D;
  q += base, k += base, v += base, out += base;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;

  // Q and the first K, V tile in one group.
  mma_load_async<kMmaRows, D>(qs, q, n, q0);
  kv_load_async<BN, D>(kv, k, v, n, 0);
  cp_async_commit();
  uint32_t qf[D / 16][4];

  float o[D / 8][4] = {};
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;  // rows g and g + 8, log2 units
  for (int k0 = 0, buf = 0; k0 < n; k0 += BN, buf ^= 1) {
    pipeline_step(k0 + BN < n, [&] { kv_load_async<BN, D>(kv + (buf ^ 1) * 2 * BN * LD, k, v, n, k0 + BN); });
    const T* ks = kv + buf * 2 * BN * LD;
    const T* vs = ks + BN * LD;
    if (k0 == 0) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) frag_a<LD>(qf[kk], qs, warp * 16, kk * 16, lane);
    }
    float s[BN / 8][4] = {};
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int nb = 0; nb < BN / 8; nb += 2) {
        uint32_t b[4];
        frag_b_nk<LD>(b, ks, nb * 8, kk * 16, lane);
        mma16816<T>(s[nb], qf[kk], b[0], b[1]);
        mma16816<T>(s[nb + 1], qf[kk], b[2], b[3]);
      }
    }
    float mx0 = m0, mx1 = m1;
#pragma unroll
    for (int nb = 0; nb < BN / 8; ++nb) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const bool ok = k0 + nb * 8 + 2 * t + e < n;
        s[nb][e] = ok ? s[nb][e] * scale_log2 : -INFINITY;
        s[nb][2 + e] = ok ? s[nb][2 + e] * scale_log2 : -INFINITY;
        mx0 = fmaxf(mx0, s[nb][e]);
        mx1 = fmaxf(mx1, s[nb][2 + e]);
      }
    }
    // The 4 lanes of a quad share rows g and g + 8.
    mx0 = fmaxf(mx0, __shfl_xor_sync(kFullMask, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(kFullMask, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(kFullMask, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(kFullMask, mx1, 2));
    const float alpha0 = exp2f(m0 - mx0), alpha1 = exp2f(m1 - mx1);
    m0 = mx0, m1 = mx1;
    // l stays a per-lane partial sum until the end: alpha is uniform over the quad.
    l0 *= alpha0, l1 *= alpha1;
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn) {
      o[dn][0] *= alpha0, o[dn][1] *= alpha0, o[dn][2] *= alpha1, o[dn][3] *= alpha1;
    }
#pragma unroll
    for (int nb = 0; nb < BN / 8; ++nb) {
      s[nb][0] = exp2f(s[nb][0] - m0), s[nb][1] = exp2f(s[nb][1] - m0);
      s[nb][2] = exp2f(s[nb][2] - m1), s[nb][3] = exp2f(s[nb][3] - m1);
      l0 += s[nb][0] + s[nb][1], l1 += s[nb][2] + s[nb][3];
    }
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[4];
      acc_to_a<T>(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int dn = 0; dn < D / 8; dn += 2) {
        uint32_t b[4];
        frag_b_kn<LD>(b, vs, kk * 16, dn * 8, lane);
        mma16816<T>(o[dn], a, b[0], b[1]);
        mma16816<T>(o[dn + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();  // this buffer is refilled two tiles on
  }
  l0 += __shfl_xor_sync(kFullMask, l0, 1);
  l0 += __shfl_xor_sync(kFullMask, l0, 2);
  l1 += __shfl_xor_sync(kFullMask, l1, 1);
  l1 += __shfl_xor_sync(kFullMask, l1, 2);
  const int row0 = q0 + warp * 16 + g, row1 = row0 + 8;
  const float inv0 = 1.f / l0, inv1 = 1.f / l1;
#pragma unroll
  for (int dn = 0; dn < D / 8; ++dn) {
    const int col = dn * 8 + 2 * t;
    if (row0 < n)
      *reinterpret_cast<uint32_t*>(out + static_cast<int64_t>(row0) * D + col) =
          pack2<T>(o[dn][0] * inv0, o[dn][1] * inv0);
    if (row1 < n)
      *reinterpret_cast<uint32_t*>(out + static_cast<int64_t>(row1) * D + col) =
          pack2<T>(o[dn][2] * inv1, o[dn][3] * inv1);
  }
  if (t == 0) {
    if (row0 < n) lse[bh * n + row0] = (m0 + log2f(l0)) * kLn2;
    if (row1 < n) lse[bh * n + row1] = (m1 + log2f(l1)) * kLn2;
  }
}

// dK, dV of 64 keys (16 per warp; the warp's fragment rows are keys, columns
// queries), streaming query tiles of BQ, double-buffered as in the forward.
template <typename T, int D, int BQ>
__global__ void __launch_bounds__(kMmaThreads, 1)
    attn_bwd_dkdv_mma_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                             const T* __restrict__ dout, const float* __restrict__ lse,
                             const float* __restrict__ dsum, T* __restrict__ dk, T* __restrict__ dv, int n, int tiles,
                             float scale, float scale_log2) {
  constexpr int LD = D + 8;
  // Buffer b of the streamed query tiles: Q [BQ][LD], dO [BQ][LD], then lse
  // and Dsum [BQ] floats; kBuf elements of T apart.
  constexpr int kBuf = 2 * BQ * LD + 2 * BQ * static_cast<int>(sizeof(float) / sizeof(T));
  T* ks = reinterpret_cast<T*>(dyn_smem);  // [64][LD]
  T* vs = ks + kMmaRows * LD;              // [64][LD]
  T* bufs = vs + kMmaRows * LD;
  const int k0 = (blockIdx.x % tiles) * kMmaRows;
  const int64_t bh = blockIdx.x / tiles, base = bh * n * D;
  q += base, k += base, v += base, dout += base, dk += base, dv += base;
  lse += bh * n, dsum += bh * n;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const bool key0_ok = k0 + warp * 16 + g < n, key1_ok = k0 + warp * 16 + g + 8 < n;

  // Query tile q0 into buffer b: Q, dO, lse, Dsum (zeros past n).
  auto load_tile = [&](T* buf, int q0) {
    mma_load_async<BQ, D>(buf, q, n, q0);
    mma_load_async<BQ, D>(buf + BQ * LD, dout, n, q0);
    float* stats = reinterpret_cast<float*>(buf + 2 * BQ * LD);
    for (int i = threadIdx.x; i < BQ; i += blockDim.x) {
      const bool valid = q0 + i < n;
      cp_async4(stats + i, lse + (valid ? q0 + i : 0), valid);
      cp_async4(stats + BQ + i, dsum + (valid ? q0 + i : 0), valid);
    }
  };
  // K, V and the first query tile in one group.
  mma_load_async<kMmaRows, D>(ks, k, n, k0);
  mma_load_async<kMmaRows, D>(vs, v, n, k0);
  load_tile(bufs, 0);
  cp_async_commit();
  float dk_acc[D / 8][4] = {}, dv_acc[D / 8][4] = {};
  for (int q0 = 0, buf = 0; q0 < n; q0 += BQ, buf ^= 1) {
    pipeline_step(q0 + BQ < n, [&] { load_tile(bufs + (buf ^ 1) * kBuf, q0 + BQ); });
    const T* qs = bufs + buf * kBuf;
    const T* os = qs + BQ * LD;  // dO
    const float* lse_s = reinterpret_cast<const float*>(os + BQ * LD);  // natural log
    const float* dsum_s = lse_s + BQ;
    float st[BQ / 8][4] = {}, dpt[BQ / 8][4] = {};  // S^T, dP^T
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t ka[4], va[4];
      frag_a<LD>(ka, ks, warp * 16, kk * 16, lane);
      frag_a<LD>(va, vs, warp * 16, kk * 16, lane);
#pragma unroll
      for (int nb = 0; nb < BQ / 8; nb += 2) {
        uint32_t b[4];
        frag_b_nk<LD>(b, qs, nb * 8, kk * 16, lane);
        mma16816<T>(st[nb], ka, b[0], b[1]);
        mma16816<T>(st[nb + 1], ka, b[2], b[3]);
        frag_b_nk<LD>(b, os, nb * 8, kk * 16, lane);
        mma16816<T>(dpt[nb], va, b[0], b[1]);
        mma16816<T>(dpt[nb + 1], va, b[2], b[3]);
      }
    }
    // P^T into st, dS^T into dpt.
#pragma unroll
    for (int nb = 0; nb < BQ / 8; ++nb) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int qq = nb * 8 + 2 * t + e;
        const bool q_ok = q0 + qq < n;
        const float lse2 = lse_s[qq] * kLog2e;
        const float p0 = q_ok && key0_ok ? exp2f(st[nb][e] * scale_log2 - lse2) : 0.f;
        const float p1 = q_ok && key1_ok ? exp2f(st[nb][2 + e] * scale_log2 - lse2) : 0.f;
        dpt[nb][e] = p0 * (dpt[nb][e] - dsum_s[qq]);
        dpt[nb][2 + e] = p1 * (dpt[nb][2 + e] - dsum_s[qq]);
        st[nb][e] = p0;
        st[nb][2 + e] = p1;
      }
    }
#pragma unroll
    for (int kk = 0; kk < BQ / 16; ++kk) {
      uint32_t pa[4], sa[4];
      acc_to_a<T>(pa, st[2 * kk], st[2 * kk + 1]);
      acc_to_a<T>(sa, dpt[2 * kk], dpt[2 * kk + 1]);
#pragma unroll
      for (int dn = 0; dn < D / 8; dn += 2) {
        uint32_t b[4];
        frag_b_kn<LD>(b, os, kk * 16, dn * 8, lane);
        mma16816<T>(dv_acc[dn], pa, b[0], b[1]);
        mma16816<T>(dv_acc[dn + 1], pa, b[2], b[3]);
        frag_b_kn<LD>(b, qs, kk * 16, dn * 8, lane);
        mma16816<T>(dk_acc[dn], sa, b[0], b[1]);
        mma16816<T>(dk_acc[dn + 1], sa, b[2], b[3]);
      }
    }
    __syncthreads();  // this buffer is refilled two tiles on
  }
  const int row0 = k0 + warp * 16 + g, row1 = row0 + 8;
#pragma unroll
  for (int dn = 0; dn < D / 8; ++dn) {
    const int col = dn * 8 + 2 * t;
    if (key0_ok) {
      *reinterpret_cast<uint32_t*>(dk + static_cast<int64_t>(row0) * D + col) =
          pack2<T>(dk_acc[dn][0] * scale, dk_acc[dn][1] * scale);
      *reinterpret_cast<uint32_t*>(dv + static_cast<int64_t>(row0) * D + col) = pack2<T>(dv_acc[dn][0], dv_acc[dn][1]);
    }
    if (key1_ok) {
      *reinterpret_cast<uint32_t*>(dk + static_cast<int64_t>(row1) * D + col) =
          pack2<T>(dk_acc[dn][2] * scale, dk_acc[dn][3] * scale);
      *reinterpret_cast<uint32_t*>(dv + static_cast<int64_t>(row1) * D + col) = pack2<T>(dv_acc[dn][2], dv_acc[dn][3]);
    }
  }
}

// dQ of 64 queries (16 per warp), streaming key tiles of BK, double-buffered
// as in the forward.
template <typename T, int D, int BK>
__global__ void __launch_bounds__(kMmaThreads, 1)
    attn_bwd_dq_mma_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                           const T* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ dsum,
                           T* __restrict__ dq, int n, int tiles, float scale, float scale_log2) {
  constexpr int LD = D + 8;
  T* qs = reinterpret_cast<T*>(dyn_smem);  // [64][LD]
  T* os = qs + kMmaRows * LD;              // [64][LD] dO
  T* kv = os + kMmaRows * LD;              // buffer b: K at kv + 2 b BK LD, V after it, each [BK][LD]
  const int q0 = (blockIdx.x % tiles) * kMmaRows;
  const int64_t bh = blockIdx.x / tiles, base = bh * n * D;
  q += base, k += base, v += base, dout += base, dq += base;
  lse += bh * n, dsum += bh * n;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int row0 = q0 + warp * 16 + g, row1 = row0 + 8;
  const bool row0_ok = row0 < n, row1_ok = row1 < n;
  const float lse0 = row0_ok ? lse[row0] * kLog2e : 0.f, lse1 = row1_ok ? lse[row1] * kLog2e : 0.f;
  const float dsum0 = row0_ok ? dsum[row0] : 0.f, dsum1 = row1_ok ? dsum[row1] : 0.f;

  // Q, dO and the first K, V tile in one group.
  mma_load_async<kMmaRows, D>(qs, q, n, q0);
  mma_load_async<kMmaRows, D>(os, dout, n, q0);
  kv_load_async<BK, D>(kv, k, v, n, 0);
  cp_async_commit();
  float dq_acc[D / 8][4] = {};
  for (int k0 = 0, buf = 0; k0 < n; k0 += BK, buf ^= 1) {
    pipeline_step(k0 + BK < n, [&] { kv_load_async<BK, D>(kv + (buf ^ 1) * 2 * BK * LD, k, v, n, k0 + BK); });
    const T* ks = kv + buf * 2 * BK * LD;
    const T* vs = ks + BK * LD;
    float s[BK / 8][4] = {}, dp[BK / 8][4] = {};
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t qa[4], oa[4];
      frag_a<LD>(qa, qs, warp * 16, kk * 16, lane);
      frag_a<LD>(oa, os, warp * 16, kk * 16, lane);
#pragma unroll
      for (int nb = 0; nb < BK / 8; nb += 2) {
        uint32_t b[4];
        frag_b_nk<LD>(b, ks, nb * 8, kk * 16, lane);
        mma16816<T>(s[nb], qa, b[0], b[1]);
        mma16816<T>(s[nb + 1], qa, b[2], b[3]);
        frag_b_nk<LD>(b, vs, nb * 8, kk * 16, lane);
        mma16816<T>(dp[nb], oa, b[0], b[1]);
        mma16816<T>(dp[nb + 1], oa, b[2], b[3]);
      }
    }
    // dS into s.
#pragma unroll
    for (int nb = 0; nb < BK / 8; ++nb) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const bool key_ok = k0 + nb * 8 + 2 * t + e < n;
        const float p0 = key_ok && row0_ok ? exp2f(s[nb][e] * scale_log2 - lse0) : 0.f;
        const float p1 = key_ok && row1_ok ? exp2f(s[nb][2 + e] * scale_log2 - lse1) : 0.f;
        s[nb][e] = p0 * (dp[nb][e] - dsum0);
        s[nb][2 + e] = p1 * (dp[nb][2 + e] - dsum1);
      }
    }
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t a[4];
      acc_to_a<T>(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int dn = 0; dn < D / 8; dn += 2) {
        uint32_t b[4];
        frag_b_kn<LD>(b, ks, kk * 16, dn * 8, lane);
        mma16816<T>(dq_acc[dn], a, b[0], b[1]);
        mma16816<T>(dq_acc[dn + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();  // this buffer is refilled two tiles on
  }
#pragma unroll
  for (int dn = 0; dn < D / 8; ++dn) {
    const int col = dn * 8 + 2 * t;
    if (row0_ok)
      *reinterpret_cast<uint32_t*>(dq + static_cast<int64_t>(row0) * D + col) =
          pack2<T>(dq_acc[dn][0] * scale, dq_acc[dn][1] * scale);
    if (row1_ok)
      *reinterpret_cast<uint32_t*>(dq + static_cast<int64_t>(row1) * D + col) =
          pack2<T>(dq_acc[dn][2] * scale, dq_acc[dn][3] * scale);
  }
}

// Tile shapes of the tensor-core kernels per head dim. At D = 128 the
// streamed tiles are 32 rows: the dK/dV kernel's two accumulators leave room
// for no more registers, and two buffers of 64-row K and V tiles would need
// 87-104 KB of shared memory, over the 99 KB per block of sm_86 / sm_89 /
// sm_120 and leaving one block per SM on sm_80.
template <int D>
struct MmaTiles {
  static constexpr int fwd_keys = D >= 128 ? 32 : 64;
  static constexpr int dkdv_queries = D >= 128 ? 32 : 64;
  static constexpr int dq_keys = D >= 128 ? 32 : 64;
};

// Shared memory of the tensor-core kernels: the resident 64-row tiles and two
// buffers of the streamed ones.
template <typename T, int D>
constexpr size_t mma_fwd_smem() { return sizeof(T) * (kMmaRows + 4 * MmaTiles<D>::fwd_keys) * (D + 8); }
template <typename T, int D>
constexpr size_t mma_dkdv_smem() {
  return sizeof(T) * (2 * kMmaRows + 4 * MmaTiles<D>::dkdv_queries) * (D + 8) +
         sizeof(float) * 4 * MmaTiles<D>::dkdv_queries;
}
template <typename T, int D>
constexpr size_t mma_dq_smem() { return sizeof(T) * (2 * kMmaRows + 4 * MmaTiles<D>::dq_keys) * (D + 8); }

// ---- launchers -----------------------------------------------------------------

// The tensor-core path: bfloat16 / float16, D in {32, 64, 128}, 16-byte
// aligned rows, an sm_80+ device. Anything else takes the SIMT path.
template <typename T>
cudaError_t attn_use_mma(int64_t d, std::initializer_list<const void*> ptrs, bool* use) {
  *use = false;
  if constexpr (!is_half_type<T>()) {
    return cudaSuccess;
  } else {
    if (d != 32 && d != 64 && d != 128) return cudaSuccess;
    for (const void* p : ptrs)
      if (!aligned16(p)) return cudaSuccess;
    int dev = 0, major = 0;
    cudaError_t err = cudaGetDevice(&dev);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    *use = err == cudaSuccess && major >= 8;
    return err;
  }
}

template <typename T, int D>
cudaError_t attn_fwd_mma(const T* q, const T* k, const T* v, T* out, float* lse, int64_t bh, int n, double scale,
                         cudaStream_t stream) {
  const int tiles = static_cast<int>(ceil_div(n, kMmaRows));
  const size_t smem = mma_fwd_smem<T, D>();
  auto kernel = attn_fwd_mma_kernel<T, D, MmaTiles<D>::fwd_keys>;
  cudaError_t err = allow_smem(kernel, smem);
  if (err != cudaSuccess) return err;
  kernel<<<static_cast<unsigned>(tiles * bh), kMmaThreads, smem, stream>>>(q, k, v, out, lse, n, tiles,
                                                                           static_cast<float>(scale) * kLog2e);
  return cudaGetLastError();
}

template <typename T, int D>
cudaError_t attn_bwd_mma(const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* dsum, T* dq,
                         T* dk, T* dv, int64_t bh, int n, double scale, cudaStream_t stream) {
  const int tiles = static_cast<int>(ceil_div(n, kMmaRows));
  const float s = static_cast<float>(scale), s2 = s * kLog2e;
  auto dkdv = attn_bwd_dkdv_mma_kernel<T, D, MmaTiles<D>::dkdv_queries>;
  cudaError_t err = allow_smem(dkdv, mma_dkdv_smem<T, D>());
  if (err != cudaSuccess) return err;
  dkdv<<<static_cast<unsigned>(tiles * bh), kMmaThreads, mma_dkdv_smem<T, D>(), stream>>>(q, k, v, dout, lse, dsum,
                                                                                        dk, dv, n, tiles, s, s2);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  auto dqk = attn_bwd_dq_mma_kernel<T, D, MmaTiles<D>::dq_keys>;
  if ((err = allow_smem(dqk, mma_dq_smem<T, D>())) != cudaSuccess) return err;
  dqk<<<static_cast<unsigned>(tiles * bh), kMmaThreads, mma_dq_smem<T, D>(), stream>>>(q, k, v, dout, lse, dsum, dq,
                                                                                     n, tiles, s, s2);
  return cudaGetLastError();
}

// Forward on `stream` (attention_fwd's arguments, where attn_use_mma said yes).
template <typename T>
cudaError_t attention_fwd_mma(const T* q, const T* k, const T* v, T* out, float* lse, int64_t bh, int n, int d,
                              double scale, cudaStream_t stream) {
  static_assert(is_half_type<T>(), "the tensor-core kernels take bfloat16 / float16");
  if (d == 32) return attn_fwd_mma<T, 32>(q, k, v, out, lse, bh, n, scale, stream);
  if (d == 64) return attn_fwd_mma<T, 64>(q, k, v, out, lse, bh, n, scale, stream);
  return attn_fwd_mma<T, 128>(q, k, v, out, lse, bh, n, scale, stream);
}

// dQ, dK, dV on `stream`, given dsum = rowsum(dO * O) (attention_bwd's
// arguments, where attn_use_mma said yes).
template <typename T>
cudaError_t attention_bwd_mma(const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* dsum,
                              T* dq, T* dk, T* dv, int64_t bh, int n, int d, double scale, cudaStream_t stream) {
  static_assert(is_half_type<T>(), "the tensor-core kernels take bfloat16 / float16");
  if (d == 32) return attn_bwd_mma<T, 32>(q, k, v, dout, lse, dsum, dq, dk, dv, bh, n, scale, stream);
  if (d == 64) return attn_bwd_mma<T, 64>(q, k, v, dout, lse, dsum, dq, dk, dv, bh, n, scale, stream);
  return attn_bwd_mma<T, 128>(q, k, v, dout, lse, dsum, dq, dk, dv, bh, n, scale, stream);
}

}  // namespace cuda
}  // namespace mcvd
