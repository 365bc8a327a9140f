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
// operand is read one row of vectors at a time, so the keys and values that
// appear transposed in q k^T and dO v^T are repacked once per call into
// per-block [D, keys] panels.
//
// float32 and float64 compute in their own precision; bfloat16 and float16
// are converted to float32 on entry and the results rounded once on exit.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "checks.h"

namespace mcvd {
namespace {

using at::vec::Vectorized;

// Query rows per task and keys per streamed block. A multiple of the GEMM's
// 6 rows and 2 vectors; the score tile (kBlockQ x kBlockK) and the
// accumulator stay in the L1/L2 of one core.
constexpr int64_t kBlockQ = 96;
constexpr int64_t kBlockK = 96;
constexpr int kTileRows = 6;

int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------
// C[M, N] = A[M, K] B[K, N] (+ C if accumulate). Scale factors are folded
// into an operand beforehand: an alpha live across the k loop would take the
// 16th vector register and spill a B vector.
// A(i, k) = a[i * a_rs + k * a_cs], so A may be a transposed view;
// B(k, j) = b[k * ldb + j] is read as whole vectors, the last one of a row
// partially when N is not a multiple of the vector width.
// ---------------------------------------------------------------------------

template <typename T, int MR, int NV, bool Partial>
void gemm_tile(int64_t K, const T* a, int64_t a_rs, int64_t a_cs, const T* b,
               int64_t ldb, T* c, int64_t ldc, bool accumulate, int64_t tail) {
  using Vec = Vectorized<T>;
  constexpr int64_t W = Vec::size();
  Vec sum[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) sum[i][j] = Vec(T(0));
  for (int64_t k = 0; k < K; ++k) {
    const T* bk = b + k * ldb;
    Vec bv[NV];
    for (int j = 0; j < NV; ++j)
      bv[j] = (Partial && j == NV - 1) ? Vec::loadu(bk + j * W, tail)
                                       : Vec::loadu(bk + j * W);
    const T* ak = a + k * a_cs;
    for (int i = 0; i < MR; ++i) {
      const Vec ai(ak[i * a_rs]);
      for (int j = 0; j < NV; ++j) sum[i][j] = at::vec::fmadd(ai, bv[j], sum[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    T* ci = c + i * ldc;
    for (int j = 0; j < NV; ++j) {
      const int64_t n = (Partial && j == NV - 1) ? tail : W;
      Vec r = sum[i][j];
      if (accumulate) r = r + Vec::loadu(ci + j * W, n);
      r.store(ci + j * W, n);
    }
  }
}

template <typename T, int NV, bool Partial>
void gemm_panel(int64_t M, int64_t K, const T* a, int64_t a_rs, int64_t a_cs,
                const T* b, int64_t ldb, T* c, int64_t ldc, bool accumulate,
                int64_t tail) {
  int64_t i = 0;
  for (; i + kTileRows <= M; i += kTileRows)
    gemm_tile<T, kTileRows, NV, Partial>(K, a + i * a_rs, a_rs, a_cs, b, ldb,
                                         c + i * ldc, ldc, accumulate, tail);
  const T* ai = a + i * a_rs;
  T* ci = c + i * ldc;
  switch (M - i) {
    case 0: break;
    case 1: gemm_tile<T, 1, NV, Partial>(K, ai, a_rs, a_cs, b, ldb, ci, ldc, accumulate, tail); break;
    case 2: gemm_tile<T, 2, NV, Partial>(K, ai, a_rs, a_cs, b, ldb, ci, ldc, accumulate, tail); break;
    case 3: gemm_tile<T, 3, NV, Partial>(K, ai, a_rs, a_cs, b, ldb, ci, ldc, accumulate, tail); break;
    case 4: gemm_tile<T, 4, NV, Partial>(K, ai, a_rs, a_cs, b, ldb, ci, ldc, accumulate, tail); break;
    case 5: gemm_tile<T, 5, NV, Partial>(K, ai, a_rs, a_cs, b, ldb, ci, ldc, accumulate, tail); break;
    default: TORCH_INTERNAL_ASSERT(false, "gemm_panel: row tail ", M - i);
  }
}

template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, const T* a, int64_t a_rs,
          int64_t a_cs, const T* b, int64_t ldb, T* c, int64_t ldc,
          bool accumulate) {
  constexpr int64_t W = Vectorized<T>::size();
  // Column panels of two vectors, so that a panel of B (K x 2W) stays in L1
  // while every row tile of A passes over it.
  for (int64_t j = 0; j < N; j += 2 * W) {
    const int64_t cols = std::min(2 * W, N - j);
    const int64_t tail = cols - (cols > W ? W : 0);  // valid lanes of the last vector
    const bool full = tail == W;
    if (cols > W) {
      if (full) gemm_panel<T, 2, false>(M, K, a, a_rs, a_cs, b + j, ldb, c + j, ldc, accumulate, tail);
      else gemm_panel<T, 2, true>(M, K, a, a_rs, a_cs, b + j, ldb, c + j, ldc, accumulate, tail);
    } else {
      if (full) gemm_panel<T, 1, false>(M, K, a, a_rs, a_cs, b + j, ldb, c + j, ldc, accumulate, tail);
      else gemm_panel<T, 1, true>(M, K, a, a_rs, a_cs, b + j, ldb, c + j, ldc, accumulate, tail);
    }
  }
}

// ---------------------------------------------------------------------------
// Layout shared by forward and backward.
// ---------------------------------------------------------------------------

struct Layout {
  int64_t bh, n, d;   // batch * heads, positions, head dim
  int64_t nkb;        // key blocks
  int64_t panel;      // elements between two key blocks' panels
};

Layout make_layout(int64_t bh, int64_t n, int64_t d) {
  return {bh, n, d, div_up(n, kBlockK), kBlockK * d};
}

// Keys of block kb: first index and count; their panel's row length (the
// count rounded up to whole vectors, the padding zero).
struct KeyBlock {
  int64_t j0, nk, ld;
};

template <typename T>
KeyBlock key_block(const Layout& L, int64_t kb) {
  constexpr int64_t W = Vectorized<T>::size();
  const int64_t j0 = kb * kBlockK;
  const int64_t nk = std::min(kBlockK, L.n - j0);
  return {j0, nk, div_up(nk, W) * W};
}

// x: [bh, n, d] -> panels [bh, nkb, d, ld(kb)] (block kb at offset
// (bh * nkb + kb) * panel), so that x^T of a key block is a row-major
// [d, keys] matrix with vector-aligned rows. Transposed in 8 x 8 tiles
// (in registers for float32; an element-wise loop costs several percent of
// the forward at N = 256).
template <typename T>
void pack_transposed(const T* x, T* panels, const Layout& L) {
  constexpr int64_t kTile = 8;
  at::parallel_for(0, L.bh * L.nkb, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t h = t / L.nkb, kb = t % L.nkb;
      const KeyBlock blk = key_block<T>(L, kb);
      const T* src = x + (h * L.n + blk.j0) * L.d;
      T* dst = panels + t * L.panel;
      for (int64_t j = 0; j < blk.nk; j += kTile) {
        const int rows = static_cast<int>(std::min(kTile, blk.nk - j));
        for (int64_t e = 0; e < L.d; e += kTile) {
          const int cols = static_cast<int>(std::min(kTile, L.d - e));
          if (rows == kTile && cols == kTile)
            at::vec::transpose_mxn<T, kTile, kTile>(src + j * L.d + e, L.d, dst + e * blk.ld + j, blk.ld);
          else
            at::vec::transpose_mxn<T>(src + j * L.d + e, L.d, dst + e * blk.ld + j, blk.ld, rows, cols);
        }
      }
      for (int64_t e = 0; blk.ld > blk.nk && e < L.d; ++e)
        std::fill(dst + e * blk.ld + blk.nk, dst + (e + 1) * blk.ld, T(0));
    }
  });
}

template <typename T>
void scaled_copy(const T* src, T* dst, int64_t count, T scale) {
  at::vec::map([scale](Vectorized<T> x) { return x * Vectorized<T>(scale); }, dst, src, count);
}

template <typename T>
Vectorized<T> vexp(const Vectorized<T>& x) {
  return x.exp_u20();
}

// ---------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------

template <typename T>
void attention_fwd_kernel(const T* q, const T* k_panels, const T* v, T* out,
                          T* lse, const Layout& L, T scale) {
  using Vec = Vectorized<T>;
  constexpr int64_t W = Vec::size();
  const int64_t n = L.n, d = L.d;
  const int64_t nqb = div_up(n, kBlockQ);
  at::parallel_for(0, L.bh * nqb, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> qs(kBlockQ * d), s(kBlockQ * kBlockK), acc(kBlockQ * d), m(kBlockQ), l(kBlockQ);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t h = task / nqb, i0 = (task % nqb) * kBlockQ;
      const int64_t mq = std::min(kBlockQ, n - i0);
      scaled_copy<T>(q + (h * n + i0) * d, qs.data(), mq * d, scale);
      std::fill(m.begin(), m.end(), -std::numeric_limits<T>::infinity());
      std::fill(l.begin(), l.end(), T(0));
      for (int64_t kb = 0; kb < L.nkb; ++kb) {
        const KeyBlock blk = key_block<T>(L, kb);
        gemm<T>(mq, blk.ld, d, qs.data(), d, 1, k_panels + (h * L.nkb + kb) * L.panel, blk.ld,
                s.data(), kBlockK, false);
        for (int64_t r = 0; r < mq; ++r) {
          T* sr = s.data() + r * kBlockK;
          // Padded keys score -inf, so they get probability exp(-inf) = 0.
          std::fill(sr + blk.nk, sr + blk.ld, -std::numeric_limits<T>::infinity());
          Vec vmax(-std::numeric_limits<T>::infinity());
          for (int64_t j = 0; j < blk.ld; j += W) vmax = at::vec::maximum(vmax, Vec::loadu(sr + j));
          const T m_new = std::max(m[r], at::vec::vec_reduce_all<T>(
                                             [](Vec& x, Vec& y) { return at::vec::maximum(x, y); }, vmax));
          const Vec vm(m_new);
          Vec vsum(T(0));
          for (int64_t j = 0; j < blk.ld; j += W) {
            const Vec p = vexp<T>(Vec::loadu(sr + j) - vm);
            p.store(sr + j);
            vsum = vsum + p;
          }
          // The first block starts from m = -inf, l = 0: alpha = 0, and acc is
          // written, not rescaled, by its P V product below.
          const T alpha = std::exp(m[r] - m_new);
          l[r] = l[r] * alpha + at::vec::vec_reduce_all<T>([](Vec& x, Vec& y) { return x + y; }, vsum);
          m[r] = m_new;
          if (kb > 0 && alpha != T(1)) {
            T* ar = acc.data() + r * d;
            at::vec::map([alpha](Vec x) { return x * Vec(alpha); }, ar, ar, d);
          }
        }
        gemm<T>(mq, d, blk.nk, s.data(), kBlockK, 1, v + (h * n + blk.j0) * d, d, acc.data(), d,
                kb > 0);
      }
      for (int64_t r = 0; r < mq; ++r) {
        const T inv = T(1) / l[r];
        at::vec::map([inv](Vec x) { return x * Vec(inv); }, out + (h * n + i0 + r) * d,
                     acc.data() + r * d, d);
        lse[h * n + i0 + r] = m[r] + std::log(l[r]);
      }
    }
  });
}

// ---------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------

// Key blocks per head handled by separate tasks. Each task owns the dK, dV
// rows of its key blocks and adds its share of dQ into a buffer of its own
// group, so no two threads write the same memory; the groups' dQ buffers are
// summed at the end. More groups than one per head only when there are fewer
// heads than needed to keep every thread busy.
int64_t key_groups(int64_t bh, int64_t nkb) {
  const int64_t threads = at::get_num_threads();
  int64_t g = 1;
  while (g < nkb && (bh * g) % threads != 0 && bh * g < 4 * threads) ++g;
  return g;
}

template <typename T>
void attention_bwd_kernel(const T* dout, const T* q, const T* k, const T* v,
                          const T* out, const T* lse, const T* k_panels,
                          const T* v_panels, T* dq_groups, T* dk, T* dv,
                          const Layout& L, int64_t groups, T scale) {
  using Vec = Vectorized<T>;
  constexpr int64_t W = Vec::size();
  const int64_t n = L.n, d = L.d;
  const int64_t nqb = div_up(n, kBlockQ);

  // delta_i = sum_e dO_ie O_ie = sum_j P_ij dP_ij, the row term of the
  // softmax backward dS = P * (dP - delta).
  std::vector<T> delta(L.bh * n);
  at::parallel_for(0, L.bh * n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      delta[r] = at::vec::map2_reduce_all<T>(
          [](Vec x, Vec y) { return x * y; }, [](Vec x, Vec y) { return x + y; },
          dout + r * d, out + r * d, d);
  });

  at::parallel_for(0, L.bh * groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> qs(kBlockQ * d), p(kBlockQ * kBlockK), ds(kBlockQ * kBlockK);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t h = task / groups, g = task % groups;
      T* dq = dq_groups + (g * L.bh + h) * n * d;
      for (int64_t kb = g * L.nkb / groups; kb < (g + 1) * L.nkb / groups; ++kb) {
        const KeyBlock blk = key_block<T>(L, kb);
        const T* kt = k_panels + (h * L.nkb + kb) * L.panel;
        const T* vt = v_panels + (h * L.nkb + kb) * L.panel;
        const int64_t row0 = (h * n + blk.j0) * d;
        for (int64_t qb = 0; qb < nqb; ++qb) {
          const int64_t i0 = qb * kBlockQ, mq = std::min(kBlockQ, n - i0);
          const T* qi = q + (h * n + i0) * d;
          const T* doi = dout + (h * n + i0) * d;
          const T* lse_i = lse + h * n + i0;
          const T* delta_i = delta.data() + h * n + i0;
          const bool first = qb == 0;
          // P = exp(scale q k^T - lse); padded key columns are never read.
          scaled_copy<T>(qi, qs.data(), mq * d, scale);
          gemm<T>(mq, blk.ld, d, qs.data(), d, 1, kt, blk.ld, p.data(), kBlockK, false);
          for (int64_t r = 0; r < mq; ++r) {
            T* pr = p.data() + r * kBlockK;
            const Vec vl(lse_i[r]);
            for (int64_t j = 0; j < blk.ld; j += W) vexp<T>(Vec::loadu(pr + j) - vl).store(pr + j);
          }
          // dV_j += P^T dO_i
          gemm<T>(blk.nk, d, mq, p.data(), 1, kBlockK, doi, d, dv + row0, d, !first);
          // scale dS = scale P * (dO_i V_j^T - delta)
          gemm<T>(mq, blk.ld, d, doi, d, 1, vt, blk.ld, ds.data(), kBlockK, false);
          for (int64_t r = 0; r < mq; ++r) {
            T* dsr = ds.data() + r * kBlockK;
            const T* pr = p.data() + r * kBlockK;
            const Vec vd(delta_i[r]), vs(scale);
            for (int64_t j = 0; j < blk.ld; j += W)
              (vs * Vec::loadu(pr + j) * (Vec::loadu(dsr + j) - vd)).store(dsr + j);
          }
          // dK_j += scale dS^T Q_i;  dQ_i += scale dS K_j
          gemm<T>(blk.nk, d, mq, ds.data(), 1, kBlockK, qi, d, dk + row0, d, !first);
          gemm<T>(mq, d, blk.nk, ds.data(), kBlockK, 1, k + row0, d, dq + i0 * d, d, true);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------
// Op wrappers
// ---------------------------------------------------------------------------

// In the order of mcvd/ops/_checks.py check_like: device, dtype, shape.
void check_like_q(const at::Tensor& t, const char* name, const at::Tensor& q) {
  check_same_device(t, name, q, "q");
  check_same_dtype(t, name, q, "q");
  check_shape(t, name, q.sizes());
}

void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_rank(q, "q", 4, "[B, heads, N, D]");
  check_float(q, "q");
  check_like_q(k, "k", q);
  check_like_q(v, "v", q);
}

void check_scale(double scale) {
  TORCH_CHECK(std::isfinite(scale), "scale: expected a finite float, got ", scale);
}

// Dtypes as Python prints them, like the messages of mcvd/ops/_checks.py.
std::string py_dtype(at::ScalarType t) {
  return "torch." + std::string(c10::getDtypeNames(t).first);
}

// float32 and float64 run as they are; half types run in float32.
at::ScalarType compute_dtype(const at::Tensor& q) {
  return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor as_compute(const at::Tensor& t, at::ScalarType dtype) {
  return MCVD_CONTIG(t.to(dtype));
}

template <typename T>
at::Tensor packed_panels(const at::Tensor& x, const Layout& L) {
  at::Tensor panels = at::empty({L.bh * L.nkb * L.panel}, x.options());
  pack_transposed<T>(x.data_ptr<T>(), panels.data_ptr<T>(), L);
  return panels;
}

std::tuple<at::Tensor, at::Tensor> attention_fwd_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                     const at::Tensor& v_in, double scale) {
  check_qkv(q_in, k_in, v_in);
  check_scale(scale);
  const auto dtype = compute_dtype(q_in);
  const at::Tensor q = as_compute(q_in, dtype), k = as_compute(k_in, dtype), v = as_compute(v_in, dtype);
  const int64_t b = q.size(0), heads = q.size(1), n = q.size(2), d = q.size(3);
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({b, heads, n}, q.options());
  if (q.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(dtype, "attention_fwd_cpu", [&] {
      const Layout L = make_layout(b * heads, n, d);
      const at::Tensor k_panels = packed_panels<scalar_t>(k, L);
      attention_fwd_kernel<scalar_t>(q.data_ptr<scalar_t>(), k_panels.data_ptr<scalar_t>(),
                                     v.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                     lse.data_ptr<scalar_t>(), L, static_cast<scalar_t>(scale));
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
  check_qkv(q_in, k_in, v_in);
  check_like_q(grad_out_in, "grad_out", q_in);
  check_like_q(out_in, "out", q_in);
  const auto dtype = compute_dtype(q_in);
  check_same_device(lse_in, "lse", q_in, "q");
  TORCH_CHECK(lse_in.scalar_type() == dtype, "lse: expected dtype ", py_dtype(dtype),
              " (float64 for float64 q, else float32), got ", py_dtype(lse_in.scalar_type()));
  check_shape(lse_in, "lse", q_in.sizes().slice(0, 3));
  check_scale(scale);

  const at::Tensor q = as_compute(q_in, dtype), k = as_compute(k_in, dtype), v = as_compute(v_in, dtype);
  const at::Tensor dout = as_compute(grad_out_in, dtype), out = as_compute(out_in, dtype);
  const at::Tensor lse = MCVD_CONTIG(lse_in);
  const int64_t b = q.size(0), heads = q.size(1), n = q.size(2), d = q.size(3);
  at::Tensor dk = at::empty_like(k), dv = at::empty_like(v), dq;
  if (q.numel() == 0) {
    dq = at::zeros_like(q);
    dk.zero_();
    dv.zero_();
  } else {
    AT_DISPATCH_FLOATING_TYPES(dtype, "attention_bwd_cpu", [&] {
      const Layout L = make_layout(b * heads, n, d);
      const int64_t groups = key_groups(L.bh, L.nkb);
      const at::Tensor k_panels = packed_panels<scalar_t>(k, L);
      const at::Tensor v_panels = packed_panels<scalar_t>(v, L);
      at::Tensor dq_groups = at::zeros({groups, b, heads, n, d}, q.options());
      attention_bwd_kernel<scalar_t>(
          dout.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
          v.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(),
          k_panels.data_ptr<scalar_t>(), v_panels.data_ptr<scalar_t>(), dq_groups.data_ptr<scalar_t>(),
          dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(), L, groups, static_cast<scalar_t>(scale));
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
