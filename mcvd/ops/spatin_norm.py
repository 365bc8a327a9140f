"""SPATIN normalisation: GroupNorm -> affine -> SPATIN maps -> scale/shift -> SiLU.

    n = GroupNorm(x, num_groups, eps)            (no affine; biased variance)
    n = n * weight + bias                        weight, bias: [C]
    n = n * (1 + gamma) + beta                   gamma, beta: [B, C, H, W] (SPATIN)
    n = n * (1 + scale) + shift                  scale, shift: [B, C]    (time embedding)
    y = silu(n)                                  if silu

Each step runs only if its arguments are given (weight and bias, gamma and
beta, scale and shift are each optional on their own).
"""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from mcvd.kernels._dtypes import stat_dtype

from . import _backend, _triton
from ._checks import (check_dtype, check_finite, check_float, check_like, check_rank, check_same_device, check_shape,
                      describe)

_ARGS = ("weight", "bias", "gamma", "beta", "scale", "shift")


def _check(x, num_groups, weight, bias, gamma, beta, scale, shift, eps, silu) -> None:
    """The checks of csrc/op_checks.h's check_spatin_norm_args, in its order,
    with the types the kernel's schema fixes (num_groups an int, silu a bool)
    checked here, where other types can arrive."""
    _check_tensors(x, num_groups, weight, bias, gamma, beta, scale, shift)
    check_finite(eps, "eps", "a finite float >= 0")
    if eps < 0:
        raise ValueError(f"eps: expected a finite float >= 0, got {float(eps):g}")
    _check_silu(silu)


def _check_bwd(grad_y, x, mean, rstd, num_groups, weight, bias, gamma, beta, scale, shift, silu) -> None:
    """csrc/op_checks.h's check_spatin_norm_bwd_args, in its order."""
    _check_tensors(x, num_groups, weight, bias, gamma, beta, scale, shift)
    check_like(grad_y, "grad_y", x, "x", x.shape)
    for name, t in (("mean", mean), ("rstd", rstd)):
        check_same_device(t, name, x, "x")
        check_dtype(t, name, stat_dtype(x.dtype))
        check_shape(t, name, (x.shape[0], num_groups))
    _check_silu(silu)


def _check_silu(silu) -> None:
    if not isinstance(silu, bool):
        raise TypeError(f"silu: expected a bool, got {describe(silu)}")


def _check_tensors(x, num_groups, weight, bias, gamma, beta, scale, shift) -> None:
    """csrc/op_checks.h's check_spatin_norm_tensors: x, num_groups and the optional tensors."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a tensor, got {type(x).__name__}")
    check_rank(x, "x", 4, "[B, C, H, W]")
    check_float(x, "x")
    B, C, H, W = x.shape
    if not isinstance(num_groups, (numbers.Integral, torch.SymInt)) or isinstance(num_groups, bool):
        raise TypeError(f"num_groups: expected an int (a positive divisor of the {C} channels of x), "
                        f"got {type(num_groups).__name__}")
    if num_groups <= 0 or C % num_groups != 0:
        raise ValueError(f"num_groups: expected a positive divisor of the {C} channels of x, got {num_groups}")
    for name, t, shape in (
        ("weight", weight, (C,)),
        ("bias", bias, (C,)),
        ("gamma", gamma, (B, C, H, W)),
        ("beta", beta, (B, C, H, W)),
        ("scale", scale, (B, C)),
        ("shift", shift, (B, C)),
    ):
        check_like(t, name, x, "x", shape)


def spatin_norm_ref(x, num_groups, *, weight=None, bias=None, gamma=None, beta=None, scale=None, shift=None,
                    eps=1e-6, silu=False, upcast=False):
    """Pure-PyTorch reference. `upcast=True` computes in float32 (float64 stays)
    and casts the result back to x's dtype."""
    dtype = x.dtype
    if upcast and dtype in (torch.float16, torch.bfloat16):
        up = lambda t: None if t is None else t.float()  # noqa: E731
        x, weight, bias, gamma, beta, scale, shift = map(up, (x, weight, bias, gamma, beta, scale, shift))
    layout = output_format(x)
    if x.device.type == "cpu":  # PyTorch's CPU GroupNorm on channels_last takes the variance in one pass, which
        x = x.contiguous()      # cancels for values far from 0 (y off by 4e3 at x = 1e4 + randn in float32)
    # torch.group_norm, not F.group_norm: a group of one value is normalised to 0 (as the kernels do), where
    # F.group_norm refuses it ("Expected more than 1 value per channel").
    n = torch.group_norm(x, num_groups, None, None, eps)
    if weight is not None:
        n = n * weight[:, None, None]
    if bias is not None:
        n = n + bias[:, None, None]
    if gamma is not None:
        n = n * (1 + gamma)
    if beta is not None:
        n = n + beta
    if scale is not None:
        n = n * (1 + scale[:, :, None, None])
    if shift is not None:
        n = n + shift[:, :, None, None]
    if silu:
        n = F.silu(n)
    return n.to(dtype).contiguous(memory_format=layout)


def spatin_norm(x: torch.Tensor, num_groups: int, *, weight: torch.Tensor | None = None,
                bias: torch.Tensor | None = None, gamma: torch.Tensor | None = None,
                beta: torch.Tensor | None = None, scale: torch.Tensor | None = None,
                shift: torch.Tensor | None = None, eps: float = 1e-6, silu: bool = False,
                backend: str | None = None) -> torch.Tensor:
    """Fused GroupNorm + affine + SPATIN + scale/shift + SiLU.

    Args:
        x: [B, C, H, W] float (float32, float64, bfloat16, float16).
        num_groups: G, an int dividing C.
        weight, bias: [C] per-channel affine, or None.
        gamma, beta: [B, C, H, W] SPATIN maps, or None.
        scale, shift: [B, C] time-embedding modulation, or None.
        eps: added to the variance, a finite float >= 0.
        silu: apply SiLU last (a bool).
        backend: None (auto), "reference", "cpu", "cuda" or "triton".
    Returns:
        y: [B, C, H, W], x's dtype. Every optional tensor shares x's dtype and device;
        under autocast, all are first cast to the autocast dtype.
    """
    # (Meta tensors have no autocast state to ask for.)
    if isinstance(x, torch.Tensor) and x.device.type != "meta" and torch.is_autocast_enabled(x.device.type):
        # Under autocast the convolutions hand over low-precision activations
        # while the norm's parameters stay float32; the kernels take one dtype
        # (and accumulate the statistics in float32 whatever it is).
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight, bias, gamma, beta, scale, shift = (
            None if t is None else t.to(dtype) for t in (x, weight, bias, gamma, beta, scale, shift))
    _check(x, num_groups, weight, bias, gamma, beta, scale, shift, eps, silu)
    num_groups, eps = int(num_groups), float(eps)
    name = _backend.resolve("spatin_norm", x.device, backend, x.dtype)
    if name == "reference":
        return spatin_norm_ref(x, num_groups, weight=weight, bias=bias, gamma=gamma, beta=beta, scale=scale,
                               shift=shift, eps=eps, silu=silu)
    op = torch.ops.mcvd.spatin_norm_fwd if name in ("cpu", "cuda") else triton_kernels().fwd
    y, _, _ = op(x, num_groups, weight, bias, gamma, beta, scale, shift, eps, silu)
    return y


# --- torch.library registrations. The C++ ops' autograd is registered in C++
# (csrc/autograd.cpp's SpatinNorm; see mcvd/ops/__init__.py for why), their
# fake implementations here; the Triton ops' autograd here, when they load.


@torch.library.register_fake("mcvd::spatin_norm_fwd")
def _fwd_fake(x, num_groups, weight=None, bias=None, gamma=None, beta=None, scale=None, shift=None, eps=1e-6,
              silu=False):
    stats = x.new_empty((x.shape[0], num_groups), dtype=stat_dtype(x.dtype))
    return torch.empty_like(x, memory_format=output_format(x)), stats, torch.empty_like(stats)


def output_format(x: torch.Tensor) -> torch.memory_format:
    """The layout of the kernels' y, and of the backward's gradients of x,
    gamma and beta (csrc/op_checks.h's spatin_norm_output_format):
    channels_last for a channels_last x that is not also contiguous, so that a
    network in channels_last (inductor's layout around oneDNN convolutions)
    runs its norms without copies; contiguous for any other x (the kernels
    read it through a contiguous copy)."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


@torch.library.register_fake("mcvd::spatin_norm_bwd")
def _bwd_fake(grad_y, x, mean, rstd, num_groups, weight=None, bias=None, gamma=None, beta=None, scale=None,
              shift=None, silu=False):
    # The [B, C, H, W] gradients (of x, gamma and beta) in the forward's layout of y, output_format(x);
    # the others contiguous.
    layout = output_format(x)
    grads = [torch.empty_like(x, memory_format=layout)]
    for t in (weight, bias, gamma, beta, scale, shift):
        grads.append(x.new_empty((0,)) if t is None else
                     torch.empty_like(t, memory_format=layout if t.dim() == 4 else torch.contiguous_format))
    return tuple(grads)


def triton_kernels():
    """kernels/spatin_norm.py, its Triton ops registered below (imported on first use)."""
    return _triton.load("spatin_norm", _register_triton)


def _register_triton(kernels) -> None:
    """Autograd of mcvd::spatin_norm_fwd_triton (backward: mcvd::spatin_norm_bwd_triton,
    the schema of mcvd::spatin_norm_bwd), and the first-order guard on the backward."""
    torch.library.register_autograd("mcvd::spatin_norm_fwd_triton", _make_backward(kernels.bwd),
                                    setup_context=_setup_context)
    kernels.checks.update(fwd=_check, bwd=_check_bwd)
    _triton.first_order_only("mcvd::spatin_norm_bwd_triton")


def _setup_context(ctx, inputs, output):
    """Saves what csrc/autograd.cpp's SpatinNorm saves."""
    x, num_groups, *opt, eps, silu = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, mean, rstd, *opt)
    ctx.has = [t is not None for t in opt]
    ctx.num_groups, ctx.silu = num_groups, silu
    ctx.mark_non_differentiable(mean, rstd)


def _make_backward(bwd_op):
    """The formula of csrc/autograd.cpp's SpatinNorm, over `bwd_op`."""

    def backward(ctx, grad_y, _grad_mean, _grad_rstd):
        x, mean, rstd, *saved = ctx.saved_tensors
        opt = [t if has else None for t, has in zip(saved, ctx.has)]
        grads = bwd_op(grad_y.contiguous(), x, mean, rstd, ctx.num_groups, *opt, ctx.silu)
        gx, *gopt = grads
        gopt = [g if has else None for g, has in zip(gopt, ctx.has)]
        return (gx, None, *gopt, None, None)

    return backward
