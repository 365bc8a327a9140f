"""mcvd.ops.reverse_step and the mcvd::reverse_step kernel, against
reverse_step_ref in float64 and the DDPM / DDIM closed forms."""
import math

import pytest
import torch

from mcvd.ops import available_backends, reverse_step, reverse_step_ref
from mcvd.ops.reverse_step import reverse_step_coef

# Minimal, odd and video-like shapes; [7, 3, 61, 67] is large enough that the
# threads split it in the middle of a sample.
SHAPES = [(1, 1), (2, 3, 5, 7), (3, 5, 17, 13), (2, 3, 2, 8, 8), (7, 3, 61, 67)]
COEF_NAMES = ("a", "b", "c_x0", "c_xt", "sigma")


def random_coefs(B, per_sample, dtype=torch.float64, device="cpu"):
    """Coefficients in the ranges a sampler uses: a, b in (0.1, 1), the
    others in (0, 1); floats, or [B] tensors when per_sample."""
    if not per_sample:
        return {name: 0.1 + 0.9 * torch.rand(()).item() for name in COEF_NAMES}
    return {name: (0.1 + 0.9 * torch.rand(B, dtype=torch.float64)).to(dtype).to(device) for name in COEF_NAMES}


def reference(x_t, eps, noise, coefs, clip):
    """reverse_step_ref in float64 on the float64 copies of the inputs."""
    coefs64 = {n: c.double().cpu() if isinstance(c, torch.Tensor) else c for n, c in coefs.items()}
    return reverse_step_ref(x_t.double().cpu(), eps.double().cpu(), None if noise is None else noise.double().cpu(),
                            **coefs64, clip=clip)


def make(shape, dtype=torch.float64, device="cpu", with_noise=True):
    x_t, eps, noise = (torch.randn(shape, dtype=torch.float64).to(dtype).to(device) for _ in range(3))
    return x_t, eps, noise if with_noise else None


@pytest.mark.parametrize("per_sample", [False, True], ids=["floats", "tensors"])
@pytest.mark.parametrize("clip", [None, (-1.0, 1.0)], ids=["noclip", "clip"])
@pytest.mark.parametrize("with_noise", [True, False], ids=["noise", "nonoise"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_float64_matches_reference(backend_device, shape, with_noise, clip, per_sample):
    backend, device = backend_device
    x_t, eps, noise = make(shape, device=device, with_noise=with_noise)
    coefs = random_coefs(shape[0], per_sample, device=device)
    if not with_noise:
        coefs["sigma"] = 0.0
    x_prev, x0 = reverse_step(x_t, eps, noise, **coefs, clip=clip, backend=backend)
    want_prev, want_x0 = reference(x_t, eps, noise, coefs, clip)
    assert x_prev.dtype == x0.dtype == torch.float64 and x_prev.shape == x0.shape == shape
    torch.testing.assert_close(x0.cpu(), want_x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x_prev.cpu(), want_prev, rtol=1e-12, atol=1e-12)


# float32 tolerance: x0 = (x_t - a eps) / b takes 3 roundings of values below
# |x_t| + |eps| < 12 divided by b >= 0.1, so < 3 * 6e-8 * 120 = 2.2e-5 at the
# extreme; x_prev adds 3 roundings of terms of the same size. rtol 1e-5 with
# atol 3e-5 holds with margin for unit-scale inputs.
F32_TOL = dict(rtol=1e-5, atol=3e-5)


@pytest.mark.parametrize("clip", [None, (-1.0, 1.0)], ids=["noclip", "clip"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_float32_against_float64_reference(backend_device, shape, clip):
    backend, device = backend_device
    x_t, eps, noise = make(shape, dtype=torch.float32, device=device)
    coefs = random_coefs(shape[0], per_sample=True, dtype=torch.float32, device=device)
    x_prev, x0 = reverse_step(x_t, eps, noise, **coefs, clip=clip, backend=backend)
    want_prev, want_x0 = reference(x_t, eps, noise, coefs, clip)
    assert x_prev.dtype == x0.dtype == torch.float32
    torch.testing.assert_close(x0.double().cpu(), want_x0, **F32_TOL)
    torch.testing.assert_close(x_prev.double().cpu(), want_prev, **F32_TOL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("clip", [None, (-1.0, 1.0)], ids=["noclip", "clip"])
def test_low_precision_within_eager_error(backend_device, assert_within_eager_error, dtype, clip):
    backend, device = backend_device
    x_t, eps, noise = make((3, 5, 17, 13), dtype=dtype, device=device)
    coefs = random_coefs(3, per_sample=True, dtype=dtype, device=device)
    got = reverse_step(x_t, eps, noise, **coefs, clip=clip, backend=backend)
    eager = reverse_step_ref(x_t, eps, noise, **coefs, clip=clip)
    want = reference(x_t, eps, noise, coefs, clip)
    for g, e, w in zip(got, eager, want):
        assert_within_eager_error(g.cpu(), w, e.cpu(), factor=2, atol=1e-3)


def test_noncontiguous_inputs(backend_device):
    backend, device = backend_device
    x_t = torch.randn(5, 4, 3, dtype=torch.float64, device=device).permute(2, 1, 0)
    eps = torch.randn(3, 4, 10, dtype=torch.float64, device=device)[..., ::2]
    noise = torch.randn(3, 5, 4, dtype=torch.float64, device=device).transpose(1, 2)
    coefs = random_coefs(3, per_sample=True, device=device)
    coefs["b"] = torch.rand(6, dtype=torch.float64, device=device)[::2] + 0.5
    got = reverse_step(x_t, eps, noise, **coefs, clip=(-1.0, 1.0), backend=backend)
    want = reference(x_t, eps, noise, coefs, (-1.0, 1.0))
    for g, w in zip(got, want):
        torch.testing.assert_close(g.cpu(), w, rtol=1e-12, atol=1e-12)


def test_a_tensor_sigma_needs_noise(backend_device):
    """A tensor sigma's values are never read (on a GPU that would make the host
    wait, and the samplers run under CUDA graphs), so without noise it is
    refused whatever it holds, zeros included; a float sigma of 0 takes None."""
    backend, device = backend_device
    x_t, eps, _ = make((2, 3, 4), device=device)
    coefs = random_coefs(2, per_sample=True, device=device)
    for sigma in (coefs["sigma"], torch.zeros(2, dtype=torch.float64, device=device)):
        with pytest.raises(ValueError, match=r"noise: expected a tensor shaped like x_t when sigma is a tensor "
                                             r"\(its values are not read\); pass sigma=0.0 for a step without "
                                             r"noise, got None"):
            reverse_step(x_t, eps, None, **{**coefs, "sigma": sigma}, backend=backend)
    x_prev, x0 = reverse_step(x_t, eps, None, **{**coefs, "sigma": 0.0}, backend=backend)
    torch.testing.assert_close(x_prev, coefs["c_x0"].view(-1, 1, 1) * x0 + coefs["c_xt"].view(-1, 1, 1) * x_t,
                               rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ closed forms


def linear_schedule():
    """DDPM's linear betas 1e-4 .. 0.02 over T = 1000, float64, built here."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    return betas, torch.cumprod(1 - betas, 0)


@pytest.mark.parametrize("t", [1, 500, 999])
def test_ddpm_step_is_the_posterior_sample(backend_device, t):
    """Ho et al. 2020, eq. 11: mu = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t),
    x_{t-1} = mu + sqrt(beta_tilde_t) z, with beta_tilde_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t."""
    backend, device = backend_device
    betas, abar = linear_schedule()
    beta, ab, ab_prev = betas[t].item(), abar[t].item(), abar[t - 1].item()
    alpha = 1 - beta
    x_t, eps, z = make((2, 3, 8, 8), device=device)
    x_prev, x0 = reverse_step(
        x_t, eps, z,
        a=math.sqrt(1 - ab), b=math.sqrt(ab),
        c_x0=math.sqrt(ab_prev) * beta / (1 - ab), c_xt=math.sqrt(alpha) * (1 - ab_prev) / (1 - ab),
        sigma=math.sqrt((1 - ab_prev) / (1 - ab) * beta), backend=backend)
    mu = (x_t - beta / math.sqrt(1 - ab) * eps) / math.sqrt(alpha)
    want = mu + math.sqrt((1 - ab_prev) / (1 - ab) * beta) * z
    torch.testing.assert_close(x_prev, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x0, (x_t - math.sqrt(1 - ab) * eps) / math.sqrt(ab), rtol=1e-12, atol=1e-12)


def test_ddim_step_is_deterministic_closed_form(backend_device):
    """Song et al. 2021, eq. 12 with eta = 0: x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps."""
    backend, device = backend_device
    _, abar = linear_schedule()
    ab, ab_prev = abar[700].item(), abar[600].item()
    x_t, eps, _ = make((2, 3, 8, 8), device=device)
    k = math.sqrt(1 - ab_prev) / math.sqrt(1 - ab)
    x_prev, x0 = reverse_step(x_t, eps, None, a=math.sqrt(1 - ab), b=math.sqrt(ab),
                              c_x0=math.sqrt(ab_prev) - k * math.sqrt(ab), c_xt=k, sigma=0.0, backend=backend)
    want_x0 = (x_t - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    torch.testing.assert_close(x_prev, math.sqrt(ab_prev) * want_x0 + math.sqrt(1 - ab_prev) * eps,
                               rtol=1e-10, atol=1e-10)


def test_clip_bounds_x0_and_the_step(backend_device):
    backend, device = backend_device
    x_t = torch.tensor([[-3.0, -0.5, 0.25, 2.0]], dtype=torch.float64, device=device)
    eps = torch.zeros_like(x_t)
    x_prev, x0 = reverse_step(x_t, eps, None, a=0.5, b=0.5, c_x0=1.0, c_xt=0.0, sigma=0.0, clip=(-1.0, 1.0),
                              backend=backend)
    want = torch.tensor([[-1.0, -1.0, 0.5, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(x0.cpu(), want, rtol=0, atol=0)
    torch.testing.assert_close(x_prev.cpu(), want, rtol=0, atol=0)


# ------------------------------------------------------------------ gradients


@pytest.mark.parametrize("clip", [None, (-1.5, 1.5)], ids=["noclip", "clip"])
@pytest.mark.parametrize("per_sample", [False, True], ids=["floats", "tensors"])
def test_gradcheck(backend_device, clip, per_sample):
    backend, device = backend_device
    x_t, eps, noise = (t.requires_grad_() for t in make((2, 3, 4), device=device))
    coefs = random_coefs(2, per_sample, device=device)
    assert torch.autograd.gradcheck(lambda x, e, n: reverse_step(x, e, n, **coefs, clip=clip, backend=backend),
                                    (x_t, eps, noise))


def test_gradients_match_reference_autograd(backend_device):
    backend, device = backend_device
    x_t, eps, noise = (t.requires_grad_() for t in make((3, 5, 17, 13), device=device))
    coefs = random_coefs(3, per_sample=True, device=device)
    g_prev, g_x0 = torch.randn_like(x_t), torch.randn_like(x_t)
    outs = reverse_step(x_t, eps, noise, **coefs, clip=(-1.0, 1.0), backend=backend)
    got = torch.autograd.grad(outs, (x_t, eps, noise), (g_prev, g_x0))
    ref_outs = reverse_step_ref(x_t, eps, noise, **coefs, clip=(-1.0, 1.0))
    want = torch.autograd.grad(ref_outs, (x_t, eps, noise), (g_prev, g_x0))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_an_x0_exactly_on_a_clip_bound_passes_its_gradient(backend_device, dtype):
    """As torch.clamp (the reference) does: bounds included. x0 = x_t here (eps = 0, b = 1): on the bounds -1 and
    0.5 the gradient passes, beyond them it does not; in bfloat16 many x0 land on a bound."""
    backend, device = backend_device
    x_t = torch.tensor([[0.5, 0.25, -1.0, 2.0, -3.0]], dtype=dtype, device=device, requires_grad=True)
    coefs = dict(a=0.5, b=1.0, c_x0=1.0, c_xt=0.0, sigma=0.0)
    _, x0 = reverse_step(x_t, torch.zeros_like(x_t), None, **coefs, clip=(-1.0, 0.5), backend=backend)
    (grad,) = torch.autograd.grad(x0.sum(), x_t)
    assert grad.tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0]]
    near = torch.linspace(0.49, 0.51, 2000, device=device).to(dtype)[None].requires_grad_()  # many on 0.5 itself
    eps = torch.randn_like(near) * 1e-3
    got = torch.autograd.grad(reverse_step(near, eps, None, **coefs, clip=(-1.0, 0.5), backend=backend)[1].sum(),
                              near)[0]
    # The reference in the kernels' compute dtype (float32 for bfloat16: backend="reference"'s upcast)
    want = torch.autograd.grad(reverse_step_ref(near, eps, None, **coefs, clip=(-1.0, 0.5), upcast=True)[1].sum(),
                               near)[0]
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_an_x0_clipped_in_float32_passes_no_gradient_where_it_rounds_onto_the_bound(backend_device, dtype):
    """x0 = x_t - 0.5 eps = 1 + 0.5 * 0.0002 = 1.0001 in the kernels' float32: clipped to 1, so no gradient,
    although 1.0001 rounds to 1.0 in bfloat16 and in float16 (steps of 2^-7 and 2^-10 above 1)."""
    backend, device = backend_device
    x_t = torch.ones(1, 4, dtype=dtype, device=device, requires_grad=True)
    eps = torch.full((1, 4), -0.0002, dtype=dtype, device=device)
    coefs = dict(a=0.5, b=1.0, c_x0=1.0, c_xt=0.0, sigma=0.0)
    _, x0 = reverse_step(x_t, eps, None, **coefs, clip=(-1.0, 1.0), backend=backend)
    assert x0.tolist() == [[1.0] * 4]
    (grad,) = torch.autograd.grad(x0.sum(), x_t)
    assert grad.tolist() == [[0.0] * 4]


def test_a_float64_step_with_a_float32_table_computes_in_float64(backend_device):
    """reverse_step_coef takes a float32 or float64 table whatever x_t's dtype; a float64 x_t is computed in
    float64 (the table widened), as the reference does with the same coefficients."""
    backend, device = backend_device
    x_t, eps, noise = make((3, 5, 7), device=device)
    coef = (0.1 + torch.rand(5, 3, device=device)).float()
    x_prev, x0 = reverse_step_coef(x_t, eps, noise, coef, -1.0, 1.0, backend=backend)
    want_prev, want_x0 = reverse_step_ref(x_t, eps, noise, **dict(zip(COEF_NAMES, coef.double())), clip=(-1.0, 1.0))
    torch.testing.assert_close(x0, want_x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x_prev, want_prev, rtol=1e-12, atol=1e-12)


def test_double_backward(backend_device):
    """The backward is made of differentiable PyTorch ops, so a double backward
    is exact (and needs no first-order guard, unlike spatin_norm and attention)."""
    backend, device = backend_device
    x_t, eps, noise = (t.requires_grad_() for t in make((2, 3, 4), device=device))
    coefs = random_coefs(2, per_sample=True, device=device)
    assert torch.autograd.gradgradcheck(
        lambda x, e, n: reverse_step(x, e, n, **coefs, clip=(-1.5, 1.5), backend=backend), (x_t, eps, noise))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_reference_upcast(dtype):
    """upcast=True computes in float32, as backend="reference" does (bit for
    bit); the default computes in x_t's dtype, the coefficients rounded to it."""
    x_t, eps, noise = make((3, 5, 7), dtype=dtype)
    coefs = random_coefs(3, per_sample=True, dtype=torch.float32)  # one rounding to dtype on either path
    up = reverse_step_ref(x_t, eps, noise, **coefs, clip=(-1.0, 1.0), upcast=True)
    for got, want in zip(up, reverse_step(x_t, eps, noise, **coefs, clip=(-1.0, 1.0), backend="reference")):
        assert got.dtype == dtype and torch.equal(got, want)
    low = {n: c.to(dtype) for n, c in coefs.items()}
    a, b, c_x0, c_xt, sigma = (low[n].view(-1, 1, 1) for n in COEF_NAMES)
    x0 = ((x_t - a * eps) / b).clamp(-1.0, 1.0)
    for got, want in zip(reverse_step_ref(x_t, eps, noise, **coefs, clip=(-1.0, 1.0)),
                         (c_x0 * x0 + c_xt * x_t + sigma * noise, x0)):
        assert got.dtype == dtype and torch.equal(got, want)


# ------------------------------------------------------------------ torch.library


def test_opcheck(backend_device):
    backend, device = backend_device
    if backend == "triton":
        pytest.skip("the Triton ops' opcheck is in test_op_layouts.py")
    x_t, eps, noise = (t.requires_grad_() for t in make((2, 3, 5, 7), dtype=torch.float32, device=device))
    coef = 0.1 + torch.rand(5, 2, device=device)
    op = torch.ops.mcvd.reverse_step.default
    torch.library.opcheck(op, (x_t, eps, noise, coef, -1.0, 1.0))
    torch.library.opcheck(op, (x_t, eps, None, coef, None, None))
    torch.library.opcheck(op, (x_t, eps, noise, coef.double(), None, None))


def test_compile_fullgraph_of_the_op():
    x_t, eps, noise = make((2, 3, 5, 7), dtype=torch.float32)
    coef = 0.1 + torch.rand(5, 2)

    @torch.compile(fullgraph=True)
    def f(x_t, eps, noise, coef):
        return torch.ops.mcvd.reverse_step(x_t, eps, noise, coef, -1.0, 1.0)

    got = f(x_t, eps, noise, coef)
    want = reverse_step_ref(x_t.double(), eps.double(), noise.double(), **dict(zip(COEF_NAMES, coef.double())),
                            clip=(-1.0, 1.0))
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, **F32_TOL)


def test_compile_fullgraph_of_the_public_function(backend_device):
    backend, device = backend_device
    x_t, eps, noise = make((2, 3, 5, 7), dtype=torch.float32, device=device)
    f = torch.compile(lambda x, e, n: reverse_step(x, e, n, a=0.3, b=0.9, c_x0=0.5, c_xt=0.4, sigma=0.1,
                                                   clip=(-1.0, 1.0), backend=backend), fullgraph=True)
    got = f(x_t, eps, noise)
    want = reverse_step_ref(x_t.double(), eps.double(), noise.double(), a=0.3, b=0.9, c_x0=0.5, c_xt=0.4,
                            sigma=0.1, clip=(-1.0, 1.0))
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double().cpu(), w.cpu(), **F32_TOL)


# ------------------------------------------------------------------ bad input

SHAPE = (2, 3, 4)
COEFS = dict(a=0.5, b=0.8, c_x0=0.3, c_xt=0.6, sigma=0.1)
BAD = [
    # (case, changed inputs, Python error type, message)
    ("x_t 0-d", dict(x_t=torch.tensor(1.0)), ValueError,
     r"x_t: expected a tensor with a batch dimension \[B, ...\], got a 0-d tensor"),
    ("x_t dtype", dict(x_t=torch.ones(SHAPE, dtype=torch.int32)), TypeError,
     r"x_t: expected a floating dtype \(float32, float64, bfloat16, float16\), got torch.int32"),
    ("eps shape", dict(eps=torch.randn(2, 3, 5)), ValueError, r"eps: expected shape \[2, 3, 4\], got \[2, 3, 5\]"),
    ("eps dtype", dict(eps=torch.randn(SHAPE, dtype=torch.float64)), TypeError,
     r"eps: expected dtype torch.float32 \(the dtype of x_t\), got torch.float64"),
    ("noise shape", dict(noise=torch.randn(1, 3, 4)), ValueError, r"noise: expected shape \[2, 3, 4\], got \[1, 3, 4\]"),
    ("noise dtype", dict(noise=torch.randn(SHAPE).half()), TypeError,
     r"noise: expected dtype torch.float32 \(the dtype of x_t\), got torch.float16"),
]


def good_inputs():
    return dict(x_t=torch.randn(SHAPE), eps=torch.randn(SHAPE), noise=torch.randn(SHAPE))


@pytest.mark.parametrize("case, change, py_error, message", BAD, ids=[c[0] for c in BAD])
def test_bad_input_through_mcvd_ops(case, change, py_error, message):
    t = {**good_inputs(), **change}
    for backend in available_backends("cpu"):
        with pytest.raises(py_error, match=message):
            reverse_step(t["x_t"], t["eps"], t["noise"], **COEFS, backend=backend)


@pytest.mark.parametrize("case, change, py_error, message", BAD, ids=[c[0] for c in BAD])
def test_bad_input_through_the_cpu_kernel(case, change, py_error, message):
    t = {**good_inputs(), **change}
    coef = torch.rand(5, t["x_t"].shape[0] if t["x_t"].dim() else 1)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.mcvd.reverse_step(t["x_t"], t["eps"], t["noise"], coef)


def test_bad_coefficients_and_clip():
    x_t, eps, noise = good_inputs().values()
    with pytest.raises(ValueError, match=r"noise: expected a tensor shaped like x_t when sigma is not 0, got None"):
        reverse_step(x_t, eps, None, **COEFS)
    op = torch.ops.mcvd.reverse_step
    with pytest.raises(RuntimeError, match=r"coef: expected shape \[5, 2\], got \[4, 2\]"):
        op(x_t, eps, noise, torch.rand(4, 2))
    with pytest.raises(RuntimeError, match=r"coef: expected a 2-d tensor \[5, B\] .*got shape \[5\]"):
        op(x_t, eps, noise, torch.rand(5))
    with pytest.raises(RuntimeError, match=r"coef: expected dtype torch.float32 or torch.float64, got torch.float16"):
        op(x_t, eps, noise, torch.rand(5, 2).half())
    with pytest.raises(RuntimeError, match=r"clip_lo, clip_hi: expected both or neither to be given"):
        op(x_t, eps, noise, torch.rand(5, 2), -1.0, None)
    with pytest.raises(RuntimeError, match=r"clip_lo: expected clip_lo <= clip_hi, got clip_lo=1, clip_hi=-1"):
        op(x_t, eps, noise, torch.rand(5, 2), 1.0, -1.0)


# Arguments only the Python layer takes (the kernel takes a coefficient table):
# coefficients that are no real number, bool included, a non-finite or
# division-by-zero coefficient, and a clip that is not a pair of real numbers.
BAD_ARGS = [
    ("eps None", dict(eps=None), TypeError, r"eps: expected a tensor, got None"),
    ("a str", dict(a="x"), TypeError, r"a: expected a float or a tensor of shape \[2\], got str 'x'"),
    ("c_xt numeric str", dict(c_xt="0.5"), TypeError,
     r"c_xt: expected a float or a tensor of shape \[2\], got str '0.5'"),
    ("b None", dict(b=None), TypeError, r"b: expected a float or a tensor of shape \[2\], got None"),
    ("c_x0 bool", dict(c_x0=True), TypeError, r"c_x0: expected a float or a tensor of shape \[2\], got bool True"),
    ("sigma complex", dict(sigma=0.1j), TypeError,
     r"sigma: expected a float or a tensor of shape \[2\], got complex 0.1j"),
    ("a bool tensor", dict(a=torch.ones(2, dtype=torch.bool)), TypeError,
     r"a: expected a float or a floating-point tensor of shape \[2\], got a tensor of dtype torch.bool"),
    ("b int tensor", dict(b=torch.ones(2, dtype=torch.int64)), TypeError,
     r"b: expected a float or a floating-point tensor of shape \[2\], got a tensor of dtype torch.int64"),
    ("b shape", dict(b=torch.ones(3)), ValueError, r"b: expected a float or a tensor of shape \[2\], got shape \[3\]"),
    ("sigma nan", dict(sigma=float("nan")), ValueError, r"sigma: expected a finite float, got nan"),
    ("a inf", dict(a=float("inf")), ValueError, r"a: expected a finite float, got inf"),
    ("b zero", dict(b=0.0), ValueError, r"b: expected a nonzero float \(x0 = \(x_t - a eps\) / b\), got 0"),
    ("clip float", dict(clip=1.0), TypeError, r"clip: expected None or \(lo, hi\) with lo <= hi, got 1.0"),
    ("clip str", dict(clip=("a", "b")), TypeError,
     r"clip: expected None or \(lo, hi\) with lo <= hi, got \('a', 'b'\)"),
    ("clip bool", dict(clip=(False, True)), TypeError,
     r"clip: expected None or \(lo, hi\) with lo <= hi, got \(False, True\)"),
    ("clip three", dict(clip=(-1.0, 0.0, 1.0)), TypeError, r"clip: expected None or \(lo, hi\) with lo <= hi, got"),
    ("clip order", dict(clip=(1.0, -1.0)), ValueError,
     r"clip: expected None or \(lo, hi\) with lo <= hi, got \(1.0, -1.0\)"),
    ("clip nan", dict(clip=(float("nan"), 1.0)), ValueError,
     r"clip: expected None or \(lo, hi\) with lo <= hi, got \(nan, 1.0\)"),
]


@pytest.mark.parametrize("case, change, py_error, message", BAD_ARGS, ids=[c[0] for c in BAD_ARGS])
def test_bad_arguments_through_mcvd_ops(case, change, py_error, message):
    args = {**good_inputs(), **COEFS, "clip": None, **change}
    x_t, eps, noise = args.pop("x_t"), args.pop("eps"), args.pop("noise")
    for backend in available_backends("cpu"):
        with pytest.raises(py_error, match=message):
            reverse_step(x_t, eps, noise, **args, backend=backend)


def test_numbers_of_any_real_type_are_coefficients():
    """ints and NumPy scalars are real numbers: the same step as the floats."""
    np = pytest.importorskip("numpy")
    x_t, eps, noise = good_inputs().values()
    want = reverse_step(x_t, eps, noise, a=1.0, b=0.5, c_x0=0.25, c_xt=0.5, sigma=0.1, clip=(-2.0, 2.0))
    got = reverse_step(x_t, eps, noise, a=1, b=np.float32(0.5), c_x0=np.float64(0.25), c_xt=0.5, sigma=0.1,
                       clip=(np.int64(-2), 2))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.gpu
def test_device_mismatch_is_rejected():
    x_t = torch.randn(SHAPE, device="cuda")
    message = r"eps: expected device cuda:0 \(the device of x_t\), got cpu"
    with pytest.raises(ValueError, match=message):
        reverse_step(x_t, torch.randn(SHAPE), None, **{**COEFS, "sigma": 0.0})
    with pytest.raises(RuntimeError, match=r"coef: expected device cuda:0 \(the device of x_t\), got cpu"):
        torch.ops.mcvd.reverse_step(x_t, torch.randn_like(x_t), None, torch.rand(5, 2))
