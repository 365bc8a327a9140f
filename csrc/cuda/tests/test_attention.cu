// Driver of the attention kernels: forward (out, lse) and backward (dq, dk,
// dv) for float32, float64, float16 and bfloat16, through the SIMT path (any
// D, slabs for D > 128) and the tensor-core path (16-bit types, D in
// {32, 64, 128}), with ragged N, against a float64 host reference whose
// gradient is itself checked by central differences.
// Usage: test_attention [--quick]   (exit code 0 = every check passed)
#include "../attention.cuh"
#include "harness.cuh"

namespace {

using harness::Buffer;
using harness::Host;
using harness::Report;

struct Shape {
  int64_t bh, n, d;
  double scale;  // 0: d^-1/2
};

struct Problem {
  int64_t bh, n, d;
  double scale;
  std::vector<double> q, k, v, dout;
};

struct Forward {
  std::vector<double> out, lse, p;  // p: [bh, n, n]
};

Forward host_forward(const Problem& pr) {
  const int64_t n = pr.n, d = pr.d;
  Forward f{std::vector<double>(pr.q.size(), 0.0), std::vector<double>(pr.bh * n),
            std::vector<double>(pr.bh * n * n)};
  for (int64_t h = 0; h < pr.bh; ++h) {
    const double* q = &pr.q[h * n * d];
    const double* k = &pr.k[h * n * d];
    const double* v = &pr.v[h * n * d];
    for (int64_t i = 0; i < n; ++i) {
      double* p = &f.p[(h * n + i) * n];
      double mx = -INFINITY;
      for (int64_t j = 0; j < n; ++j) {
        double s = 0.0;
        for (int64_t c = 0; c < d; ++c) s += q[i * d + c] * k[j * d + c];
        p[j] = s * pr.scale;
        mx = std::max(mx, p[j]);
      }
      double sum = 0.0;
      for (int64_t j = 0; j < n; ++j) sum += std::exp(p[j] - mx);
      f.lse[h * n + i] = mx + std::log(sum);
      for (int64_t j = 0; j < n; ++j) p[j] = std::exp(p[j] - f.lse[h * n + i]);
      for (int64_t j = 0; j < n; ++j)
        for (int64_t c = 0; c < d; ++c) f.out[(h * n + i) * d + c] += p[j] * v[j * d + c];
    }
  }
  return f;
}

struct Grads {
  std::vector<double> dq, dk, dv;
};

// dV = P^T dO, dP = dO V^T, dS = P (dP - rowsum(dO O)), dQ = s dS K, dK = s dS^T Q.
Grads host_backward(const Problem& pr) {
  const int64_t n = pr.n, d = pr.d;
  const Forward f = host_forward(pr);
  Grads g{std::vector<double>(pr.q.size(), 0.0), std::vector<double>(pr.q.size(), 0.0),
          std::vector<double>(pr.q.size(), 0.0)};
  for (int64_t h = 0; h < pr.bh; ++h) {
    const int64_t o = h * n * d;
    for (int64_t i = 0; i < n; ++i) {
      double dsum = 0.0;
      for (int64_t c = 0; c < d; ++c) dsum += pr.dout[o + i * d + c] * f.out[o + i * d + c];
      for (int64_t j = 0; j < n; ++j) {
        const double p = f.p[(h * n + i) * n + j];
        double dp = 0.0;
        for (int64_t c = 0; c < d; ++c) {
          g.dv[o + j * d + c] += p * pr.dout[o + i * d + c];
          dp += pr.dout[o + i * d + c] * pr.v[o + j * d + c];
        }
        const double ds = p * (dp - dsum) * pr.scale;
        for (int64_t c = 0; c < d; ++c) {
          g.dq[o + i * d + c] += ds * pr.k[o + j * d + c];
          g.dk[o + j * d + c] += ds * pr.q[o + i * d + c];
        }
      }
    }
  }
  return g;
}

std::mt19937_64& rng() {
  static std::mt19937_64 r(20220527);
  return r;
}

Problem make_problem(const Shape& s, double magnitude = 1.0) {
  const size_t count = static_cast<size_t>(s.bh * s.n * s.d);
  return {s.bh,
          s.n,
          s.d,
          s.scale > 0 ? s.scale : 1.0 / std::sqrt(static_cast<double>(s.d)),
          harness::normal(rng(), count, 0.0, magnitude),
          harness::normal(rng(), count, 0.0, magnitude),
          harness::normal(rng(), count),
          harness::normal(rng(), count)};
}

void check_reference(Report& rep) {
  Problem pr = make_problem({2, 5, 3, 0.7});
  const Grads g = host_backward(pr);
  const double h = 1e-6;
  auto loss = [&] {
    const Forward f = host_forward(pr);
    double l = 0.0;
    for (size_t i = 0; i < f.out.size(); ++i) l += f.out[i] * pr.dout[i];
    return l;
  };
  auto fd = [&](std::vector<double>& x) {
    std::vector<double> d(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      const double keep = x[i];
      x[i] = keep + h;
      const double up = loss();
      x[i] = keep - h;
      const double down = loss();
      x[i] = keep;
      d[i] = (up - down) / (2 * h);
    }
    return d;
  };
  rep.compare("host reference: dq vs central differences", g.dq, fd(pr.q), 1e-6);
  rep.compare("host reference: dk vs central differences", g.dk, fd(pr.k), 1e-6);
  rep.compare("host reference: dv vs central differences", g.dv, fd(pr.v), 1e-6);
}

template <typename T>
void run_case(Report& rep, const Shape& s, double magnitude = 1.0) {
  using A = mcvd::cuda::acc_t<T>;
  Problem pr = make_problem(s, magnitude);
  pr.q = harness::quantize<T>(pr.q);
  pr.k = harness::quantize<T>(pr.k);
  pr.v = harness::quantize<T>(pr.v);
  pr.dout = harness::quantize<T>(pr.dout);
  const Forward f = host_forward(pr);
  const Grads g = host_backward(pr);

  Buffer<T> q(pr.q), k(pr.k), v(pr.v), dout(pr.dout), out(pr.q.size()), dq(pr.q.size()), dk(pr.q.size()),
      dv(pr.q.size());
  Buffer<A> lse(pr.bh * pr.n);
  for (Buffer<T>* b : {&out, &dq, &dk, &dv}) b->poison();
  lse.poison();
  HARNESS_CUDA(mcvd::cuda::attention_fwd<T>(q.ptr, k.ptr, v.ptr, out.ptr, lse.ptr, pr.bh, pr.n, pr.d, pr.scale, 0));
  Buffer<unsigned char> ws(mcvd::cuda::attention_bwd_workspace<T>(pr.bh, pr.n));
  HARNESS_CUDA(mcvd::cuda::attention_bwd<T>(dout.ptr, q.ptr, k.ptr, v.ptr, out.ptr, lse.ptr, dq.ptr, dk.ptr, dv.ptr,
                                            pr.bh, pr.n, pr.d, pr.scale, ws.ptr, 0));
  HARNESS_CUDA(cudaDeviceSynchronize());

  bool mma = false;
  HARNESS_CUDA(mcvd::cuda::attn_use_mma<T>(pr.d, {q.ptr, k.ptr, v.ptr, out.ptr}, &mma));
  char tag[160];
  std::snprintf(tag, sizeof(tag), "%s bh=%lld n=%lld d=%lld scale=%.3g |qk|~%g %s", Host<T>::name(), (long long)pr.bh,
                (long long)pr.n, (long long)pr.d, pr.scale, magnitude, mma ? "mma" : "simt");
  const double tol = Host<T>::tol();
  rep.compare(std::string(tag) + " out", out.download(), f.out, tol);
  rep.compare(std::string(tag) + " lse", lse.download(), f.lse, Host<A>::tol());
  // Gradients can vanish (N = 1: dq = dk = 0 exactly); their errors are then
  // rounding of O(1) terms, so they are measured against at least 1e-2.
  rep.compare(std::string(tag) + " dq", dq.download(), g.dq, tol, 1e-2);
  rep.compare(std::string(tag) + " dk", dk.download(), g.dk, tol, 1e-2);
  rep.compare(std::string(tag) + " dv", dv.download(), g.dv, tol, 1e-2);
}

template <typename T>
void run_dtype(Report& rep, bool quick) {
  // N = 1, ragged N around the 32 / 64 tiles, D = 7 and 48 (SIMT for every
  // dtype), 32 / 64 / 128 (tensor cores for 16-bit types), 130 (two slabs).
  const Shape shapes[] = {{1, 1, 7, 0},    {2, 77, 32, 0},   {1, 130, 64, 0},  {3, 33, 128, 0.3},
                          {1, 50, 48, 0},  {2, 65, 130, 0},  {1, 200, 64, 0},  {1, 129, 128, 0},
                          {2, 64, 32, 0},  {1, 1, 64, 0}};
  const int count = quick ? 5 : 10;
  for (int i = 0; i < count; ++i) run_case<T>(rep, shapes[i]);
  // Large logits (|scale q.k| ~ 50): the online softmax must stay finite.
  run_case<T>(rep, {1, 96, 64, 0}, 4.0);
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
  return rep.finish("test_attention");
}
