// Driver of the spatin_norm kernels: forward and backward for float32,
// float64, float16 and bfloat16 on odd and aligned shapes, split and unsplit
// reductions, the one-launch forward and one-block-per-group backward, and combinations of the optional inputs, against a float64 host
// reference whose gradient is itself checked by central differences.
// Usage: test_spatin_norm [--quick]   (exit code 0 = every check passed)
#include "../spatin_norm.cuh"
#include "harness.cuh"

namespace {

using harness::Buffer;
using harness::Host;
using harness::Report;

enum Opt { kWeight, kBias, kGamma, kBeta, kScale, kShift, kNumOpt };
const char* const kOptNames[kNumOpt] = {"weight", "bias", "gamma", "beta", "scale", "shift"};

struct Shape {
  int64_t B, C, H, W, G;
};

// The float64 problem: inputs (empty when absent) and the output gradient.
struct Problem {
  Shape s;
  bool silu;
  double eps;
  std::vector<double> x, dy, opt[kNumOpt];

  int64_t hw() const { return s.H * s.W; }
  size_t opt_size(int i) const {
    const int64_t sizes[kNumOpt] = {s.C, s.C, s.B * s.C * hw(), s.B * s.C * hw(), s.B * s.C, s.B * s.C};
    return static_cast<size_t>(sizes[i]);
  }
};

struct Forward {
  std::vector<double> y, mean, rstd;
};

Forward host_forward(const Problem& p) {
  const int64_t B = p.s.B, C = p.s.C, G = p.s.G, HW = p.hw(), cpg = C / G;
  Forward f{std::vector<double>(p.x.size()), std::vector<double>(B * G), std::vector<double>(B * G)};
  auto at = [&](int i, int64_t idx) { return p.opt[i].empty() ? (i == kWeight ? 1.0 : 0.0) : p.opt[i][idx]; };
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t g = 0; g < G; ++g) {
      const int64_t begin = (b * C + g * cpg) * HW, count = cpg * HW;
      double sum = 0.0, sq = 0.0;
      for (int64_t i = 0; i < count; ++i) sum += p.x[begin + i];
      const double mean = sum / count;
      for (int64_t i = 0; i < count; ++i) sq += (p.x[begin + i] - mean) * (p.x[begin + i] - mean);
      f.mean[b * G + g] = mean;
      f.rstd[b * G + g] = 1.0 / std::sqrt(sq / count + p.eps);
    }
    for (int64_t c = 0; c < C; ++c) {
      const double mean = f.mean[b * G + c / cpg], rstd = f.rstd[b * G + c / cpg];
      for (int64_t i = 0; i < HW; ++i) {
        const int64_t e = (b * C + c) * HW + i;
        double h = (p.x[e] - mean) * rstd * at(kWeight, c) + at(kBias, c);
        h = h * (1.0 + at(kGamma, e)) + at(kBeta, e);
        h = h * (1.0 + at(kScale, b * C + c)) + at(kShift, b * C + c);
        f.y[e] = p.silu ? h / (1.0 + std::exp(-h)) : h;
      }
    }
  }
  return f;
}

struct Grads {
  std::vector<double> dx, dopt[kNumOpt];
};

// Chain rule written out per element, in float64.
Grads host_backward(const Problem& p) {
  const int64_t B = p.s.B, C = p.s.C, G = p.s.G, HW = p.hw(), cpg = C / G;
  const Forward f = host_forward(p);
  Grads gr;
  gr.dx.assign(p.x.size(), 0.0);
  for (int i = 0; i < kNumOpt; ++i)
    if (!p.opt[i].empty()) gr.dopt[i].assign(p.opt_size(i), 0.0);
  auto at = [&](int i, int64_t idx) { return p.opt[i].empty() ? (i == kWeight ? 1.0 : 0.0) : p.opt[i][idx]; };
  std::vector<double> dxhat(p.x.size()), xhat(p.x.size());
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t c = 0; c < C; ++c) {
      const double mean = f.mean[b * G + c / cpg], rstd = f.rstd[b * G + c / cpg];
      const int64_t bc = b * C + c;
      for (int64_t i = 0; i < HW; ++i) {
        const int64_t e = bc * HW + i;
        xhat[e] = (p.x[e] - mean) * rstd;
        const double h1 = xhat[e] * at(kWeight, c) + at(kBias, c);
        const double h2 = h1 * (1.0 + at(kGamma, e)) + at(kBeta, e);
        const double h3 = h2 * (1.0 + at(kScale, bc)) + at(kShift, bc);
        const double sig = 1.0 / (1.0 + std::exp(-h3));
        const double dh3 = p.silu ? p.dy[e] * (sig + h3 * sig * (1.0 - sig)) : p.dy[e];
        if (!p.opt[kShift].empty()) gr.dopt[kShift][bc] += dh3;
        if (!p.opt[kScale].empty()) gr.dopt[kScale][bc] += dh3 * h2;
        const double dh2 = dh3 * (1.0 + at(kScale, bc));
        if (!p.opt[kGamma].empty()) gr.dopt[kGamma][e] = dh2 * h1;
        if (!p.opt[kBeta].empty()) gr.dopt[kBeta][e] = dh2;
        const double dh1 = dh2 * (1.0 + at(kGamma, e));
        if (!p.opt[kWeight].empty()) gr.dopt[kWeight][c] += dh1 * xhat[e];
        if (!p.opt[kBias].empty()) gr.dopt[kBias][c] += dh1;
        dxhat[e] = dh1 * at(kWeight, c);
      }
    }
    for (int64_t g = 0; g < G; ++g) {
      const int64_t begin = (b * C + g * cpg) * HW, count = cpg * HW;
      double m1 = 0.0, m2 = 0.0;
      for (int64_t i = 0; i < count; ++i) {
        m1 += dxhat[begin + i];
        m2 += dxhat[begin + i] * xhat[begin + i];
      }
      m1 /= count, m2 /= count;
      for (int64_t i = 0; i < count; ++i)
        gr.dx[begin + i] = f.rstd[b * G + g] * (dxhat[begin + i] - m1 - xhat[begin + i] * m2);
    }
  }
  return gr;
}

double host_loss(const Problem& p) {
  const Forward f = host_forward(p);
  double l = 0.0;
  for (size_t i = 0; i < f.y.size(); ++i) l += f.y[i] * p.dy[i];
  return l;
}

std::mt19937_64& rng() {
  static std::mt19937_64 r(20220527);
  return r;
}

Problem make_problem(const Shape& s, unsigned mask, bool silu) {
  Problem p{s, silu, 1e-6, {}, {}, {}};
  const size_t n = static_cast<size_t>(s.B * s.C * s.H * s.W);
  p.x = harness::normal(rng(), n, 0.5, 2.0);  // a non-zero mean exercises the centring
  p.dy = harness::normal(rng(), n);
  const double mean[kNumOpt] = {1.0, 0.0, 0.0, 0.0, 0.0, 0.0}, std[kNumOpt] = {0.3, 0.5, 0.3, 0.5, 0.3, 0.5};
  for (int i = 0; i < kNumOpt; ++i)
    if (mask & (1u << i)) p.opt[i] = harness::normal(rng(), p.opt_size(i), mean[i], std[i]);
  return p;
}

// The host gradient against central differences of the host forward.
void check_reference(Report& rep) {
  Problem p = make_problem({2, 4, 3, 3, 2}, (1u << kNumOpt) - 1, true);
  const Grads gr = host_backward(p);
  const double h = 1e-6;
  auto fd = [&](std::vector<double>& v) {
    std::vector<double> d(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      const double keep = v[i];
      v[i] = keep + h;
      const double up = host_loss(p);
      v[i] = keep - h;
      const double down = host_loss(p);
      v[i] = keep;
      d[i] = (up - down) / (2 * h);
    }
    return d;
  };
  rep.compare("host reference: dx vs central differences", gr.dx, fd(p.x), 1e-6);
  for (int i = 0; i < kNumOpt; ++i)
    rep.compare(std::string("host reference: d") + kOptNames[i] + " vs central differences", gr.dopt[i], fd(p.opt[i]),
                1e-6);
}

template <typename T>
void run_case(Report& rep, const Shape& s, unsigned mask, bool silu) {
  using A = mcvd::cuda::acc_t<T>;
  Problem p = make_problem(s, mask, silu);
  p.x = harness::quantize<T>(p.x);
  p.dy = harness::quantize<T>(p.dy);
  for (auto& o : p.opt) o = harness::quantize<T>(o);
  const Forward f = host_forward(p);
  const Grads g = host_backward(p);

  Buffer<T> x(p.x), dy(p.dy), y(p.x.size()), dx(p.x.size());
  std::vector<Buffer<T>*> opt(kNumOpt, nullptr), dopt(kNumOpt, nullptr);
  for (int i = 0; i < kNumOpt; ++i) {
    if (p.opt[i].empty()) continue;
    opt[i] = new Buffer<T>(p.opt[i]);
    dopt[i] = new Buffer<T>(p.opt[i].size());
    dopt[i]->poison();
  }
  auto ptr = [](Buffer<T>* b) -> T* { return b ? b->ptr : nullptr; };
  Buffer<A> mean(s.B * s.G), rstd(s.B * s.G);
  y.poison();
  dx.poison();
  const mcvd::cuda::SpatinInputs<T> in = {x.ptr,         ptr(opt[kWeight]), ptr(opt[kBias]),  ptr(opt[kGamma]),
                                          ptr(opt[kBeta]), ptr(opt[kScale]), ptr(opt[kShift]), s.B,
                                          s.C,           s.H * s.W,         s.G,              silu};

  size_t bytes = 0;
  HARNESS_CUDA(mcvd::cuda::spatin_norm_fwd_workspace<T>(s.B, s.C, s.H * s.W, s.G, &bytes));
  Buffer<unsigned char> ws_f(bytes);
  // Both forward paths: the split reduction (never one launch), then the
  // one-launch kernel wherever the group fits it (at any number of groups).
  HARNESS_CUDA(mcvd::cuda::spatin_norm_fwd<T>(in, y.ptr, mean.ptr, rstd.ptr, p.eps, ws_f.ptr, 0, INT64_MAX));
  Buffer<T> y1(p.x.size());
  Buffer<A> mean1(s.B * s.G), rstd1(s.B * s.G);
  y1.poison();
  HARNESS_CUDA(mcvd::cuda::spatin_norm_fwd<T>(in, y1.ptr, mean1.ptr, rstd1.ptr, p.eps, ws_f.ptr, 0, 1));
  HARNESS_CUDA(mcvd::cuda::spatin_norm_bwd_workspace<T>(s.B, s.C, s.H * s.W, s.G, &bytes));
  Buffer<unsigned char> ws_b(bytes);
  const mcvd::cuda::SpatinGrads<T> out = {dx.ptr,           ptr(dopt[kWeight]), ptr(dopt[kBias]), ptr(dopt[kGamma]),
                                          ptr(dopt[kBeta]), ptr(dopt[kScale]),  ptr(dopt[kShift])};
  HARNESS_CUDA(mcvd::cuda::spatin_norm_bwd<T>(in, dy.ptr, mean.ptr, rstd.ptr, out, ws_b.ptr, 0, INT64_MAX));
  // The one-block-per-group backward, into a second set of gradients.
  Buffer<T> dx1(p.x.size());
  std::vector<Buffer<T>*> dopt1(kNumOpt, nullptr);
  for (int i = 0; i < kNumOpt; ++i)
    if (!p.opt[i].empty()) dopt1[i] = new Buffer<T>(p.opt[i].size());
  dx1.poison();
  for (Buffer<T>* b : dopt1)
    if (b) b->poison();
  const mcvd::cuda::SpatinGrads<T> out1 = {dx1.ptr,           ptr(dopt1[kWeight]), ptr(dopt1[kBias]),
                                           ptr(dopt1[kGamma]), ptr(dopt1[kBeta]),   ptr(dopt1[kScale]),
                                           ptr(dopt1[kShift])};
  HARNESS_CUDA(mcvd::cuda::spatin_norm_bwd<T>(in, dy.ptr, mean.ptr, rstd.ptr, out1, ws_b.ptr, 0, 1));
  HARNESS_CUDA(cudaDeviceSynchronize());

  char tag[160];
  std::snprintf(tag, sizeof(tag), "%s [%lld,%lld,%lld,%lld] G=%lld opts=0x%02x silu=%d", Host<T>::name(),
                (long long)s.B, (long long)s.C, (long long)s.H, (long long)s.W, (long long)s.G, mask, silu);
  const double tol = Host<T>::tol();
  rep.compare(std::string(tag) + " y", y.download(), f.y, tol);
  rep.compare(std::string(tag) + " mean", mean.download(), f.mean, Host<A>::tol());
  rep.compare(std::string(tag) + " rstd", rstd.download(), f.rstd, Host<A>::tol());
  rep.compare(std::string(tag) + " y (one-launch forward)", y1.download(), f.y, tol);
  rep.compare(std::string(tag) + " mean (one-launch forward)", mean1.download(), f.mean, Host<A>::tol());
  rep.compare(std::string(tag) + " rstd (one-launch forward)", rstd1.download(), f.rstd, Host<A>::tol());
  rep.compare(std::string(tag) + " dx", dx.download(), g.dx, tol);
  rep.compare(std::string(tag) + " dx (one block per group)", dx1.download(), g.dx, tol);
  for (int i = 0; i < kNumOpt; ++i) {
    if (!dopt[i]) continue;
    rep.compare(std::string(tag) + " d" + kOptNames[i], dopt[i]->download(), g.dopt[i], tol);
    rep.compare(std::string(tag) + " d" + kOptNames[i] + " (one block per group)", dopt1[i]->download(), g.dopt[i],
                tol);
    delete opt[i];
    delete dopt[i];
    delete dopt1[i];
  }
}

template <typename T>
void run_dtype(Report& rep, bool quick) {
  // Odd sizes (scalar path), aligned sizes (16-byte path), one channel per
  // group, batch 1 with long groups (split reductions), H*W of 169.
  // Then for the one-launch forward and one-block backward: groups of 16384
  // (float NV = 16, half NV = 8) and 8192 (double NV = 16) elements, one
  // channel per group with rows of 320 vectors (a whole block per channel),
  // 16 channels of 4 vectors per group (many channels per step).
  const Shape shapes[] = {{1, 3, 1, 1, 1},   {2, 6, 5, 7, 3},      {2, 32, 8, 8, 32},  {3, 8, 13, 13, 2},
                          {1, 64, 32, 32, 16}, {1, 4, 128, 128, 1}, {2, 4, 64, 64, 1}, {1, 2, 64, 64, 1},
                          {2, 2, 32, 40, 2},   {2, 64, 4, 4, 4}};
  const unsigned all = (1u << kNumOpt) - 1;
  const unsigned masks[] = {0u,
                            all,
                            (1u << kWeight) | (1u << kBias),
                            (1u << kGamma) | (1u << kBeta),
                            (1u << kScale) | (1u << kShift),
                            (1u << kWeight) | (1u << kGamma) | (1u << kShift),
                            (1u << kBias) | (1u << kBeta) | (1u << kScale)};
  const int n_shapes = quick ? 4 : 10, n_masks = quick ? 3 : 7;
  for (int si = 0; si < n_shapes; ++si)
    for (int mi = 0; mi < n_masks; ++mi) run_case<T>(rep, shapes[si], masks[mi], (si + mi) % 2 == 1);
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = harness::quick_mode(argc, argv);
  Report rep;
  check_reference(rep);
  run_dtype<float>(rep, quick);
  run_dtype<double>(rep, quick);
  run_dtype<__half>(rep, quick);
  run_dtype<__nv_bfloat16>(rep, quick);
  return rep.finish("test_spatin_norm");
}
