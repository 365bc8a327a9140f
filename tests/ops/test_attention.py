"""mcvd.ops.attention and the mcvd::attention_fwd / _bwd kernels, against the
pure-PyTorch attention_ref (einsum-softmax-einsum) in float64."""
import pytest
import torch

import mcvd
from mcvd.ops import attention, attention_ref
from mcvd.ops.attention import triton_kernels


def _max_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return (out.double() - ref.double()).abs().max().item() if out.numel() else 0.0


# ------------------------------------------------------------------ helpers

# [B, heads, N, D]: one position, two, N = 113, 193 and 256, which no block
# size of the kernels divides (193 ends in a one-key block); head dims 1, 7
# and 59 leave vector tails, 32 and 64 are aligned.
SHAPES = [
    (1, 1, 1, 1),
    (2, 3, 1, 7),
    (1, 1, 2, 7),
    (3, 4, 2, 64),
    (2, 3, 113, 59),
    (1, 2, 113, 1),
    (3, 1, 113, 32),
    (1, 1, 193, 7),
    (2, 4, 256, 64),
    (1, 2, 256, 59),
]
SMALL_SHAPES = [s for s in SHAPES if s[2] <= 113]


def make_qkv(shape, dtype=torch.float64, device="cpu", magnitude=1.0):
    """q, k, v with standard normal entries; q and k times `magnitude`, so that
    the logits scale with magnitude**2."""
    q, k, v = (torch.randn(shape, dtype=torch.float64) for _ in range(3))
    q, k = q * magnitude, k * magnitude
    return tuple(t.to(dtype).to(device) for t in (q, k, v))


def logits(q, k, scale):
    return torch.einsum("bhnd,bhmd->bhnm", q.double(), k.double()) * scale


def leaves(*ts):
    return [t.detach().clone().requires_grad_() for t in ts]


def out_and_grads(fn, q, k, v, grad_out):
    """fn(q, k, v) and its gradients for the cotangent grad_out."""
    q, k, v = leaves(q, k, v)
    out = fn(q, k, v)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad_out)
    return out.detach(), dq, dk, dv


def slacks(q, k, v, scale, dtype, grad_out=None) -> dict[str, float]:
    """Absolute error allowed on out (and dq, dk, dv given grad_out) beyond
    the eager multiple, from a rounding-error model of the fused kernels.

    They compute in float32 (float64 for float64 input) and keep the per-row
    log-sum-exp: a logit s and lse each carry a rounding of relative size eps
    at magnitude |s|, and P = exp(s - lse) turns those into a relative error
    of a few eps * |s| on every probability (the eager reference avoids one
    of them by subtracting the row max in its softmax). Each result is a sum
    of products of those probabilities, so its error is bounded by a few
    eps (1 + max|s|) times the same sum taken over absolute values - which,
    unlike the result, does not vanish when its terms cancel (dS = P (dP -
    delta) is exactly 0 with one key). Plus one rounding to the output dtype.
    """
    q, k, v = q.double().cpu(), k.double().cpu(), v.double().cpu()
    s = logits(q, k, scale)
    p = torch.softmax(s, dim=-1)
    terms = {"out": p @ v.abs()}
    if grad_out is not None:
        g = grad_out.double().cpu()
        dp = g @ v.transpose(-1, -2)
        delta = (g * (p @ v)).sum(-1, keepdim=True)
        ds = p * (dp.abs() + delta.abs())
        terms.update(dq=abs(scale) * ds @ k.abs(), dk=abs(scale) * ds.transpose(-1, -2) @ q.abs(),
                     dv=p.transpose(-1, -2) @ g.abs())
    compute_eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    per_unit = 8 * compute_eps * (1 + s.abs().max().item()) + torch.finfo(dtype).eps
    return {name: per_unit * (t.max().item() if t.numel() else 0.0) for name, t in terms.items()}


# ------------------------------------------------------------------ forward


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_float64_matches_reference(backend_device, shape):
    backend, device = backend_device
    q, k, v = make_qkv(shape, device=device)
    scale = shape[-1] ** -0.5
    out = attention(q, k, v, backend=backend)
    op = torch.ops.mcvd.attention_fwd_triton if backend == "triton" else torch.ops.mcvd.attention_fwd
    out_, lse = op(q, k, v, scale)
    assert out.dtype == torch.float64 and out.shape == shape
    assert lse.dtype == torch.float64 and lse.shape == shape[:3]
    assert torch.equal(out, out_)
    ref = attention_ref(q, k, v)
    assert _max_error(out, ref) <= slacks(q, k, v, scale, torch.float64)["out"]
    # lse is the log-sum-exp of the scaled logits, computed here independently.
    torch.testing.assert_close(lse, torch.logsumexp(logits(q, k, scale), dim=-1), rtol=0, atol=1e-13)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_float32_within_eager_error(backend_device, assert_within_eager_error, shape):
    backend, device = backend_device
    q, k, v = make_qkv(shape, dtype=torch.float32, device=device)
    out = attention(q, k, v, backend=backend)
    ref = attention_ref(q.double(), k.double(), v.double())
    assert out.dtype == torch.float32
    assert_within_eager_error(out.cpu(), ref.cpu(), attention_ref(q, k, v).cpu(), 2,
                              slacks(q, k, v, shape[-1] ** -0.5, q.dtype)["out"])


def test_forward_long_sequence(backend_device, assert_within_eager_error):
    """N = 1024: many key blocks, rescaled accumulators."""
    backend, device = backend_device
    q, k, v = make_qkv((1, 1, 1024, 64), dtype=torch.float32, device=device)
    out = attention(q, k, v, backend=backend)
    ref = attention_ref(q.double(), k.double(), v.double())
    assert_within_eager_error(out.cpu(), ref.cpu(), attention_ref(q, k, v).cpu(), 2,
                              slacks(q, k, v, 0.125, q.dtype)["out"])


@pytest.mark.parametrize("scale", [0.3, 1.0, -0.7], ids=str)
def test_non_default_scale(backend_device, scale):
    backend, device = backend_device
    dtype = torch.float64 if backend == "cpu" else torch.float32
    q, k, v = make_qkv((2, 2, 113, 32), dtype=dtype, device=device)
    out = attention(q, k, v, scale=scale, backend=backend)
    ref = attention_ref(q.double(), k.double(), v.double(), scale=scale)
    # The default scale gives another result, so this checks the scale is used.
    assert _max_error(attention_ref(q.double(), k.double(), v.double()), ref) > 1e-2
    assert _max_error(out, ref) <= slacks(q, k, v, scale, dtype)["out"]


@pytest.mark.parametrize("magnitude", [10.0, 100.0], ids=["logits~100", "logits~1e4"])
def test_large_logits_stay_finite(backend_device, assert_within_eager_error, magnitude):
    """Logits of magnitude ~100 and ~1e4 overflow a softmax without its max
    subtraction (exp(89) = inf in float32); the online softmax must not."""
    backend, device = backend_device
    shape = (2, 2, 113, 64)
    q, k, v = make_qkv(shape, dtype=torch.float32, device=device, magnitude=magnitude)
    g = torch.randn(shape, device=device)
    ours = out_and_grads(lambda *a: attention(*a, backend=backend), q, k, v, g)
    ref = out_and_grads(attention_ref, q.double(), k.double(), v.double(), g.double())
    eager = out_and_grads(attention_ref, q, k, v, g)
    assert logits(q, k, shape[-1] ** -0.5).abs().max().item() > magnitude**2
    tol = slacks(q, k, v, shape[-1] ** -0.5, q.dtype, g)
    for name, o, r, e in zip(("out", "dq", "dk", "dv"), ours, ref, eager):
        assert torch.isfinite(o).all(), name
        assert_within_eager_error(o.cpu(), r.cpu(), e.cpu(), 2 if name == "out" else 3, tol[name])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
# The tensor-core kernels (bf16 / fp16 with D of 32, 64 or 128) at ragged and
# whole tile counts, and the SIMT kernels at other D.
@pytest.mark.parametrize("shape", [(2, 3, 113, 59), (1, 2, 256, 64), (3, 4, 2, 7), (1, 2, 130, 128), (2, 2, 200, 32)],
                         ids=str)
def test_low_precision_within_eager_error(backend_device, assert_within_eager_error, shape, dtype):
    """Outputs within 2x, gradients within 3x the eager reference's error in
    the same dtype (both against float64 on the same rounded inputs)."""
    backend, device = backend_device
    q, k, v = make_qkv(shape, dtype=dtype, device=device)
    g = torch.randn(shape, device=device).to(dtype)
    ours = out_and_grads(lambda *a: attention(*a, backend=backend), q, k, v, g)
    ref = out_and_grads(attention_ref, q.double(), k.double(), v.double(), g.double())
    eager = out_and_grads(attention_ref, q, k, v, g)
    tol = slacks(q, k, v, shape[-1] ** -0.5, dtype, g)
    for name, o, r, e in zip(("out", "dq", "dk", "dv"), ours, ref, eager):
        assert o.dtype == dtype, name
        assert_within_eager_error(o.cpu(), r.cpu(), e.cpu(), 2 if name == "out" else 3, tol[name])


def test_lse_dtype_follows_the_input(backend_device):
    backend, device = backend_device
    fwd = triton_kernels().fwd if backend == "triton" else torch.ops.mcvd.attention_fwd
    for dtype, lse_dtype in ((torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                             (torch.float16, torch.float32), (torch.float64, torch.float64)):
        if dtype == torch.float64 and device != "cpu":
            continue
        q, k, v = make_qkv((1, 2, 5, 3), dtype=dtype, device=device)
        _, lse = fwd(q, k, v, 0.5)
        assert lse.dtype == lse_dtype and lse.shape == (1, 2, 5)
        torch.testing.assert_close(lse.double().cpu(), torch.logsumexp(logits(q, k, 0.5), -1).cpu(),
                                   rtol=0, atol=1e-5)


def test_noncontiguous_inputs(backend_device):
    """q, k, v as [B, N, heads, D] buffers viewed as [B, heads, N, D]."""
    backend, device = backend_device
    dtype = torch.float64 if backend == "cpu" else torch.float32
    q, k, v = (t.transpose(1, 2) for t in make_qkv((2, 37, 3, 16), dtype=dtype, device=device))
    assert not q.is_contiguous()
    g = torch.randn(q.shape, dtype=dtype, device=device)
    ours = out_and_grads(lambda *a: attention(*a, backend=backend), q, k, v, g)
    ref = out_and_grads(attention_ref, q.double(), k.double(), v.double(), g.double())
    tol = slacks(q, k, v, 0.25, dtype, g)
    for name, o, r in zip(("out", "dq", "dk", "dv"), ours, ref):
        assert _max_error(o, r) <= tol[name], name


def test_zero_positions():
    q, k, v = leaves(*make_qkv((2, 3, 0, 8)))
    out = attention(q, k, v, backend="cpu")
    assert out.shape == (2, 3, 0, 8)
    out.sum().backward()
    assert q.grad.shape == k.grad.shape == v.grad.shape == (2, 3, 0, 8)


# ------------------------------------------------------------------ backward


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_backward_float64_matches_reference_autograd(backend_device, shape):
    backend, device = backend_device
    q, k, v = make_qkv(shape, device=device)
    g = torch.randn(shape, dtype=torch.float64).to(device)
    ours = out_and_grads(lambda *a: attention(*a, backend=backend), q, k, v, g)
    ref = out_and_grads(attention_ref, q, k, v, g)
    tol = slacks(q, k, v, shape[-1] ** -0.5, torch.float64, g)
    for name, o, r in zip(("out", "dq", "dk", "dv"), ours, ref):
        assert o.dtype == torch.float64 and o.shape == shape, name
        assert _max_error(o, r) <= tol[name], name


@pytest.mark.parametrize("shape", SMALL_SHAPES + [(2, 4, 256, 64)], ids=str)
def test_backward_float32_within_eager_error(backend_device, assert_within_eager_error, shape):
    backend, device = backend_device
    q, k, v = make_qkv(shape, dtype=torch.float32, device=device)
    g = torch.randn(shape, device=device)
    ours = out_and_grads(lambda *a: attention(*a, backend=backend), q, k, v, g)
    ref = out_and_grads(attention_ref, q.double(), k.double(), v.double(), g.double())
    eager = out_and_grads(attention_ref, q, k, v, g)
    tol = slacks(q, k, v, shape[-1] ** -0.5, q.dtype, g)
    for name, o, r, e in zip(("dq", "dk", "dv"), ours[1:], ref[1:], eager[1:]):
        assert_within_eager_error(o.cpu(), r.cpu(), e.cpu(), 3, tol[name])


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_backward_does_not_depend_on_the_thread_count(threads):
    """With fewer heads than threads the backward splits each head's keys
    across tasks and sums their dq; every split gives the float64 gradients."""
    q, k, v = make_qkv((1, 1, 400, 24))
    g = torch.randn(q.shape, dtype=torch.float64)
    ref = out_and_grads(attention_ref, q, k, v, g)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours = out_and_grads(lambda *a: attention(*a, backend="cpu"), q, k, v, g)
    finally:
        torch.set_num_threads(before)
    tol = slacks(q, k, v, 24**-0.5, torch.float64, g)
    for name, o, r in zip(("out", "dq", "dk", "dv"), ours, ref):
        assert _max_error(o, r) <= tol[name], name


@pytest.mark.parametrize("shape", [(1, 2, 5, 3), (2, 1, 7, 1)], ids=str)
def test_gradcheck(backend_device, shape):
    backend, device = backend_device
    q, k, v = leaves(*make_qkv(shape, device=device))
    assert torch.autograd.gradcheck(lambda *a: attention(*a, scale=0.7, backend=backend), (q, k, v))


# ------------------------------------------------------------------ op registration


def test_opcheck_forward(backend_device):
    backend, device = backend_device
    if backend == "triton":
        pytest.skip("the Triton ops' opcheck is in test_op_layouts.py")
    q, k, v = leaves(*make_qkv((2, 3, 17, 8), dtype=torch.float32, device=device))
    torch.library.opcheck(torch.ops.mcvd.attention_fwd.default, (q, k, v, 0.3))


def test_opcheck_backward(backend_device):
    backend, device = backend_device
    if backend == "triton":
        pytest.skip("the Triton ops' opcheck is in test_op_layouts.py")
    q, k, v = make_qkv((2, 3, 17, 8), dtype=torch.float32, device=device)
    out, lse = torch.ops.mcvd.attention_fwd(q, k, v, 0.3)
    torch.library.opcheck(torch.ops.mcvd.attention_bwd.default, (torch.randn_like(q), q, k, v, out, lse, 0.3))


def test_lse_does_not_require_grad(backend_device):
    backend, device = backend_device
    q, k, v = leaves(*make_qkv((1, 2, 9, 8), device=device))
    fwd = triton_kernels().fwd if backend == "triton" else torch.ops.mcvd.attention_fwd
    out, lse = fwd(q, k, v, 0.5)
    assert out.requires_grad and not lse.requires_grad


def test_double_backward_raises(backend_device):
    """The backward formula is first-order: a gradient of the gradient raises
    instead of silently missing the path through the backward op."""
    backend, device = backend_device
    q, k, v = leaves(*make_qkv((1, 2, 9, 8), device=device))
    (dq,) = torch.autograd.grad(attention(q, k, v, backend=backend).square().sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="derivative for mcvd::attention_bwd"):
        dq.square().sum().backward()


def test_compiled_autograd_of_an_eager_forward(backend_device):
    """The backward graph traced by compiled autograd (the forward ran eagerly,
    so the op's own autograd node is traced, not AOTAutograd's)."""
    backend, device = backend_device
    q, k, v = leaves(*make_qkv((1, 2, 9, 8), device=device))
    loss = attention(q, k, v, scale=0.5, backend=backend).square().sum()
    with torch._dynamo.config.patch(compiled_autograd=True):
        torch.compile(lambda loss: loss.backward(), backend="eager")(loss)
    rq, rk, rv = leaves(q, k, v)
    attention_ref(rq, rk, rv, scale=0.5).square().sum().backward()
    for ours, ref in ((q, rq), (k, rk), (v, rv)):
        torch.testing.assert_close(ours.grad, ref.grad, rtol=1e-10, atol=1e-10)


def test_compile_fullgraph_of_the_op():
    """The op's fake and autograd registrations under torch.compile (inductor)."""
    q, k, v = make_qkv((2, 2, 19, 8), dtype=torch.float32)

    @torch.compile(fullgraph=True)
    def f(q, k, v):
        return torch.ops.mcvd.attention_fwd(q, k, v, 0.4)[0]

    g = torch.randn(q.shape)
    ours = out_and_grads(f, q, k, v, g)
    ref = out_and_grads(lambda *a: attention_ref(*a, scale=0.4), q.double(), k.double(), v.double(), g.double())
    tol = slacks(q, k, v, 0.4, torch.float32, g)
    for name, o, r in zip(("out", "dq", "dk", "dv"), ours, ref):
        assert _max_error(o, r) <= tol[name], name


def test_compile_fullgraph_of_the_public_function(backend_device):
    backend, device = backend_device
    q, k, v = make_qkv((2, 2, 19, 8), dtype=torch.float32, device=device)
    f = torch.compile(lambda q, k, v: attention(q, k, v, backend=backend), fullgraph=True)
    torch.testing.assert_close(f(q, k, v), attention_ref(q, k, v))


# ------------------------------------------------------------------ bad input

SHAPE = (2, 3, 5, 4)
BAD = [
    # (case, change to the good arguments, Python error type, message); the
    # C++ kernel raises RuntimeError with the same message.
    ("q rank", {"q": torch.randn(2, 3, 5)}, ValueError,
     r"q: expected a 4-d tensor \[B, heads, N, D\], got shape \[2, 3, 5\]"),
    ("q dtype", {"q": torch.ones(SHAPE, dtype=torch.int64)}, TypeError,
     r"q: expected a floating dtype \(float32, float64, bfloat16, float16\), got \S+"),
    ("k shape", {"k": torch.randn(2, 3, 6, 4)}, ValueError, r"k: expected shape \[2, 3, 5, 4\], got \[2, 3, 6, 4\]"),
    ("v shape", {"v": torch.randn(2, 3, 5, 5)}, ValueError, r"v: expected shape \[2, 3, 5, 4\], got \[2, 3, 5, 5\]"),
    ("k dtype", {"k": torch.randn(SHAPE, dtype=torch.float64)}, TypeError,
     r"k: expected dtype \S+ \(the dtype of q\), got \S+"),
    ("v dtype", {"v": torch.randn(SHAPE).half()}, TypeError, r"v: expected dtype \S+ \(the dtype of q\), got \S+"),
    ("head size 0", {"q": torch.randn(2, 3, 5, 0), "k": torch.randn(2, 3, 5, 0), "v": torch.randn(2, 3, 5, 0)},
     ValueError, r"q: expected a head size D >= 1 in \[B, heads, N, D\], got shape \[2, 3, 5, 0\]"),
]


def good_args():
    return {"q": torch.randn(SHAPE), "k": torch.randn(SHAPE), "v": torch.randn(SHAPE)}


@pytest.mark.parametrize("case, change, py_error, message", BAD, ids=[c[0] for c in BAD])
def test_bad_input_through_mcvd_ops(case, change, py_error, message):
    args = {**good_args(), **change}
    for backend in mcvd.ops.available_backends("cpu"):
        with pytest.raises(py_error, match=message):
            attention(**args, backend=backend)


@pytest.mark.parametrize("case, change, py_error, message", BAD, ids=[c[0] for c in BAD])
def test_bad_input_through_the_cpu_kernel(case, change, py_error, message):
    a = {**good_args(), **change}
    with pytest.raises(RuntimeError, match=message):
        torch.ops.mcvd.attention_fwd(a["q"], a["k"], a["v"], 0.5)


def test_bad_scale_through_the_cpu_kernel():
    q, k, v = good_args().values()
    for scale in (float("inf"), float("nan")):
        with pytest.raises(RuntimeError, match=r"scale: expected a finite float, got"):
            torch.ops.mcvd.attention_fwd(q, k, v, scale)


@pytest.mark.parametrize("scale, error, message", [
    ("a", TypeError, r"scale: expected a finite float or None, got str 'a'"),
    (True, TypeError, r"scale: expected a finite float or None, got bool True"),
    (torch.tensor(0.5), TypeError, r"scale: expected a finite float or None, got Tensor"),
    # The kernel's message (test_bad_scale_through_the_cpu_kernel), on every backend.
    (float("nan"), ValueError, r"scale: expected a finite float, got nan"),
    (float("-inf"), ValueError, r"scale: expected a finite float, got -inf"),
])
def test_bad_scale_through_mcvd_ops(scale, error, message):
    for backend in mcvd.ops.available_backends("cpu"):
        with pytest.raises(error, match=message):
            attention(**good_args(), scale=scale, backend=backend)


def test_bad_backward_input_through_the_cpu_kernel():
    q, k, v = good_args().values()
    out, lse = torch.ops.mcvd.attention_fwd(q, k, v, 0.5)
    g = torch.randn(SHAPE)
    bwd = torch.ops.mcvd.attention_bwd
    with pytest.raises(RuntimeError, match=r"grad_out: expected shape \[2, 3, 5, 4\], got \[2, 3, 5, 3\]"):
        bwd(g[..., :3], q, k, v, out, lse, 0.5)
    with pytest.raises(RuntimeError, match=r"out: expected dtype \S+ \(the dtype of q\), got \S+"):
        bwd(g, q, k, v, out.double(), lse, 0.5)
    with pytest.raises(RuntimeError, match=r"v: expected shape \[2, 3, 5, 4\], got \[2, 3, 4, 4\]"):
        bwd(g, q, k, v[:, :, :4], out, lse, 0.5)
    lse_dtype = r"lse: expected dtype torch.float32 \(float64 for float64 q, else float32\), got torch.float64"
    with pytest.raises(RuntimeError, match=lse_dtype):
        bwd(g, q, k, v, out, lse.double(), 0.5)
    with pytest.raises(RuntimeError, match=r"lse: expected shape \[2, 3, 5\], got \[2, 3, 4\]"):
        bwd(g, q, k, v, out, lse[..., :4], 0.5)


@pytest.mark.gpu
def test_device_mismatch_is_rejected():
    q = torch.randn(SHAPE, device="cuda")
    message = r"k: expected device cuda:0 \(the device of q\), got cpu"
    with pytest.raises(ValueError, match=message):
        attention(q, torch.randn(SHAPE), torch.randn(SHAPE, device="cuda"))
    with pytest.raises(RuntimeError, match=message):
        torch.ops.mcvd.attention_fwd(q, torch.randn(SHAPE), torch.randn(SHAPE, device="cuda"), 0.5)
