"""The ops on the layouts that the network and torch.compile hand them:
contiguous tensors, permuted views (AttnBlock's q, k, v are views of one
[B, N, 3, heads, D] buffer), channels_last (convolutions under inductor's
layout optimisation) and expanded ones (stride 0).

The kernels return contiguous tensors whatever the inputs' strides (the C++
ones read every input through .contiguous()), except the C++ and CUDA
spatin_norm, whose y and gradients of x, gamma and beta are channels_last for
a channels_last x; each fake
implementation must say exactly that, or torch.compile allocates and indexes
the real outputs with the fake's strides (a permuted q once gave a permuted
fake `out`). opcheck compares fake and real strides; the
compiled graphs consume each op output with inductor's own code, which reads
it through the fake's strides (and asserts them). Inputs are float64, and
compiled and eager run the same kernels, so they agree to rounding.
"""
import pytest
import torch
import torch._functorch.config
import torch._inductor.config

from mcvd.ops import attention, reverse_step, spatin_norm
from mcvd.ops.attention import triton_kernels as attention_triton
from mcvd.ops.reverse_step import triton_kernels as reverse_step_triton
from mcvd.ops.spatin_norm import triton_kernels as spatin_norm_triton

LAYOUTS = ["contiguous", "permuted", "channels_last", "expanded"]
F64_TOL = dict(rtol=1e-12, atol=1e-12)


@pytest.fixture(autouse=True)
def _compile_afresh():
    """No compiled graph from inductor's caches: their keys hold the graph, not
    the custom ops' fake implementations, so a graph compiled with other fakes
    would be reused."""
    with torch._inductor.config.patch(fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        yield


def ops_of(name: str, backend: str):
    """(forward, backward) ops that `backend` runs for op `name` (backward None
    for reverse_step, whose backward is plain PyTorch)."""
    if backend == "triton":
        kernels = {"spatin_norm": spatin_norm_triton, "attention": attention_triton,
                   "reverse_step": reverse_step_triton}[name]()
        return kernels.fwd, getattr(kernels, "bwd", None)
    fwd = {"spatin_norm": torch.ops.mcvd.spatin_norm_fwd, "attention": torch.ops.mcvd.attention_fwd,
           "reverse_step": torch.ops.mcvd.reverse_step}[name].default
    bwd = {"spatin_norm": torch.ops.mcvd.spatin_norm_bwd, "attention": torch.ops.mcvd.attention_bwd}.get(name)
    return fwd, None if bwd is None else bwd.default


# ------------------------------------------------------------------ inputs
#
# Each maker returns (bases, lay_out): contiguous (or channels_last) tensors,
# and a function making the op's inputs from them as views or copies - so
# that gradients flow back to the bases through the layout.


def base_and_view(shape, layout, device):
    """A base tensor and how to see it as a [B, ...] tensor of `shape` in `layout`."""
    B = shape[0]
    if layout == "contiguous":
        return torch.randn(shape, dtype=torch.float64, device=device), lambda b: b
    if layout == "channels_last":
        base = torch.randn(shape, dtype=torch.float64, device=device).contiguous(memory_format=torch.channels_last)
        return base, lambda b: b
    if layout == "permuted":  # a [W, C, B, H] buffer seen as [B, C, H, W]
        base = torch.randn(shape, dtype=torch.float64, device=device).permute(3, 1, 0, 2).contiguous()
        return base, lambda b: b.permute(2, 1, 3, 0)
    if layout == "expanded":  # one sample repeated over the batch
        return torch.randn((1, *shape[1:]), dtype=torch.float64, device=device), lambda b: b.expand(B, *shape[1:])
    raise ValueError(layout)


def check_layout(layout, *tensors):
    """The inputs really are laid out as the test says."""
    for t in tensors:
        if layout == "contiguous":
            assert t.is_contiguous()
        elif layout == "channels_last":
            assert t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
        elif layout == "expanded":
            assert t.stride(0) == 0
        else:
            assert not t.is_contiguous() and not t.is_contiguous(memory_format=torch.channels_last)


def spatin_norm_inputs(layout, device):
    """x, weight, bias, gamma, beta, scale, shift: x, gamma, beta in `layout`,
    scale and shift expanded over the batch in the expanded layout."""
    B, C, H, W = 3, 6, 5, 4
    made = [base_and_view((B, C, H, W), layout, device) for _ in range(3)]
    made += [base_and_view((C,), "contiguous", device) for _ in range(2)]
    made += [base_and_view((B, C), "expanded" if layout == "expanded" else "contiguous", device) for _ in range(2)]
    views = [view for _, view in made]

    def lay_out(x, gamma, beta, weight, bias, scale, shift):
        x, gamma, beta, weight, bias, scale, shift = (v(b) for v, b in
                                                      zip(views, (x, gamma, beta, weight, bias, scale, shift)))
        check_layout(layout, x, gamma, beta)
        return x, weight, bias, gamma, beta, scale, shift

    return [base for base, _ in made], lay_out


def attention_inputs(layout, device):
    """q, k, v [B, heads, N, D]; "permuted" is the layout AttnBlock makes: views
    of one [B, N, 3, heads, D] buffer."""
    B, heads, N, D = 2, 3, 13, 8
    if layout == "permuted":
        base = torch.randn(B, N, 3, heads, D, dtype=torch.float64, device=device)

        def lay_out(qkv):
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            check_layout(layout, q, k, v)
            return q, k, v

        return [base], lay_out
    made = [base_and_view((B, heads, N, D), layout, device) for _ in range(3)]

    def lay_out(*bases):
        q, k, v = (view(b) for (_, view), b in zip(made, bases))
        check_layout(layout, q, k, v)
        return q, k, v

    return [base for base, _ in made], lay_out


def reverse_step_inputs(layout, device):
    made = [base_and_view((3, 2, 5, 4), layout, device) for _ in range(3)]

    def lay_out(*bases):
        x_t, eps, noise = (view(b) for (_, view), b in zip(made, bases))
        check_layout(layout, x_t, eps, noise)
        return x_t, eps, noise

    return [base for base, _ in made], lay_out


# ------------------------------------------------------------------ opcheck: fake strides = real strides


@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck_spatin_norm(backend_device, layout):
    backend, device = backend_device
    fwd, bwd = ops_of("spatin_norm", backend)
    bases, lay_out = spatin_norm_inputs(layout, device)
    x, *opt = lay_out(*bases)
    torch.library.opcheck(fwd, (x, 3, *opt, 1e-6, True))
    _, mean, rstd = fwd(x, 3, *opt, 1e-6, True)
    grad_y = lay_out(*[torch.randn_like(b) for b in bases])[0]  # laid out like x
    torch.library.opcheck(bwd, (grad_y, x, mean, rstd, 3, *opt, True))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck_attention(backend_device, layout):
    backend, device = backend_device
    fwd, bwd = ops_of("attention", backend)
    bases, lay_out = attention_inputs(layout, device)
    q, k, v = lay_out(*bases)
    torch.library.opcheck(fwd, (q, k, v, 0.4))
    out, lse = fwd(q, k, v, 0.4)
    grad_out = lay_out(*[torch.randn_like(b) for b in bases])[0]  # laid out like q
    torch.library.opcheck(bwd, (grad_out, q, k, v, out, lse, 0.4))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck_reverse_step(backend_device, layout):
    backend, device = backend_device
    fwd, _ = ops_of("reverse_step", backend)
    bases, lay_out = reverse_step_inputs(layout, device)
    x_t, eps, noise = lay_out(*bases)
    coef = 0.1 + torch.rand(5, x_t.shape[0], dtype=torch.float64, device=device)
    torch.library.opcheck(fwd, (x_t, eps, noise, coef, -1.0, 1.0))


# ------------------------------------------------------------------ torch.compile on the layouts


def every_layout(make_inputs, device):
    """make_inputs(layout, device) for every layout, as one list of bases and
    one lay_out giving a tuple of inputs per layout (one graph for all, so one
    compilation)."""
    made = [make_inputs(layout, device) for layout in LAYOUTS]

    def lay_out(*leaves):
        per_layout, i = [], 0
        for bases, lay in made:
            per_layout.append(lay(*leaves[i:i + len(bases)]))
            i += len(bases)
        return per_layout

    return [b for bases, _ in made for b in bases], lay_out


def compiled_matches_eager(op, bases, lay_out):
    """op on every layout, compiled (inductor, fullgraph) and eager: the outputs,
    and the gradients of sum(outputs * cotangents) for the bases. The outputs
    are scaled inside the graph, so that inductor reads each op output (and the
    backward each gradient) through the fakes' strides."""

    def fn(*per_layout):
        outs = []
        for inputs in per_layout:
            out = op(*inputs)
            outs += [o * 1.5 for o in (out if isinstance(out, tuple) else (out,))]
        return tuple(outs)

    compiled = torch.compile(fn, fullgraph=True, dynamic=False)
    results = []
    for f in (compiled, fn):
        leaves = [b.detach().clone().requires_grad_() for b in bases]
        outs = f(*lay_out(*leaves))
        gen = torch.Generator(device=outs[0].device).manual_seed(1)
        cots = [torch.randn(o.shape, dtype=o.dtype, device=o.device, generator=gen) for o in outs]
        results.append([o.detach() for o in outs] + list(torch.autograd.grad(outs, leaves, cots)))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, **F64_TOL)


@pytest.mark.slow
def test_compile_spatin_norm(any_backend):
    backend, device = any_backend

    def op(x, weight, bias, gamma, beta, scale, shift):
        return spatin_norm(x, 3, weight=weight, bias=bias, gamma=gamma, beta=beta, scale=scale, shift=shift,
                           silu=True, backend=backend)

    compiled_matches_eager(op, *every_layout(spatin_norm_inputs, device))


@pytest.mark.slow
def test_compile_attention(any_backend):
    backend, device = any_backend
    compiled_matches_eager(lambda q, k, v: attention(q, k, v, backend=backend),
                           *every_layout(attention_inputs, device))


@pytest.mark.slow
def test_compile_reverse_step(any_backend):
    backend, device = any_backend

    def op(x_t, eps, noise):
        return reverse_step(x_t, eps, noise, a=0.3, b=0.9, c_x0=0.5, c_xt=0.4, sigma=0.1, clip=(-1.0, 1.0),
                            backend=backend)

    compiled_matches_eager(op, *every_layout(reverse_step_inputs, device))


def test_compiled_ops_take_float_arguments_that_change():
    """After a recompile for another eps or scale, dynamo traces the float as a
    symbol: the ops' argument checks must not read its value (a graph break,
    an error under fullgraph)."""
    torch._dynamo.reset()
    x, q = torch.randn(2, 4, 3, 3), torch.randn(1, 2, 5, 4)

    def f(x, eps, q, scale):
        return spatin_norm(x, 2, eps=eps), attention(q, q, q, scale=scale)

    compiled = torch.compile(f, fullgraph=True)
    for eps, scale in ((1e-5, 0.5), (1e-6, 0.25), (1e-3, 0.125)):
        for out, ref in zip(compiled(x, eps, q, scale), f(x, eps, q, scale)):
            torch.testing.assert_close(out, ref)
