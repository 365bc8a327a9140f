"""Dropout (Srivastava et al. 2014) with a counter-based mask, one pass.

    y = x / (1 - p)  where the element's Philox4x32-10 word from `seed` is at least p * 2^32,  else 0

Element i (row-major) reads word i % 4 of counter (i // 4, 0) under the
key (seed's low 32 bits, its high 32 bits); csrc/philox.h states the rule
for the C++ and CUDA kernels, kernels/dropout.py follows it with tl.philox,
so every backend draws the same mask from the same seed. The mask is never
stored: the op is linear in x, and its backward is the op itself on the
gradient, with the same seed.

Why an op: PyTorch's CPU dropout draws its mask with mt19937 one element at
a time: 14 ms for 2M float32 elements on one core of an AMD EPYC, against
2.2 ms here (benchmarks/results/cpu.md); the SMMNIST preset's training step
at batch 8 is 3-6% faster for it (benchmarks/results/cpu_e2e_amd.md). The
reference backend is PyTorch's own dropout: the same distribution from
another random stream.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _backend, _triton
from ._checks import check_dtype, check_float, check_same_device, describe, is_real, shape_str

# Seeds are drawn in [0, 2^63 - 1): torch.randint's bound is an int64.
_SEED_HIGH = 2**63 - 1


def _check_x_p(x, p) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a tensor, got {describe(x)}")
    check_float(x, "x")
    if not is_real(p):
        raise TypeError(f"p: expected a probability in [0, 1), got {describe(p)}")
    if not 0 <= p < 1:
        raise ValueError(f"p: expected a probability in [0, 1), got {p!r}")


def _check(x, p, training) -> None:
    _check_x_p(x, p)
    if not isinstance(training, bool):
        raise TypeError(f"training: expected a bool, got {describe(training)}")


def dropout_ref(x: torch.Tensor, p: float = 0.5, training: bool = True) -> torch.Tensor:
    """PyTorch's dropout (torch.nn.functional.dropout), with the checks of `dropout`."""
    _check(x, p, training)
    return F.dropout(x, p, training)


def dropout(x: torch.Tensor, p: float = 0.5, training: bool = True, *, backend: str | None = None) -> torch.Tensor:
    """Zeroes each element of x with probability p and scales the rest by 1 / (1 - p).

    Args:
        x: a float tensor of any shape, layout and device.
        p: the probability of dropping an element, a real number in [0, 1).
        training: False (or p == 0) returns x itself, as torch's dropout does.
        backend: None (auto), "reference", "cpu", "cuda" or "triton".
    Returns:
        y, shaped like x (contiguous from the fused backends). The seed of its
        mask is drawn from the default generator of x's device, so
        torch.manual_seed makes a call reproducible; the mask does not depend
        on the thread count.
    """
    _check(x, p, training)
    if not training or p == 0:
        return x
    name = _backend.resolve("dropout", x.device, backend, x.dtype)
    if name == "reference":
        return F.dropout(x, p, True)
    seed = torch.randint(_SEED_HIGH, (), dtype=torch.int64, device=x.device)
    op = torch.ops.mcvd.dropout if name in ("cpu", "cuda") else triton_kernels().fwd
    return op(x, float(p), seed)


# --- torch.library registrations: fake, and the autograd of the C++ op (CPU
# and CUDA) and the Triton op alike (see mcvd/ops/__init__.py).


@torch.library.register_fake("mcvd::dropout")
def _fake(x, p, seed):
    # Contiguous whatever x's strides, as the kernels return it (they read x through .contiguous()).
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    _, ctx.p, seed = inputs
    ctx.save_for_backward(seed)


def _backward_with(op):
    """The backward of a dropout op: the op on the gradient, with the forward's
    seed (the same mask; a double backward runs through the op again)."""

    def backward(ctx, grad):
        (seed,) = ctx.saved_tensors
        return op(grad, ctx.p, seed), None, None
    return backward


torch.library.register_autograd("mcvd::dropout", _backward_with(torch.ops.mcvd.dropout),
                                setup_context=_setup_context)


def triton_kernels():
    """kernels/dropout.py, its Triton op registered below (imported on first use)."""
    return _triton.load("dropout", _register_triton)


def _register_triton(kernels) -> None:
    torch.library.register_autograd("mcvd::dropout_triton", _backward_with(kernels.fwd),
                                    setup_context=_setup_context)
    kernels.checks.update(fwd=_check_op)


def _check_op(x, p, seed) -> None:
    """csrc/op_checks.h's check_dropout_args."""
    _check_x_p(x, p)
    if not isinstance(seed, torch.Tensor):
        raise TypeError(f"seed: expected a 0-d int64 tensor, got {describe(seed)}")
    check_same_device(seed, "seed", x, "x")
    check_dtype(seed, "seed", torch.int64)
    if seed.dim() != 0:
        raise ValueError(f"seed: expected a 0-d tensor, got shape {shape_str(seed.shape)}")
