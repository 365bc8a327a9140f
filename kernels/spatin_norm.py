"""Triton kernels of mcvd::spatin_norm_fwd and mcvd::spatin_norm_bwd.

x: [B, C, H, W] is read as B*C rows of HW contiguous elements. Each row is cut
into NCH chunks of CHUNK elements, and one program handles one (row, chunk),
so the grid fills the GPU even at batch 1 with few channels (a split
reduction: partial results per chunk, then a small combine).

Forward, one launch when a group fits in one program's registers (CG x HW,
each padded to a power of two, at most _MAX_FUSED elements) and the groups
fill the GPU (B * G programs, at least one per multiprocessor):
_fused_fwd_kernel loads the group once, takes its mean and variance in two
passes over the registers (exact, no cancellation) and applies the chain, so
x is read once. Otherwise three launches:
  1. _stats_kernel      Welford (count, mean, M2) of every (row, chunk);
  2. _combine_kernel    per (batch, group): Chan's merge of its partials, then
                        mean and rstd = 1 / sqrt(var + eps) (biased variance);
  3. _fwd_apply_kernel  xhat = (x - mean) * rstd, h1 = xhat * w + b,
                        h2 = h1 * (1 + gamma) + beta, h3 = h2 * (1 + scale) + shift,
                        y = silu(h3) or h3.
Backward (dh3 = dy * silu'(h3), dh2 = dh3 * (1 + scale), dh1 = dh2 * (1 + gamma),
dxhat = dh1 * w): when a group fits _MAX_FUSED_BWD and the groups fill the GPU,
_fused_bwd_kernel does all of it for one group (then _bwd_wsum_kernel for
dweight / dbias); otherwise four launches:
  1. _bwd_reduce_kernel   per (row, chunk): sums of dh3, dh3 * h2, dh1, dh1 * xhat;
  2. _bwd_finalize_kernel per (batch, group): dshift = sum dh3 and dscale =
                          sum dh3 * h2 per row, the row sums of dh1 and
                          dh1 * xhat, and the group means of dxhat and
                          dxhat * xhat (sum_c w_c * row sums / group size);
  3. _bwd_wsum_kernel     dweight = sum_b rowsum(dh1 * xhat), dbias = sum_b rowsum(dh1);
  4. _bwd_apply_kernel    dgamma = dh2 * h1, dbeta = dh2,
                          dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
Absent optionals act as their identity (w = 1, the rest 0); their loads and
stores are compiled out. Arithmetic runs in float32 (float64 for float64 x);
eps travels as a float32 kernel argument.

The kernels are in spatin_norm_fwd.py (with the @triton.jit helpers both
directions share) and spatin_norm_bwd.py; this module holds the launchers.
The autograd of these Triton ops is registered by mcvd/ops/spatin_norm.py,
which imports this module; this module imports nothing from mcvd.
"""
import functools
import math

import torch
import triton
from torch.library import triton_op, wrap_triton

from . import _checks
from ._dtypes import stat_dtype
from .spatin_norm_bwd import (_bwd_apply_kernel, _bwd_finalize_kernel, _bwd_reduce_kernel, _bwd_wsum_kernel,
                              _fused_bwd_kernel)
from .spatin_norm_fwd import _combine_kernel, _fused_fwd_kernel, _fwd_apply_kernel, _stats_kernel

# Largest block of a row that one loop step holds, and largest tile of
# partial results that one step of a combine loop holds.
_MAX_BLOCK = 1024
_MAX_TILE = 1024
# Largest group (C / G * H * W elements) that the one-launch forward holds in
# registers (a float32 group of 16384 is 64 KB over 16 warps), and that the
# one-program-per-group backward holds (x, dy, gamma, beta and the chain's
# intermediates at once: 8 elements per thread over 32 warps).
_MAX_FUSED = 16384
_MAX_FUSED_BWD = 8192
# Programs a launch aims for under TRITON_INTERPRET=1, where each one is a slow
# Python loop step: rows are not split there unless a test lowers this.
_INTERPRET_PROGRAMS = 1


# --- launchers ----------------------------------------------------------------

@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _target_programs(device: torch.device) -> int:
    if device.type == "cuda":
        return 4 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return _INTERPRET_PROGRAMS


def _fused_blocks(cg: int, hw: int) -> tuple[int, int]:
    """(CBLOCK, HBLOCK) of the one-program-per-group kernels: a group's CG x HW, padded to powers of two."""
    return triton.next_power_of_2(cg), triton.next_power_of_2(hw)


def _fused(groups: int, cg: int, hw: int, device: torch.device, most: int) -> bool:
    """Whether one program per group serves B * G = groups of CG x HW elements:
    the padded group fits `most` elements, and there is a group per
    multiprocessor."""
    cblock, hblock = _fused_blocks(cg, hw)
    return hw > 0 and cblock * hblock <= most and groups >= _target_programs(device) // 4


def _plan(rows: int, hw: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK, CHUNK, NCH): split each row into chunks until the grid holds
    about _target_programs programs, never below one block per chunk."""
    block = min(triton.next_power_of_2(hw), _MAX_BLOCK)
    blocks = triton.cdiv(hw, block)
    nch = max(1, min(blocks, triton.cdiv(_target_programs(device), rows)))
    chunk = triton.cdiv(blocks, nch) * block
    return block, chunk, triton.cdiv(hw, chunk)


def _warps(block: int) -> int:
    return max(1, min(8, block // 256))


def _flags(weight, bias, gamma, beta, scale, shift) -> dict:
    return {"HAS_W": weight is not None, "HAS_B": bias is not None, "HAS_GAMMA": gamma is not None,
            "HAS_BETA": beta is not None, "HAS_SCALE": scale is not None, "HAS_SHIFT": shift is not None}


def _contiguous(*ts):
    return [None if t is None else t.contiguous() for t in ts]


# The C++ ops' argument checks, {"fwd": ..., "bwd": ...}, set by mcvd.ops (_checks.run).
checks = {}


@triton_op("mcvd::spatin_norm_fwd_triton", mutates_args=())
def fwd(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
        gamma: torch.Tensor | None, beta: torch.Tensor | None, scale: torch.Tensor | None,
        shift: torch.Tensor | None, eps: float, silu: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x: [B, C, H, W]; weight, bias: [C]; gamma, beta: [B, C, H, W]; scale, shift:
    [B, C] (each optional, x's dtype). Returns y: [B, C, H, W] and mean, rstd:
    [B, num_groups] float32 (float64 for float64 x)."""
    _checks.run(checks, "spatin_norm", "fwd", x, num_groups, weight, bias, gamma, beta, scale, shift, eps, silu)
    x, weight, bias, gamma, beta, scale, shift = _contiguous(x, weight, bias, gamma, beta, scale, shift)
    # Block sizes are compile-time constants computed from the sizes, so a
    # dynamic-shape trace specializes them here.
    B, C, H, W = (int(n) for n in x.shape)
    hw, rows, cg = H * W, B * C, C // num_groups
    acc_dtype = stat_dtype(x.dtype)
    f64 = acc_dtype == torch.float64
    y = torch.empty_like(x)
    mean = torch.empty((B, num_groups), dtype=acc_dtype, device=x.device)
    rstd = torch.empty_like(mean)
    if y.numel() == 0:  # groups of no elements: mean 0 and variance 0, as the C++ ops compute them
        return y, mean.zero_(), rstd.fill_(1 / math.sqrt(eps) if eps > 0 else math.inf)
    opt = [x if t is None else t for t in (weight, bias, gamma, beta, scale, shift)]
    flags = _flags(weight, bias, gamma, beta, scale, shift)
    if _fused(B * num_groups, cg, hw, x.device, _MAX_FUSED):
        cblock, hblock = _fused_blocks(cg, hw)
        wrap_triton(_fused_fwd_kernel)[(B * num_groups,)](x, y, mean, rstd, *opt, C, cg, hw, eps, **flags, SILU=silu,
                                                          F64=f64, CBLOCK=cblock, HBLOCK=hblock,
                                                          num_warps=max(1, min(16, cblock * hblock // 512)))
        return y, mean, rstd
    block, chunk, nch = _plan(rows, hw, x.device)
    npart = rows * nch
    part = torch.empty((3, npart), dtype=acc_dtype, device=x.device)
    wrap_triton(_stats_kernel)[(npart,)](x, part, hw, chunk, nch, npart, F64=f64, BLOCK=block,
                                        num_warps=_warps(block))
    p = cg * nch
    wrap_triton(_combine_kernel)[(B * num_groups,)](part, mean, rstd, p, npart, eps, F64=f64,
                                                    PBLOCK=min(triton.next_power_of_2(p), _MAX_TILE))
    wrap_triton(_fwd_apply_kernel)[(npart,)](x, y, mean, rstd, *opt, C, cg, hw, chunk, nch, **flags, SILU=silu,
                                            F64=f64, BLOCK=block, num_warps=_warps(block))
    return y, mean, rstd


def _weight_sums(rsum, dweight, dbias, B, C, flags, f64, x) -> None:
    """dweight, dbias (when the inputs were given) from the per-row sums in rsum."""
    if not (flags["HAS_W"] or flags["HAS_B"]):
        return
    cblock = min(triton.next_power_of_2(C), max(1, _MAX_TILE // 4))
    wrap_triton(_bwd_wsum_kernel)[(triton.cdiv(C, cblock),)](
        rsum, dweight if flags["HAS_W"] else x, dbias if flags["HAS_B"] else x, B, C, B * C,
        HAS_W=flags["HAS_W"], HAS_B=flags["HAS_B"], F64=f64,
        BBLOCK=max(1, min(triton.next_power_of_2(B), _MAX_TILE // cblock)), CBLOCK=cblock)


@triton_op("mcvd::spatin_norm_bwd_triton", mutates_args=())
def bwd(grad_y: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, num_groups: int,
        weight: torch.Tensor | None, bias: torch.Tensor | None, gamma: torch.Tensor | None,
        beta: torch.Tensor | None, scale: torch.Tensor | None, shift: torch.Tensor | None,
        silu: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                             torch.Tensor]:
    """Gradients (dx, dweight, dbias, dgamma, dbeta, dscale, dshift), each shaped
    like its input; an empty [0] tensor where the input was None."""
    _checks.run(checks, "spatin_norm", "bwd", grad_y, x, mean, rstd, num_groups, weight, bias, gamma, beta, scale,
                shift, silu)
    grad_y, x, mean, rstd, weight, bias, gamma, beta, scale, shift = _contiguous(
        grad_y, x, mean, rstd, weight, bias, gamma, beta, scale, shift)
    # Block sizes are compile-time constants computed from the sizes, so a
    # dynamic-shape trace specializes them here.
    B, C, H, W = (int(n) for n in x.shape)
    hw, rows, cg = H * W, B * C, C // num_groups
    f64 = stat_dtype(x.dtype) == torch.float64
    acc_dtype = mean.dtype
    grads = [torch.empty_like(x)] + [x.new_empty((0,)) if t is None else torch.empty_like(t)
                                     for t in (weight, bias, gamma, beta, scale, shift)]
    dx, dweight, dbias, dgamma, dbeta, dscale, dshift = grads
    if x.numel() == 0:
        return tuple(g.zero_() for g in grads)
    flags = _flags(weight, bias, gamma, beta, scale, shift)
    opt = [x if t is None else t for t in (weight, bias, gamma, beta, scale, shift)]
    rsum = torch.empty((2, rows), dtype=acc_dtype, device=x.device)
    if _fused(B * num_groups, cg, hw, x.device, _MAX_FUSED_BWD):
        cblock, hblock = _fused_blocks(cg, hw)
        wrap_triton(_fused_bwd_kernel)[(B * num_groups,)](
            grad_y, x, mean, rstd, *opt, dscale if scale is not None else x, dshift if shift is not None else x,
            rsum, dx, dgamma if gamma is not None else x, dbeta if beta is not None else x, C, cg, hw, rows, **flags,
            SILU=silu, F64=f64, CBLOCK=cblock, HBLOCK=hblock, num_warps=max(1, min(32, cblock * hblock // 256)))
        _weight_sums(rsum, dweight, dbias, B, C, flags, f64, x)
        return dx, dweight, dbias, dgamma, dbeta, dscale, dshift
    block, chunk, nch = _plan(rows, hw, x.device)
    npart = rows * nch
    part = torch.empty((4, npart), dtype=acc_dtype, device=x.device)
    wrap_triton(_bwd_reduce_kernel)[(npart,)](grad_y, x, mean, rstd, *opt, part, C, cg, hw, chunk, nch, npart,
                                             **flags, SILU=silu, F64=f64, BLOCK=block, num_warps=_warps(block))
    gmean = torch.empty((2, B * num_groups), dtype=acc_dtype, device=x.device)
    cblock = min(triton.next_power_of_2(cg), _MAX_TILE)
    hblock = max(1, min(triton.next_power_of_2(nch), _MAX_TILE // cblock))
    wrap_triton(_bwd_finalize_kernel)[(B * num_groups,)](
        part, opt[0], dscale if scale is not None else x, dshift if shift is not None else x, rsum, gmean,
        C, cg, hw, nch, npart, rows, B * num_groups, HAS_W=flags["HAS_W"], HAS_SCALE=flags["HAS_SCALE"],
        HAS_SHIFT=flags["HAS_SHIFT"], F64=f64, CBLOCK=cblock, HBLOCK=hblock)
    _weight_sums(rsum, dweight, dbias, B, C, flags, f64, x)
    wrap_triton(_bwd_apply_kernel)[(npart,)](
        grad_y, x, mean, rstd, *opt, gmean, dx, dgamma if gamma is not None else x, dbeta if beta is not None else x,
        C, cg, hw, chunk, nch, B * num_groups, **flags, SILU=silu, F64=f64, BLOCK=block, num_warps=_warps(block))
    return dx, dweight, dbias, dgamma, dbeta, dscale, dshift
