"""The reverse-diffusion update, one fused pass for DDPM and DDIM (any eta).

    x0     = (x_t - a * eps) / b                 (clamped to clip if given)
    x_prev = c_x0 * x0 + c_xt * x_t + sigma * noise

DDPM (Ho et al. 2020, eq. 7 posterior mean) uses a = sqrt(1 - abar_t),
b = sqrt(abar_t), c_x0 = sqrt(abar_{t-1}) beta_t / (1 - abar_t),
c_xt = sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t), sigma = posterior std;
DDIM (Song et al. 2021, eq. 12) re-expresses eps through x0 and x_t, which is
the same linear form. mcvd.diffusion builds the coefficients.
"""
from __future__ import annotations

import torch

from mcvd.kernels._dtypes import stat_dtype

from . import _backend, _triton
from ._checks import (check_finite, check_float, check_like, check_rank, check_same_device, check_shape, describe,
                      is_real, shape_str)

_COEFS = ("a", "b", "c_x0", "c_xt", "sigma")


def _check_coefs(x_t, coefs) -> None:
    """Each coefficient a real number (finite; b nonzero) or a floating-point
    tensor of shape [B] (or 0-d) on x_t's device. A tensor's values are not
    read: on a GPU that would make the host wait for the device."""
    B = x_t.shape[0]
    for name, c in zip(_COEFS, coefs):
        if isinstance(c, torch.Tensor):
            if not c.is_floating_point():
                raise TypeError(f"{name}: expected a float or a floating-point tensor of shape [{B}], "
                                f"got a tensor of dtype {c.dtype}")
            if c.device != x_t.device:
                raise ValueError(f"{name}: expected device {x_t.device} (the device of x_t), got {c.device}")
            if c.dim() != 0 and tuple(c.shape) != (B,):
                raise ValueError(f"{name}: expected a float or a tensor of shape [{B}], got shape {shape_str(c.shape)}")
        elif not is_real(c):
            raise TypeError(f"{name}: expected a float or a tensor of shape [{B}], got {describe(c)}")
        else:
            check_finite(c, name)
            if name == "b" and c == 0:
                raise ValueError("b: expected a nonzero float (x0 = (x_t - a eps) / b), got 0")


def _coef_table(x_t, coefs) -> torch.Tensor:
    """[5, B] table of the coefficients (floats or [B] tensors, checked by
    _check_coefs) on x_t's device, of x_t's statistics dtype (float64 for
    float64 x_t, else float32)."""
    B = x_t.shape[0]
    dtype = stat_dtype(x_t.dtype)
    if x_t.device.type == "cpu" and all(not isinstance(c, torch.Tensor) for c in coefs):
        return torch.tensor([[float(c)] * B for c in coefs], dtype=dtype)
    # On a GPU, float rows are filled on the device: a copy from host memory
    # would wait for the GPU, and could not be captured in a CUDA graph.
    rows = [c.expand(B) if isinstance(c, torch.Tensor) else torch.full((B,), float(c), dtype=dtype, device=x_t.device)
            for c in coefs]
    return torch.stack(rows).to(dtype)  # stack promotes mixed dtypes; one cast after


def _check_inputs(x_t, eps, noise) -> None:
    """The tensor checks that open csrc/op_checks.h's check_reverse_step_args."""
    if not isinstance(x_t, torch.Tensor):
        raise TypeError(f"x_t: expected a tensor, got {type(x_t).__name__}")
    if x_t.dim() < 1:
        raise ValueError("x_t: expected a tensor with a batch dimension [B, ...], got a 0-d tensor")
    check_float(x_t, "x_t")
    if not isinstance(eps, torch.Tensor):
        raise TypeError(f"eps: expected a tensor, got {describe(eps)}")
    check_like(eps, "eps", x_t, "x_t", x_t.shape)
    check_like(noise, "noise", x_t, "x_t", x_t.shape)


def _check(x_t, eps, noise, coefs, clip) -> None:
    """The checks of csrc/op_checks.h's check_reverse_step_args, in its order,
    with the coefficients in the place of its table."""
    _check_inputs(x_t, eps, noise)
    _check_coefs(x_t, coefs)
    sigma = coefs[-1]
    if noise is None and isinstance(sigma, torch.Tensor):
        # Whether its values are all zero is not read (see _check_coefs).
        raise ValueError("noise: expected a tensor shaped like x_t when sigma is a tensor (its values are not "
                         "read); pass sigma=0.0 for a step without noise, got None")
    if noise is None and sigma != 0:
        raise ValueError("noise: expected a tensor shaped like x_t when sigma is not 0, got None")
    if clip is not None:
        pair = isinstance(clip, (tuple, list)) and len(clip) == 2 and all(is_real(v) for v in clip)
        if not pair or not clip[0] <= clip[1]:
            raise (ValueError if pair else TypeError)(f"clip: expected None or (lo, hi) with lo <= hi, got {clip!r}")


def _check_table(x_t, eps, noise, coef, clip_lo, clip_hi) -> None:
    """csrc/op_checks.h's check_reverse_step_args: the op's own arguments, the coefficient table included."""
    _check_inputs(x_t, eps, noise)
    check_rank(coef, "coef", 2, "[5, B] (a, b, c_x0, c_xt, sigma)")
    check_shape(coef, "coef", (5, x_t.shape[0]))
    check_same_device(coef, "coef", x_t, "x_t")
    if coef.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"coef: expected dtype torch.float32 or torch.float64, got {coef.dtype}")
    if (clip_lo is None) != (clip_hi is None):
        raise ValueError("clip_lo, clip_hi: expected both or neither to be given")
    if clip_lo is not None and not clip_lo <= clip_hi:
        raise ValueError(f"clip_lo: expected clip_lo <= clip_hi, got clip_lo={clip_lo:g}, clip_hi={clip_hi:g}")


def _clip_bounds(clip) -> tuple[float | None, float | None]:
    return (None, None) if clip is None else (float(clip[0]), float(clip[1]))


def reverse_step_ref(x_t, eps, noise, *, a, b, c_x0, c_xt, sigma, clip=None, upcast=False):
    """Pure-PyTorch reference, with the arguments of reverse_step. Computes in
    x_t's dtype (the coefficients rounded to it); `upcast=True` computes in
    float32 (float64 stays) and casts the results back, as the kernels and
    reverse_step(backend="reference") do."""
    coefs = (a, b, c_x0, c_xt, sigma)
    _check_coefs(x_t, coefs)
    # Its own broadcasting, not the ops' coefficient table (_coef_table), so that a fault in how that
    # table is packed cannot hide from the tests that compare the ops with this function.
    dtype = torch.promote_types(x_t.dtype, torch.float32) if upcast else x_t.dtype
    column = (-1,) + (1,) * (x_t.dim() - 1)
    a, b, c_x0, c_xt, sigma = (c.to(dtype).reshape(column if c.dim() else ()) if isinstance(c, torch.Tensor)
                               else torch.tensor(float(c), dtype=dtype) for c in coefs)
    x, e = x_t.to(dtype), eps.to(dtype)
    x0 = (x - a * e) / b
    if clip is not None:
        x0 = x0.clamp(float(clip[0]), float(clip[1]))
    x_prev = c_x0 * x0 + c_xt * x
    if noise is not None:
        x_prev = x_prev + sigma * noise.to(dtype)
    return x_prev.to(x_t.dtype), x0.to(x_t.dtype)


def _table_ref(x_t, eps, noise, coef, clip_lo=None, clip_hi=None):
    """The update over a [5, B] coefficient table (see _coef_table), in the
    wider of x_t's and the table's dtypes."""
    a, b, c_x0, c_xt, sigma = (c.view(-1, *([1] * (x_t.dim() - 1))) for c in coef)
    x0 = (x_t - a * eps) / b
    if clip_lo is not None:
        x0 = x0.clamp(clip_lo, clip_hi)
    x_prev = c_x0 * x0 + c_xt * x_t
    if noise is not None:
        x_prev = x_prev + sigma * noise
    return x_prev.to(x_t.dtype), x0.to(x_t.dtype)


def reverse_step(x_t: torch.Tensor, eps: torch.Tensor, noise: torch.Tensor | None, *, a, b, c_x0, c_xt, sigma,
                 clip: tuple[float, float] | None = None, backend: str | None = None):
    """One reverse step x_t -> x_{t-1}, returning (x_prev, x0).

    Args:
        x_t, eps, noise: [B, ...] of one float dtype and device; noise may be
            None only when sigma is the float 0 (a tensor sigma's values are
            never read, so it always takes noise).
        a, b, c_x0, c_xt, sigma: finite real numbers (not bools; b nonzero),
            or floating-point [B] tensors on x_t's device (per sample; their
            values are not read, so that a step on a GPU never syncs).
        clip: (lo, hi) clamp of the predicted x0, real numbers with lo <= hi, or None.
        backend: None (auto), "reference", "cpu", "cuda" or "triton".
    Returns:
        (x_prev, x0), both shaped like x_t. Differentiable in x_t, eps and
        noise; the coefficients are constants.
    """
    coefs = (a, b, c_x0, c_xt, sigma)
    _check(x_t, eps, noise, coefs, clip)
    return reverse_step_coef(x_t, eps, noise, _coef_table(x_t, coefs), *_clip_bounds(clip), backend=backend)


def reverse_step_coef(x_t, eps, noise, coef, clip_lo=None, clip_hi=None, *, backend=None):
    """reverse_step over a prepared [5, B] coefficient table of x_t's statistics
    dtype (the samplers build theirs once per sampling run; no checks beyond
    the kernel's)."""
    name = _backend.resolve("reverse_step", x_t.device, backend, x_t.dtype)
    if name == "reference":
        return _table_ref(x_t, eps, noise, coef, clip_lo, clip_hi)
    op = torch.ops.mcvd.reverse_step if name in ("cpu", "cuda") else triton_kernels().fwd
    return op(x_t, eps, noise, coef, clip_lo, clip_hi)


# --- torch.library registrations: fake, and one autograd formula for the C++
# op (CPU and CUDA) and the Triton op alike (see mcvd/ops/__init__.py).


@torch.library.register_fake("mcvd::reverse_step")
def _fake(x_t, eps, noise, coef, clip_lo=None, clip_hi=None):
    # Contiguous whatever x_t's strides, as the kernels return them (they read x_t through .contiguous()).
    return (torch.empty_like(x_t, memory_format=torch.contiguous_format),
            torch.empty_like(x_t, memory_format=torch.contiguous_format))


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)  # (a .to() that returns its input trips opcheck)


def _setup_context(ctx, inputs, output):
    x_t, eps, noise, coef, clip_lo, clip_hi = inputs
    # The clamp passes gradient where the unclamped x0 lies in [lo, hi], bounds included, as torch.clamp's
    # (the reference's) does. From the clamped output a value on a bound could not be told from one clamped
    # to it, and in bfloat16 many land exactly there. The unclamped x0 as _table_ref computes it.
    inside = None
    if clip_lo is not None:
        # In the kernels' compute dtype (stat_dtype: float64 for float64, else float32), the coefficients rounded
        # to it: a low-precision x0 that the kernel clipped (1.001 > 1 in float32) may round onto the bound (1.0
        # in bfloat16), and would then pass a gradient the clipped forward does not have.
        acc = stat_dtype(x_t.dtype)
        a, b = (_as(c, acc).view(-1, *([1] * (x_t.dim() - 1))) for c in coef[:2])
        x0 = (_as(x_t, acc) - a * _as(eps, acc)) / b
        inside = (x0 >= clip_lo) & (x0 <= clip_hi)
    ctx.save_for_backward(coef, inside)
    ctx.has_noise = noise is not None


def _backward(ctx, g_prev, g_x0):
    """Elementwise, so plain PyTorch: d x_prev / d (x_t, eps, noise). Made of
    differentiable ops, so a double backward through it is exact too."""
    coef, inside = ctx.saved_tensors
    shape = (-1,) + (1,) * (g_prev.dim() - 1)
    a, b, c_x0, c_xt, sigma = (c.view(shape).to(g_prev.dtype) for c in coef)
    g = c_x0 * g_prev + (g_x0 if g_x0 is not None else 0)
    if inside is not None:
        g = torch.where(inside, g, torch.zeros_like(g))
    g_xt = c_xt * g_prev + g / b
    g_eps = -a / b * g
    g_noise = sigma * g_prev if ctx.has_noise else None
    return g_xt, g_eps, g_noise, None, None, None


torch.library.register_autograd("mcvd::reverse_step", _backward, setup_context=_setup_context)


def triton_kernels():
    """kernels/reverse_step.py, its Triton op registered below (imported on first use)."""
    return _triton.load("reverse_step", _register_triton)


def _register_triton(kernels) -> None:
    """Autograd of mcvd::reverse_step_triton: the formula of mcvd::reverse_step."""
    torch.library.register_autograd("mcvd::reverse_step_triton", _backward, setup_context=_setup_context)
    kernels.checks.update(fwd=_check_table)
