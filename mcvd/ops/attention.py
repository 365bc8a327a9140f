"""Softmax attention over the N spatial positions of a feature map.

    out = softmax(scale * q k^T) v,    q, k, v: [B, heads, N, D]

The fused backends never hold the N x N matrix in memory: they stream key
blocks with an online softmax and keep the per-row log-sum-exp (lse) for the
backward, which recomputes the probabilities block by block.
"""
from __future__ import annotations

import torch

from mcvd.kernels._dtypes import stat_dtype

from . import _backend, _triton
from ._checks import (check_dtype, check_finite, check_float, check_like, check_rank, check_same_device, check_shape,
                      describe, is_real, shape_str)


def _check(q, k, v, scale) -> None:
    """The checks of csrc/op_checks.h's check_attention_args, in its order;
    then scale, which only this layer sees as None or of another type."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a tensor, got {type(t).__name__}")
    check_rank(q, "q", 4, "[B, heads, N, D]")
    check_float(q, "q")
    if q.shape[-1] < 1:
        raise ValueError(f"q: expected a head size D >= 1 in [B, heads, N, D], got shape {shape_str(q.shape)}")
    check_like(k, "k", q, "q", q.shape)
    check_like(v, "v", q, "q", q.shape)
    if scale is not None:
        if not is_real(scale):
            raise TypeError(f"scale: expected a finite float or None, got {describe(scale)}")
        check_finite(scale, "scale")


def _check_bwd(grad_out, q, k, v, out, lse, scale) -> None:
    """csrc/op_checks.h's check_attention_bwd_args, in its order."""
    _check(q, k, v, scale)
    check_like(grad_out, "grad_out", q, "q", q.shape)
    check_like(out, "out", q, "q", q.shape)
    check_same_device(lse, "lse", q, "q")
    check_dtype(lse, "lse", stat_dtype(q.dtype), "float64 for float64 q, else float32")
    check_shape(lse, "lse", q.shape[:3])


def attention_ref(q, k, v, *, scale=None, upcast=False):
    """einsum-softmax-einsum reference; `upcast=True` computes in float32."""
    dtype = q.dtype
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if upcast and dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    logits = torch.einsum("bhnd,bhmd->bhnm", q, k) * scale
    p = torch.softmax(logits, dim=-1)
    return torch.einsum("bhnm,bhmd->bhnd", p, v).to(dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
              backend: str | None = None) -> torch.Tensor:
    """Fused multi-head softmax attention.

    Args:
        q, k, v: [B, heads, N, D], one float dtype and device.
        scale: logit scale, a finite float; default D ** -0.5.
        backend: None (auto), "reference", "cpu", "cuda" or "triton". Auto on a
            GPU gives float32 inputs to the reference (faster there than the
            fused float32 kernels; it holds the N x N logits), whose einsums
            follow autocast where it is on; the fused ops compute in q's dtype.
    Returns:
        out: [B, heads, N, D], q's dtype.
    """
    _check(q, k, v, scale)
    scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
    name = _backend.resolve("attention", q.device, backend, q.dtype)
    if name == "reference":
        return attention_ref(q, k, v, scale=scale)
    op = torch.ops.mcvd.attention_fwd if name in ("cpu", "cuda") else triton_kernels().fwd
    out, _ = op(q, k, v, scale)
    return out


# --- torch.library registrations. The C++ ops' autograd is registered in C++
# (csrc/autograd.cpp's Attention; see mcvd/ops/__init__.py for why), their
# fake implementations here; the Triton ops' autograd here, when they load.


# The kernels read their inputs through .contiguous() and return contiguous
# tensors whatever the inputs' strides (AttnBlock passes q, k, v as permuted
# views of one qkv buffer), so the fakes do too: a fake strided like q would
# make inductor index the real output wrongly (or fail its stride assert).


@torch.library.register_fake("mcvd::attention_fwd")
def _fwd_fake(q, k, v, scale):
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    return out, q.new_empty(q.shape[:-1], dtype=stat_dtype(q.dtype))


@torch.library.register_fake("mcvd::attention_bwd")
def _bwd_fake(grad_out, q, k, v, out, lse, scale):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def triton_kernels():
    """kernels/attention.py, its Triton ops registered below (imported on first use)."""
    return _triton.load("attention", _register_triton)


def _register_triton(kernels) -> None:
    """Autograd of mcvd::attention_fwd_triton (backward: mcvd::attention_bwd_triton,
    the schema of mcvd::attention_bwd), and the first-order guard on the backward."""
    torch.library.register_autograd("mcvd::attention_fwd_triton", _make_backward(kernels.bwd),
                                    setup_context=_setup_context)
    kernels.checks.update(fwd=_check, bwd=_check_bwd)
    _triton.first_order_only("mcvd::attention_bwd_triton")


def _setup_context(ctx, inputs, output):
    """Saves what csrc/autograd.cpp's Attention saves."""
    q, k, v, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)


def _make_backward(bwd_op):
    """The formula of csrc/autograd.cpp's Attention, over `bwd_op`."""

    def backward(ctx, grad_out, _grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = bwd_op(grad_out.contiguous(), q, k, v, out, lse, ctx.scale)
        return dq, dk, dv, None

    return backward
