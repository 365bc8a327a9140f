// CPU kernels of mcvd::attention_fwd and mcvd::attention_bwd: flash-style
// blocked softmax attention (Dao, FlashAttention-2, Algorithms 1 and 2).
//
// The N x N score matrix is never held: a task owns a block of query rows and
// streams key/value blocks through an online softmax (running row max m and
// row sum l, the accumulator rescaled by exp(m_old - m_new) whenever m
// grows). The backward recomputes the probabilities P = exp(scale q k^T - lse)
// from the saved log-sum-exp, block by block.
//
// Tiles are multiplied by a register-blocked GEMM on at::vec::Vectorized
// (6 rows x 2 vectors of accumulators: 12 of the 16 AVX2 registers). Its right
// operand is read one row of vectors at a time, so an operand that appears
// transposed is first packed into a small [D, positions] panel: the query
// block in the forward (S^T = K Q^T), each key block's K and V in the
// backward (S = Q K^T, dP = dO V^T).
//
// float32 and float64 compute in their own precision; bfloat16 and float16
// are converted to float32 on entry and the results rounded once on exit.
// Only the ATen headers used, not ATen/ATen.h (common.h says why).
#define AT_PER_OPERATOR_HEADERS  // with the next line: ATen/ATen.h here is an #error
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "checks.h"
#include "common.h"
#include "op_checks.h"

namespace mcvd {
namespace {

// Query rows per task and keys per streamed block (multiples of the GEMM's
// 6 rows and 2 vectors). Measured on AVX2 with D = 64, N = 256..1024: the
// forward gains ~5% from long key blocks (fewer accumulator rescales and
// GEMM epilogues per score), the backward, whose tile feeds four GEMMs,
// prefers square 48 x 96 tiles; within a factor of 2 of these the time
// changes by under 3%.
constexpr int64_t kBlockQ = 48;
constexpr int64_t kFwdBlockK = 192;
constexpr int64_t kBwdBlockK = 96;
constexpr int kTileRows = 6;

int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------
// Register-blocked GEMM: C[M, N] = A[M, K] B[K, N], or C += A B.
// A(i, k) = a[i * a_rs + k * a_cs], so A may be a transposed view;
// B(k, j) = b[k * ldb + j] is read as whole vectors, the last one of a row
// partially when N is not a multiple of the vector width. Scale factors are
// folded into an operand beforehand: an alpha live across the k loop would
// take the 16th vector register and spill a B vector.
// With col_max set, the tiles also leave col_max[j] = max(col_max[j],
// max_i C[i, j]) - the softmax's running max, taken while C is in registers.
// ---------------------------------------------------------------------------

template <typename T>
struct Gemm {
  const T* a;
  int64_t a_rs, a_cs;
  const T* b;
  int64_t ldb;
  T* c;
  int64_t ldc;
  bool accumulate;
  T* col_max;  // nullptr: no column maxima
};

template <typename T, int MR, int NV, bool Partial>
void gemm_tile(const Gemm<T>& g, int64_t i0, int64_t j0, int64_t K, int64_t tail) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const T* a = g.a + i0 * g.a_rs;
  const T* b = g.b + j0;
  const int64_t a_rs = g.a_rs, a_cs = g.a_cs, ldb = g.ldb;
  V sum[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) sum[i][j] = V(T(0));
  for (int64_t k = 0; k < K; ++k) {
    const T* bk = b + k * ldb;
    V bv[NV];
    for (int j = 0; j < NV; ++j)
      bv[j] = (Partial && j == NV - 1) ? V::loadu(bk + j * W, tail) : V::loadu(bk + j * W);
    const T* ak = a + k * a_cs;
    for (int i = 0; i < MR; ++i) {
      const V ai(ak[i * a_rs]);
      for (int j = 0; j < NV; ++j) sum[i][j] = at::vec::fmadd(ai, bv[j], sum[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    T* ci = g.c + (i0 + i) * g.ldc + j0;
    for (int j = 0; j < NV; ++j) {
      const int64_t n = (Partial && j == NV - 1) ? tail : W;
      if (g.accumulate) sum[i][j] = sum[i][j] + V::loadu(ci + j * W, n);
      sum[i][j].store(ci + j * W, n);
    }
  }
  if (g.col_max != nullptr) {
    for (int j = 0; j < NV; ++j) {
      const int64_t n = (Partial && j == NV - 1) ? tail : W;
      T* cm = g.col_max + j0 + j * W;
      V mx = V::loadu(cm, n);
      for (int i = 0; i < MR; ++i) mx = at::vec::maximum(mx, sum[i][j]);
      mx.store(cm, n);
    }
  }
}

template <typename T, int NV, bool Partial>
void gemm_panel(const Gemm<T>& g, int64_t M, int64_t j0, int64_t K, int64_t tail) {
  int64_t i = 0;
  for (; i + kTileRows <= M; i += kTileRows) gemm_tile<T, kTileRows, NV, Partial>(g, i, j0, K, tail);
  switch (M - i) {
    case 0: break;
    case 1: gemm_tile<T, 1, NV, Partial>(g, i, j0, K, tail); break;
    case 2: gemm_tile<T, 2, NV, Partial>(g, i, j0, K, tail); break;
    case 3: gemm_tile<T, 3, NV, Partial>(g, i, j0, K, tail); break;
    case 4: gemm_tile<T, 4, NV, Partial>(g, i, j0, K, tail); break;
    case 5: gemm_tile<T, 5, NV, Partial>(g, i, j0, K, tail); break;
    default: TORCH_INTERNAL_ASSERT(false, "gemm_panel: row tail ", M - i);
  }
}

template <typename T>
void gemm(const Gemm<T>& g, int64_t M, int64_t N, int64_t K) {
  constexpr int64_t W = Vec<T>::size();
  // Column panels of two vectors, so that a panel of B (K x 2W) stays in L1
  // while every row tile of A passes over it.
  for (int64_t j = 0; j < N; j += 2 * W) {
    const int64_t cols = std::min(2 * W, N - j);
    const int64_t tail = cols - (cols > W ? W : 0);  // valid lanes of the last vector
    if (cols > W) {
      if (tail == W) gemm_panel<T, 2, false>(g, M, j, K, tail);
      else gemm_panel<T, 2, true>(g, M, j, K, tail);
    } else {
      if (tail == W) gemm_panel<T, 1, false>(g, M, j, K, tail);
      else gemm_panel<T, 1, true>(g, M, j, K, tail);
    }
  }
}

// ---------------------------------------------------------------------------
// Blocks and transposed panels
// ---------------------------------------------------------------------------

// Positions [i0, i0 + count) of block `index`, and the row length of its
// transposed panel: count rounded up to whole vectors.
struct Block {
  int64_t i0, count, ld;
};

template <typename T>
Block block(int64_t index, int64_t size, int64_t n) {
  constexpr int64_t W = Vec<T>::size();
  const int64_t i0 = index * size, count = std::min(size, n - i0);
  return {i0, count, div_up(count, W) * W};
}

// dst[e, j] = src[j, e] for a row-major src [rows, d]: dst is [d, ld], its
// columns rows..ld zero. Transposed in 8 x 8 tiles, in registers for float32.
template <typename T>
void pack_transposed(const T* src, int64_t rows, int64_t d, T* dst, int64_t ld) {
  constexpr int64_t kTile = 8;
  for (int64_t j = 0; j < rows; j += kTile) {
    const int tr = static_cast<int>(std::min(kTile, rows - j));
    for (int64_t e = 0; e < d; e += kTile) {
      const int tc = static_cast<int>(std::min(kTile, d - e));
      if (tr == kTile && tc == kTile)
        at::vec::transpose_mxn<T, kTile, kTile>(src + j * d + e, d, dst + e * ld + j, ld);
      else
        at::vec::transpose_mxn<T>(src + j * d + e, d, dst + e * ld + j, ld, tr, tc);
    }
  }
  for (int64_t e = 0; ld > rows && e < d; ++e) std::fill(dst + e * ld + rows, dst + (e + 1) * ld, T(0));
}

// dst = scale * src (dst may be src)
template <typename T>
void scale_into(T* dst, const T* src, int64_t count, T scale) {
  at::vec::map([scale](Vec<T> v) { return v * Vec<T>(scale); }, dst, src, count);
}

// ATen's 20-ulp exp for float32 (1e-6 relative, below the rounding of the
// float32 logits it is applied to), Sleef's 1-ulp exp for float64; both give
// exp(-inf) = 0.
template <typename T>
Vec<T> vexp(const Vec<T>& x) {
  return x.exp_u20();
}

// ---------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------

// One task per (head, query block). Scores are computed transposed,
// S^T = K_j (scale Q_i)^T with keys as rows, so that the softmax statistics
// of the queries (running max m, sum l, rescale factor alpha) are vectors
// updated column-wise, and only the small query block is ever transposed.
template <typename T>
void attention_fwd_kernel(const T* q, const T* k, const T* v, T* out, T* lse, int64_t bh,
                          int64_t n, int64_t d, T scale) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  constexpr int64_t ldS = kBlockQ;
  const int64_t nqb = div_up(n, kBlockQ), nkb = div_up(n, kFwdBlockK);
  at::parallel_for(0, bh * nqb, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> qt(d * kBlockQ), st(kFwdBlockK * ldS), acc(kBlockQ * d);
    std::vector<T> m(kBlockQ), l(kBlockQ), alpha(kBlockQ), colsum(kBlockQ);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t h = task / nqb;
      const Block qb = block<T>(task % nqb, kBlockQ, n);
      pack_transposed<T>(q + (h * n + qb.i0) * d, qb.count, d, qt.data(), qb.ld);
      scale_into<T>(qt.data(), qt.data(), d * qb.ld, scale);
      std::fill(m.begin(), m.end(), -std::numeric_limits<T>::infinity());
      for (int64_t kb = 0; kb < nkb; ++kb) {
        const Block kbk = block<T>(kb, kFwdBlockK, n);
        // S^T and m_new = max(m_old, column maxima of S^T)
        std::copy(m.begin(), m.begin() + qb.ld, alpha.begin());  // m_old, for now
        gemm<T>({k + (h * n + kbk.i0) * d, d, 1, qt.data(), qb.ld, st.data(), ldS, false, m.data()},
                kbk.count, qb.ld, d);
        // P^T = exp(S^T - m_new) and its column sums, summed apart from l so
        // that no float chain runs longer than one block.
        std::fill(colsum.begin(), colsum.begin() + qb.ld, T(0));
        for (int64_t j = 0; j < kbk.count; ++j) {
          T* row = &st[j * ldS];
          for (int64_t c = 0; c < qb.ld; c += W) {
            const V p = vexp<T>(V::loadu(row + c) - V::loadu(&m[c]));
            p.store(row + c);
            (V::loadu(&colsum[c]) + p).store(&colsum[c]);
          }
        }
        // alpha = exp(m_old - m_new); l = alpha l + column sums.
        for (int64_t c = 0; c < qb.ld; c += W) {
          const V a = vexp<T>(V::loadu(&alpha[c]) - V::loadu(&m[c]));
          a.store(&alpha[c]);
          const V sum = V::loadu(&colsum[c]);
          (kb == 0 ? sum : at::vec::fmadd(V::loadu(&l[c]), a, sum)).store(&l[c]);
        }
        // acc = alpha acc + P V_j; the first block writes acc.
        if (kb > 0) {
          for (int64_t r = 0; r < qb.count; ++r)
            if (alpha[r] != T(1)) scale_into<T>(&acc[r * d], &acc[r * d], d, alpha[r]);
        }
        gemm<T>({st.data(), 1, ldS, v + (h * n + kbk.i0) * d, d, acc.data(), d, kb > 0, nullptr},
                qb.count, d, kbk.count);
      }
      for (int64_t r = 0; r < qb.count; ++r) {
        const T inv = T(1) / l[r];
        at::vec::map([inv](V x) { return x * V(inv); }, out + (h * n + qb.i0 + r) * d, &acc[r * d], d);
        lse[h * n + qb.i0 + r] = m[r] + std::log(l[r]);
      }
    }
  });
}

// ---------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------

// Groups of key blocks per head handled by separate tasks. Each task owns the
// dK, dV rows of its key blocks and adds its share of dQ into a buffer of its
// own group, so no two threads write the same memory; the groups' dQ buffers
// are summed at the end. A head is split only while the tasks cannot be
// shared evenly among the threads (and at most into 4 tasks per thread),
// since every group costs a dQ buffer.
int64_t key_groups(int64_t bh, int64_t nkb) {
  const int64_t threads = at::get_num_threads();
  int64_t g = 1;
  while (g < nkb && (bh * g) % threads != 0 && bh * g < 4 * threads) ++g;
  return g;
}

// One task per (head, group of key blocks); for each of its key blocks it
// streams every query block (FlashAttention-2, Algorithm 2).
template <typename T>
void attention_bwd_kernel(const T* dout, const T* q, const T* k, const T* v, const T* out,
                          const T* lse, T* dq_groups, T* dk, T* dv, int64_t bh, int64_t n,
                          int64_t d, int64_t groups, T scale) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  constexpr int64_t ldP = kBwdBlockK;
  const int64_t nqb = div_up(n, kBlockQ), nkb = div_up(n, kBwdBlockK);

  // delta_i = sum_e dO_ie O_ie = sum_j P_ij dP_ij, the row term of the
  // softmax backward dS = P * (dP - delta).
  std::vector<T> delta(bh * n);
  at::parallel_for(0, bh * n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      delta[r] = at::vec::map2_reduce_all<T>([](V x, V y) { return x * y; },
                                             [](V x, V y) { return x + y; }, dout + r * d,
                                             out + r * d, d);
  });

  at::parallel_for(0, bh * groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> kt(d * kBwdBlockK), vt(d * kBwdBlockK), qs(kBlockQ * d), p(kBlockQ * ldP), ds(kBlockQ * ldP);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t h = task / groups, g = task % groups;
      T* dq = dq_groups + (g * bh + h) * n * d;
      for (int64_t kb = g * nkb / groups; kb < (g + 1) * nkb / groups; ++kb) {
        const Block kbk = block<T>(kb, kBwdBlockK, n);
        const int64_t row0 = (h * n + kbk.i0) * d;
        pack_transposed<T>(k + row0, kbk.count, d, kt.data(), kbk.ld);
        pack_transposed<T>(v + row0, kbk.count, d, vt.data(), kbk.ld);
        for (int64_t i = 0; i < nqb; ++i) {
          const Block qb = block<T>(i, kBlockQ, n);
          const T* qi = q + (h * n + qb.i0) * d;
          const T* doi = dout + (h * n + qb.i0) * d;
          const T* lse_i = lse + h * n + qb.i0;
          const T* delta_i = delta.data() + h * n + qb.i0;
          const bool first = i == 0;
          // P = exp(scale Q_i K_j^T - lse); padded key columns are never read.
          scale_into<T>(qs.data(), qi, qb.count * d, scale);
          gemm<T>({qs.data(), d, 1, kt.data(), kbk.ld, p.data(), ldP, false, nullptr}, qb.count, kbk.ld, d);
          for (int64_t r = 0; r < qb.count; ++r) {
            T* pr = &p[r * ldP];
            const V vl(lse_i[r]);
            for (int64_t j = 0; j < kbk.ld; j += W) vexp<T>(V::loadu(pr + j) - vl).store(pr + j);
          }
          // dV_j += P^T dO_i
          gemm<T>({p.data(), 1, ldP, doi, d, dv + row0, d, !first, nullptr}, kbk.count, d, qb.count);
          // scale dS = scale P * (dO_i V_j^T - delta)
          gemm<T>({doi, d, 1, vt.data(), kbk.ld, ds.data(), ldP, false, nullptr}, qb.count, kbk.ld, d);
          for (int64_t r = 0; r < qb.count; ++r) {
            T* dsr = &ds[r * ldP];
            const T* pr = &p[r * ldP];
            const V vd(delta_i[r]), vs(scale);
            for (int64_t j = 0; j < kbk.ld; j += W)
              (vs * V::loadu(pr + j) * (V::loadu(dsr + j) - vd)).store(dsr + j);
          }
          // dK_j += scale dS^T Q_i;  dQ_i += scale dS K_j
          gemm<T>({ds.data(), 1, ldP, qi, d, dk + row0, d, !first, nullptr}, kbk.count, d, qb.count);
          gemm<T>({ds.data(), ldP, 1, k + row0, d, dq + qb.i0 * d, d, true, nullptr}, qb.count, d, kbk.count);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------
// Op wrappers
// ---------------------------------------------------------------------------

// float32 and float64 run as they are; half types run in float32.
at::ScalarType compute_dtype(const at::Tensor& q) {
  return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor as_compute(const at::Tensor& t, at::ScalarType dtype) {
  return t.to(dtype).contiguous();
}

std::tuple<at::Tensor, at::Tensor> attention_fwd_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                     const at::Tensor& v_in, double scale) {
  check_attention_args(q_in, k_in, v_in, scale);
  const auto dtype = compute_dtype(q_in);
  const at::Tensor q = as_compute(q_in, dtype), k = as_compute(k_in, dtype), v = as_compute(v_in, dtype);
  const int64_t b = q.size(0), heads = q.size(1), n = q.size(2), d = q.size(3);
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({b, heads, n}, q.options());
  if (q.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(dtype, "attention_fwd_cpu", [&] {
      attention_fwd_kernel<scalar_t>(q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                                     out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(), b * heads, n, d,
                                     static_cast<scalar_t>(scale));
    });
  } else if (d == 0) {
    // No features: every logit is 0, so each row's lse is log(N).
    lse.fill_(std::log(static_cast<double>(n)));
  }
  return {out.to(q_in.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& out_in, const at::Tensor& lse_in, double scale) {
  check_attention_bwd_args(grad_out_in, q_in, k_in, v_in, out_in, lse_in, scale);

  const auto dtype = compute_dtype(q_in);
  const at::Tensor q = as_compute(q_in, dtype), k = as_compute(k_in, dtype), v = as_compute(v_in, dtype);
  const at::Tensor dout = as_compute(grad_out_in, dtype), out = as_compute(out_in, dtype);
  const at::Tensor lse = lse_in.contiguous();
  const int64_t b = q.size(0), heads = q.size(1), n = q.size(2), d = q.size(3);
  at::Tensor dk = at::empty_like(k), dv = at::empty_like(v), dq;
  if (q.numel() == 0) {
    dq = at::zeros_like(q);
    dk.zero_();
    dv.zero_();
  } else {
    AT_DISPATCH_FLOATING_TYPES(dtype, "attention_bwd_cpu", [&] {
      const int64_t groups = key_groups(b * heads, div_up(n, kBwdBlockK));
      at::Tensor dq_groups = at::zeros({groups, b, heads, n, d}, q.options());
      attention_bwd_kernel<scalar_t>(dout.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                                     v.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(),
                                     dq_groups.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(),
                                     dv.data_ptr<scalar_t>(), b * heads, n, d, groups,
                                     static_cast<scalar_t>(scale));
      dq = groups == 1 ? dq_groups[0] : dq_groups.sum(0);
    });
  }
  const auto in_dtype = q_in.scalar_type();
  return {dq.to(in_dtype), dk.to(in_dtype), dv.to(in_dtype)};
}

}  // namespace
}  // namespace mcvd

TORCH_LIBRARY_IMPL(mcvd, CPU, m) {
  m.impl("attention_fwd", &mcvd::attention_fwd_cpu);
  m.impl("attention_bwd", &mcvd::attention_bwd_cpu);
}
