// CPU kernel of mcvd::spatin_norm_fwd; the computation and what the kernels share are in spatin_norm.h.
#include "spatin_norm.h"

namespace mcvd {
namespace {

using namespace spatin;  // NOLINT(build/namespaces): the helpers of spatin_norm.h

// ---------------------------------------------------------------- statistics

// Count, mean and sum of squared deviations (M2) of a set of values.
struct Moments {
  double n = 0, mean = 0, m2 = 0;
  // Chan et al.'s pairwise combination: exact in exact arithmetic, and free
  // of the cancellation of sum(x^2) - n * mean^2.
  void add(const Moments& o) {
    const double total = n + o.n;
    if (total == 0) return;
    const double delta = o.mean - mean;
    mean += delta * o.n / total;
    m2 += o.m2 + delta * delta * n * o.n / total;
    n = total;
  }
};

// Moments of one block in two passes over L1-resident data: deviations are
// taken from the block's own mean, and the sum of deviations corrects for
// that mean's rounding.
template <typename T>
Moments block_moments(const T* p, int64_t n) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  V s0(0), s1(0);
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    s0 += V::loadu(p + i);
    s1 += V::loadu(p + i + W);
  }
  for (; i < n; i += W) s0 += V::loadu(p + i, std::min(W, n - i));  // zero-filled tail
  const T m = static_cast<T>(hsum(s0 + s1) / static_cast<double>(n));
  const V vm(m);
  V d_sum(0), d_sq(0);
  for (i = 0; i + W <= n; i += W) {
    const V d = V::loadu(p + i) - vm;
    d_sum += d;
    d_sq = at::vec::fmadd(d, d, d_sq);
  }
  if (i < n) {
    const int64_t k = n - i;
    const V d = V::set(V(0), V::loadu(p + i, k) - vm, k);
    d_sum += d;
    d_sq = at::vec::fmadd(d, d, d_sq);
  }
  const double sd = hsum(d_sum), sq = hsum(d_sq);
  return {static_cast<double>(n), m + sd / n, sq - sd * sd / n};
}

template <typename scalar_t>
Moments group_moments(const scalar_t* x, int64_t n) {
  Stage<scalar_t> sx;
  Moments total;
  for (int64_t i = 0; i < n; i += kBlock) {
    const int64_t len = std::min(kBlock, n - i);
    total.add(block_moments(sx.load(x + i, len), len));
  }
  return total;
}

// ---------------------------------------------------------------- forward

// y = silu?(h3) for one vector. The per-channel affine, the GroupNorm
// statistics and scale are folded into u = x * P + Q (= h1 * S); then
// h3 = u * (1 + gamma) + R + beta * S, with S = 1 + scale, R = shift.
template <bool kGamma, bool kBeta, bool kSilu, typename V>
V fwd_value(const V& x, const V& gamma, const V& beta, const V& P, const V& Q, const V& R, const V& S) {
  V u = at::vec::fmadd(x, P, Q);
  if constexpr (kGamma) u = at::vec::fmadd(u, gamma, u + R);
  if constexpr (kBeta) u = at::vec::fmadd(beta, S, u);
  if constexpr (kSilu) u = u / (V(1) + u.neg().exp_u20());
  return u;
}

// fwd_value over one row of a channel.
template <bool kGamma, bool kBeta, bool kSilu, typename T>
void fwd_row(const T* x, const T* gamma, const T* beta, T* y, int64_t n, T P, T Q, T R, T S) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const V vP(P), vQ(Q), vR(R), vS(S);
  auto h3 = [&](const V& xv, const V& g, const V& b) {
    return fwd_value<kGamma, kBeta, kSilu>(xv, g, b, vP, vQ, vR, vS);
  };
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const V g = kGamma ? V::loadu(gamma + i) : V(0);
    const V b = kBeta ? V::loadu(beta + i) : V(0);
    h3(V::loadu(x + i), g, b).store(y + i);
  }
  if (i < n) {
    const int64_t k = n - i;
    const V g = kGamma ? V::loadu(gamma + i, k) : V(0);
    const V b = kBeta ? V::loadu(beta + i, k) : V(0);
    h3(V::loadu(x + i, k), g, b).store(y + i, k);
  }
}

template <typename scalar_t, typename stat_t>
void fwd_kernel(const scalar_t* x, Optionals<scalar_t> opt, scalar_t* y, stat_t* mean_out, stat_t* rstd_out, int64_t B,
                int64_t C, int64_t HW, int64_t G, double eps, bool silu) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t Cg = C / G, group_numel = Cg * HW;
  for_group_tasks(opt, silu, B * G, group_numel,
                  [&](auto gamma_flag, auto beta_flag, auto silu_flag, int64_t begin, int64_t end) {
    constexpr bool kGamma = decltype(gamma_flag)::value, kBeta = decltype(beta_flag)::value;
    constexpr bool kSilu = decltype(silu_flag)::value;
    Stage<scalar_t> sx, sg, sb, sy;
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / G, g = bg % G;
      const int64_t base = bg * group_numel;
      const Moments m = group_moments(x + base, group_numel);
      const double var = group_numel > 0 ? std::max(m.m2 / group_numel, 0.0) : 0.0;
      // The stored (rounded) statistics are the ones used here and in the
      // backward, so forward and backward see the same normalisation.
      mean_out[bg] = static_cast<stat_t>(m.mean);
      rstd_out[bg] = static_cast<stat_t>(1.0 / std::sqrt(var + eps));
      const double mean = mean_out[bg], rstd = rstd_out[bg];
      for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
        const double a = rstd * value_or(opt.weight, c, 1.0);
        const double h1_0 = value_or(opt.bias, c, 0.0) - mean * a;  // h1 = x * a + h1_0
        const double S = 1.0 + value_or(opt.scale, b * C + c, 0.0);
        const double R = value_or(opt.shift, b * C + c, 0.0);
        const acc_t P = a * S, Q = h1_0 * S + (kGamma ? 0.0 : R);
        const int64_t row = base + (c - g * Cg) * HW;
        for (int64_t i = 0; i < HW; i += kBlock) {
          const int64_t len = std::min(kBlock, HW - i), at = row + i;
          fwd_row<kGamma, kBeta, kSilu>(sx.load(x + at, len), sg.load(offset(opt.gamma, at), len),
                                        sb.load(offset(opt.beta, at), len), sy.out(y + at), len, P, Q,
                                        static_cast<acc_t>(R), static_cast<acc_t>(S));
          sy.store(y + at, len);
        }
      }
    }
  });
}

// The forward on x laid out [B, H, W, C] (channels_last), with y, gamma and
// beta laid out so too. A pixel's channels are contiguous and a group's are
// a few of them, so both passes stream through memory pixel by pixel with
// the channels in the vector lanes; a task is a chunk of pixels of one
// sample (Chunks).
//
// Statistics in one pass, from values shifted by K_c, a value near the
// channel's mean (the mean of its first pixels; Chan et al.'s shifted data):
// per channel, s1 = sum (x - K_c) and s2 = sum (x - K_c)^2, in float vectors
// over a chunk, then in double per part (for_parts). Per group, with n values
// and mean mu = sum_c (s1_c + HW K_c) / n,
// M2 = sum_c [s2_c - 2 (mu - K_c) s1_c + HW (mu - K_c)^2]. K_c lies within
// channel c's values, so s1 and s2 stay of the order of the data's spread
// around it: no cancellation of sum(x^2) - n mean^2 (the large-offset test).
// The float sums of a chunk still lose about ((mean - K_c) / std)^2 times a
// float's precision, so a sample whose first pixels lie far out of its
// distribution (tens of standard deviations) costs accuracy: a relative
// 1.7e-5 in rstd with its first 8 pixels 100 std out, against 6.5e-8 on the
// NCHW path, whose chunks take two passes (group_moments); PyTorch's own
// channels_last group norm errs by far more there.
template <typename scalar_t, typename stat_t>
void fwd_kernel_nhwc(const scalar_t* x, Optionals<scalar_t> opt, scalar_t* y, stat_t* mean_out, stat_t* rstd_out,
                     int64_t B, int64_t C, int64_t HW, int64_t G, double eps, bool silu) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vec<acc_t>;
  constexpr int64_t W = V::size();
  const Chunks ch(B, C, HW);
  const int64_t Cg = C / G, parts = part_count(ch.tasks);
  // K_c: the mean of the sample's first few pixels of channel c, near the channel's mean.
  const int64_t head = std::min<int64_t>(HW, 8);
  std::vector<acc_t> shift(B * C);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t c = 0; c < C; c += W) {
      const int64_t k = std::min(W, C - c);
      V sum(0);
      for (int64_t p = 0; p < head; ++p) sum += load_lanes<acc_t>(x + (b * HW + p) * C + c, k);
      (sum / V(static_cast<acc_t>(head))).store(shift.data() + b * C + c, k);
    }
  }
  // Per part, sample and channel: sums of x - K and of its square.
  std::vector<double> s1(parts * B * C, 0.0), s2(parts * B * C, 0.0);
  for_parts(ch.tasks, ch.grain, [&](int64_t part, int64_t task) {
    const int64_t b = ch.sample(task), first = ch.first(task), last = ch.last(task);
    const scalar_t* xb = x + b * HW * C;
    double* t1 = s1.data() + (part * B + b) * C;
    double* t2 = s2.data() + (part * B + b) * C;
    // One vector of channels at a time over the chunk's pixels, its sums in registers.
    for (int64_t c = 0; c < C; c += W) {
      const int64_t k = std::min(W, C - c);
      const V K = V::loadu(shift.data() + b * C + c, k);
      V f1(0), f2(0);
      for (int64_t p = first; p < last; ++p) {
        const V d = load_lanes<acc_t>(xb + p * C + c, k) - K;  // 0 in lanes past k
        f1 += d;
        f2 = at::vec::fmadd(d, d, f2);
      }
      __at_align__ acc_t l1[W], l2[W];
      f1.store(l1);
      f2.store(l2);
      for (int64_t i = 0; i < k; ++i) t1[c + i] += l1[i], t2[c + i] += l2[i];
    }
  });
  // Per (sample, channel) constants of the output pass: y = silu?(h3), h3 as in fwd_row.
  std::vector<acc_t> P(B * C), Q(B * C), R(B * C), S(B * C);
  const double n = static_cast<double>(Cg * HW);
  std::vector<double> c1(Cg);  // a group's channel sums of x - K
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t g = 0; g < G; ++g) {
      double sum1 = 0, sum2 = 0, shifted = 0;
      std::fill(c1.begin(), c1.end(), 0.0);
      for (int64_t i = 0; i < Cg; ++i) {
        const int64_t c = g * Cg + i;
        for (int64_t t = 0; t < parts; ++t) c1[i] += s1[(t * B + b) * C + c], sum2 += s2[(t * B + b) * C + c];
        sum1 += c1[i];
        shifted += static_cast<double>(shift[b * C + c]);
      }
      const double mu = (sum1 + HW * shifted) / n;
      double m2 = sum2;
      for (int64_t i = 0; i < Cg; ++i) {
        const double dk = mu - shift[b * C + g * Cg + i];
        m2 += dk * (HW * dk - 2 * c1[i]);
      }
      const int64_t bg = b * G + g;
      mean_out[bg] = static_cast<stat_t>(mu);
      rstd_out[bg] = static_cast<stat_t>(1.0 / std::sqrt(std::max(m2 / n, 0.0) + eps));
      const double mean = mean_out[bg], rstd = rstd_out[bg];
      for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
        const double a = rstd * value_or(opt.weight, c, 1.0);
        const double h1_0 = value_or(opt.bias, c, 0.0) - mean * a;
        const double Sc = 1.0 + value_or(opt.scale, b * C + c, 0.0);
        const double Rc = value_or(opt.shift, b * C + c, 0.0);
        P[b * C + c] = a * Sc, Q[b * C + c] = h1_0 * Sc + (opt.gamma != nullptr ? 0.0 : Rc);
        R[b * C + c] = Rc, S[b * C + c] = Sc;
      }
    }
  }
  with_flags(opt.gamma != nullptr, opt.beta != nullptr, silu, [&](auto gamma_flag, auto beta_flag, auto silu_flag) {
    constexpr bool kGamma = decltype(gamma_flag)::value, kBeta = decltype(beta_flag)::value;
    constexpr bool kSilu = decltype(silu_flag)::value;
    for_each_vector<acc_t>(ch, C, [&](int64_t at, int64_t bc, int64_t k) {
      const V g = kGamma ? load_lanes<acc_t>(opt.gamma + at, k) : V(0);
      const V be = kBeta ? load_lanes<acc_t>(opt.beta + at, k) : V(0);
      const V u = fwd_value<kGamma, kBeta, kSilu>(load_lanes<acc_t>(x + at, k), g, be, V::loadu(&P[bc], k),
                                                  V::loadu(&Q[bc], k), V::loadu(&R[bc], k), V::loadu(&S[bc], k));
      store_lanes(u, y + at, k);
    });
  });
}

// ---------------------------------------------------------------- op entry point

std::tuple<at::Tensor, at::Tensor, at::Tensor> spatin_norm_fwd_cpu(const at::Tensor& x_in, int64_t num_groups,
                                                                   const OptTensor& weight, const OptTensor& bias,
                                                                   const OptTensor& gamma, const OptTensor& beta,
                                                                   const OptTensor& scale, const OptTensor& shift,
                                                                   double eps, bool silu) {
  check_spatin_norm_args(x_in, num_groups, weight, bias, gamma, beta, scale, shift, eps);
  // y is laid out as x: channels_last for a channels_last x (read in place, gamma and beta taken
  // channels_last too), contiguous for any other layout (read through a contiguous copy).
  const at::MemoryFormat format = spatin_norm_output_format(x_in);
  const at::Tensor x = x_in.contiguous(format);
  const ContigOptionals opt(weight, bias, gamma, beta, scale, shift, format);
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  at::Tensor y = at::empty_like(x, format);
  at::Tensor mean = at::empty({B, num_groups}, x.options().dtype(stat_dtype(x)));
  at::Tensor rstd = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "spatin_norm_fwd", [&] {
    using stat_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const auto kernel = format == at::MemoryFormat::ChannelsLast ? fwd_kernel_nhwc<scalar_t, stat_t>
                                                                 : fwd_kernel<scalar_t, stat_t>;
    kernel(x.const_data_ptr<scalar_t>(), opt.ptrs<scalar_t>(), y.data_ptr<scalar_t>(), mean.data_ptr<stat_t>(),
           rstd.data_ptr<stat_t>(), B, C, HW, num_groups, eps, silu);
  });
  return {y, mean, rstd};
}

}  // namespace
}  // namespace mcvd

TORCH_LIBRARY_IMPL(mcvd, CPU, m) {
  m.impl("spatin_norm_fwd", &mcvd::spatin_norm_fwd_cpu);
}
