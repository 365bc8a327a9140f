// Torch-free CUDA kernels of mcvd::spatin_norm (forward and backward).
//
// Forward, per (batch b, channel c, position i), group g = c / (C / G):
//   xhat = (x - mean[b,g]) * rstd[b,g]
//   h1 = xhat * weight[c] + bias[c]
//   h2 = h1 * (1 + gamma[b,c,i]) + beta[b,c,i]
//   h3 = h2 * (1 + scale[b,c]) + shift[b,c]
//   y  = silu(h3) if silu else h3
// An absent weight / bias / gamma / beta / scale / shift acts as 1 / 0 / 0 /
// 0 / 0 / 0, which leaves each step exact. Backward:
//   dh3 = dy * silu'(h3);  dshift = sum_i dh3;  dscale = sum_i dh3 * h2
//   dh2 = dh3 * (1 + scale);  dgamma = dh2 * h1;  dbeta = dh2
//   dh1 = dh2 * (1 + gamma);  dweight = sum_{b,i} dh1 * xhat;  dbias = sum_{b,i} dh1
//   dx = rstd * (dh1 * w - mean_g(dh1 * w) - xhat * mean_g(dh1 * w * xhat))
// The two group means are per-channel row sums weighted by w, so every
// reduction is a sum over the rows (b, c) of H*W elements.
//
// Statistics and row sums are split over several blocks per row when rows are
// few (batch 1 still fills the GPU), written as partials and combined in a
// fixed order: results are deterministic, with no atomics.
#pragma once

#include <algorithm>

#include "common.cuh"

namespace mcvd {
namespace cuda {

// Inputs of one call. x, gamma, beta: [B, C, HW]; weight, bias: [C];
// scale, shift: [B, C]; every pointer but x may be null.
template <typename T>
struct SpatinInputs {
  const T* x;
  const T* weight;
  const T* bias;
  const T* gamma;
  const T* beta;
  const T* scale;
  const T* shift;
  int64_t batch, channels, hw, groups;
  bool silu;
};

// Per-(batch, channel) constants of the chain.
template <typename A>
struct SpatinRow {
  A mean, rstd, w, bias, s1, shift;  // s1 = 1 + scale
};

// The constants of row = b * C + c, given its group's mean and rstd.
template <typename T, typename A = acc_t<T>>
__device__ __forceinline__ SpatinRow<A> make_spatin_row(const SpatinInputs<T>& in, A mean, A rstd, int64_t row) {
  const int64_t c = row % in.channels;
  SpatinRow<A> r;
  r.mean = mean;
  r.rstd = rstd;
  r.w = in.weight ? to_acc<A>(in.weight[c]) : A(1);
  r.bias = in.bias ? to_acc<A>(in.bias[c]) : A(0);
  r.s1 = in.scale ? A(1) + to_acc<A>(in.scale[row]) : A(1);
  r.shift = in.shift ? to_acc<A>(in.shift[row]) : A(0);
  return r;
}

// The same, reading the group statistics from the [B * G] arrays.
template <typename T, typename A = acc_t<T>>
__device__ __forceinline__ SpatinRow<A> spatin_row(const SpatinInputs<T>& in, const A* mean, const A* rstd,
                                                   int64_t row) {
  const int64_t c = row % in.channels;
  const int64_t bg = (row / in.channels) * in.groups + c / (in.channels / in.groups);
  return make_spatin_row(in, mean[bg], rstd[bg], row);
}

template <typename A>
struct SpatinChain {
  A xhat, h1, h2, h3;
};

// g, be: gamma and beta at this element (0 when absent).
template <typename A>
__device__ __forceinline__ SpatinChain<A> spatin_chain(const SpatinRow<A>& r, A x, A g, A be) {
  SpatinChain<A> e;
  e.xhat = (x - r.mean) * r.rstd;
  e.h1 = e.xhat * r.w + r.bias;
  e.h2 = e.h1 * (A(1) + g) + be;
  e.h3 = e.h2 * r.s1 + r.shift;
  return e;
}

template <typename A>
struct SpatinGrad {
  A dh3, dh2, dh1;
};

template <typename A>
__device__ __forceinline__ SpatinGrad<A> spatin_grad(const SpatinRow<A>& r, const SpatinChain<A>& e, A dy, A g,
                                                     bool silu) {
  SpatinGrad<A> d;
  if (silu) {
    const A s = sigmoid(e.h3);
    d.dh3 = dy * s * (A(1) + e.h3 * (A(1) - s));
  } else {
    d.dh3 = dy;
  }
  d.dh2 = d.dh3 * r.s1;
  d.dh1 = d.dh2 * (A(1) + g);
  return d;
}

// W elements of an optional [B, C, HW] tensor, zeros when it is absent.
template <typename T, int W, typename A = acc_t<T>>
__device__ __forceinline__ void load_opt(const T* p, int64_t i, A (&out)[W]) {
  if (p == nullptr) {
#pragma unroll
    for (int j = 0; j < W; ++j) out[j] = A(0);
    return;
  }
  const Vec<T, W> v = load_vec<T, W>(p + i);
#pragma unroll
  for (int j = 0; j < W; ++j) out[j] = to_acc<A>(v.v[j]);
}

// ---- forward ----------------------------------------------------------------

// Partial Welford statistics. Virtual row v = group * splits + s covers
// elements [s * chunk, min(len, (s + 1) * chunk)) of the group's contiguous
// span of len = (C / G) * HW elements. part: [B * G * splits].
template <typename T, int W>
__global__ void __launch_bounds__(kRowThreads)
    spatin_stats_kernel(const T* __restrict__ x, Welford<acc_t<T>>* __restrict__ part, int64_t vrows,
                        int64_t splits, int64_t len, int64_t chunk, int tpr) {
  using A = acc_t<T>;
  __shared__ Welford<A> scratch[kRowThreads / 32];
  const int64_t v = static_cast<int64_t>(blockIdx.x) * (kRowThreads / tpr) + threadIdx.x / tpr;
  const int lane = threadIdx.x % tpr;
  // Per thread: sums of (x - k) and (x - k)^2 around the thread's first
  // value k, which is of the data's magnitude, so the variance does not
  // cancel; threads and blocks then merge as Welford triples.
  A shift = A(0), s1 = A(0), s2 = A(0);
  int64_t count = 0;
  if (v < vrows) {
    const T* span = x + (v / splits) * len;
    const int64_t begin = (v % splits) * chunk;
    const int64_t end = begin + chunk < len ? begin + chunk : len;
    for (int64_t i = begin + static_cast<int64_t>(lane) * W; i < end; i += static_cast<int64_t>(tpr) * W) {
      const Vec<T, W> xv = load_vec<T, W>(span + i);
      if (count == 0) shift = to_acc<A>(xv.v[0]);
#pragma unroll
      for (int j = 0; j < W; ++j) {
        const A d = to_acc<A>(xv.v[j]) - shift;
        s1 += d;
        s2 += d * d;
      }
      count += W;
    }
  }
  Welford<A> acc = Welford<A>::zero();
  if (count > 0) {
    const A n = static_cast<A>(count), m = s1 / n;
    acc = {n, shift + m, s2 - s1 * m > A(0) ? s2 - s1 * m : A(0)};
  }
  acc = row_reduce(acc, tpr, scratch);
  if (lane == 0 && v < vrows) part[v] = acc;
}

// One warp per (batch, group): merge its partials, write mean and rstd
// (biased variance, as GroupNorm).
template <typename A>
__global__ void __launch_bounds__(128) spatin_stats_combine_kernel(const Welford<A>* __restrict__ part, A* mean, A* rstd,
                                                                   int64_t groups_total, int64_t splits, A eps) {
  const int64_t grp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (grp >= groups_total) return;  // uniform over the warp
  Welford<A> acc = Welford<A>::zero();
  for (int64_t s = lane; s < splits; s += 32) acc = acc.merge(part[grp * splits + s]);
  acc = warp_reduce(acc);
  if (lane == 0) {
    mean[grp] = acc.mean;
    rstd[grp] = acc_rsqrt(acc.m2 / acc.n + eps);
  }
}

// The fused chain. Row = (b, c); grid.x over rows (rows_per_block each),
// grid.y over chunks of the row.
template <typename T, int W>
__global__ void __launch_bounds__(kRowThreads)
    spatin_apply_kernel(SpatinInputs<T> in, const acc_t<T>* __restrict__ mean, const acc_t<T>* __restrict__ rstd,
                        T* __restrict__ y, int tpr) {
  using A = acc_t<T>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kRowThreads / tpr) + threadIdx.x / tpr;
  if (row >= in.batch * in.channels) return;  // no barrier below
  const SpatinRow<A> r = spatin_row(in, mean, rstd, row);
  const int64_t step = static_cast<int64_t>(gridDim.y) * tpr * W;
  for (int64_t i = row * in.hw + (static_cast<int64_t>(blockIdx.y) * tpr + threadIdx.x % tpr) * W;
       i < (row + 1) * in.hw; i += step) {
    const Vec<T, W> xv = load_vec<T, W>(in.x + i);
    A g[W], be[W];
    load_opt<T, W>(in.gamma, i, g);
    load_opt<T, W>(in.beta, i, be);
    Vec<T, W> yv;
#pragma unroll
    for (int j = 0; j < W; ++j) {
      const A h3 = spatin_chain(r, to_acc<A>(xv.v[j]), g[j], be[j]).h3;
      yv.v[j] = from_acc<T>(in.silu ? h3 * sigmoid(h3) : h3);
    }
    store_vec<T, W>(y + i, yv);
  }
}

// One block per (batch, group) holding the whole group in registers: NV
// vectors of W elements per thread (the group's CG * HW elements are
// contiguous). Mean, then variance as the mean of squared deviations from it
// (two passes over the registers: exact, no cancellation), then the chain.
// x is read once and the forward is one launch. Needs HW % W == 0 (a vector
// never straddles two channels) and CG * HW <= kRowThreads * NV * W.
template <typename T, int W, int NV>
__global__ void __launch_bounds__(kRowThreads)
    spatin_fused_fwd_kernel(SpatinInputs<T> in, T* __restrict__ y, acc_t<T>* __restrict__ mean,
                            acc_t<T>* __restrict__ rstd, acc_t<T> eps) {
  using A = acc_t<T>;
  __shared__ Sums<A, 1> scratch[kRowThreads / 32];
  __shared__ A stats[2];  // mean, rstd, for every thread
  const int64_t grp = blockIdx.x;
  const int64_t cpg = in.channels / in.groups, len = cpg * in.hw;
  const int64_t base = grp * len;
  A v[NV][W];
  Sums<A, 1> acc = Sums<A, 1>::zero();
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    const int64_t i = (static_cast<int64_t>(j) * kRowThreads + threadIdx.x) * W;
    if (i < len) {
      const Vec<T, W> xv = load_vec<T, W>(in.x + base + i);
#pragma unroll
      for (int e = 0; e < W; ++e) {
        v[j][e] = to_acc<A>(xv.v[e]);
        acc.v[0] += v[j][e];
      }
    }
  }
  acc = row_reduce(acc, kRowThreads, scratch);
  if (threadIdx.x == 0) stats[0] = acc.v[0] / static_cast<A>(len);
  __syncthreads();
  const A m = stats[0];
  acc = Sums<A, 1>::zero();
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    if ((static_cast<int64_t>(j) * kRowThreads + threadIdx.x) * W < len) {
#pragma unroll
      for (int e = 0; e < W; ++e) acc.v[0] += (v[j][e] - m) * (v[j][e] - m);
    }
  }
  // row_reduce synchronises before thread 0 writes stats[1]: every thread
  // has read stats[0] by then.
  acc = row_reduce(acc, kRowThreads, scratch);
  if (threadIdx.x == 0) {
    const A r = acc_rsqrt(acc.v[0] / static_cast<A>(len) + eps);
    stats[1] = r;
    mean[grp] = m;
    rstd[grp] = r;
  }
  __syncthreads();
  const A rs = stats[1];
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    const int64_t i = (static_cast<int64_t>(j) * kRowThreads + threadIdx.x) * W;
    if (i < len) {
      const SpatinRow<A> r = make_spatin_row(in, m, rs, grp * cpg + i / in.hw);
      A g[W], be[W];
      load_opt<T, W>(in.gamma, base + i, g);
      load_opt<T, W>(in.beta, base + i, be);
      Vec<T, W> yv;
#pragma unroll
      for (int e = 0; e < W; ++e) {
        const A h3 = spatin_chain(r, v[j][e], g[e], be[e]).h3;
        yv.v[e] = from_acc<T>(in.silu ? h3 * sigmoid(h3) : h3);
      }
      store_vec<T, W>(y + base + i, yv);
    }
  }
}

// ---- backward -----------------------------------------------------------------

// Adds the W elements at i (one row, constants r) to the row sums
// (dh3, dh3 * h2, dh1, dh1 * xhat).
template <typename T, int W, typename A = acc_t<T>>
__device__ __forceinline__ void spatin_bwd_sums_vec(const SpatinInputs<T>& in, const T* dy, const SpatinRow<A>& r,
                                                    int64_t i, Sums<A, 4>& acc) {
  const Vec<T, W> xv = load_vec<T, W>(in.x + i);
  const Vec<T, W> dv = load_vec<T, W>(dy + i);
  A g[W], be[W];
  load_opt<T, W>(in.gamma, i, g);
  load_opt<T, W>(in.beta, i, be);
#pragma unroll
  for (int j = 0; j < W; ++j) {
    const SpatinChain<A> e = spatin_chain(r, to_acc<A>(xv.v[j]), g[j], be[j]);
    const SpatinGrad<A> d = spatin_grad(r, e, to_acc<A>(dv.v[j]), g[j], in.silu);
    acc.v[0] += d.dh3;
    acc.v[1] += d.dh3 * e.h2;
    acc.v[2] += d.dh1;
    acc.v[3] += d.dh1 * e.xhat;
  }
}

// dx, dgamma, dbeta of the W elements at i (one row, constants r; gm: the
// group means of dh1 * w and dh1 * w * xhat).
template <typename T, int W, typename A = acc_t<T>>
__device__ __forceinline__ void spatin_bwd_apply_vec(const SpatinInputs<T>& in, const T* dy, const SpatinRow<A>& r,
                                                     const Sums<A, 2>& gm, int64_t i, T* dx, T* dgamma, T* dbeta) {
  const Vec<T, W> xv = load_vec<T, W>(in.x + i);
  const Vec<T, W> dv = load_vec<T, W>(dy + i);
  A g[W], be[W];
  load_opt<T, W>(in.gamma, i, g);
  load_opt<T, W>(in.beta, i, be);
  Vec<T, W> dxv, dgv, dbv;
#pragma unroll
  for (int j = 0; j < W; ++j) {
    const SpatinChain<A> e = spatin_chain(r, to_acc<A>(xv.v[j]), g[j], be[j]);
    const SpatinGrad<A> d = spatin_grad(r, e, to_acc<A>(dv.v[j]), g[j], in.silu);
    dxv.v[j] = from_acc<T>(r.rstd * (d.dh1 * r.w - gm.v[0] - e.xhat * gm.v[1]));
    dgv.v[j] = from_acc<T>(d.dh2 * e.h1);
    dbv.v[j] = from_acc<T>(d.dh2);
  }
  store_vec<T, W>(dx + i, dxv);
  if (dgamma) store_vec<T, W>(dgamma + i, dgv);
  if (dbeta) store_vec<T, W>(dbeta + i, dbv);
}

// Partial row sums (dh3, dh3 * h2, dh1, dh1 * xhat). Virtual row
// v = row * splits + s covers positions [s * chunk, min(HW, (s + 1) * chunk)).
template <typename T, int W>
__global__ void __launch_bounds__(kRowThreads)
    spatin_bwd_partial_kernel(SpatinInputs<T> in, const T* __restrict__ dy, const acc_t<T>* __restrict__ mean,
                              const acc_t<T>* __restrict__ rstd, Sums<acc_t<T>, 4>* __restrict__ part, int64_t splits,
                              int64_t chunk, int tpr) {
  using A = acc_t<T>;
  __shared__ Sums<A, 4> scratch[kRowThreads / 32];
  const int64_t vrows = in.batch * in.channels * splits;
  const int64_t v = static_cast<int64_t>(blockIdx.x) * (kRowThreads / tpr) + threadIdx.x / tpr;
  const int lane = threadIdx.x % tpr;
  Sums<A, 4> acc = Sums<A, 4>::zero();
  if (v < vrows) {
    const int64_t row = v / splits;
    const SpatinRow<A> r = spatin_row(in, mean, rstd, row);
    const int64_t begin = (v % splits) * chunk;
    const int64_t end = begin + chunk < in.hw ? begin + chunk : in.hw;
    for (int64_t p = begin + static_cast<int64_t>(lane) * W; p < end; p += static_cast<int64_t>(tpr) * W)
      spatin_bwd_sums_vec<T, W>(in, dy, r, row * in.hw + p, acc);
  }
  acc = row_reduce(acc, tpr, scratch);
  if (lane == 0 && v < vrows) part[v] = acc;
}

constexpr int kGroupThreads = 128;

// One block per (batch, group): merge each channel's partials; write dshift,
// dscale (when wanted), the row sums (dh1, dh1 * xhat) for dweight / dbias
// (when row_sums is not null), and the group means
// (mean_g(dh1 * w), mean_g(dh1 * w * xhat)) that dx needs.
template <typename T>
__global__ void __launch_bounds__(kGroupThreads)
    spatin_bwd_group_kernel(SpatinInputs<T> in, const Sums<acc_t<T>, 4>* __restrict__ part, int64_t splits,
                            T* __restrict__ dscale, T* __restrict__ dshift, Sums<acc_t<T>, 2>* __restrict__ row_sums,
                            Sums<acc_t<T>, 2>* __restrict__ group_means) {
  using A = acc_t<T>;
  constexpr int kWarps = kGroupThreads / 32;
  __shared__ Sums<A, 2> scratch[kWarps];
  const int64_t bg = blockIdx.x;
  const int64_t cpg = in.channels / in.groups;
  const int64_t b = bg / in.groups, c0 = (bg % in.groups) * cpg;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  Sums<A, 2> group = Sums<A, 2>::zero();
  for (int64_t cc = warp; cc < cpg; cc += kWarps) {
    const int64_t c = c0 + cc, row = b * in.channels + c;
    Sums<A, 4> acc = Sums<A, 4>::zero();
    for (int64_t s = lane; s < splits; s += 32) acc = acc.merge(part[row * splits + s]);
    acc = warp_reduce(acc);
    if (lane == 0) {
      if (dshift) dshift[row] = from_acc<T>(acc.v[0]);
      if (dscale) dscale[row] = from_acc<T>(acc.v[1]);
      if (row_sums) row_sums[row] = {{acc.v[2], acc.v[3]}};
      const A w = in.weight ? to_acc<A>(in.weight[c]) : A(1);
      group.v[0] += w * acc.v[2];
      group.v[1] += w * acc.v[3];
    }
  }
  if (lane == 0) scratch[warp] = group;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kWarps; ++w) group = group.merge(scratch[w]);
    const A count = static_cast<A>(cpg * in.hw);
    group_means[bg] = {{group.v[0] / count, group.v[1] / count}};
  }
}

// dweight[c] = sum_b row_sums[b, c].v[1], dbias[c] = sum_b row_sums[b, c].v[0]
// (a fixed-order sum over the batch).
template <typename T>
__global__ void __launch_bounds__(128)
    spatin_bwd_channel_kernel(const Sums<acc_t<T>, 2>* __restrict__ row_sums, T* __restrict__ dweight,
                              T* __restrict__ dbias, int64_t batch, int64_t channels) {
  using A = acc_t<T>;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  A sb = A(0), sw = A(0);
  for (int64_t b = 0; b < batch; ++b) {
    sb += row_sums[b * channels + c].v[0];
    sw += row_sums[b * channels + c].v[1];
  }
  if (dweight) dweight[c] = from_acc<T>(sw);
  if (dbias) dbias[c] = from_acc<T>(sb);
}

// dx, dgamma, dbeta; the same row / chunk grid as spatin_apply_kernel.
template <typename T, int W>
__global__ void __launch_bounds__(kRowThreads)
    spatin_bwd_apply_kernel(SpatinInputs<T> in, const T* __restrict__ dy, const acc_t<T>* __restrict__ mean,
                            const acc_t<T>* __restrict__ rstd, const Sums<acc_t<T>, 2>* __restrict__ group_means,
                            T* __restrict__ dx, T* __restrict__ dgamma, T* __restrict__ dbeta, int tpr) {
  using A = acc_t<T>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kRowThreads / tpr) + threadIdx.x / tpr;
  if (row >= in.batch * in.channels) return;  // no barrier below
  const SpatinRow<A> r = spatin_row(in, mean, rstd, row);
  const int64_t c = row % in.channels;
  const Sums<A, 2> gm = group_means[(row / in.channels) * in.groups + c / (in.channels / in.groups)];
  const int64_t step = static_cast<int64_t>(gridDim.y) * tpr * W;
  for (int64_t i = row * in.hw + (static_cast<int64_t>(blockIdx.y) * tpr + threadIdx.x % tpr) * W;
       i < (row + 1) * in.hw; i += step)
    spatin_bwd_apply_vec<T, W>(in, dy, r, gm, i, dx, dgamma, dbeta);
}

// The whole backward of one (batch, group) in one block, for when the groups
// alone fill the GPU and are small (kFusedBwdMax): pass 1 takes every
// channel's row sums (rows_per_block channels at a time, threads_per_row
// threads each) and writes dshift, dscale and the row sums for dweight / dbias
// (when row_sums is not null), then the group means; pass 2 writes dx, dgamma,
// dbeta over the group's contiguous span. It saves the split path's launches;
// the second pass re-reads the group soon after the first, from L2 as far as
// the resident groups fit it. Channel sums and the group total are added in a
// fixed order.
constexpr int64_t kFusedBwdMax = 8192;  // elements per group

template <typename T, int W>
__global__ void __launch_bounds__(kRowThreads)
    spatin_fused_bwd_kernel(SpatinInputs<T> in, const T* __restrict__ dy, const acc_t<T>* __restrict__ mean,
                            const acc_t<T>* __restrict__ rstd, T* __restrict__ dscale, T* __restrict__ dshift,
                            Sums<acc_t<T>, 2>* __restrict__ row_sums, T* __restrict__ dx, T* __restrict__ dgamma,
                            T* __restrict__ dbeta, int tpr) {
  using A = acc_t<T>;
  __shared__ Sums<A, 4> scratch[kRowThreads / 32];
  __shared__ Sums<A, 2> chan[kRowThreads];  // w-weighted (dh1, dh1 * xhat) sums of this step's channels
  __shared__ Sums<A, 2> group_mean;
  const int64_t grp = blockIdx.x;
  const int64_t cpg = in.channels / in.groups;
  const int rpb = kRowThreads / tpr, lane = threadIdx.x % tpr, sub = threadIdx.x / tpr;
  Sums<A, 2> group = Sums<A, 2>::zero();  // thread 0's running total
  for (int64_t c0 = 0; c0 < cpg; c0 += rpb) {
    const int64_t cc = c0 + sub, row = grp * cpg + cc;  // row = b * C + c
    Sums<A, 4> acc = Sums<A, 4>::zero();
    SpatinRow<A> r{};
    if (cc < cpg) {
      r = spatin_row(in, mean, rstd, row);
      for (int64_t p = static_cast<int64_t>(lane) * W; p < in.hw; p += static_cast<int64_t>(tpr) * W)
        spatin_bwd_sums_vec<T, W>(in, dy, r, row * in.hw + p, acc);
    }
    acc = row_reduce(acc, tpr, scratch);
    if (lane == 0) {
      Sums<A, 2> weighted = Sums<A, 2>::zero();
      if (cc < cpg) {
        if (dshift) dshift[row] = from_acc<T>(acc.v[0]);
        if (dscale) dscale[row] = from_acc<T>(acc.v[1]);
        if (row_sums) row_sums[row] = {{acc.v[2], acc.v[3]}};
        weighted = {{r.w * acc.v[2], r.w * acc.v[3]}};
      }
      chan[sub] = weighted;
    }
    __syncthreads();
    if (threadIdx.x == 0)
      for (int k = 0; k < rpb; ++k) group = group.merge(chan[k]);
    __syncthreads();  // chan is rewritten by the next step
  }
  if (threadIdx.x == 0) {
    const A count = static_cast<A>(cpg * in.hw);
    group_mean = {{group.v[0] / count, group.v[1] / count}};
  }
  __syncthreads();
  const Sums<A, 2> gm = group_mean;
  const A m = mean[grp], rs = rstd[grp];
  const int64_t base = grp * cpg * in.hw, len = cpg * in.hw;
  for (int64_t i = static_cast<int64_t>(threadIdx.x) * W; i < len; i += static_cast<int64_t>(kRowThreads) * W)
    spatin_bwd_apply_vec<T, W>(in, dy, make_spatin_row(in, m, rs, grp * cpg + i / in.hw), gm, base + i, dx, dgamma,
                               dbeta);
}

// ---- launch plans -------------------------------------------------------------

// How a reduction over `rows` rows of `len` elements is split into chunks
// (multiples of w) so that rows * splits fills the GPU even at batch 1.
struct SplitPlan {
  int64_t splits, chunk;
  RowLayout layout;  // threads of the partial-reduction kernel
};

inline SplitPlan split_plan(int64_t rows, int64_t len, int w, int sms) {
  constexpr int64_t kMinChunk = 2048, kMaxSplits = 1024;
  const int64_t want = ceil_div(2LL * sms, rows);
  const int64_t most = len / kMinChunk > 1 ? len / kMinChunk : 1;
  int64_t splits = want < most ? want : most;
  splits = splits < kMaxSplits ? splits : kMaxSplits;
  const int64_t chunk = ceil_div(ceil_div(len, splits), w) * w;
  splits = ceil_div(len, chunk);
  return {splits, chunk, row_layout(chunk / w)};
}

// Grid of the per-row elementwise kernels over rows of hw elements.
inline dim3 apply_grid(int64_t rows, int64_t hw, int w, RowLayout layout, int sms) {
  const int64_t blocks_x = ceil_div(rows, layout.rows_per_block);
  const int64_t chunks = ceil_div(ceil_div(hw, w), layout.threads_per_row);
  const int64_t want = ceil_div(4LL * sms, blocks_x);
  int64_t blocks_y = chunks < want ? chunks : want;
  blocks_y = blocks_y < 65535 ? blocks_y : 65535;
  return dim3(static_cast<unsigned>(blocks_x), static_cast<unsigned>(blocks_y));
}

// The 16-byte path needs rows of a multiple of the vector width and aligned
// pointers; otherwise every kernel reads element by element.
template <typename T>
bool spatin_vectorizable(const SpatinInputs<T>& in, std::initializer_list<const void*> more) {
  if (in.hw % vec16<T>() != 0) return false;
  for (const void* p : {static_cast<const void*>(in.x), static_cast<const void*>(in.gamma),
                        static_cast<const void*>(in.beta)})
    if (!aligned16(p)) return false;
  for (const void* p : more)
    if (!aligned16(p)) return false;
  return true;
}

inline size_t round16(size_t bytes) { return (bytes + 15) / 16 * 16; }

// Workspace bytes of spatin_norm_fwd for these sizes on the current device.
template <typename T>
cudaError_t spatin_norm_fwd_workspace(int64_t batch, int64_t channels, int64_t hw, int64_t groups, size_t* bytes) {
  int sms = 0;
  cudaError_t err = sm_count(&sms);
  if (err != cudaSuccess) return err;
  const SplitPlan plan = split_plan(batch * groups, (channels / groups) * hw, 1, sms);
  // Sized for the scalar path, whose chunks are never fewer than the vector path's.
  *bytes = round16(sizeof(Welford<acc_t<T>>) * batch * groups * plan.splits);
  return cudaSuccess;
}

template <typename T, int W>
cudaError_t spatin_norm_fwd_run(const SpatinInputs<T>& in, T* y, acc_t<T>* mean, acc_t<T>* rstd, double eps,
                                void* workspace, int sms, cudaStream_t stream) {
  using A = acc_t<T>;
  const int64_t groups_total = in.batch * in.groups;
  const SplitPlan plan = split_plan(groups_total, (in.channels / in.groups) * in.hw, W, sms);
  auto* part = static_cast<Welford<A>*>(workspace);
  const int64_t vrows = groups_total * plan.splits;
  spatin_stats_kernel<T, W>
      <<<static_cast<unsigned>(ceil_div(vrows, plan.layout.rows_per_block)), kRowThreads, 0, stream>>>(
          in.x, part, vrows, plan.splits, (in.channels / in.groups) * in.hw, plan.chunk, plan.layout.threads_per_row);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  spatin_stats_combine_kernel<A><<<static_cast<unsigned>(ceil_div(groups_total, 4)), 128, 0, stream>>>(
      part, mean, rstd, groups_total, plan.splits, A(eps));
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  const RowLayout layout = row_layout(ceil_div(in.hw, W));
  const dim3 grid = apply_grid(in.batch * in.channels, in.hw, W, layout, sms);
  spatin_apply_kernel<T, W><<<grid, kRowThreads, 0, stream>>>(in, mean, rstd, y, layout.threads_per_row);
  return cudaGetLastError();
}

// Most vectors per thread of the one-launch forward: 16 float4 or 8 half /
// bfloat16 octets (64 float accumulators), 16 double2 (32 doubles).
template <typename T>
constexpr int fused_max_vectors() {
  return 64 / vec16<T>() < 16 ? 64 / vec16<T>() : 16;
}

// Launch spatin_fused_fwd_kernel with the fewest vectors per thread that hold
// a group of len elements (NV runs over powers of two up to the maximum).
template <typename T, int NV>
cudaError_t spatin_fused_fwd_launch(const SpatinInputs<T>& in, T* y, acc_t<T>* mean, acc_t<T>* rstd, double eps,
                                    int64_t len, cudaStream_t stream) {
  constexpr int W = vec16<T>();
  if constexpr (NV < fused_max_vectors<T>()) {
    if (len > static_cast<int64_t>(kRowThreads) * NV * W)
      return spatin_fused_fwd_launch<T, 2 * NV>(in, y, mean, rstd, eps, len, stream);
  }
  spatin_fused_fwd_kernel<T, W, NV><<<static_cast<unsigned>(in.batch * in.groups), kRowThreads, 0, stream>>>(
      in, y, mean, rstd, acc_t<T>(eps));
  return cudaGetLastError();
}

// Forward on `stream`: y [B, C, HW]; mean, rstd [B, G] in acc_t<T>;
// workspace of spatin_norm_fwd_workspace bytes. One launch when a group fits
// spatin_fused_fwd_kernel's registers (16-byte path) and there are at least
// fused_min_groups groups (-1: one per multiprocessor, so that the grid fills
// the GPU); otherwise the split reduction (stats, combine, apply).
template <typename T>
cudaError_t spatin_norm_fwd(const SpatinInputs<T>& in, T* y, acc_t<T>* mean, acc_t<T>* rstd, double eps,
                            void* workspace, cudaStream_t stream, int64_t fused_min_groups = -1) {
  if (in.batch * in.channels * in.hw == 0) return cudaSuccess;
  int sms = 0;
  cudaError_t err = sm_count(&sms);
  if (err != cudaSuccess) return err;
  const bool vec = spatin_vectorizable(in, {y});
  const int64_t len = (in.channels / in.groups) * in.hw;
  const int64_t min_groups = fused_min_groups < 0 ? sms : fused_min_groups;
  if (vec && len <= static_cast<int64_t>(kRowThreads) * fused_max_vectors<T>() * vec16<T>() &&
      in.batch * in.groups >= min_groups && in.batch * in.groups <= 0x7fffffff)
    return spatin_fused_fwd_launch<T, 1>(in, y, mean, rstd, eps, len, stream);
  if (vec) return spatin_norm_fwd_run<T, vec16<T>()>(in, y, mean, rstd, eps, workspace, sms, stream);
  return spatin_norm_fwd_run<T, 1>(in, y, mean, rstd, eps, workspace, sms, stream);
}

// Gradients; a null output pointer is not computed. Sizes as the forward;
// dweight, dbias: [C]; dgamma, dbeta: [B, C, HW]; dscale, dshift: [B, C].
template <typename T>
struct SpatinGrads {
  T* dx;
  T* dweight;
  T* dbias;
  T* dgamma;
  T* dbeta;
  T* dscale;
  T* dshift;
};

struct SpatinBwdLayout {
  size_t part, row_sums, group_means, total;
};

template <typename T>
SpatinBwdLayout spatin_bwd_layout(int64_t batch, int64_t channels, int64_t groups, int64_t splits) {
  using A = acc_t<T>;
  SpatinBwdLayout l;
  l.part = 0;
  l.row_sums = round16(sizeof(Sums<A, 4>) * batch * channels * splits);
  l.group_means = l.row_sums + round16(sizeof(Sums<A, 2>) * batch * channels);
  l.total = l.group_means + round16(sizeof(Sums<A, 2>) * batch * groups);
  return l;
}

template <typename T>
cudaError_t spatin_norm_bwd_workspace(int64_t batch, int64_t channels, int64_t hw, int64_t groups, size_t* bytes) {
  int sms = 0;
  cudaError_t err = sm_count(&sms);
  if (err != cudaSuccess) return err;
  *bytes = spatin_bwd_layout<T>(batch, channels, groups, split_plan(batch * channels, hw, 1, sms).splits).total;
  return cudaSuccess;
}

template <typename T, int W>
cudaError_t spatin_norm_bwd_run(const SpatinInputs<T>& in, const T* dy, const acc_t<T>* mean, const acc_t<T>* rstd,
                                const SpatinGrads<T>& out, void* workspace, int sms, bool fused, cudaStream_t stream) {
  using A = acc_t<T>;
  const int64_t rows = in.batch * in.channels;
  const SplitPlan plan = split_plan(rows, in.hw, W, sms);
  // Offsets from the scalar plan's layout, which bounds this one's sizes.
  const SpatinBwdLayout l =
      spatin_bwd_layout<T>(in.batch, in.channels, in.groups, split_plan(rows, in.hw, 1, sms).splits);
  char* ws = static_cast<char*>(workspace);
  auto* part = reinterpret_cast<Sums<A, 4>*>(ws + l.part);
  auto* row_sums = reinterpret_cast<Sums<A, 2>*>(ws + l.row_sums);
  auto* group_means = reinterpret_cast<Sums<A, 2>*>(ws + l.group_means);
  const bool per_channel = out.dweight != nullptr || out.dbias != nullptr;
  cudaError_t err = cudaSuccess;

  if (fused) {
    // Threads per channel: the block spread over up to 8 channels at a time
    // (a warp or more each), and fewer threads for rows of fewer vectors.
    const int64_t cpg = in.channels / in.groups;
    const int spread = kRowThreads / next_pow2(cpg < 8 ? cpg : 8);
    const int tpr = std::min(row_layout(ceil_div(in.hw, W)).threads_per_row, spread);
    spatin_fused_bwd_kernel<T, W><<<static_cast<unsigned>(in.batch * in.groups), kRowThreads, 0, stream>>>(
        in, dy, mean, rstd, out.dscale, out.dshift, per_channel ? row_sums : nullptr, out.dx, out.dgamma, out.dbeta,
        tpr);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    if (!per_channel) return cudaSuccess;
    spatin_bwd_channel_kernel<T><<<static_cast<unsigned>(ceil_div(in.channels, 128)), 128, 0, stream>>>(
        row_sums, out.dweight, out.dbias, in.batch, in.channels);
    return cudaGetLastError();
  }

  spatin_bwd_partial_kernel<T, W>
      <<<static_cast<unsigned>(ceil_div(rows * plan.splits, plan.layout.rows_per_block)), kRowThreads, 0, stream>>>(
          in, dy, mean, rstd, part, plan.splits, plan.chunk, plan.layout.threads_per_row);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  spatin_bwd_group_kernel<T><<<static_cast<unsigned>(in.batch * in.groups), kGroupThreads, 0, stream>>>(
      in, part, plan.splits, out.dscale, out.dshift, per_channel ? row_sums : nullptr, group_means);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  if (per_channel) {
    spatin_bwd_channel_kernel<T><<<static_cast<unsigned>(ceil_div(in.channels, 128)), 128, 0, stream>>>(
        row_sums, out.dweight, out.dbias, in.batch, in.channels);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  const RowLayout layout = row_layout(ceil_div(in.hw, W));
  const dim3 grid = apply_grid(rows, in.hw, W, layout, sms);
  spatin_bwd_apply_kernel<T, W><<<grid, kRowThreads, 0, stream>>>(in, dy, mean, rstd, group_means, out.dx, out.dgamma,
                                                                   out.dbeta, layout.threads_per_row);
  return cudaGetLastError();
}

// Backward on `stream`; workspace of spatin_norm_bwd_workspace bytes. One
// block per group (spatin_fused_bwd_kernel, plus the per-channel sums of
// dweight / dbias) when a group has at most kFusedBwdMax elements and there
// are at least fused_min_groups groups (-1: one per multiprocessor);
// otherwise the split reduction.
template <typename T>
cudaError_t spatin_norm_bwd(const SpatinInputs<T>& in, const T* dy, const acc_t<T>* mean, const acc_t<T>* rstd,
                            const SpatinGrads<T>& out, void* workspace, cudaStream_t stream,
                            int64_t fused_min_groups = -1) {
  if (in.batch * in.channels * in.hw == 0) return cudaSuccess;
  int sms = 0;
  cudaError_t err = sm_count(&sms);
  if (err != cudaSuccess) return err;
  const int64_t groups = in.batch * in.groups;
  const bool fused = (in.channels / in.groups) * in.hw <= kFusedBwdMax &&
                     groups >= (fused_min_groups < 0 ? sms : fused_min_groups) && groups <= 0x7fffffff;
  if (spatin_vectorizable(in, {dy, out.dx, out.dgamma, out.dbeta}))
    return spatin_norm_bwd_run<T, vec16<T>()>(in, dy, mean, rstd, out, workspace, sms, fused, stream);
  return spatin_norm_bwd_run<T, 1>(in, dy, mean, rstd, out, workspace, sms, fused, stream);
}

}  // namespace cuda
}  // namespace mcvd
