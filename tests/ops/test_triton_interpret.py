"""The Triton kernels (mcvd.kernels) run by Triton's interpreter on the CPU.

TRITON_INTERPRET=1 only takes effect if it is set before triton is first
imported, which another test module may already have done in this process.
So under a plain `pytest`, test_kernels_under_interpreter runs this file again
in a fresh interpreter-mode subprocess, where the checks below execute; they
skip in any process without TRITON_INTERPRET=1.

The interpreter is slow (every program is a Python loop step over numpy
arrays), so shapes are tiny and hold few programs. Every check compares with
the float64 references of mcvd.ops, or with closed forms computed here in
float64. Tolerances: float64 results must agree to rounding (1e-12 relative to
the data's scale); lower precisions are bounded by a multiple of the error
that plain PyTorch makes in the same dtype (2x for outputs, 3x for gradients),
plus one unit of rounding at the output's scale, since a single final rounding
can already cost that much where PyTorch happens to round luckily.
"""
import importlib
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import mcvd
from mcvd.ops import attention_ref, reverse_step_ref, spatin_norm_ref
from mcvd.ops.attention import triton_kernels as attention_kernels
from mcvd.ops.dropout import triton_kernels as dropout_kernels
from mcvd.ops.reverse_step import triton_kernels as reverse_step_kernels
from mcvd.ops.spatin_norm import triton_kernels as spatin_norm_kernels

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install mcvd[triton])", allow_module_level=True)

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.skipif(
    not INTERPRETED, reason="runs in the TRITON_INTERPRET=1 subprocess of test_kernels_under_interpreter")

F64_TOL = 1e-12
EPS = {torch.float32: 2.0 ** -23, torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}


@pytest.mark.skipif(INTERPRETED, reason="this process already runs the interpreted checks")
def test_kernels_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
           "-k", "not test_kernels_under_interpreter and not never_import_triton and not refuse_to_run_without"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    report = run.stdout[-8000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    assert " passed" in run.stdout and " skipped" not in run.stdout, report


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _close(got, ref64, same_dtype, factor):
    """max|got - ref64| <= factor * max|same_dtype - ref64| + one rounding unit at ref64's scale."""
    err = (got.double() - ref64).abs().max().item()
    base = (same_dtype.double() - ref64).abs().max().item()
    unit = EPS[got.dtype] * ref64.abs().max().item()
    assert err <= factor * base + unit, f"error {err:.3g} > {factor} x PyTorch's {base:.3g} + {unit:.3g}"


def _close64(got, ref):
    scale = max(ref.abs().max().item(), 1.0)
    err = (got - ref).abs().max().item()
    assert err <= F64_TOL * scale, f"float64 error {err:.3g} at scale {scale:.3g}"


def _grads(fn, inputs, grad_out):
    """Output and gradients of fn(*inputs) for the leaves among inputs (None passes through)."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in inputs]
    out = fn(*leaves)
    out.backward(grad_out)
    return out.detach(), [None if t is None else t.grad for t in leaves]


# --- spatin_norm ---------------------------------------------------------------

SPATIN_OPT = ("weight", "bias", "gamma", "beta", "scale", "shift")
SPATIN_CASES = [  # (optionals given, silu): none, all, and each one alone or in its pair
    ((), False),
    (SPATIN_OPT, True),
    (("weight", "bias"), True),
    (("gamma", "beta"), False),
    (("scale", "shift"), True),
    (("weight", "beta", "scale"), False),
    (("bias", "gamma", "shift"), True),
]


def _spatin_inputs(B, C, H, W, given, dtype, loc=0.0):
    shapes = {"weight": (C,), "bias": (C,), "gamma": (B, C, H, W), "beta": (B, C, H, W), "scale": (B, C),
              "shift": (B, C)}
    x = torch.randn(B, C, H, W, dtype=torch.float64) * 2 + loc
    opt = {n: (torch.randn(shapes[n], dtype=torch.float64) * 0.5 if n in given else None) for n in SPATIN_OPT}
    return x.to(dtype), {n: None if t is None else t.to(dtype) for n, t in opt.items()}


def _spatin_fn(num_groups, silu, eps, backend):
    def fn(x, *opt):
        kw = dict(zip(SPATIN_OPT, opt))
        if backend == "ref":
            return spatin_norm_ref(x, num_groups, **kw, eps=eps, silu=silu)
        return mcvd.ops.spatin_norm(x, num_groups, **kw, eps=eps, silu=silu, backend=backend)
    return fn


def _group_stats(x, num_groups, eps):
    """float64 mean and rstd per (batch, group), from their definition."""
    xg = x.double().reshape(x.shape[0], num_groups, -1)
    return xg.mean(-1), (xg.var(-1, unbiased=False) + eps).rsqrt()


@pytest.fixture(params=["fused", "split"])
def spatin_path(request, monkeypatch):
    """Forward and backward as one program per group (the group in registers)
    or as the split reductions (limits of 0 turn the one-program paths off).
    Every dispatch decision of the test must have taken the requested path."""
    sn = spatin_norm_kernels()

    if request.param == "split":
        monkeypatch.setattr(sn, "_MAX_FUSED", 0)
        monkeypatch.setattr(sn, "_MAX_FUSED_BWD", 0)
    decisions = []
    real = sn._fused

    def spy(*args, **kwargs):
        decisions.append(real(*args, **kwargs))
        return decisions[-1]

    monkeypatch.setattr(sn, "_fused", spy)
    yield request.param
    assert decisions and all(d == (request.param == "fused") for d in decisions), decisions


@interpreted
@pytest.mark.parametrize("given, silu", SPATIN_CASES)
def test_spatin_norm_float64(given, silu, spatin_path):
    sn = spatin_norm_kernels()

    B, C, H, W, G, eps = 2, 6, 5, 3, 3, 1e-5
    x, opt = _spatin_inputs(B, C, H, W, given, torch.float64, loc=1.5)
    y, mean, rstd = sn.fwd(x, G, *opt.values(), eps, silu)
    ref_mean, ref_rstd = _group_stats(x, G, eps)
    _close64(mean, ref_mean)
    _close64(rstd, ref_rstd)
    g = torch.randn(B, C, H, W, dtype=torch.float64)
    inputs = [x, *opt.values()]
    y_ref, grads_ref = _grads(_spatin_fn(G, silu, eps, "ref"), inputs, g)
    y_tri, grads_tri = _grads(_spatin_fn(G, silu, eps, "triton"), inputs, g)
    _close64(y, y_ref)
    _close64(y_tri, y_ref)
    for name, got, ref in zip(("x",) + SPATIN_OPT, grads_tri, grads_ref):
        assert (got is None) == (ref is None), name
        if ref is not None:
            _close64(got, ref)
    # The raw backward returns [0] tensors for the absent optionals.
    raw = sn.bwd(g, x, mean, rstd, G, *opt.values(), silu)
    for name, t, grad in zip(SPATIN_OPT, opt.values(), raw[1:]):
        assert grad.shape == (t.shape if t is not None else (0,)), name


@interpreted
@pytest.mark.parametrize("max_block, programs, plan", [(16, 36, (16, 16, 4)), (8, 18, (8, 32, 2))])
def test_spatin_norm_split_rows(monkeypatch, max_block, programs, plan):
    """Rows cut into several chunks (and chunks of several blocks), so the
    partial statistics and partial gradient sums are combined across programs,
    and combine tiles of 2 partials, so every combine loop runs several steps.
    C = 3 in one group; H * W = 63 is a multiple of no block size."""
    sn = spatin_norm_kernels()

    monkeypatch.setattr(sn, "_MAX_BLOCK", max_block)
    monkeypatch.setattr(sn, "_MAX_TILE", 2)
    monkeypatch.setattr(sn, "_INTERPRET_PROGRAMS", programs)
    B, C, H, W, G, eps = 3, 3, 7, 9, 1, 1e-6
    assert sn._plan(B * C, H * W, torch.device("cpu")) == plan
    # 3 groups, fewer than the programs wanted: the split path.
    assert not sn._fused(B * G, C, H * W, torch.device("cpu"), sn._MAX_FUSED)
    x, opt = _spatin_inputs(B, C, H, W, SPATIN_OPT, torch.float64, loc=-3.0)
    g = torch.randn(B, C, H, W, dtype=torch.float64)
    inputs = [x, *opt.values()]
    y_ref, grads_ref = _grads(_spatin_fn(G, True, eps, "ref"), inputs, g)
    y_tri, grads_tri = _grads(_spatin_fn(G, True, eps, "triton"), inputs, g)
    _close64(y_tri, y_ref)
    for got, ref in zip(grads_tri, grads_ref):
        _close64(got, ref)


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_spatin_norm_low_precision(dtype, spatin_path):
    B, C, H, W, G, eps = 2, 8, 6, 5, 4, 1e-6
    x, opt = _spatin_inputs(B, C, H, W, SPATIN_OPT, dtype)
    g = torch.randn(B, C, H, W, dtype=dtype)
    inputs = [x, *opt.values()]
    y64, grads64 = _grads(_spatin_fn(G, True, eps, "ref"), [t.double() for t in inputs], g.double())
    y_pt, grads_pt = _grads(_spatin_fn(G, True, eps, "ref"), inputs, g)
    y_tri, grads_tri = _grads(_spatin_fn(G, True, eps, "triton"), inputs, g)
    assert y_tri.dtype == dtype and all(t.dtype == dtype for t in grads_tri)
    _close(y_tri, y64, y_pt, 2)
    for got, ref, pt in zip(grads_tri, grads64, grads_pt):
        _close(got, ref, pt, 3)


@interpreted
def test_spatin_norm_statistics_survive_a_large_mean(spatin_path):
    """float32 x = 1000 + N(0, 1): a one-pass sum / sum-of-squares variance
    loses about 1e6 * 2^-24 ~ 6e-2 of var to cancellation; Welford (split) and
    two passes over the registers (fused) keep rstd within float32 rounding of
    the float64 value."""
    sn = spatin_norm_kernels()

    x = (1000 + torch.randn(2, 4, 8, 8, dtype=torch.float64)).float()
    _, mean, rstd = sn.fwd(x, 2, None, None, None, None, None, None, 1e-6, False)
    ref_mean, ref_rstd = _group_stats(x, 2, 1e-6)
    assert ((mean.double() - ref_mean).abs() / ref_mean).max() < 1e-6
    assert ((rstd.double() - ref_rstd).abs() / ref_rstd).max() < 1e-4


# --- attention -----------------------------------------------------------------

ATTN_SHAPES = [  # (B, heads, N, D): one position, odd N and D, several blocks of 16, aligned D,
    (1, 1, 1, 7),  # and N a multiple of the blocks with D a power of two (the kernels without masks)
    (2, 2, 13, 7),
    (1, 2, 37, 32),
    (1, 1, 18, 64),
    (2, 1, 32, 16),
]


def _attn_fn(scale, backend):
    def fn(q, k, v):
        if backend == "ref":
            return attention_ref(q, k, v, scale=scale)
        return mcvd.ops.attention(q, k, v, scale=scale, backend=backend)
    return fn


@interpreted
@pytest.mark.parametrize("shape", ATTN_SHAPES)
def test_attention_float64(shape):
    at = attention_kernels()

    q, k, v = (torch.randn(shape, dtype=torch.float64) for _ in range(3))
    scale = 0.3
    out, lse = at.fwd(q, k, v, scale)
    _close64(lse, torch.logsumexp(scale * q @ k.transpose(-1, -2), dim=-1))
    g = torch.randn(shape, dtype=torch.float64)
    out_ref, grads_ref = _grads(_attn_fn(scale, "ref"), [q, k, v], g)
    out_tri, grads_tri = _grads(_attn_fn(scale, "triton"), [q, k, v], g)
    _close64(out, out_ref)
    _close64(out_tri, out_ref)
    for got, ref in zip(grads_tri, grads_ref):
        _close64(got, ref)


@interpreted
def test_attention_strided_inputs():
    """q, k, v as the model makes them: [B, heads, D, N] buffers seen as [B, heads, N, D]."""
    q, k, v = (torch.randn(2, 2, 20, 11, dtype=torch.float64).transpose(-1, -2) for _ in range(3))
    g = torch.randn(2, 2, 11, 20, dtype=torch.float64)
    out_ref, grads_ref = _grads(_attn_fn(None, "ref"), [q, k, v], g)
    out_tri, grads_tri = _grads(_attn_fn(None, "triton"), [q, k, v], g)
    _close64(out_tri, out_ref)
    for got, ref in zip(grads_tri, grads_ref):
        _close64(got, ref)


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_attention_low_precision(dtype):
    # bfloat16 is left to the GPU tests: the interpreter's tl.dot multiplies
    # the raw bits of bfloat16 operands.
    shape = (1, 2, 21, 16)
    q, k, v = (torch.randn(shape, dtype=dtype) for _ in range(3))
    g = torch.randn(shape, dtype=dtype)
    out64, grads64 = _grads(_attn_fn(None, "ref"), [q.double(), k.double(), v.double()], g.double())
    out_pt, grads_pt = _grads(_attn_fn(None, "ref"), [q, k, v], g)
    out_tri, grads_tri = _grads(_attn_fn(None, "triton"), [q, k, v], g)
    _close(out_tri, out64, out_pt, 2)
    for got, ref, pt in zip(grads_tri, grads64, grads_pt):
        _close(got, ref, pt, 3)


# --- reverse_step --------------------------------------------------------------

def _coefs(B, dtype=torch.float64):
    """Per-sample coefficients of a DDPM-like step, with b well away from 0."""
    a, b = torch.rand(B, dtype=dtype) * 0.5 + 0.2, torch.rand(B, dtype=dtype) * 0.5 + 0.5
    return {"a": a, "b": b, "c_x0": torch.rand(B, dtype=dtype), "c_xt": torch.rand(B, dtype=dtype),
            "sigma": torch.rand(B, dtype=dtype) * 0.1}


@interpreted
@pytest.mark.parametrize("clip", [None, (-1.0, 1.0)])
@pytest.mark.parametrize("with_noise", [True, False])
def test_reverse_step_float64(clip, with_noise):
    B = 3
    x_t = torch.randn(B, 2, 3, 5, 7, dtype=torch.float64) * 2
    eps, noise = torch.randn_like(x_t), torch.randn_like(x_t) if with_noise else None
    coefs = _coefs(B)
    if not with_noise:
        coefs["sigma"] = 0.0

    def run(backend, *leaves):
        x_prev, x0 = mcvd.ops.reverse_step(*leaves, **coefs, clip=clip, backend=backend)
        return x_prev, x0

    leaves_ref = [t.clone().requires_grad_() if t is not None else None for t in (x_t, eps, noise)]
    leaves_tri = [t.clone().requires_grad_() if t is not None else None for t in (x_t, eps, noise)]
    ref = run("reference", *leaves_ref)
    got = run("triton", *leaves_tri)
    g_prev, g_x0 = torch.randn_like(x_t), torch.randn_like(x_t)
    torch.autograd.backward(ref, (g_prev, g_x0))
    torch.autograd.backward(got, (g_prev, g_x0))
    for a, b in zip(got, ref):
        _close64(a.detach(), b.detach())
    if clip is not None:
        assert got[1].min() >= clip[0] and got[1].max() <= clip[1]
        assert (got[1].abs() == 1).any(), "the clip must bite somewhere for this test to mean anything"
    for a, b in zip(leaves_tri, leaves_ref):
        if b is not None:
            _close64(a.grad, b.grad)


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_reverse_step_low_precision(dtype):
    """The kernel computes in float32 and rounds once: each output is within
    one rounding unit of the float64 result (plus float32 arithmetic)."""
    B = 2
    x_t, eps, noise = (torch.randn(B, 3, 17, dtype=torch.float64).to(dtype) for _ in range(3))
    coefs = _coefs(B, torch.float32)
    got = mcvd.ops.reverse_step(x_t, eps, noise, **coefs, clip=(-1.5, 1.5), backend="triton")
    ref = reverse_step_ref(x_t.double(), eps.double(), noise.double(), **{n: c.double() for n, c in coefs.items()},
                           clip=(-1.5, 1.5))
    for a, b in zip(got, ref):
        assert a.dtype == dtype
        bound = EPS[dtype] * b.abs() + 1e-6 * (1 + b.abs())
        assert ((a.double() - b).abs() <= bound).all()


@interpreted
def test_spatin_norm_groups_of_no_elements_have_mean_zero_and_variance_zero():
    """As the C++ ops: mean 0, rstd 1 / sqrt(eps) for groups of 0 x 3 pixels."""
    y, mean, rstd = spatin_norm_kernels().fwd(torch.randn(2, 4, 0, 3), 2, None, None, None, None, None, None, 0.25,
                                              False)
    assert y.shape == (2, 4, 0, 3) and mean.tolist() == [[0.0, 0.0]] * 2 and rstd.tolist() == [[2.0, 2.0]] * 2


@interpreted
def test_reverse_step_float64_with_a_float32_table_computes_in_float64():
    """A float32 coefficient table is widened for float64 frames (the C++ op's compute dtype), not the frames
    narrowed to the table's float32."""
    from mcvd.ops.reverse_step import reverse_step_coef

    x_t, eps, noise = (torch.randn(2, 3, 17, dtype=torch.float64) for _ in range(3))
    coef = (0.1 + torch.rand(5, 2)).float()
    got = reverse_step_coef(x_t, eps, noise, coef, -1.0, 1.0, backend="triton")
    want = reverse_step_ref(x_t, eps, noise, **dict(zip(("a", "b", "c_x0", "c_xt", "sigma"), coef.double())),
                            clip=(-1.0, 1.0))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=F64_TOL, atol=F64_TOL)


@interpreted
def test_reverse_step_clip_keeps_nan():
    x_t = torch.tensor([[0.5, float("nan"), 3.0]])
    _x_prev, x0 = mcvd.ops.reverse_step(x_t, torch.zeros_like(x_t), None, a=0.5, b=1.0, c_x0=1.0, c_xt=0.0,
                                       sigma=0.0, clip=(-1.0, 1.0), backend="triton")
    assert x0[0, 0] == 0.5 and x0[0, 1].isnan() and x0[0, 2] == 1.0


# --- dropout ---------------------------------------------------------------------

@interpreted
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1,), (3,), (2, 3, 5, 7), (2, 1100)], ids=str)
def test_dropout_draws_the_cpu_kernels_mask(shape, dtype):
    """tl.randint4x read by csrc/philox.h's rule: the C++ kernel's mask bit for
    bit; float64 and float32 values too, 16-bit ones within the interpreter's
    rounding of the float32 product."""
    if "cpu" not in mcvd.ops.available_backends("cpu"):
        pytest.skip("the C++ kernels are not built")
    x = torch.randn(shape, dtype=torch.float64).to(dtype)
    for seed in (0, 0x1234567890ABCDEF, -1):
        seed = torch.tensor(seed)
        got = dropout_kernels().fwd(x, 0.3, seed)
        want = torch.ops.mcvd.dropout(x, 0.3, seed)
        assert got.dtype == dtype and torch.equal(got != 0, want != 0)
        if dtype in (torch.float64, torch.float32):
            assert torch.equal(got, want)
        else:
            assert ((got.double() - want.double()).abs() <= EPS[dtype] * want.double().abs()).all()


@interpreted
def test_dropout_gradient_is_the_forward_mask():
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    y = mcvd.ops.dropout(x, 0.5, backend="triton")
    g = torch.randn_like(y)
    y.backward(g)
    assert 0.2 < (y.detach() != 0).double().mean() < 0.8  # the mask drops some and keeps some (p = 0.5 of 60)
    assert torch.equal(x.grad, torch.where(y.detach() != 0, g * 2.0, 0.0))


# --- registration --------------------------------------------------------------

@interpreted
def test_opcheck():
    """Schemas and autograd registration of the Triton ops (made by
    mcvd/ops/<op>.py when it loads the kernels). The fake-tensor and AOT checks
    need a GPU: under the interpreter wrap_triton hands back the bare kernel,
    which would then run on fake tensors."""

    at, rs, sn = attention_kernels(), reverse_step_kernels(), spatin_norm_kernels()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    s = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    utils = ("test_schema", "test_autograd_registration")
    torch.library.opcheck(sn.fwd, (x, 2, w, None, None, None, s, None, 1e-6, True), test_utils=utils)
    q, k, v = (torch.randn(1, 2, 5, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    torch.library.opcheck(at.fwd, (q, k, v, 0.5), test_utils=utils)
    coef = torch.rand(5, 2, dtype=torch.float64) + 0.5
    xt, e = (torch.randn(2, 6, dtype=torch.float64, requires_grad=True) for _ in range(2))
    torch.library.opcheck(rs.fwd, (xt, e, None, coef, -1.0, 1.0), test_utils=utils)
    torch.library.opcheck(dropout_kernels().fwd, (xt, 0.25, torch.tensor(3)), test_utils=utils)
    # The backward ops, on what their forward ops return
    y, mean, rstd = sn.fwd(x, 2, w, None, None, None, s, None, 1e-6, True)
    torch.library.opcheck(sn.bwd, (torch.randn_like(y), x, mean, rstd, 2, w, None, None, None, s, None, True),
                          test_utils=("test_schema",))
    out, lse = at.fwd(q, k, v, 0.5)
    torch.library.opcheck(at.bwd, (torch.randn_like(out), q, k, v, out, lse, 0.5), test_utils=("test_schema",))


def _bad_calls():
    """(op name, arguments) of calls that the C++ op of the same name refuses: tensors of another shape,
    dtype or rank, which a kernel would read past or misread."""
    x, q, xs = torch.randn(2, 8), torch.randn(1, 2, 5, 4), torch.randn(2, 6, 3, 3)
    mean, rstd = torch.zeros(2, 3), torch.ones(2, 3)
    none6 = (None,) * 6
    return [
        ("reverse_step", (x, torch.randn(2, 4), None, torch.ones(5, 2), None, None)),
        ("reverse_step", (x, x, None, torch.ones(5, 3), None, None)),
        ("reverse_step", (x, x, None, torch.ones(5, 2, dtype=torch.float16), None, None)),
        ("reverse_step", (x, x, None, torch.ones(5, 2), -1.0, None)),
        ("reverse_step", (x, x, None, torch.ones(5, 2), 1.0, -1.0)),
        ("attention_fwd", (q, torch.randn(1, 2, 3, 4), q, 0.5)),
        ("attention_bwd", (q, q, q, q, q, torch.zeros(1, 2, 2), 0.5)),
        ("attention_bwd", (q, q, q, q, q, torch.zeros(1, 2, 5, dtype=torch.float64), 0.5)),
        ("attention_bwd", (torch.randn(1, 2, 5, 3), q, q, q, q, torch.zeros(1, 2, 5), 0.5)),
        ("spatin_norm_fwd", (xs, 4, *none6, 1e-6, False)),
        ("spatin_norm_fwd", (xs, 3, None, None, torch.randn(2, 6, 3, 2), None, None, None, 1e-6, False)),
        ("spatin_norm_bwd", (xs, xs, mean[:1], rstd, 3, *none6, False)),
        ("spatin_norm_bwd", (xs, xs, mean, rstd.double(), 3, *none6, False)),
        ("spatin_norm_bwd", (xs[:, :3], xs, mean, rstd, 3, *none6, False)),
        ("dropout", (x, 1.5, torch.tensor(3))),
        ("dropout", (x, 0.5, torch.tensor(3, dtype=torch.int32))),
        ("dropout", (x, 0.5, torch.tensor([3]))),
    ]


def _triton_op(name):
    """The Triton op of the C++ op `name`, loaded through mcvd.ops."""
    module, _, which = name.rpartition("_") if name.endswith(("_fwd", "_bwd")) else (name, "", "fwd")
    return getattr(importlib.import_module(f"mcvd.ops.{module}").triton_kernels(), which)


@interpreted
@pytest.mark.parametrize("case", range(len(_bad_calls())))
def test_direct_calls_of_the_triton_ops_refuse_what_the_cpp_ops_refuse(case):
    """A direct call of a Triton op, forward or backward, is refused with the C++ op's message rather than
    read past a tensor of another size."""
    if "cpu" not in mcvd.ops.available_backends("cpu"):
        pytest.skip("the C++ kernels are not built")
    name, args = _bad_calls()[case]
    with pytest.raises(RuntimeError) as cpp:
        getattr(torch.ops.mcvd, name)(*args)
    with pytest.raises((ValueError, TypeError)) as triton:
        _triton_op(name)(*args)
    assert str(triton.value) == str(cpp.value).splitlines()[0]


@pytest.mark.skipif(INTERPRETED, reason="runs its own interpreter-mode subprocess")
def test_triton_ops_refuse_to_run_without_their_checks():
    """Loaded by a plain import of mcvd.kernels rather than through mcvd.ops, an op has no checks: it refuses
    to run at all."""
    code = ("import torch, mcvd.kernels.reverse_step as rs\n"
            "x = torch.randn(2, 8)\n"
            "rs.fwd(x, x, None, torch.ones(5, 3), None, None)\n")
    run = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, TRITON_INTERPRET="1"),
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode != 0
    assert ("RuntimeError: the Triton ops of mcvd.ops.reverse_step have no argument checks: load them with "
            "mcvd.ops.reverse_step.triton_kernels()") in run.stderr, run.stderr[-2000:]


# fast_mode: gradcheck along random directions, two kernel runs per input rather than two per element (the
# interpreter runs a kernel in Python); the element-wise gradients are compared with the reference above.
@interpreted
@pytest.mark.parametrize("given, silu", [((), False), (SPATIN_OPT, True)], ids=["plain", "every-input"])
def test_gradcheck_spatin_norm(given, silu):
    x, opt = _spatin_inputs(2, 4, 3, 2, given, torch.float64)
    leaves = [x] + [t for t in opt.values() if t is not None]
    names = [n for n in SPATIN_OPT if opt[n] is not None]

    def fn(x, *given_opt):
        kw = dict(zip(names, given_opt))
        return mcvd.ops.spatin_norm(x, 2, **kw, eps=1e-6, silu=silu, backend="triton")
    assert torch.autograd.gradcheck(fn, [t.requires_grad_() for t in leaves], fast_mode=True)


@interpreted
def test_gradcheck_attention():
    q, k, v = (torch.randn(1, 2, 5, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda q, k, v: mcvd.ops.attention(q, k, v, scale=0.4, backend="triton"),
                                    (q, k, v), fast_mode=True)


@interpreted
def test_gradcheck_reverse_step_and_dropout():
    leaves = [torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    coefs = _coefs(2)
    assert torch.autograd.gradcheck(
        lambda *t: mcvd.ops.reverse_step(*t, **coefs, clip=(-1.5, 1.5), backend="triton"), leaves)
    seed = torch.tensor(3)  # a fixed seed draws a fixed mask: the op is linear in x
    assert torch.autograd.gradcheck(lambda x: dropout_kernels().fwd(x, 0.25, seed), (leaves[0],))


@interpreted
def test_double_backward():
    """Through the spatin_norm and attention Triton backward ops a double backward
    raises (first-order formulas), as through the C++ ones; through reverse_step
    it is exact."""
    x = torch.randn(2, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(mcvd.ops.spatin_norm(x, 2, silu=True, backend="triton").square().sum(), x,
                                create_graph=True)
    with pytest.raises(RuntimeError, match="derivative for mcvd::spatin_norm_bwd_triton is not implemented"):
        gx.square().sum().backward()
    q = torch.randn(1, 2, 5, 8, dtype=torch.float64, requires_grad=True)
    (dq,) = torch.autograd.grad(mcvd.ops.attention(q, q, q, backend="triton").square().sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="derivative for mcvd::attention_bwd_triton is not implemented"):
        dq.square().sum().backward()
    leaves = [torch.randn(2, 3, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    coefs = _coefs(2)
    assert torch.autograd.gradgradcheck(
        lambda *t: mcvd.ops.reverse_step(*t, **coefs, clip=(-1.5, 1.5), backend="triton"), leaves)


@pytest.mark.skipif(INTERPRETED, reason="checks a process without the interpreter")
def test_reference_and_cpu_backends_never_import_triton():
    code = """
import sys, torch, mcvd
x = torch.randn(1, 4, 3, 3)
q = torch.randn(1, 2, 5, 8)
calls = {
    "spatin_norm_fwd": lambda b: mcvd.ops.spatin_norm(x, 2, silu=True, backend=b),
    "attention_fwd": lambda b: mcvd.ops.attention(q, q, q, backend=b),
    "reverse_step": lambda b: mcvd.ops.reverse_step(x, x, x, a=0.1, b=0.9, c_x0=0.5, c_xt=0.5, sigma=0.1,
                                                    clip=(-1, 1), backend=b),
    "dropout": lambda b: mcvd.ops.dropout(x, 0.5, backend=b),
}
ran = []
for op, call in calls.items():
    call("reference")
    ran.append(op + ":reference")
    # The C++ CPU kernels may not be built into this install yet.
    if torch._C._dispatch_has_kernel_for_dispatch_key("mcvd::" + op, "CPU"):
        call("cpu")
        ran.append(op + ":cpu")
print(ran, "triton" in sys.modules)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MCVD_BACKEND")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip().endswith("False"), out
    assert out.count(":reference") == 4, out
