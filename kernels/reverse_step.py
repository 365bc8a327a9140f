"""Triton kernel of mcvd::reverse_step: the reverse-diffusion update in one pass.

    x0     = (x_t - a * eps) / b                 (clamped to [clip_lo, clip_hi] if given)
    x_prev = c_x0 * x0 + c_xt * x_t + sigma * noise

Each program works inside one sample, so its five coefficients are scalar loads
from the [5, B] table; the arithmetic runs in the table's dtype, which the
wrapper converts to float64 for float64 x_t and to float32 for the others (the
C++ op's compute dtype). The clip bounds travel as float32 kernel arguments.

The autograd of this Triton op is registered by mcvd/ops/reverse_step.py,
which imports this module; this module imports nothing from mcvd.
"""

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from . import _checks
from ._dtypes import stat_dtype

_BLOCK = 1024


@triton.jit
def _reverse_step_kernel(
    XT,     # [B, PER] x_t
    EPS,    # [B, PER] predicted noise
    NOISE,  # [B, PER] fresh noise (unused without HAS_NOISE)
    COEF,   # [5, B] rows a, b, c_x0, c_xt, sigma
    XPREV,  # [B, PER] out: x_{t-1}
    X0,     # [B, PER] out: predicted x_0
    B, PER, NBLK, clip_lo, clip_hi,
    HAS_NOISE: tl.constexpr, CLIP: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    sample = pid // NBLK
    a = tl.load(COEF + sample)
    b = tl.load(COEF + B + sample)
    c_x0 = tl.load(COEF + 2 * B + sample)
    c_xt = tl.load(COEF + 3 * B + sample)
    offs = (pid % NBLK) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < PER
    base = sample.to(tl.int64) * PER
    x_t = tl.load(XT + base + offs, mask=mask, other=0).to(a.dtype)
    eps = tl.load(EPS + base + offs, mask=mask, other=0).to(a.dtype)
    x0 = (x_t - a * eps) / b
    if CLIP:
        # NaN stays NaN, as in torch.clamp.
        x0 = tl.minimum(tl.maximum(x0, clip_lo, propagate_nan=tl.PropagateNan.ALL), clip_hi,
                        propagate_nan=tl.PropagateNan.ALL)
    x_prev = c_x0 * x0 + c_xt * x_t
    if HAS_NOISE:
        sigma = tl.load(COEF + 4 * B + sample)
        x_prev += sigma * tl.load(NOISE + base + offs, mask=mask, other=0).to(a.dtype)
    tl.store(X0 + base + offs, x0.to(X0.dtype.element_ty), mask=mask)
    tl.store(XPREV + base + offs, x_prev.to(XPREV.dtype.element_ty), mask=mask)


# The C++ op's argument checks, {"fwd": ...}, set by mcvd.ops (_checks.run).
checks = {}


@triton_op("mcvd::reverse_step_triton", mutates_args=())
def fwd(x_t: torch.Tensor, eps: torch.Tensor, noise: torch.Tensor | None, coef: torch.Tensor,
        clip_lo: float | None, clip_hi: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t, eps, noise: [B, ...] one float dtype (noise may be None); coef: [5, B]
    float32 or float64 on x_t's device. Returns (x_prev, x0), shaped like x_t."""
    _checks.run(checks, "reverse_step", "fwd", x_t, eps, noise, coef, clip_lo, clip_hi)
    B = x_t.shape[0]
    # The kernel computes in the table's dtype: the C++ op's (at::opmath_type of x_t's).
    x_t, eps, coef = x_t.contiguous(), eps.contiguous(), coef.to(stat_dtype(x_t.dtype)).contiguous()
    noise = None if noise is None else noise.contiguous()
    x_prev, x0 = torch.empty_like(x_t), torch.empty_like(x_t)
    per = x_t.numel() // B if B else 0
    nblk = triton.cdiv(per, _BLOCK)
    if B * nblk > 0:
        clip = clip_lo is not None
        wrap_triton(_reverse_step_kernel)[(B * nblk,)](
            x_t, eps, x_t if noise is None else noise, coef, x_prev, x0, B, per, nblk,
            clip_lo if clip else 0.0, clip_hi if clip else 0.0,
            HAS_NOISE=noise is not None, CLIP=clip, BLOCK=_BLOCK, num_warps=4)
    return x_prev, x0
