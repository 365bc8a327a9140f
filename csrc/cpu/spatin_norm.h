// Shared by the CPU kernels of mcvd::spatin_norm_fwd and mcvd::spatin_norm_bwd
// (schemas in csrc/ops.cpp, reference in mcvd/ops/spatin_norm.py), which are
// separate files so that the build compiles the two, the extension's largest
// parts, in parallel.
//
//   xhat = (x - mean) * rstd                  per (batch, group)
//   h1 = xhat * w + b                         weight, bias: [C]
//   h2 = h1 * (1 + gamma) + beta              gamma, beta: [B, C, H, W]
//   h3 = h2 * (1 + scale) + shift             scale, shift: [B, C]
//   y  = silu(h3) or h3
//
// Work is split over (batch, group): a group is one contiguous run of
// C / G * H * W elements, so each task streams its own memory and owns its
// outputs. Absent optionals act as their identity (w = 1, b = 0, ...), and
// gamma, beta and SiLU are template flags so the inner loops carry no
// branches. float16 and bfloat16 are computed in float, block by block.
//
// SiLU takes ATen's exp_u20 (inline, within 20 ulp in float, the exact exp
// in double): Sleef's exp is a function call that spills every live vector,
// which made the backward loop several times slower.
#pragma once

// Only the ATen headers used, not ATen/ATen.h (common.h says why).
#define AT_PER_OPERATOR_HEADERS  // with the next line: ATen/ATen.h here is an #error
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "common.h"
#include "op_checks.h"

namespace mcvd::spatin {

template <typename T>
double hsum(const Vec<T>& v) {
  __at_align__ T lanes[Vec<T>::size()];
  v.store(lanes);
  double s = 0;
  for (int i = 0; i < Vec<T>::size(); ++i) s += lanes[i];
  return s;
}

// One block of a tensor seen in the compute type: float and double blocks
// are used in place, float16 and bfloat16 blocks are widened into `buf` on
// load and narrowed from it on store. A null pointer (absent optional)
// stays null.
template <typename scalar_t>
struct Stage {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr bool kInPlace = std::is_same_v<scalar_t, acc_t>;
  alignas(64) acc_t buf[kInPlace ? 1 : kBlock];

  const acc_t* load(const scalar_t* p, int64_t n) {
    if constexpr (kInPlace) {
      return p;
    } else {
      if (p == nullptr) return nullptr;
      at::vec::convert(p, buf, n);
      return buf;
    }
  }
  acc_t* out(scalar_t* p) {
    if constexpr (kInPlace) {
      return p;
    } else {
      return p == nullptr ? nullptr : buf;
    }
  }
  void store(scalar_t* p, int64_t n) {
    if constexpr (!kInPlace) {
      if (p != nullptr) at::vec::convert(buf, p, n);
    }
  }
};

template <typename T>
const T* offset(const T* p, int64_t i) {
  return p == nullptr ? nullptr : p + i;
}
template <typename T>
T* offset(T* p, int64_t i) {
  return p == nullptr ? nullptr : p + i;
}

// Calls f(std::bool_constant<a>, std::bool_constant<b>, std::bool_constant<c>).
template <typename F>
void with_flags(bool a, bool b, bool c, F&& f) {
  auto one = [](bool v, auto&& g) {
    if (v) {
      g(std::true_type{});
    } else {
      g(std::false_type{});
    }
  };
  one(a, [&](auto A) { one(b, [&](auto B) { one(c, [&](auto C) { f(A, B, C); }); }); });
}

// Raw pointers of the optional inputs (null when absent), contiguous.
template <typename scalar_t>
struct Optionals {
  const scalar_t *weight, *bias, *gamma, *beta, *scale, *shift;
};

template <typename T>
T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

template <typename scalar_t>
double value_or(const scalar_t* p, int64_t i, double fallback) {
  return p == nullptr ? fallback : static_cast<double>(p[i]);
}

// The NCHW kernels' loop: f(gamma_flag, beta_flag, silu_flag, begin, end) for the (batch, group) tasks
// [begin, end) of `tasks`, a thread's share at a time (about 32K elements each), the flags
// std::bool_constant (gamma present, beta present, SiLU) so that the inner loops carry no branches.
template <typename scalar_t, typename F>
void for_group_tasks(const Optionals<scalar_t>& opt, bool silu, int64_t tasks, int64_t group_numel, F&& f) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, group_numel));
  with_flags(opt.gamma != nullptr, opt.beta != nullptr, silu, [&](auto gamma_flag, auto beta_flag, auto silu_flag) {
    at::parallel_for(0, tasks, grain,
                     [&](int64_t begin, int64_t end) { f(gamma_flag, beta_flag, silu_flag, begin, end); });
  });
}

// ---------------------------------------------------------------- channels_last

// One vector of T from k <= Vec<T>::size() elements of scalar_t (zero-filled
// past k): float16 and bfloat16 widened in registers, a partial vector
// through a buffer.
template <typename T, typename scalar_t>
Vec<T> load_lanes(const scalar_t* p, int64_t k) {
  if constexpr (std::is_same_v<T, scalar_t>) {
    return k == Vec<T>::size() ? Vec<T>::loadu(p) : Vec<T>::loadu(p, k);
  } else {
    if (k == Vec<T>::size()) {
      Vec<T> v;
      at::vec::load_to_float(p, v);
      return v;
    }
    __at_align__ T lanes[Vec<T>::size()];
    at::vec::convert(p, lanes, k);
    return Vec<T>::loadu(lanes, k);
  }
}

template <typename T, typename scalar_t>
void store_lanes(const Vec<T>& v, scalar_t* p, int64_t k) {
  if constexpr (std::is_same_v<T, scalar_t>) {
    k == Vec<T>::size() ? v.store(p) : v.store(p, k);
  } else {
    at::vec::convert_from_float<scalar_t>(v, v).store(p, k);  // v's lanes narrowed, the first k stored
  }
}

// The channels_last kernels' reductions: f(part, task) for every task, the
// tasks split into at most kParts contiguous ranges (parts), each run by one
// thread, which adds into the part's own partial sums. The parts' sums are
// then added in part order, so the result does not depend on the number of
// threads or on which thread ran which part. `grain`: tasks worth a thread.
constexpr int64_t kParts = 16;

inline int64_t part_count(int64_t tasks) { return std::min(tasks, kParts); }

template <typename F>
void for_parts(int64_t tasks, int64_t grain, F&& f) {
  const int64_t parts = part_count(tasks);
  const int64_t part_grain = std::max<int64_t>(1, (grain * parts + tasks - 1) / std::max<int64_t>(1, tasks));
  at::parallel_for(0, parts, part_grain, [&](int64_t begin, int64_t end) {
    for (int64_t part = begin; part < end; ++part) {
      for (int64_t task = part * tasks / parts; task < (part + 1) * tasks / parts; ++task) f(part, task);
    }
  });
}

// The channels_last kernels' tasks: chunks of kRows pixels of one sample,
// [B, H * W] pixels in all, with `grain` the tasks worth a thread.
struct Chunks {
  static constexpr int64_t kRows = 128;  // float partial sums of at most this many values
  int64_t HW, per_sample, tasks, grain;
  Chunks(int64_t B, int64_t C, int64_t HW_)
      : HW(HW_),
        per_sample((HW_ + kRows - 1) / kRows),
        tasks(B * per_sample),
        grain(std::max<int64_t>(1, 32768 / (kRows * C))) {}
  int64_t sample(int64_t task) const { return task / per_sample; }
  int64_t first(int64_t task) const { return (task % per_sample) * kRows; }
  int64_t last(int64_t task) const { return std::min(HW, first(task) + kRows); }
};

// f(at, bc, k) for every vector of channels of every pixel: `at` its offset
// in the [B, H, W, C] tensors, `bc` in the per-(sample, channel) arrays, k
// its valid lanes.
template <typename T, typename F>
void for_each_vector(const Chunks& ch, int64_t C, F&& f) {
  constexpr int64_t W = Vec<T>::size();
  at::parallel_for(0, ch.tasks, ch.grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = ch.sample(task);
      for (int64_t p = ch.first(task); p < ch.last(task); ++p) {
        for (int64_t c = 0; c < C; c += W) f((b * ch.HW + p) * C + c, b * C + c, std::min(W, C - c));
      }
    }
  });
}

inline at::Tensor contig_or_undefined(const OptTensor& t, at::MemoryFormat format = at::MemoryFormat::Contiguous) {
  return t.has_value() ? t->contiguous(format) : at::Tensor();
}

// The optional inputs, contiguous; the [B, C, H, W] maps gamma and beta in `format`, x's.
struct ContigOptionals {
  at::Tensor weight, bias, gamma, beta, scale, shift;
  ContigOptionals(const OptTensor& w, const OptTensor& b, const OptTensor& g, const OptTensor& be, const OptTensor& s,
                  const OptTensor& sh, at::MemoryFormat format = at::MemoryFormat::Contiguous)
      : weight(contig_or_undefined(w)),
        bias(contig_or_undefined(b)),
        gamma(contig_or_undefined(g, format)),
        beta(contig_or_undefined(be, format)),
        scale(contig_or_undefined(s)),
        shift(contig_or_undefined(sh)) {}
  template <typename scalar_t>
  Optionals<scalar_t> ptrs() const {
    return {data_or_null<scalar_t>(weight), data_or_null<scalar_t>(bias),  data_or_null<scalar_t>(gamma),
            data_or_null<scalar_t>(beta),   data_or_null<scalar_t>(scale), data_or_null<scalar_t>(shift)};
  }
};

}  // namespace mcvd::spatin
