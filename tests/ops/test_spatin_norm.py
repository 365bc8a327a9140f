"""mcvd.ops.spatin_norm and the mcvd::spatin_norm_fwd / _bwd kernels, against
the pure-PyTorch spatin_norm_ref in float64."""
import itertools

import pytest
import torch

from mcvd.ops import available_backends, spatin_norm, spatin_norm_ref
from mcvd.ops.spatin_norm import triton_kernels

# (shape, num_groups): minimal, aligned and odd sizes. H * W of 35, 15, 221
# and 1517 leave vector tails; 1517 also spans two of the kernel's
# 1024-element blocks per channel; [1, 3, 1, 1] has one element per channel.
# [24, 64, 8, 8] and [8, 128, 32, 32] with 32 groups have more groups than a
# GPU has multiprocessors, so the GPU backends take their one-program-per-group
# paths there (groups of 128 and 4096 elements).
SHAPES = [
    ((1, 3, 1, 1), 1),
    ((2, 6, 5, 7), 3),
    ((2, 32, 3, 5), 32),
    ((3, 64, 17, 13), 32),
    ((1, 4, 37, 41), 2),
    ((24, 64, 8, 8), 32),
    ((8, 128, 32, 32), 32),
    ((2, 128, 32, 32), 32),
]
SMALL_SHAPES = SHAPES[:-1]
LOW_PRECISION_SHAPES = [((2, 64, 17, 13), 32), ((1, 4, 37, 41), 2)]
# x laid out NCHW, or NHWC: the CPU kernel's second set of loops (csrc/cpu/spatin_norm_fwd.cpp and _bwd.cpp).
LAYOUTS = [torch.contiguous_format, torch.channels_last]
OPTIONALS = ("weight", "bias", "gamma", "beta", "scale", "shift")
PAIRS = (("weight", "bias"), ("gamma", "beta"), ("scale", "shift"))
# Every subset of the three pairs, then each member alone.
PAIR_SUBSETS = [sum(chosen, ()) for n in range(4) for chosen in itertools.combinations(PAIRS, n)]
LONE = [(name,) for name in OPTIONALS]
EPS = 1e-6


def make_inputs(shape, present, dtype=torch.float64, device="cpu", offset=0.0):
    """x and the named optionals (the others None), unit-scale random values."""
    B, C, H, W = shape
    shapes = {"weight": (C,), "bias": (C,), "gamma": shape, "beta": shape, "scale": (B, C), "shift": (B, C)}
    x = (torch.randn(shape, dtype=torch.float64) + offset).to(dtype).to(device)
    opt = {name: (torch.randn(shapes[name], dtype=torch.float64) if name in present else None) for name in OPTIONALS}
    return x, {k: None if v is None else v.to(dtype).to(device) for k, v in opt.items()}


def as_float64(opt):
    return {k: None if v is None else v.double() for k, v in opt.items()}


# ------------------------------------------------------------------ forward


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("present", PAIR_SUBSETS + LONE, ids=lambda p: "+".join(p) or "none")
@pytest.mark.parametrize("shape, groups", SHAPES, ids=str)
def test_forward_float64_matches_reference(backend_device, shape, groups, present, silu):
    backend, device = backend_device
    x, opt = make_inputs(shape, present, device=device)
    y = spatin_norm(x, groups, **opt, eps=EPS, silu=silu, backend=backend)
    ref = spatin_norm_ref(x.cpu(), groups, **{k: None if v is None else v.cpu() for k, v in opt.items()},
                          eps=EPS, silu=silu)
    assert y.dtype == torch.float64 and y.shape == shape
    torch.testing.assert_close(y.cpu(), ref, rtol=1e-10, atol=1e-10)


# float32 tolerance: the kernel computes in float32 (statistics accumulated in
# float per 1024-element block, combined in double). Each output passes
# through at most ~10 rounded operations on intermediates of magnitude below
# ~30 for unit-scale inputs (|xhat| < 6, |w|, |1 + gamma|, |1 + scale| < 5),
# so its error is at most ~10 * 6e-8 * 30 = 2e-5.
F32_TOL = dict(rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("present", [(), OPTIONALS], ids=["none", "all"])
@pytest.mark.parametrize("shape, groups", SHAPES, ids=str)
def test_forward_float32_against_float64_reference(backend_device, shape, groups, present, silu):
    backend, device = backend_device
    x, opt = make_inputs(shape, present, dtype=torch.float32, device=device)
    y = spatin_norm(x, groups, **opt, eps=EPS, silu=silu, backend=backend)
    ref = spatin_norm_ref(x.double().cpu(), groups, **as_float64({k: v if v is None else v.cpu()
                                                                   for k, v in opt.items()}), eps=EPS, silu=silu)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double().cpu(), ref, **F32_TOL)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_float32_statistics_survive_a_large_offset(backend_device, layout):
    """x = 1000 + N(0, 1): mean(x^2) - mean(x)^2 in float32 loses most digits
    of the variance; block-wise two-pass statistics keep them. What remains
    is the float32 mean (stored in float32, as the schema has it) and the
    folded constants, each off by up to |mean| * 2^-24 = 6e-5 relative to the
    unit standard deviation: at most ~1.5e-4 more than F32_TOL allows."""
    backend, device = backend_device
    x, _ = make_inputs((2, 8, 33, 31), (), dtype=torch.float32, device=device, offset=1000.0)
    y = spatin_norm(x.contiguous(memory_format=layout), 4, eps=EPS, backend=backend)
    ref = spatin_norm_ref(x.double().cpu(), 4, eps=EPS)
    torch.testing.assert_close(y.double().cpu(), ref, rtol=2e-5, atol=2e-5 + 1.5e-4)
    # The naive formula fails this tolerance by orders of magnitude.
    groups = x.cpu().reshape(2, 4, -1)
    naive_var = groups.square().mean(-1) - groups.mean(-1).square()
    assert (naive_var.double() - groups.double().var(-1, unbiased=False)).abs().max() > 1e-2


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_reference_keeps_its_float32_accuracy_in_either_layout(layout):
    """The reference itself, at x = 1e4 + N(0, 1) in float32, against the two-pass definition in float64:
    PyTorch's CPU GroupNorm on a channels_last x takes a one-pass variance (y off by thousands there, its
    gradient by 1e8), so the reference normalises a contiguous copy and returns y in x's layout."""
    B, C, H, W, G = 2, 8, 24, 24, 4
    x = (torch.randn(B, C, H, W, dtype=torch.float64) + 1e4).float().contiguous(memory_format=layout)
    x.requires_grad_(True)
    y = spatin_norm_ref(x, G, eps=EPS, silu=True)
    assert y.is_contiguous(memory_format=layout)
    grad_y = torch.randn(B, C, H, W)
    y.backward(grad_y)
    x64 = x.detach().double().requires_grad_(True)
    groups = x64.reshape(B, G, -1)
    n = (groups - groups.mean(-1, keepdim=True)) / (groups.var(-1, unbiased=False, keepdim=True) + EPS).sqrt()
    want = torch.nn.functional.silu(n.reshape(B, C, H, W))
    want.backward(grad_y.double())
    # float32 x at 1e4 is itself off by up to 5e-4 of the unit standard deviation
    torch.testing.assert_close(y.double(), want, rtol=0, atol=3e-3)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=0, atol=3e-3)


def test_the_reference_normalises_a_group_of_one_value_to_zero():
    """One value per group (B = 1, one channel per group, 1 x 1 frames): x - mean = 0, so y is the bias, as the
    kernels give it (F.group_norm would refuse the input)."""
    x, opt = make_inputs((1, 4, 1, 1), ("weight", "bias"))
    y = spatin_norm_ref(x, 4, **opt, eps=EPS)
    torch.testing.assert_close(y.flatten(), opt["bias"], rtol=0, atol=0)
    torch.testing.assert_close(spatin_norm(x, 4, **opt, eps=EPS, backend="cpu"), y, rtol=0, atol=1e-13)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_statistics_are_the_group_mean_and_rstd(backend_device, dtype, layout):
    backend, device = backend_device
    fwd = triton_kernels().fwd if backend == "triton" else torch.ops.mcvd.spatin_norm_fwd
    B, C, H, W, G = 3, 12, 5, 9, 4
    x = (torch.randn(B, C, H, W, device=device) + 3 * torch.rand(1, C, 1, 1, device=device)).to(dtype)
    _, mean, rstd = fwd(x.contiguous(memory_format=layout), G, None, None, None, None, None, None, EPS, False)
    stat_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert mean.dtype == rstd.dtype == stat_dtype and mean.shape == rstd.shape == (B, G)
    groups = x.double().cpu().reshape(B, G, -1)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mean.double().cpu(), groups.mean(-1), **tol)
    torch.testing.assert_close(rstd.double().cpu(), (groups.var(-1, unbiased=False) + EPS).rsqrt(), **tol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("present", [(), OPTIONALS], ids=["none", "all"])
@pytest.mark.parametrize("shape, groups", LOW_PRECISION_SHAPES, ids=str)
def test_forward_low_precision_within_eager_error(backend_device, assert_within_eager_error, shape, groups, dtype,
                                                  present, silu):
    backend, device = backend_device
    x, opt = make_inputs(shape, present, dtype=dtype, device=device)
    y = spatin_norm(x, groups, **opt, eps=EPS, silu=silu, backend=backend)
    eager = spatin_norm_ref(x, groups, **opt, eps=EPS, silu=silu)
    ref = spatin_norm_ref(x.double(), groups, **as_float64(opt), eps=EPS, silu=silu)
    assert_within_eager_error(y, ref, eager, factor=2, atol=1e-3)


def test_noncontiguous_inputs(backend_device):
    backend, device = backend_device
    B, C, H, W = 2, 6, 5, 7
    x = torch.randn(B, H, W, C, dtype=torch.float64, device=device).permute(0, 3, 1, 2)
    gamma = torch.randn(B, C, W, H, dtype=torch.float64, device=device).transpose(2, 3)
    beta = torch.randn(B, C, H, 2 * W, dtype=torch.float64, device=device)[..., ::2]
    scale = torch.randn(C, B, dtype=torch.float64, device=device).t()
    weight = torch.randn(2 * C, dtype=torch.float64, device=device)[::2]
    assert not any(t.is_contiguous() for t in (x, gamma, beta, scale, weight))
    y = spatin_norm(x, 3, weight=weight, gamma=gamma, beta=beta, scale=scale, silu=True, backend=backend)
    ref = spatin_norm_ref(x, 3, weight=weight, gamma=gamma, beta=beta, scale=scale, silu=True)
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------ channels_last
#
# The C++ and CUDA forward take a channels_last x as it is and return y
# channels_last (the CPU kernel reads it in place, with loops of its own: the
# statistics per channel in one pass over shifted values, the output pixel by
# pixel), so a network in channels_last - inductor's layout around oneDNN
# convolutions - runs its norms without transposing copies.


def channels_last(t):
    return t if t is None or t.dim() != 4 else t.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("present", [(), ("gamma", "beta"), OPTIONALS], ids=["none", "spatin", "all"])
@pytest.mark.parametrize("shape, groups", SHAPES, ids=str)
def test_forward_channels_last_matches_reference(backend_device, shape, groups, present, silu, dtype):
    backend, device = backend_device
    x, opt = make_inputs(shape, present, dtype=dtype, device=device, offset=2.0)
    x, opt = channels_last(x), {k: channels_last(v) for k, v in opt.items()}
    y = spatin_norm(x, groups, **opt, eps=EPS, silu=silu, backend=backend)
    ref = spatin_norm_ref(x.double().cpu(), groups, **as_float64({k: v if v is None else v.cpu()
                                                                   for k, v in opt.items()}), eps=EPS, silu=silu)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else F32_TOL
    torch.testing.assert_close(y.double().cpu(), ref, **tol)
    if backend != "triton":
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("present", [(), OPTIONALS], ids=["none", "all"])
@pytest.mark.parametrize("shape, groups", LOW_PRECISION_SHAPES, ids=str)
def test_forward_channels_last_low_precision_within_eager_error(backend_device, assert_within_eager_error, shape,
                                                                groups, dtype, present):
    backend, device = backend_device
    x, opt = make_inputs(shape, present, dtype=dtype, device=device)
    x, opt = channels_last(x), {k: channels_last(v) for k, v in opt.items()}
    y = spatin_norm(x, groups, **opt, eps=EPS, silu=True, backend=backend)
    eager = spatin_norm_ref(x, groups, **opt, eps=EPS, silu=True)
    ref = spatin_norm_ref(x.double(), groups, **as_float64(opt), eps=EPS, silu=True)
    assert_within_eager_error(y, ref, eager, factor=2, atol=1e-3)


def test_output_layout_follows_a_channels_last_x(backend_device):
    """y: channels_last (and so not contiguous) for a channels_last x whatever
    the layout of gamma and beta; contiguous for any other x. The statistics
    are [B, G] either way."""
    backend, device = backend_device
    if backend == "triton":
        pytest.skip("the triton forward returns contiguous tensors")
    B, C, H, W = 2, 6, 5, 4
    dense = torch.randn(B, C, H, W, dtype=torch.float64, device=device)
    gamma = torch.randn(B, C, W, H, dtype=torch.float64, device=device).transpose(2, 3)  # neither layout
    for x, want in ((channels_last(dense), torch.channels_last), (dense, torch.contiguous_format),
                    (dense.transpose(2, 3), torch.contiguous_format), (dense[:, ::2], torch.contiguous_format)):
        for g in [None] + ([gamma, channels_last(gamma.contiguous())] if x.shape == gamma.shape else []):
            y, mean, rstd = torch.ops.mcvd.spatin_norm_fwd(x, 3, None, None, g, g, None, None, EPS, True)
            assert y.is_contiguous(memory_format=want) and y.shape == x.shape
            assert (want == torch.channels_last) == (not y.is_contiguous())
            torch.testing.assert_close(y, spatin_norm_ref(x, 3, gamma=g, beta=g, eps=EPS, silu=True),
                                       rtol=1e-10, atol=1e-10)
            assert mean.shape == rstd.shape == (B, 3)


def test_backward_through_a_channels_last_forward(backend_device):
    """Gradients of a channels_last x, gamma and beta: the C++ and CUDA
    backward return them channels_last too (the CPU kernel reads and writes
    that layout in place)."""
    backend, device = backend_device
    shape, groups = (2, 32, 9, 7), 8
    x, opt = make_inputs(shape, OPTIONALS, device=device, offset=1.0)
    x, opt = leaf(channels_last(x)), {k: leaf(channels_last(v)) for k, v in opt.items()}
    grad_y = channels_last(torch.randn(shape, dtype=torch.float64, device=device))
    got = grads_of(lambda x, **o: spatin_norm(x, groups, **o, eps=EPS, silu=True, backend=backend), x, opt, grad_y)
    want = grads_of(lambda x, **o: spatin_norm_ref(x, groups, **o, eps=EPS, silu=True), x, opt, grad_y)
    for name, g, w in zip(["x", *opt], got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9, msg=lambda m: f"grad of {name}: {m}")
        if backend != "triton" and g.dim() == 4:
            assert g.is_contiguous(memory_format=torch.channels_last) and not g.is_contiguous(), name


def test_channels_last_results_do_not_depend_on_the_thread_count():
    """The channels_last CPU kernels reduce over parts fixed by the shape, not
    by the threads: one thread and two give the same bits, forward and
    backward."""
    shape, groups = (2, 64, 40, 40), 32  # 25 pixel chunks per sample, two parts' worth of work
    x, opt = make_inputs(shape, OPTIONALS, dtype=torch.float32, offset=0.5)
    grad_y = channels_last(torch.randn(shape))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            xl, ol = leaf(channels_last(x)), {k: leaf(channels_last(v)) for k, v in opt.items()}
            y = spatin_norm(xl, groups, **ol, eps=EPS, silu=True, backend="cpu")
            results.append([y.detach(), *torch.autograd.grad(y, [xl, *ol.values()], grad_y)])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("present", [(), ("gamma", "beta"), OPTIONALS], ids=["none", "spatin", "all"])
@pytest.mark.parametrize("shape, groups", [((2, 64, 17, 13), 32), ((1, 20, 9, 11), 5), ((3, 6, 1, 7), 3)], ids=str)
def test_backward_channels_last_within_the_contiguous_error(backend_device, assert_within_eager_error, shape, groups,
                                                            present, silu, dtype):
    """The channels_last kernels sum in another order than the contiguous
    ones: against the float64 reference, their gradients are within twice the
    contiguous kernels' error (plus a slack for the sums of B*H*W terms).
    C = 20 leaves a vector tail in every pixel."""
    backend, device = backend_device
    x, opt = make_inputs(shape, present, dtype=dtype, device=device, offset=0.5)
    grad_y = torch.randn(shape, device=device).to(dtype)

    def grads(layout, fn=spatin_norm, cast=lambda t: t, **kw):
        xl = leaf(cast(x).contiguous(memory_format=layout))
        ol = {k: leaf(None if v is None else cast(v) if v.dim() != 4 else cast(v).contiguous(memory_format=layout))
              for k, v in opt.items()}
        return grads_of(lambda x, **o: fn(x, groups, **o, eps=EPS, silu=silu, **kw), xl, ol,
                        cast(grad_y).contiguous(memory_format=layout))

    got = grads(torch.channels_last, backend=backend)
    contiguous = grads(torch.contiguous_format, backend=backend)
    ref = grads(torch.contiguous_format, spatin_norm_ref, cast=lambda t: t.double())
    for g, c, r in zip(got, contiguous, ref):
        assert_within_eager_error(g, r, c, factor=2, atol=(1e-4 if dtype == torch.float32 else 1e-2)
                                  * max(1.0, r.abs().max().item()))


# ------------------------------------------------------------------ backward


def grads_of(fn, x, opt, grad_y):
    inputs = [x] + [v for v in opt.values() if v is not None]
    y = fn(x, **opt)
    return torch.autograd.grad(y, inputs, grad_y)


def leaf(t):
    return None if t is None else t.detach().clone().requires_grad_()


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("present", PAIR_SUBSETS + LONE, ids=lambda p: "+".join(p) or "none")
@pytest.mark.parametrize("shape, groups", SMALL_SHAPES, ids=str)
def test_backward_float64_matches_reference_autograd(backend_device, shape, groups, present, silu):
    backend, device = backend_device
    x, opt = make_inputs(shape, present, device=device)
    grad_y = torch.randn(shape, dtype=torch.float64, device=device)
    x, opt = leaf(x), {k: leaf(v) for k, v in opt.items()}
    got = grads_of(lambda x, **o: spatin_norm(x, groups, **o, eps=EPS, silu=silu, backend=backend), x, opt, grad_y)
    want = grads_of(lambda x, **o: spatin_norm_ref(x, groups, **o, eps=EPS, silu=silu), x, opt, grad_y)
    names = ["x"] + [k for k, v in opt.items() if v is not None]
    for name, g, w in zip(names, got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9, msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("present", [(), OPTIONALS], ids=["none", "all"])
@pytest.mark.parametrize("shape, groups", LOW_PRECISION_SHAPES, ids=str)
def test_backward_low_precision_within_eager_error(backend_device, assert_within_eager_error, shape, groups, dtype,
                                                   present):
    backend, device = backend_device
    x, opt = make_inputs(shape, present, dtype=dtype, device=device)
    grad_y = torch.randn(x.shape, device=device).to(dtype)
    x, opt = leaf(x), {k: leaf(v) for k, v in opt.items()}
    got = grads_of(lambda x, **o: spatin_norm(x, groups, **o, eps=EPS, silu=True, backend=backend), x, opt, grad_y)
    eager = grads_of(lambda x, **o: spatin_norm_ref(x, groups, **o, eps=EPS, silu=True), x, opt, grad_y)
    x64, opt64 = leaf(x.double()), {k: leaf(None if v is None else v.double()) for k, v in opt.items()}
    ref = grads_of(lambda x, **o: spatin_norm_ref(x, groups, **o, eps=EPS, silu=True), x64, opt64, grad_y.double())
    for g, e, r in zip(got, eager, ref):
        # The reductions (weight, bias, scale, shift) sum hundreds of terms:
        # the slack scales with the reference gradient's size.
        assert_within_eager_error(g, r, e, factor=3, atol=1e-2 * max(1.0, r.abs().max().item()))


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("present", [(), OPTIONALS], ids=["none", "all"])
def test_gradcheck(backend_device, present, silu):
    backend, device = backend_device
    x, opt = make_inputs((2, 4, 3, 2), present, device=device)
    names = [k for k, v in opt.items() if v is not None]

    def fn(x, *tensors):
        return spatin_norm(x, 2, **dict(zip(names, tensors)), eps=EPS, silu=silu, backend=backend)

    inputs = [leaf(x)] + [leaf(opt[k]) for k in names]
    assert torch.autograd.gradcheck(fn, inputs)


# ------------------------------------------------------------------ torch.library


def op_args(device, requires_grad):
    x, opt = make_inputs((2, 6, 5, 3), OPTIONALS, dtype=torch.float32, device=device)
    tensors = [x] + [opt[k] for k in OPTIONALS]
    tensors = [t.requires_grad_(requires_grad) for t in tensors]
    return tensors


@pytest.mark.parametrize("silu", [False, True])
def test_opcheck_forward(backend_device, silu):
    backend, device = backend_device
    if backend == "triton":
        pytest.skip("the Triton ops' opcheck is in test_op_layouts.py")
    x, *opt = op_args(device, requires_grad=True)
    torch.library.opcheck(torch.ops.mcvd.spatin_norm_fwd.default, (x, 3, *opt, EPS, silu))
    # Absent optionals, and some absent.
    torch.library.opcheck(torch.ops.mcvd.spatin_norm_fwd.default, (x, 3, None, None, None, None, None, None, EPS, silu))
    torch.library.opcheck(torch.ops.mcvd.spatin_norm_fwd.default, (x, 3, opt[0], None, opt[2], None, None, opt[5],
                                                                   EPS, silu))


def test_opcheck_backward(backend_device):
    backend, device = backend_device
    if backend == "triton":
        pytest.skip("the Triton ops' opcheck is in test_op_layouts.py")
    x, *opt = op_args(device, requires_grad=False)
    _, mean, rstd = torch.ops.mcvd.spatin_norm_fwd(x, 3, *opt, EPS, True)
    grad_y = torch.randn_like(x)
    torch.library.opcheck(torch.ops.mcvd.spatin_norm_bwd.default, (grad_y, x, mean, rstd, 3, *opt, True))
    torch.library.opcheck(torch.ops.mcvd.spatin_norm_bwd.default,
                          (grad_y, x, mean, rstd, 3, None, opt[1], None, opt[3], opt[4], None, False))


def test_absent_optionals_get_empty_gradients():
    x, opt = make_inputs((2, 4, 3, 3), ("bias", "gamma", "scale"))
    _, mean, rstd = torch.ops.mcvd.spatin_norm_fwd(x, 2, *opt.values(), EPS, False)
    grads = torch.ops.mcvd.spatin_norm_bwd(torch.ones_like(x), x, mean, rstd, 2, *opt.values(), False)
    for name, g in zip(OPTIONALS, grads[1:]):
        assert g.shape == (opt[name].shape if opt[name] is not None else (0,)), name


def test_empty_batch_backward(backend_device):
    """B = 0: every gradient is empty, and those of weight and bias are zeros of [C]."""
    backend, device = backend_device
    x, opt = make_inputs((0, 4, 3, 2), ("weight", "bias", "scale"), device=device)
    x, opt = leaf(x), {k: leaf(v) for k, v in opt.items()}
    y = spatin_norm(x, 2, **opt, silu=True, backend=backend)
    gx, gw, gb, gs = torch.autograd.grad(y.sum(), [x, opt["weight"], opt["bias"], opt["scale"]])
    assert gx.shape == x.shape and gs.shape == (0, 4)
    assert torch.equal(gw.cpu(), torch.zeros(4, dtype=torch.float64))
    assert torch.equal(gb.cpu(), torch.zeros(4, dtype=torch.float64))


@pytest.mark.parametrize("eps", [EPS, 0.0])
def test_groups_of_no_elements_have_mean_zero_and_variance_zero(backend_device, eps):
    """Frames of 0 x 3 pixels: y is empty, and every backend gives a group of no elements the statistics the
    C++ CPU op takes for it, mean 0 and variance 0 (rstd = 1 / sqrt(eps); inf for eps = 0)."""
    backend, device = backend_device
    fwd = triton_kernels().fwd if backend == "triton" else torch.ops.mcvd.spatin_norm_fwd
    y, mean, rstd = fwd(torch.randn(2, 4, 0, 3, device=device), 2, None, None, None, None, None, None, eps, False)
    assert y.shape == (2, 4, 0, 3)
    assert mean.tolist() == [[0.0, 0.0]] * 2
    assert rstd.tolist() == [[1 / eps ** 0.5 if eps else float("inf")] * 2] * 2


def test_statistics_do_not_require_grad(backend_device):
    backend, device = backend_device
    x, opt = make_inputs((2, 4, 3, 2), ("weight", "gamma"), device=device)
    x, opt = leaf(x), {k: leaf(v) for k, v in opt.items()}
    fwd = triton_kernels().fwd if backend == "triton" else torch.ops.mcvd.spatin_norm_fwd
    y, mean, rstd = fwd(x, 2, *opt.values(), EPS, True)
    assert y.requires_grad and not mean.requires_grad and not rstd.requires_grad


def test_double_backward_raises(backend_device):
    """The backward formula is first-order: a gradient of the gradient raises
    instead of silently missing the path through the backward op."""
    backend, device = backend_device
    x, opt = make_inputs((2, 4, 3, 2), ("weight",), device=device)
    x = leaf(x)
    (gx,) = torch.autograd.grad(spatin_norm(x, 2, **opt, silu=True, backend=backend).square().sum(), x,
                                create_graph=True)
    with pytest.raises(RuntimeError, match="derivative for mcvd::spatin_norm_bwd"):
        gx.square().sum().backward()


def test_compiled_autograd_of_an_eager_forward(backend_device):
    """The backward graph traced by compiled autograd (the forward ran eagerly,
    so the op's own autograd node is traced, not AOTAutograd's)."""
    backend, device = backend_device
    x, opt = make_inputs((2, 4, 3, 5), ("weight", "bias", "gamma", "scale"), device=device)
    x, opt = leaf(x), {k: leaf(v) for k, v in opt.items()}
    inputs = [x, *(v for v in opt.values() if v is not None)]
    loss = spatin_norm(x, 2, **opt, eps=EPS, silu=True, backend=backend).square().sum()
    with torch._dynamo.config.patch(compiled_autograd=True):
        torch.compile(lambda loss: loss.backward(), backend="eager")(loss)
    got = [t.grad for t in inputs]
    ref_inputs = [leaf(t) for t in inputs]
    ref_opt = dict(zip([k for k, v in opt.items() if v is not None], ref_inputs[1:]))
    spatin_norm_ref(ref_inputs[0], 2, **ref_opt, eps=EPS, silu=True).square().sum().backward()
    for g, r in zip(got, ref_inputs):
        torch.testing.assert_close(g, r.grad, rtol=1e-10, atol=1e-10)


def test_compile_fullgraph_of_the_op():
    """The op's fake and autograd registrations under torch.compile (inductor)."""
    x, opt = make_inputs((2, 4, 3, 5), ("gamma", "beta", "scale", "shift"), dtype=torch.float32)
    x = leaf(x)

    @torch.compile(fullgraph=True)
    def f(x, gamma, beta, scale, shift):
        return torch.ops.mcvd.spatin_norm_fwd(x, 2, None, None, gamma, beta, scale, shift, EPS, True)[0]

    y = f(x, opt["gamma"], opt["beta"], opt["scale"], opt["shift"])
    (gx,) = torch.autograd.grad(y.square().sum(), x)
    x64 = leaf(x.double())
    ref = spatin_norm_ref(x64, 2, **as_float64(opt), eps=EPS, silu=True)
    (gref,) = torch.autograd.grad(ref.square().sum(), x64)
    torch.testing.assert_close(y.double(), ref, **F32_TOL)
    torch.testing.assert_close(gx.double(), gref, rtol=1e-4, atol=1e-4)


def test_compile_fullgraph_of_the_public_function(backend_device):
    backend, device = backend_device
    x, opt = make_inputs((2, 4, 3, 5), ("gamma", "scale"), dtype=torch.float32, device=device)
    f = torch.compile(lambda x, g, s: spatin_norm(x, 2, gamma=g, scale=s, silu=True, backend=backend),
                      fullgraph=True)
    y = f(x, opt["gamma"], opt["scale"])
    torch.testing.assert_close(y, spatin_norm_ref(x, 2, gamma=opt["gamma"], scale=opt["scale"], silu=True))


# ------------------------------------------------------------------ bad input

B, C, H, W = 2, 6, 4, 5
BAD = [
    # (case, change to the good arguments, Python error type, message)
    ("x rank", dict(x=torch.randn(B, C, H)), ValueError,
     r"x: expected a 4-d tensor \[B, C, H, W\], got shape \[2, 6, 4\]"),
    ("x dtype", dict(x=torch.ones(B, C, H, W, dtype=torch.int64)), TypeError,
     r"x: expected a floating dtype \(float32, float64, bfloat16, float16\), got torch.int64"),
    ("groups", dict(num_groups=4), ValueError,
     r"num_groups: expected a positive divisor of the 6 channels of x, got 4"),
    ("groups zero", dict(num_groups=0), ValueError,
     r"num_groups: expected a positive divisor of the 6 channels of x, got 0"),
    ("weight shape", dict(weight=torch.randn(C + 1)), ValueError, r"weight: expected shape \[6\], got \[7\]"),
    ("bias shape", dict(bias=torch.randn(1, C)), ValueError, r"bias: expected shape \[6\], got \[1, 6\]"),
    ("gamma shape", dict(gamma=torch.randn(B, C, H, W + 1)), ValueError,
     r"gamma: expected shape \[2, 6, 4, 5\], got \[2, 6, 4, 6\]"),
    ("beta shape", dict(beta=torch.randn(1, C, H, W)), ValueError,
     r"beta: expected shape \[2, 6, 4, 5\], got \[1, 6, 4, 5\]"),
    ("scale shape", dict(scale=torch.randn(B, C, 1, 1)), ValueError,
     r"scale: expected shape \[2, 6\], got \[2, 6, 1, 1\]"),
    ("shift shape", dict(shift=torch.randn(C)), ValueError, r"shift: expected shape \[2, 6\], got \[6\]"),
    ("gamma dtype", dict(gamma=torch.randn(B, C, H, W, dtype=torch.float64)), TypeError,
     r"gamma: expected dtype torch.float32 \(the dtype of x\), got torch.float64"),
    ("weight dtype", dict(weight=torch.randn(C).half()), TypeError,
     r"weight: expected dtype torch.float32 \(the dtype of x\), got torch.float16"),
    ("eps nan", dict(eps=float("nan")), ValueError, r"eps: expected a finite float >= 0, got nan"),
    ("eps inf", dict(eps=float("inf")), ValueError, r"eps: expected a finite float >= 0, got inf"),
    ("eps negative", dict(eps=-1.0), ValueError, r"eps: expected a finite float >= 0, got -1\b"),
]


def good_args():
    return dict(x=torch.randn(B, C, H, W), num_groups=3, weight=None, bias=None, gamma=None, beta=None, scale=None,
                shift=None)


@pytest.mark.parametrize("case, change, py_error, message", BAD, ids=[c[0] for c in BAD])
def test_bad_input_through_mcvd_ops(case, change, py_error, message):
    args = {**good_args(), **change}
    for backend in available_backends("cpu"):
        with pytest.raises(py_error, match=message):
            spatin_norm(**args, backend=backend)


@pytest.mark.parametrize("case, change, py_error, message", BAD, ids=[c[0] for c in BAD])
def test_bad_input_through_the_cpu_kernel(case, change, py_error, message):
    a = {**good_args(), **change}
    with pytest.raises(RuntimeError, match=message):
        torch.ops.mcvd.spatin_norm_fwd(a["x"], a["num_groups"], *(a[k] for k in OPTIONALS), a.get("eps", EPS), False)


# Arguments whose type the kernel's schema fixes (an int, a bool): only the
# Python layer sees a tensor, a bool or a float group count, or a string.
BAD_TYPES = [
    ("groups tensor", dict(num_groups=torch.tensor(3)), TypeError,
     r"num_groups: expected an int \(a positive divisor of the 6 channels of x\), got Tensor"),
    ("groups bool", dict(num_groups=True), TypeError,
     r"num_groups: expected an int \(a positive divisor of the 6 channels of x\), got bool"),
    ("groups float", dict(num_groups=3.0), TypeError,
     r"num_groups: expected an int \(a positive divisor of the 6 channels of x\), got float"),
    ("eps str", dict(eps="a"), TypeError, r"eps: expected a finite float >= 0, got str 'a'"),
    ("eps bool", dict(eps=True), TypeError, r"eps: expected a finite float >= 0, got bool True"),
    ("silu str", dict(silu="no"), TypeError, r"silu: expected a bool, got str 'no'"),
    ("silu int", dict(silu=1), TypeError, r"silu: expected a bool, got int 1"),
]


@pytest.mark.parametrize("case, change, py_error, message", BAD_TYPES, ids=[c[0] for c in BAD_TYPES])
def test_bad_argument_types_through_mcvd_ops(case, change, py_error, message):
    args = {**good_args(), **change}
    for backend in available_backends("cpu"):
        with pytest.raises(py_error, match=message):
            spatin_norm(**args, backend=backend)


def test_numpy_group_counts_and_eps_are_numbers():
    np = pytest.importorskip("numpy")
    x = torch.randn(B, C, H, W)
    torch.testing.assert_close(spatin_norm(x, np.int64(3), eps=np.float32(1e-5)), spatin_norm(x, 3, eps=1e-5))


def test_bad_backward_input_through_the_cpu_kernel():
    x = torch.randn(B, C, H, W)
    _, mean, rstd = torch.ops.mcvd.spatin_norm_fwd(x, 3)
    bwd = torch.ops.mcvd.spatin_norm_bwd
    with pytest.raises(RuntimeError, match=r"grad_y: expected shape \[2, 6, 4, 5\], got \[2, 6, 4, 4\]"):
        bwd(torch.randn(B, C, H, W - 1), x, mean, rstd, 3)
    with pytest.raises(RuntimeError,
                       match=r"grad_y: expected dtype torch.float32 \(the dtype of x\), got torch.float64"):
        bwd(torch.randn(B, C, H, W, dtype=torch.float64), x, mean, rstd, 3)
    with pytest.raises(RuntimeError, match=r"mean: expected dtype torch.float32, got torch.float64"):
        bwd(torch.randn_like(x), x, mean.double(), rstd, 3)
    with pytest.raises(RuntimeError, match=r"rstd: expected shape \[2, 3\], got \[2, 2\]"):
        bwd(torch.randn_like(x), x, mean, rstd[:, :2], 3)
    with pytest.raises(RuntimeError, match=r"num_groups: expected a positive divisor of the 6 channels of x, got 5"):
        bwd(torch.randn_like(x), x, mean, rstd, 5)
    with pytest.raises(RuntimeError, match=r"scale: expected shape \[2, 6\], got \[6\]"):
        bwd(torch.randn_like(x), x, mean, rstd, 3, scale=torch.randn(C))


@pytest.mark.gpu
def test_device_mismatch_is_rejected():
    x = torch.randn(B, C, H, W, device="cuda")
    message = r"gamma: expected device cuda:0 \(the device of x\), got cpu"
    with pytest.raises(ValueError, match=message):
        spatin_norm(x, 3, gamma=torch.randn(B, C, H, W))
    with pytest.raises(RuntimeError, match=message):
        torch.ops.mcvd.spatin_norm_fwd(x, 3, None, None, torch.randn(B, C, H, W))


def test_autocast_runs_in_the_autocast_dtype():
    # Under autocast a conv hands over bfloat16 activations while the norm's
    # parameters stay float32: the op casts them all to the autocast dtype.
    x = torch.randn(2, 8, 5, 5)
    w, b = torch.randn(8), torch.randn(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = spatin_norm(x.bfloat16(), 4, weight=w, bias=b, silu=True)
    assert y.dtype == torch.bfloat16
    ref = spatin_norm_ref(x.double(), 4, weight=w.bfloat16().double(), bias=b.bfloat16().double(), silu=True)
    assert (y.double() - ref).abs().max() < 0.05
