// SIMT implementation of the attention kernels (entry points and the math in
// attention.cuh): any dtype, any D. 32 x 32 tiles in shared memory,
// accumulation in float (double for double). Score products run over D in
// chunks of 32; outputs are computed in column slabs of DV <= 128, so any D
// fits (a D above 128 recomputes the scores once per slab).
#pragma once

#include "common.cuh"

namespace mcvd {
namespace cuda {

// Copy rows [r0, r0 + 32) x columns [c0, c0 + WIDTH) of a row-major [n, d]
// matrix into shared [32][ld] in the accumulation type; zeros outside.
template <int WIDTH, typename T, typename A>
__device__ __forceinline__ void simt_load(A* dst, int ld, const T* src, int n, int d, int r0, int c0) {
  for (int idx = threadIdx.x; idx < 32 * WIDTH; idx += blockDim.x) {
    const int r = idx / WIDTH, c = idx % WIDTH;
    const int gr = r0 + r, gc = c0 + c;
    dst[r * ld + c] = (gr < n && gc < d) ? to_acc<A>(src[static_cast<int64_t>(gr) * d + gc]) : A(0);
  }
}

// 128 threads as 16 x 8: thread (ty, tx) owns rows ty and ty + 16 and columns
// tx + 8 j of every 32-row tile it accumulates.

// Every kernel here declares a minimum of one block per SM: without it,
// ptxas picks a register cap for occupancy and spills (float64, sm_80).
constexpr int kSimtThreads = 128;
constexpr int kTile = 32;
constexpr int kLdc = kTile + 1;  // odd row stride: column reads hit distinct banks

template <typename A>
__device__ __forceinline__ A quad8_max(A v) {  // over the 8 threads of one ty
  for (int o = 1; o < 8; o *= 2) v = fmax(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}
template <typename A>
__device__ __forceinline__ A quad8_sum(A v) {
  for (int o = 1; o < 8; o *= 2) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

// grid.x: query tiles x BH (tile fastest), grid.y: column slabs of DV.
// q, k, v, out: [BH, n, d]; lse: [BH, n].
template <typename T, int DV>
__global__ void __launch_bounds__(kSimtThreads, 1)
    attn_fwd_simt_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                         T* __restrict__ out, acc_t<T>* __restrict__ lse, int n, int d, int tiles, acc_t<T> scale) {
  using A = acc_t<T>;
  constexpr int TJ = DV / 8;
  A* qc = reinterpret_cast<A*>(dyn_smem);  // [32][33] chunk of Q
  A* kc = qc + kTile * kLdc;               // [32][33] chunk of K
  A* ps = kc + kTile * kLdc;               // [32][33] probabilities
  A* vs = ps + kTile * kLdc;               // [32][DV + 1] slab of V
  const int q0 = (blockIdx.x % tiles) * kTile, d0 = blockIdx.y * DV;
  const int64_t bh = blockIdx.x / tiles, base = bh * n * d;
  q += base, k += base, v += base, out += base;
  const int ty = threadIdx.x / 8, tx = threadIdx.x % 8;

  A o[2][TJ] = {};
  A m[2] = {neg_inf<A>(), neg_inf<A>()}, l[2] = {A(0), A(0)};
  for (int k0 = 0; k0 < n; k0 += kTile) {
    A s[2][4] = {};
    for (int c0 = 0; c0 < d; c0 += kTile) {
      simt_load<kTile>(qc, kLdc, q, n, d, q0, c0);
      simt_load<kTile>(kc, kLdc, k, n, d, k0, c0);
      __syncthreads();
#pragma unroll 8
      for (int kk = 0; kk < kTile; ++kk) {
        const A a0 = qc[ty * kLdc + kk], a1 = qc[(ty + 16) * kLdc + kk];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const A b = kc[(tx + 8 * j) * kLdc + kk];
          s[0][j] += a0 * b;
          s[1][j] += a1 * b;
        }
      }
      __syncthreads();
    }
    // Online softmax: every key tile has a valid key, so the new max is finite.
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      A mt = neg_inf<A>();
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        s[i][j] = k0 + tx + 8 * j < n ? s[i][j] * scale : neg_inf<A>();
        mt = fmax(mt, s[i][j]);
      }
      const A m_new = fmax(m[i], quad8_max(mt));
      const A alpha = acc_exp(m[i] - m_new);
      A rs = A(0);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const A p = acc_exp(s[i][j] - m_new);
        ps[(ty + 16 * i) * kLdc + tx + 8 * j] = p;
        rs += p;
      }
      l[i] = l[i] * alpha + quad8_sum(rs);
      m[i] = m_new;
#pragma unroll
      for (int j = 0; j < TJ; ++j) o[i][j] *= alpha;
    }
    simt_load<DV>(vs, DV + 1, v, n, d, k0, d0);
    __syncthreads();
#pragma unroll 4
    for (int kk = 0; kk < kTile; ++kk) {
      const A a0 = ps[ty * kLdc + kk], a1 = ps[(ty + 16) * kLdc + kk];
#pragma unroll
      for (int j = 0; j < TJ; ++j) {
        const A b = vs[kk * (DV + 1) + tx + 8 * j];
        o[0][j] += a0 * b;
        o[1][j] += a1 * b;
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int row = q0 + ty + 16 * i;
    if (row >= n) continue;
    const A inv = A(1) / l[i];
#pragma unroll
    for (int j = 0; j < TJ; ++j) {
      const int col = d0 + tx + 8 * j;
      if (col < d) out[static_cast<int64_t>(row) * d + col] = from_acc<T>(o[i][j] * inv);
    }
    if (blockIdx.y == 0 && tx == 0) lse[bh * n + row] = m[i] + acc_log(l[i]);
  }
}

// dK, dV of one key tile (rows of the thread layout = keys, columns = queries),
// streaming every query tile. grid as attn_fwd_simt_kernel with key tiles.
template <typename T, int DV>
__global__ void __launch_bounds__(kSimtThreads, 1)
    attn_bwd_dkdv_simt_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                              const T* __restrict__ dout, const acc_t<T>* __restrict__ lse,
                              const acc_t<T>* __restrict__ dsum, T* __restrict__ dk, T* __restrict__ dv, int n, int d,
                              int tiles, acc_t<T> scale) {
  using A = acc_t<T>;
  constexpr int TJ = DV / 8;
  constexpr int kChunks = 4 * kTile * kLdc, kSlabs = 2 * kTile * (DV + 1);
  // The chunk buffers and the slabs are never live together: one region.
  A* kc = reinterpret_cast<A*>(dyn_smem);  // [32][33] chunks of K, Q, V, dO
  A* qc = kc + kTile * kLdc;
  A* vc = qc + kTile * kLdc;
  A* oc = vc + kTile * kLdc;
  A* os = kc;                        // [32][DV + 1] slab of dO
  A* qs = os + kTile * (DV + 1);     // [32][DV + 1] slab of Q
  A* pt = kc + (kChunks > kSlabs ? kChunks : kSlabs);  // [32][33] P^T
  A* dst = pt + kTile * kLdc;                           // [32][33] dS^T
  A* lse_s = dst + kTile * kLdc;                        // [32]
  A* dsum_s = lse_s + kTile;                            // [32]
  const int k0 = (blockIdx.x % tiles) * kTile, d0 = blockIdx.y * DV;
  const int64_t bh = blockIdx.x / tiles, base = bh * n * d;
  q += base, k += base, v += base, dout += base, dk += base, dv += base;
  lse += bh * n, dsum += bh * n;
  const int ty = threadIdx.x / 8, tx = threadIdx.x % 8;

  A dk_acc[2][TJ] = {}, dv_acc[2][TJ] = {};
  for (int q0 = 0; q0 < n; q0 += kTile) {
    if (threadIdx.x < kTile) {
      const int r = q0 + threadIdx.x;
      lse_s[threadIdx.x] = r < n ? lse[r] : A(0);
      dsum_s[threadIdx.x] = r < n ? dsum[r] : A(0);
    }
    A st[2][4] = {}, dpt[2][4] = {};
    for (int c0 = 0; c0 < d; c0 += kTile) {
      simt_load<kTile>(kc, kLdc, k, n, d, k0, c0);
      simt_load<kTile>(qc, kLdc, q, n, d, q0, c0);
      simt_load<kTile>(vc, kLdc, v, n, d, k0, c0);
      simt_load<kTile>(oc, kLdc, dout, n, d, q0, c0);
      __syncthreads();
#pragma unroll 4
      for (int kk = 0; kk < kTile; ++kk) {
        const A ka0 = kc[ty * kLdc + kk], ka1 = kc[(ty + 16) * kLdc + kk];
        const A va0 = vc[ty * kLdc + kk], va1 = vc[(ty + 16) * kLdc + kk];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const A qb = qc[(tx + 8 * j) * kLdc + kk], ob = oc[(tx + 8 * j) * kLdc + kk];
          st[0][j] += ka0 * qb;
          st[1][j] += ka1 * qb;
          dpt[0][j] += va0 * ob;
          dpt[1][j] += va1 * ob;
        }
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const bool key_ok = k0 + ty + 16 * i < n;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int qq = tx + 8 * j;
        const A p = key_ok && q0 + qq < n ? acc_exp(st[i][j] * scale - lse_s[qq]) : A(0);
        pt[(ty + 16 * i) * kLdc + qq] = p;
        dst[(ty + 16 * i) * kLdc + qq] = p * (dpt[i][j] - dsum_s[qq]);
      }
    }
    simt_load<DV>(os, DV + 1, dout, n, d, q0, d0);
    simt_load<DV>(qs, DV + 1, q, n, d, q0, d0);
    __syncthreads();
#pragma unroll 4
    for (int qq = 0; qq < kTile; ++qq) {
      const A p0 = pt[ty * kLdc + qq], p1 = pt[(ty + 16) * kLdc + qq];
      const A s0 = dst[ty * kLdc + qq], s1 = dst[(ty + 16) * kLdc + qq];
#pragma unroll
      for (int j = 0; j < TJ; ++j) {
        const A ob = os[qq * (DV + 1) + tx + 8 * j], qb = qs[qq * (DV + 1) + tx + 8 * j];
        dv_acc[0][j] += p0 * ob;
        dv_acc[1][j] += p1 * ob;
        dk_acc[0][j] += s0 * qb;
        dk_acc[1][j] += s1 * qb;
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int row = k0 + ty + 16 * i;
    if (row >= n) continue;
#pragma unroll
    for (int j = 0; j < TJ; ++j) {
      const int col = d0 + tx + 8 * j;
      if (col >= d) continue;
      dk[static_cast<int64_t>(row) * d + col] = from_acc<T>(dk_acc[i][j] * scale);
      dv[static_cast<int64_t>(row) * d + col] = from_acc<T>(dv_acc[i][j]);
    }
  }
}

// dQ of one query tile, streaming every key tile.
template <typename T, int DV>
__global__ void __launch_bounds__(kSimtThreads, 1)
    attn_bwd_dq_simt_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                            const T* __restrict__ dout, const acc_t<T>* __restrict__ lse,
                            const acc_t<T>* __restrict__ dsum, T* __restrict__ dq, int n, int d, int tiles,
                            acc_t<T> scale) {
  using A = acc_t<T>;
  constexpr int TJ = DV / 8;
  constexpr int kChunks = 4 * kTile * kLdc, kSlab = kTile * (DV + 1);
  A* qc = reinterpret_cast<A*>(dyn_smem);  // [32][33] chunks of Q, K, dO, V
  A* kc = qc + kTile * kLdc;
  A* oc = kc + kTile * kLdc;
  A* vc = oc + kTile * kLdc;
  A* ks = qc;                                          // [32][DV + 1] slab of K
  A* dss = qc + (kChunks > kSlab ? kChunks : kSlab);   // [32][33] dS
  const int q0 = (blockIdx.x % tiles) * kTile, d0 = blockIdx.y * DV;
  const int64_t bh = blockIdx.x / tiles, base = bh * n * d;
  q += base, k += base, v += base, dout += base, dq += base;
  lse += bh * n, dsum += bh * n;
  const int ty = threadIdx.x / 8, tx = threadIdx.x % 8;
  A row_lse[2], row_dsum[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = q0 + ty + 16 * i;
    row_lse[i] = r < n ? lse[r] : A(0);
    row_dsum[i] = r < n ? dsum[r] : A(0);
  }

  A dq_acc[2][TJ] = {};
  for (int k0 = 0; k0 < n; k0 += kTile) {
    A s[2][4] = {}, dp[2][4] = {};
    for (int c0 = 0; c0 < d; c0 += kTile) {
      simt_load<kTile>(qc, kLdc, q, n, d, q0, c0);
      simt_load<kTile>(kc, kLdc, k, n, d, k0, c0);
      simt_load<kTile>(oc, kLdc, dout, n, d, q0, c0);
      simt_load<kTile>(vc, kLdc, v, n, d, k0, c0);
      __syncthreads();
#pragma unroll 4
      for (int kk = 0; kk < kTile; ++kk) {
        const A qa0 = qc[ty * kLdc + kk], qa1 = qc[(ty + 16) * kLdc + kk];
        const A oa0 = oc[ty * kLdc + kk], oa1 = oc[(ty + 16) * kLdc + kk];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const A kb = kc[(tx + 8 * j) * kLdc + kk], vb = vc[(tx + 8 * j) * kLdc + kk];
          s[0][j] += qa0 * kb;
          s[1][j] += qa1 * kb;
          dp[0][j] += oa0 * vb;
          dp[1][j] += oa1 * vb;
        }
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const bool row_ok = q0 + ty + 16 * i < n;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const A p = row_ok && k0 + tx + 8 * j < n ? acc_exp(s[i][j] * scale - row_lse[i]) : A(0);
        dss[(ty + 16 * i) * kLdc + tx + 8 * j] = p * (dp[i][j] - row_dsum[i]);
      }
    }
    simt_load<DV>(ks, DV + 1, k, n, d, k0, d0);
    __syncthreads();
#pragma unroll 4
    for (int kk = 0; kk < kTile; ++kk) {
      const A a0 = dss[ty * kLdc + kk], a1 = dss[(ty + 16) * kLdc + kk];
#pragma unroll
      for (int j = 0; j < TJ; ++j) {
        const A b = ks[kk * (DV + 1) + tx + 8 * j];
        dq_acc[0][j] += a0 * b;
        dq_acc[1][j] += a1 * b;
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int row = q0 + ty + 16 * i;
    if (row >= n) continue;
#pragma unroll
    for (int j = 0; j < TJ; ++j) {
      const int col = d0 + tx + 8 * j;
      if (col < d) dq[static_cast<int64_t>(row) * d + col] = from_acc<T>(dq_acc[i][j] * scale);
    }
  }
}

template <int DV, typename A>
constexpr size_t simt_fwd_smem() { return sizeof(A) * (3 * kTile * kLdc + kTile * (DV + 1)); }
template <int DV, typename A>
constexpr size_t simt_dkdv_smem() {
  return sizeof(A) * ((4 * kTile * kLdc > 2 * kTile * (DV + 1) ? 4 * kTile * kLdc : 2 * kTile * (DV + 1)) +
                      2 * kTile * kLdc + 2 * kTile);
}
template <int DV, typename A>
constexpr size_t simt_dq_smem() {
  return sizeof(A) * ((4 * kTile * kLdc > kTile * (DV + 1) ? 4 * kTile * kLdc : kTile * (DV + 1)) + kTile * kLdc);
}

// ---- launchers -----------------------------------------------------------------

inline int simt_slab(int64_t d) { return d <= 32 ? 32 : (d <= 64 ? 64 : 128); }

template <typename T, int DV>
cudaError_t attn_fwd_simt(const T* q, const T* k, const T* v, T* out, acc_t<T>* lse, int64_t bh, int n, int d,
                          double scale, cudaStream_t stream) {
  const int tiles = static_cast<int>(ceil_div(n, kTile));
  const size_t smem = simt_fwd_smem<DV, acc_t<T>>();
  auto kernel = attn_fwd_simt_kernel<T, DV>;
  cudaError_t err = allow_smem(kernel, smem);
  if (err != cudaSuccess) return err;
  kernel<<<dim3(static_cast<unsigned>(tiles * bh), static_cast<unsigned>(ceil_div(d, DV))), kSimtThreads, smem,
           stream>>>(q, k, v, out, lse, n, d, tiles, static_cast<acc_t<T>>(scale));
  return cudaGetLastError();
}

template <typename T, int DV>
cudaError_t attn_bwd_simt(const T* q, const T* k, const T* v, const T* dout, const acc_t<T>* lse,
                          const acc_t<T>* dsum, T* dq, T* dk, T* dv, int64_t bh, int n, int d, double scale,
                          cudaStream_t stream) {
  using A = acc_t<T>;
  const int tiles = static_cast<int>(ceil_div(n, kTile));
  const dim3 grid(static_cast<unsigned>(tiles * bh), static_cast<unsigned>(ceil_div(d, DV)));
  auto dkdv = attn_bwd_dkdv_simt_kernel<T, DV>;
  cudaError_t err = allow_smem(dkdv, simt_dkdv_smem<DV, A>());
  if (err != cudaSuccess) return err;
  dkdv<<<grid, kSimtThreads, simt_dkdv_smem<DV, A>(), stream>>>(q, k, v, dout, lse, dsum, dk, dv, n, d, tiles,
                                                                static_cast<A>(scale));
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  auto dqk = attn_bwd_dq_simt_kernel<T, DV>;
  if ((err = allow_smem(dqk, simt_dq_smem<DV, A>())) != cudaSuccess) return err;
  dqk<<<grid, kSimtThreads, simt_dq_smem<DV, A>(), stream>>>(q, k, v, dout, lse, dsum, dq, n, d, tiles,
                                                             static_cast<A>(scale));
  return cudaGetLastError();
}

// Forward on `stream` (attention_fwd's arguments; sizes checked there).
template <typename T>
cudaError_t attention_fwd_simt(const T* q, const T* k, const T* v, T* out, acc_t<T>* lse, int64_t bh, int n, int d,
                               double scale, cudaStream_t stream) {
  switch (simt_slab(d)) {
    case 32:
      return attn_fwd_simt<T, 32>(q, k, v, out, lse, bh, n, d, scale, stream);
    case 64:
      return attn_fwd_simt<T, 64>(q, k, v, out, lse, bh, n, d, scale, stream);
    default:
      return attn_fwd_simt<T, 128>(q, k, v, out, lse, bh, n, d, scale, stream);
  }
}

// dQ, dK, dV on `stream`, given dsum = rowsum(dO * O) (attention_bwd's
// arguments; sizes checked there).
template <typename T>
cudaError_t attention_bwd_simt(const T* q, const T* k, const T* v, const T* dout, const acc_t<T>* lse,
                               const acc_t<T>* dsum, T* dq, T* dk, T* dv, int64_t bh, int n, int d, double scale,
                               cudaStream_t stream) {
  switch (simt_slab(d)) {
    case 32:
      return attn_bwd_simt<T, 32>(q, k, v, dout, lse, dsum, dq, dk, dv, bh, n, d, scale, stream);
    case 64:
      return attn_bwd_simt<T, 64>(q, k, v, dout, lse, dsum, dq, dk, dv, bh, n, d, scale, stream);
    default:
      return attn_bwd_simt<T, 128>(q, k, v, dout, lse, dsum, dq, dk, dv, bh, n, d, scale, stream);
  }
}

}  // namespace cuda
}  // namespace mcvd
