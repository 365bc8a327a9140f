// CPU kernel of mcvd::spatin_norm_bwd; the computation and what the kernels share are in spatin_norm.h.
#include "spatin_norm.h"

namespace mcvd {
namespace {

using namespace spatin;  // NOLINT(build/namespaces): the helpers of spatin_norm.h

// ---------------------------------------------------------------- backward

// The first backward pass at one vector: with xhat = x * r + mr,
// h1 = xhat * w + bb, h2 = h1 * (1 + gamma) + beta, h3 = h2 * S + R (S = 1 +
// scale, R = shift) and y = silu?(h3), the gradients dh3, dh2 = dh3 * S and
// dh1 = dh2 * (1 + gamma) from dy; grad_gamma = dh2 * h1, grad_beta = dh2.
template <typename V>
struct BwdValues {
  V xh, h2, dh3, dgamma, dbeta, dh1;
};

template <bool kGamma, bool kBeta, bool kSilu, typename V>
BwdValues<V> bwd_values(const V& x, const V& gamma, const V& beta, const V& dy, const V& r, const V& mr, const V& w,
                        const V& bb, const V& S, const V& R) {
  const V one(1);
  const V xh = at::vec::fmadd(x, r, mr);
  const V h1 = at::vec::fmadd(xh, w, bb);
  const V g1 = kGamma ? one + gamma : one;
  V h2 = kGamma ? h1 * g1 : h1;
  if constexpr (kBeta) h2 += beta;
  V dh3 = dy;
  if constexpr (kSilu) {
    const V h3 = at::vec::fmadd(h2, S, R);
    const V sig = one / (one + h3.neg().exp_u20());
    dh3 = dh3 * sig * at::vec::fmadd(h3, one - sig, one);
  }
  const V dh2 = dh3 * S;
  return {xh, h2, dh3, kGamma ? dh2 * h1 : V(0), dh2, kGamma ? dh2 * g1 : dh2};
}

// Per-row sums of the first backward pass, as vectors until the row ends:
// sum dh3 (shift), sum dh3 * h2 (scale), sum dh1 (bias), sum dh1 * xhat (weight).
template <typename T>
struct RowSums {
  Vec<T> dshift{0}, dscale{0}, dbias{0}, dweight{0};
  void add(const BwdValues<Vec<T>>& v) {
    dshift += v.dh3;
    dscale = at::vec::fmadd(v.dh3, v.h2, dscale);
    dbias += v.dh1;
    dweight = at::vec::fmadd(v.dh1, v.xh, dweight);
  }
};

// Second backward pass at one vector: dx = rstd * (w * dh1 - mean(w dh1) -
// xhat * mean(w dh1 xhat)) folded into dx = dh1 * k1 + x * k2 + k3.
template <typename V>
V dx_value(const V& dh1, const V& x, const V& k1, const V& k2, const V& k3) {
  return at::vec::fmadd(dh1, k1, at::vec::fmadd(x, k2, k3));
}

// First backward pass over one row: writes grad_gamma, grad_beta and dh1 (to
// the task's scratch), and accumulates sum dh3 (shift), sum dh3 * h2
// (scale), sum dh1 (bias) and sum dh1 * xhat (weight). Constants: xhat =
// x * r + mr, h1 = xhat * w + bb, S = 1 + scale, R = shift.
template <bool kGamma, bool kBeta, bool kSilu, typename T>
void bwd_row(const T* dy, const T* x, const T* gamma, const T* beta, T* dgamma, T* dbeta, T* dh1_out, int64_t n, T r,
             T mr, T w, T bb, T S, T R, RowSums<T>& row_sums) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const V vr(r), vmr(mr), vw(w), vbb(bb), vS(S), vR(R);
  RowSums<T> sums = row_sums;  // a local copy stays in registers
  // A tail lane has dy = 0, so it adds nothing to the sums.
  auto step = [&](int64_t i, int64_t k) {
    auto load = [&](const T* p) { return k == W ? V::loadu(p + i) : V::loadu(p + i, k); };
    auto store = [&](const V& v, T* p) { k == W ? v.store(p + i) : v.store(p + i, k); };
    const V g = kGamma ? load(gamma) : V(0), b = kBeta ? load(beta) : V(0);
    const auto v = bwd_values<kGamma, kBeta, kSilu>(load(x), g, b, load(dy), vr, vmr, vw, vbb, vS, vR);
    sums.add(v);
    if constexpr (kGamma) store(v.dgamma, dgamma);
    if constexpr (kBeta) store(v.dbeta, dbeta);
    store(v.dh1, dh1_out);
  };
  int64_t i = 0;
  for (; i + W <= n; i += W) step(i, W);
  if (i < n) step(i, n - i);
  row_sums = sums;
}

// dx_value over one row of a channel.
template <typename T>
void dx_row(const T* dh1, const T* x, T* dx, int64_t n, T k1, T k2, T k3) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const V v1(k1), v2(k2), v3(k3);
  int64_t i = 0;
  for (; i + W <= n; i += W) dx_value(V::loadu(dh1 + i), V::loadu(x + i), v1, v2, v3).store(dx + i);
  if (i < n) {
    const int64_t k = n - i;
    dx_value(V::loadu(dh1 + i, k), V::loadu(x + i, k), v1, v2, v3).store(dx + i, k);
  }
}

// Gradient outputs (null when the input was absent); dweight_bc and dbias_bc
// are [B, C] per-sample partials, summed over the batch after the parallel
// loop so no two tasks write one location.
template <typename scalar_t>
struct Grads {
  scalar_t *dx, *dgamma, *dbeta, *dscale, *dshift;
  double *dweight_bc, *dbias_bc;
};

template <typename scalar_t, typename stat_t>
void bwd_kernel(const scalar_t* dy, const scalar_t* x, const stat_t* mean_in, const stat_t* rstd_in,
                Optionals<scalar_t> opt, Grads<scalar_t> out, int64_t B, int64_t C, int64_t HW, int64_t G, bool silu) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t Cg = C / G, group_numel = Cg * HW;
  for_group_tasks(opt, silu, B * G, group_numel,
                  [&](auto gamma_flag, auto beta_flag, auto silu_flag, int64_t begin, int64_t end) {
    constexpr bool kGamma = decltype(gamma_flag)::value, kBeta = decltype(beta_flag)::value;
    constexpr bool kSilu = decltype(silu_flag)::value;
    Stage<scalar_t> sdy, sx, sg, sb, sdg, sdb;
    std::vector<acc_t> dh1(group_numel);  // this task's group, between the two passes
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / G, g = bg % G;
      const int64_t base = bg * group_numel;
      const double mean = mean_in[bg], rstd = rstd_in[bg];
      double sum_wdh1 = 0, sum_wdh1_xhat = 0;
      for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
        const double w = value_or(opt.weight, c, 1.0);
        const acc_t S = 1.0 + value_or(opt.scale, b * C + c, 0.0);
        const acc_t R = value_or(opt.shift, b * C + c, 0.0);
        const int64_t row = base + (c - g * Cg) * HW;
        RowSums<acc_t> sums;
        for (int64_t i = 0; i < HW; i += kBlock) {
          const int64_t len = std::min(kBlock, HW - i), at = row + i;
          scalar_t* dgamma = offset(out.dgamma, at);
          scalar_t* dbeta = offset(out.dbeta, at);
          bwd_row<kGamma, kBeta, kSilu>(
              sdy.load(dy + at, len), sx.load(x + at, len), sg.load(offset(opt.gamma, at), len),
              sb.load(offset(opt.beta, at), len), sdg.out(dgamma), sdb.out(dbeta), dh1.data() + (at - base), len,
              static_cast<acc_t>(rstd), static_cast<acc_t>(-mean * rstd), static_cast<acc_t>(w),
              static_cast<acc_t>(value_or(opt.bias, c, 0.0)), S, R, sums);
          if constexpr (kGamma) sdg.store(dgamma, len);
          if constexpr (kBeta) sdb.store(dbeta, len);
        }
        const double dbias = hsum(sums.dbias), dweight = hsum(sums.dweight);
        out.dbias_bc[b * C + c] = dbias;
        out.dweight_bc[b * C + c] = dweight;
        if (out.dscale != nullptr) out.dscale[b * C + c] = static_cast<scalar_t>(hsum(sums.dscale));
        if (out.dshift != nullptr) out.dshift[b * C + c] = static_cast<scalar_t>(hsum(sums.dshift));
        sum_wdh1 += w * dbias;
        sum_wdh1_xhat += w * dweight;
      }
      const double m1 = sum_wdh1 / group_numel, m2 = sum_wdh1_xhat / group_numel;
      const acc_t k2 = -rstd * rstd * m2, k3 = -rstd * (m1 - mean * rstd * m2);
      for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
        const acc_t k1 = rstd * value_or(opt.weight, c, 1.0);
        const int64_t row = base + (c - g * Cg) * HW;
        for (int64_t i = 0; i < HW; i += kBlock) {
          const int64_t len = std::min(kBlock, HW - i), at = row + i;
          dx_row(dh1.data() + (at - base), sx.load(x + at, len), sdy.out(out.dx + at), len, k1, k2, k3);
          sdy.store(out.dx + at, len);
        }
      }
    }
  });
}

// The backward on channels_last tensors (dy, x, gamma, beta; dx, dgamma and
// dbeta written so too): bwd_kernel's two passes, pixel by pixel with the
// channels in the vector lanes, a task a chunk of pixels of one sample
// (Chunks). The first pass keeps one vector of channels' four row sums in
// registers over the chunk's pixels and adds them per part in double; dh1
// goes to `scratch` (dx's own memory for float and double), which the second
// pass turns into dx in place.
template <typename scalar_t, typename stat_t>
void bwd_kernel_nhwc(const scalar_t* dy, const scalar_t* x, const stat_t* mean_in, const stat_t* rstd_in,
                     Optionals<scalar_t> opt, Grads<scalar_t> out, at::opmath_type<scalar_t>* scratch, int64_t B,
                     int64_t C, int64_t HW, int64_t G, bool silu) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vec<acc_t>;
  constexpr int64_t W = V::size();
  const Chunks ch(B, C, HW);
  const int64_t Cg = C / G, parts = part_count(ch.tasks);
  // Per (sample, channel) constants of the first pass: xhat = x r + mr, h1 = xhat w + bb, S, R.
  std::vector<acc_t> r(B * C), mr(B * C), w(B * C), bb(B * C), S(B * C), R(B * C);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t c = 0; c < C; ++c) {
      const int64_t bc = b * C + c, bg = b * G + c / Cg;
      r[bc] = rstd_in[bg], mr[bc] = -static_cast<double>(mean_in[bg]) * rstd_in[bg];
      w[bc] = value_or(opt.weight, c, 1.0), bb[bc] = value_or(opt.bias, c, 0.0);
      S[bc] = 1.0 + value_or(opt.scale, bc, 0.0), R[bc] = value_or(opt.shift, bc, 0.0);
    }
  }
  // Per part, sample and channel: sums of dh3 (shift), dh3 h2 (scale), dh1 (bias), dh1 xhat (weight).
  std::vector<double> sums(4 * parts * B * C, 0.0);
  with_flags(opt.gamma != nullptr, opt.beta != nullptr, silu, [&](auto gamma_flag, auto beta_flag, auto silu_flag) {
    constexpr bool kGamma = decltype(gamma_flag)::value, kBeta = decltype(beta_flag)::value;
    constexpr bool kSilu = decltype(silu_flag)::value;
    for_parts(ch.tasks, ch.grain, [&](int64_t part, int64_t task) {
      const int64_t b = ch.sample(task), first = ch.first(task), last = ch.last(task);
      for (int64_t c = 0; c < C; c += W) {
        const int64_t k = std::min(W, C - c), bc = b * C + c;
        const V vr = V::loadu(&r[bc], k), vmr = V::loadu(&mr[bc], k), vw = V::loadu(&w[bc], k);
        const V vbb = V::loadu(&bb[bc], k), vS = V::loadu(&S[bc], k), vR = V::loadu(&R[bc], k);
        RowSums<acc_t> row;
        for (int64_t p = first; p < last; ++p) {
          const int64_t at = (b * HW + p) * C + c;
          const V g = kGamma ? load_lanes<acc_t>(opt.gamma + at, k) : V(0);
          const V be = kBeta ? load_lanes<acc_t>(opt.beta + at, k) : V(0);
          // dy is 0 in lanes past k, so those add nothing.
          const auto v = bwd_values<kGamma, kBeta, kSilu>(load_lanes<acc_t>(x + at, k), g, be,
                                                          load_lanes<acc_t>(dy + at, k), vr, vmr, vw, vbb, vS, vR);
          row.add(v);
          if constexpr (kGamma) store_lanes(v.dgamma, out.dgamma + at, k);
          if constexpr (kBeta) store_lanes(v.dbeta, out.dbeta + at, k);
          (k == W) ? v.dh1.store(scratch + at) : v.dh1.store(scratch + at, k);
        }
        __at_align__ acc_t lanes[4][W];
        row.dshift.store(lanes[0]);
        row.dscale.store(lanes[1]);
        row.dbias.store(lanes[2]);
        row.dweight.store(lanes[3]);
        for (int j = 0; j < 4; ++j) {
          double* t = sums.data() + ((j * parts + part) * B + b) * C + c;
          for (int64_t i = 0; i < k; ++i) t[i] += lanes[j][i];
        }
      }
    });
  });
  // The row sums over the parts; per group, dx = dh1 k1 + x k2 + k3 as in bwd_kernel.
  auto total = [&](int j, int64_t bc) {
    double s = 0;
    for (int64_t t = 0; t < parts; ++t) s += sums[(j * parts + t) * B * C + bc];
    return s;
  };
  std::vector<acc_t> k1(B * C), k2(B * C), k3(B * C);
  const double n = static_cast<double>(Cg * HW);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t g = 0; g < G; ++g) {
      double sum_wdh1 = 0, sum_wdh1_xhat = 0;
      for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
        const int64_t bc = b * C + c;
        const double dbias = total(2, bc), dweight = total(3, bc);
        out.dbias_bc[bc] = dbias;
        out.dweight_bc[bc] = dweight;
        if (out.dshift != nullptr) out.dshift[bc] = static_cast<scalar_t>(total(0, bc));
        if (out.dscale != nullptr) out.dscale[bc] = static_cast<scalar_t>(total(1, bc));
        sum_wdh1 += w[bc] * dbias;
        sum_wdh1_xhat += w[bc] * dweight;
      }
      const double mean = mean_in[b * G + g], rstd = rstd_in[b * G + g];
      const double m1 = sum_wdh1 / n, m2 = sum_wdh1_xhat / n;
      for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
        const int64_t bc = b * C + c;
        k1[bc] = rstd * w[bc], k2[bc] = -rstd * rstd * m2, k3[bc] = -rstd * (m1 - mean * rstd * m2);
      }
    }
  }
  for_each_vector<acc_t>(ch, C, [&](int64_t at, int64_t bc, int64_t k) {
    store_lanes(dx_value(V::loadu(scratch + at, k), load_lanes<acc_t>(x + at, k), V::loadu(&k1[bc], k),
                         V::loadu(&k2[bc], k), V::loadu(&k3[bc], k)),
                out.dx + at, k);
  });
}

// ---------------------------------------------------------------- op entry point

// The [C] gradient of weight or bias: the [B, C] per-sample partials summed
// over the batch (in place, in double) and cast. A loop rather than
// sum(0).to(dtype): at the network's small shapes those two ATen calls cost
// more than the backward kernel.
at::Tensor batch_sum(at::Tensor& partials, at::ScalarType dtype) {
  const int64_t B = partials.size(0), C = partials.size(1);
  if (B == 0) return at::zeros({C}, partials.options().dtype(dtype));
  double* p = partials.data_ptr<double>();
  for (int64_t b = 1; b < B; ++b) {
    for (int64_t c = 0; c < C; ++c) p[c] += p[b * C + c];
  }
  return partials[0].to(dtype, /*non_blocking=*/false, /*copy=*/true);  // a copy also for double: no view of scratch
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> spatin_norm_bwd_cpu(
    const at::Tensor& grad_y_in, const at::Tensor& x_in, const at::Tensor& mean_in, const at::Tensor& rstd_in,
    int64_t num_groups, const OptTensor& weight, const OptTensor& bias, const OptTensor& gamma, const OptTensor& beta,
    const OptTensor& scale, const OptTensor& shift, bool silu) {
  check_spatin_norm_bwd_args(grad_y_in, x_in, mean_in, rstd_in, num_groups, weight, bias, gamma, beta, scale, shift);
  const int64_t B = x_in.size(0), C = x_in.size(1), HW = x_in.size(2) * x_in.size(3);
  // As the forward: x's layout (channels_last or contiguous) for every [B, C, H, W] tensor, in and out.
  const at::MemoryFormat format = spatin_norm_output_format(x_in);
  const bool nhwc = format == at::MemoryFormat::ChannelsLast;
  const at::Tensor x = x_in.contiguous(format), grad_y = grad_y_in.contiguous(format);
  const at::Tensor mean = mean_in.contiguous(), rstd = rstd_in.contiguous();
  const ContigOptionals opt(weight, bias, gamma, beta, scale, shift, format);
  // Each absent gradient is its own empty tensor: outputs must not alias.
  auto absent = [&] { return at::empty({0}, x.options()); };
  auto like_or_absent = [&](const at::Tensor& t) {
    if (!t.defined()) return absent();
    return t.dim() == 4 ? at::empty_like(t, format) : at::empty_like(t);
  };
  at::Tensor grad_x = at::empty_like(x, format);
  at::Tensor grad_gamma = like_or_absent(opt.gamma), grad_beta = like_or_absent(opt.beta);
  at::Tensor grad_scale = like_or_absent(opt.scale), grad_shift = like_or_absent(opt.shift);
  at::Tensor dweight_bc = at::empty({B, C}, x.options().dtype(at::kDouble));
  at::Tensor dbias_bc = at::empty_like(dweight_bc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "spatin_norm_bwd", [&] {
    using stat_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const Grads<scalar_t> grads{grad_x.data_ptr<scalar_t>(),        data_or_null<scalar_t>(grad_gamma),
                                data_or_null<scalar_t>(grad_beta),  data_or_null<scalar_t>(grad_scale),
                                data_or_null<scalar_t>(grad_shift), dweight_bc.data_ptr<double>(),
                                dbias_bc.data_ptr<double>()};
    if (nhwc) {
      // dh1 between the passes: in dx's memory when it holds the compute type, else in a buffer.
      using acc_t = at::opmath_type<scalar_t>;
      std::vector<acc_t> buffer(std::is_same_v<scalar_t, acc_t> ? 0 : x.numel());
      acc_t* scratch = std::is_same_v<scalar_t, acc_t> ? reinterpret_cast<acc_t*>(grads.dx) : buffer.data();
      bwd_kernel_nhwc<scalar_t, stat_t>(grad_y.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                        mean.const_data_ptr<stat_t>(), rstd.const_data_ptr<stat_t>(),
                                        opt.ptrs<scalar_t>(), grads, scratch, B, C, HW, num_groups, silu);
    } else {
      bwd_kernel<scalar_t, stat_t>(grad_y.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                   mean.const_data_ptr<stat_t>(), rstd.const_data_ptr<stat_t>(), opt.ptrs<scalar_t>(),
                                   grads, B, C, HW, num_groups, silu);
    }
  });
  at::Tensor grad_weight = opt.weight.defined() ? batch_sum(dweight_bc, x.scalar_type()) : absent();
  at::Tensor grad_bias = opt.bias.defined() ? batch_sum(dbias_bc, x.scalar_type()) : absent();
  return {grad_x, grad_weight, grad_bias, grad_gamma, grad_beta, grad_scale, grad_shift};
}

}  // namespace
}  // namespace mcvd

TORCH_LIBRARY_IMPL(mcvd, CPU, m) {
  m.impl("spatin_norm_bwd", &mcvd::spatin_norm_bwd_cpu);
}
