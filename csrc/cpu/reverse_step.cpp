// CPU kernel of mcvd::reverse_step (schema in csrc/ops.cpp, reference in
// mcvd/ops/reverse_step.py):
//
//   x0     = (x_t - a * eps) / b,  clamped to [clip_lo, clip_hi] if given
//   x_prev = c_x0 * x0 + c_xt * x_t + sigma * noise
//
// with per-sample coefficients from the [5, B] table (a, b, c_x0, c_xt,
// sigma). One pass over the elements, split evenly between threads whatever
// the batch size; each thread walks its range sample by sample. float16 and
// bfloat16 are computed in float, block by block.
// Only the ATen headers used, not ATen/ATen.h (common.h says why).
#define AT_PER_OPERATOR_HEADERS  // with the next line: ATen/ATen.h here is an #error
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>

#include "checks.h"
#include "common.h"
#include "op_checks.h"

namespace mcvd {
namespace {

template <typename T>
struct Coefs {
  T a, b, c_x0, c_xt, sigma;
};

template <bool kNoise, bool kClip, typename T>
void step_block(const T* x_t, const T* eps, const T* noise, T* x_prev, T* x0, int64_t n, Coefs<T> k, T lo, T hi) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const V neg_a(-k.a), b(k.b), c_x0(k.c_x0), c_xt(k.c_xt), sigma(k.sigma), vlo(lo), vhi(hi);
  auto step = [&](int64_t i, int64_t len) {
    auto load = [&](const T* p) { return len == W ? V::loadu(p + i) : V::loadu(p + i, len); };
    auto store = [&](const V& v, T* p) { len == W ? v.store(p + i) : v.store(p + i, len); };
    const V xt = load(x_t);
    // The loop is bound by memory traffic, so the divide costs nothing.
    V pred = at::vec::fmadd(neg_a, load(eps), xt) / b;
    if constexpr (kClip) pred = at::vec::clamp(pred, vlo, vhi);
    V prev = at::vec::fmadd(c_x0, pred, c_xt * xt);
    if constexpr (kNoise) prev = at::vec::fmadd(sigma, load(noise), prev);
    store(prev, x_prev);
    store(pred, x0);
  };
  int64_t i = 0;
  for (; i + W <= n; i += W) step(i, W);
  if (i < n) step(i, n - i);
}

// Runs step_block over [begin, end) of one sample, in the compute type:
// float and double in place, float16/bfloat16 widened block by block.
template <bool kNoise, bool kClip, typename scalar_t>
void step_range(const scalar_t* x_t, const scalar_t* eps, const scalar_t* noise, scalar_t* x_prev, scalar_t* x0,
                int64_t begin, int64_t end, Coefs<at::opmath_type<scalar_t>> k, double lo, double hi) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t alo = static_cast<acc_t>(lo), ahi = static_cast<acc_t>(hi);
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    step_block<kNoise, kClip>(x_t + begin, eps + begin, kNoise ? noise + begin : nullptr, x_prev + begin, x0 + begin,
                              end - begin, k, alo, ahi);
  } else {
    alignas(64) acc_t in[3][kBlock];
    alignas(64) acc_t out[2][kBlock];
    for (int64_t i = begin; i < end; i += kBlock) {
      const int64_t n = std::min(kBlock, end - i);
      at::vec::convert(x_t + i, in[0], n);
      at::vec::convert(eps + i, in[1], n);
      if constexpr (kNoise) at::vec::convert(noise + i, in[2], n);
      step_block<kNoise, kClip>(in[0], in[1], in[2], out[0], out[1], n, k, alo, ahi);
      at::vec::convert(out[0], x_prev + i, n);
      at::vec::convert(out[1], x0 + i, n);
    }
  }
}

// A noise tensor with no noise adds nothing: the sigma row is then not read
// (mcvd.ops.reverse_step refuses a float sigma != 0 without noise; a tensor
// sigma is not inspected, which would cost the sampler a device sync).
std::tuple<at::Tensor, at::Tensor> reverse_step_cpu(const at::Tensor& x_t_in, const at::Tensor& eps_in,
                                                    const OptTensor& noise_in, const at::Tensor& coef_in,
                                                    std::optional<double> clip_lo, std::optional<double> clip_hi) {
  check_reverse_step_args(x_t_in, eps_in, noise_in, coef_in, clip_lo, clip_hi);
  const int64_t B = x_t_in.size(0);
  const bool clip = clip_lo.has_value();

  const at::Tensor x_t = x_t_in.contiguous(), eps = eps_in.contiguous();
  const at::Tensor noise = noise_in.has_value() ? noise_in->contiguous() : at::Tensor();
  const at::Tensor coef = coef_in.to(at::kDouble).contiguous();
  at::Tensor x_prev = at::empty_like(x_t), x0 = at::empty_like(x_t);
  const int64_t numel = x_t.numel();
  if (numel == 0) return {x_prev, x0};
  const int64_t per_sample = numel / B;
  const double* k = coef.const_data_ptr<double>();
  const double lo = clip ? *clip_lo : 0.0, hi = clip ? *clip_hi : 0.0;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x_t.scalar_type(), "reverse_step", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x_t.const_data_ptr<scalar_t>();
    const scalar_t* ep = eps.const_data_ptr<scalar_t>();
    const scalar_t* np = noise.defined() ? noise.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* prev = x_prev.data_ptr<scalar_t>();
    scalar_t* pred = x0.data_ptr<scalar_t>();
    auto run = [&](auto noise_flag, auto clip_flag) {
      constexpr bool kNoise = decltype(noise_flag)::value, kClip = decltype(clip_flag)::value;
      at::parallel_for(0, numel, 32768, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end;) {
          const int64_t s = i / per_sample, stop = std::min(end, (s + 1) * per_sample);
          const Coefs<acc_t> ks{static_cast<acc_t>(k[s]), static_cast<acc_t>(k[B + s]),
                                static_cast<acc_t>(k[2 * B + s]), static_cast<acc_t>(k[3 * B + s]),
                                static_cast<acc_t>(k[4 * B + s])};
          step_range<kNoise, kClip>(xp, ep, np, prev, pred, i, stop, ks, lo, hi);
          i = stop;
        }
      });
    };
    const bool has_noise = np != nullptr;
    if (has_noise && clip) run(std::true_type{}, std::true_type{});
    if (has_noise && !clip) run(std::true_type{}, std::false_type{});
    if (!has_noise && clip) run(std::false_type{}, std::true_type{});
    if (!has_noise && !clip) run(std::false_type{}, std::false_type{});
  });
  return {x_prev, x0};
}

}  // namespace
}  // namespace mcvd

TORCH_LIBRARY_IMPL(mcvd, CPU, m) { m.impl("reverse_step", &mcvd::reverse_step_cpu); }
