"""Triton kernels of mcvd::attention_fwd and mcvd::attention_bwd (flash attention).

    out = softmax(scale * q k^T) v,    q, k, v: [B, heads, N, D]

Forward: one program per (batch * head, block of BLOCK_M queries) streams the
keys in blocks of BLOCK_N with an online softmax (running max m and sum l,
rescaling the accumulator when m grows) and stores out and the row
log-sum-exp lse = m + log(l). The N x N matrix exists only block by block.

Backward, with P = exp(scale * q k^T - lse) recomputed block by block and
Delta = rowsum(dO * O):
    dV = P^T dO,   dS = P * (dO V^T - Delta),   dK = scale * dS^T Q,   dQ = scale * dS K
_bwd_delta_kernel computes Delta, _bwd_dkdv_kernel runs over key blocks
(looping over queries) and _bwd_dq_kernel over query blocks (looping over
keys), so every output block has one writer and no atomics are needed.

Head dims that are not a power of two (or below 16, the smallest tl.dot) are
padded to DP with masked loads; any N is masked. Masks are compiled out where
the sizes allow (EVEN_N: N a multiple of every block size the autotuner may
pick; EVEN_D: D = DP), and the head dim is read with unit stride (the
launcher copies q, k, v whose last dim is strided), so that tiles load as
16-byte vectors and the loads pipeline into shared memory. q, k, v may
otherwise have any strides; out, lse and the gradients are contiguous. The
forward works in base 2 (exp2 of logits scaled by scale * log2(e)), one
multiply per logit fewer than exp. Products accumulate in float32 (float64
for float64 input), float32 products run in IEEE precision rather than TF32.
scale arrives as two float32 numbers whose sum is the float64 scale
(_split_scale), converted to the accumulation dtype in the kernel. On a GPU
the block sizes are autotuned per (N, DP, EVEN_D, dtype); under
TRITON_INTERPRET=1 one small configuration runs.

The autograd of these Triton ops is registered by mcvd/ops/attention.py,
which imports this module; this module imports nothing from mcvd.
"""
import math
import os
import struct

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from . import _checks
from ._dtypes import stat_dtype

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _configs(pairs):
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16})]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in pairs]


# (BLOCK_M, BLOCK_N, warps, stages). The large tiles with 8 warps are those of
# Triton's flash-attention tutorial on Hopper; the small ones serve short N.
_FWD_CONFIGS = _configs([(128, 128, 8, 3), (128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 4), (64, 32, 4, 2),
                         (32, 32, 4, 1)])
_BWD_CONFIGS = _configs([(64, 128, 8, 3), (64, 64, 4, 3), (32, 64, 4, 3), (64, 32, 4, 3), (32, 32, 4, 2),
                         (16, 32, 4, 1)])
# The largest block of any configuration (all are powers of two): when N is a
# multiple of it, no row or key of any configuration needs a mask (EVEN_N).
# Set by the launcher rather than by @triton.heuristics, which torch.compile
# accepts under @triton.autotune only from torch 2.7.
_EVEN_BLOCK = max(max(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in _FWD_CONFIGS + _BWD_CONFIGS)


@triton.jit
def _tile(base, offs_r, offs_d, stride_r, N, D, MASK_R: tl.constexpr, MASK_D: tl.constexpr):
    """[len(offs_r), len(offs_d)] tile of rows offs_r (the last dim contiguous),
    zero outside N x D; each mask only where asked for."""
    ptr = base + offs_r[:, None] * stride_r + offs_d[None, :]
    if MASK_R and MASK_D:
        out = tl.load(ptr, mask=(offs_r < N)[:, None] & (offs_d < D)[None, :], other=0)
    elif MASK_R:
        out = tl.load(ptr, mask=(offs_r < N)[:, None], other=0)
    elif MASK_D:
        out = tl.load(ptr, mask=(offs_d < D)[None, :], other=0)
    else:
        out = tl.load(ptr)
    return out


@triton.jit
def _store_tile(base, offs_r, offs_d, N, D, value, MASK_R: tl.constexpr, MASK_D: tl.constexpr):
    """Store value at rows offs_r of a contiguous [N, D] array (masks as _tile)."""
    ptr = base + offs_r[:, None] * D + offs_d[None, :]
    value = value.to(base.dtype.element_ty)
    if MASK_R and MASK_D:
        tl.store(ptr, value, mask=(offs_r < N)[:, None] & (offs_d < D)[None, :])
    elif MASK_R:
        tl.store(ptr, value, mask=(offs_r < N)[:, None])
    elif MASK_D:
        tl.store(ptr, value, mask=(offs_d < D)[None, :])
    else:
        tl.store(ptr, value)


@triton.autotune(configs=_FWD_CONFIGS, key=["N", "DP", "EVEN_D"])
@triton.jit
def _fwd_kernel(
    Q, K, V,  # [B, H, N, D], unit stride in D
    OUT,      # [B, H, N, D] out, contiguous
    LSE,      # [B, H, N] out: log-sum-exp of the scaled logits of each row
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn,
    H, N, D, scale_hi, scale_lo,
    DP: tl.constexpr, EVEN_D: tl.constexpr, EVEN_N: tl.constexpr, F64: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    num_m = tl.cdiv(N, BLOCK_M)
    bh = (pid // num_m).to(tl.int64)
    b, h = bh // H, bh % H
    offs_m = (pid % num_m) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, DP)
    acc_ty = tl.float64 if F64 else tl.float32
    # Logits in base 2: s2 = scale * log2(e) * q k^T, p = exp2(s2 - max).
    scale = tl.cast(scale_hi, acc_ty) + tl.cast(scale_lo, acc_ty)  # see _split_scale
    scale2 = scale * 1.4426950408889634
    q = _tile(Q + b * sqb + h * sqh, offs_m, offs_d, sqn, N, D, not EVEN_N, not EVEN_D)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    m_i = tl.full([BLOCK_M], float("-inf"), acc_ty)
    l_i = tl.zeros([BLOCK_M], acc_ty)
    acc = tl.zeros([BLOCK_M, DP], acc_ty)
    for start_n in range(0, N, BLOCK_N):
        cols = start_n + offs_n
        k = _tile(k_base, cols, offs_d, skn, N, D, not EVEN_N, not EVEN_D)
        v = _tile(v_base, cols, offs_d, svn, N, D, not EVEN_N, not EVEN_D)
        s = tl.dot(q, tl.trans(k), input_precision=PREC, out_dtype=acc_ty) * scale2
        if not EVEN_N:
            s = tl.where((cols < N)[None, :], s, float("-inf"))
        # Every row sees at least one real key in the first block, so m_new
        # is finite from then on and alpha = exp2(-inf) = 0 at the first step.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PREC, out_dtype=acc_ty)
        m_i = m_new
    _store_tile(OUT + bh * N * D, offs_m, offs_d, N, D, acc / l_i[:, None], not EVEN_N, not EVEN_D)
    # lse in natural-log units: (m + log2 l) * ln 2.
    lse = (m_i + tl.log2(l_i)) * 0.6931471805599453
    tl.store(LSE + bh * N + offs_m, lse.to(LSE.dtype.element_ty), mask=offs_m < N)


@triton.jit
def _bwd_delta_kernel(
    OUT,    # [R, D] forward output rows, R = B * H * N
    DOUT,   # [R, D] its gradient
    DELTA,  # [R] out: rowsum(dO * O)
    R, D,
    DP: tl.constexpr, EVEN_D: tl.constexpr, F64: tl.constexpr, BLOCK_R: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, DP)
    acc_ty = tl.float64 if F64 else tl.float32
    o = _tile(OUT, rows, offs_d, D, R, D, True, not EVEN_D).to(acc_ty)
    do = _tile(DOUT, rows, offs_d, D, R, D, True, not EVEN_D).to(acc_ty)
    tl.store(DELTA + rows, tl.sum(o * do, 1), mask=rows < R)


@triton.jit
def _probs(q, k, lse, rows, cols, N, scale, PREC: tl.constexpr, EVEN_N: tl.constexpr):
    """P = exp(scale * q k^T - lse) for [rows, cols], 0 outside N x N."""
    s = tl.dot(q, tl.trans(k), input_precision=PREC, out_dtype=lse.dtype) * scale
    p = tl.exp(s - lse[:, None])
    if not EVEN_N:
        p = tl.where((rows < N)[:, None] & (cols < N)[None, :], p, 0)
    return p


@triton.autotune(configs=_BWD_CONFIGS, key=["N", "DP", "EVEN_D"])
@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V,   # [B, H, N, D], unit stride in D
    DOUT,      # [B, H, N, D] contiguous
    LSE,       # [B, H, N]
    DELTA,     # [B, H, N]
    DK, DV,    # [B, H, N, D] out, contiguous
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn,
    H, N, D, scale_hi, scale_lo,
    DP: tl.constexpr, EVEN_D: tl.constexpr, EVEN_N: tl.constexpr, F64: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    bh = (pid // num_n).to(tl.int64)
    b, h = bh // H, bh % H
    cols = (pid % num_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, DP)
    acc_ty = tl.float64 if F64 else tl.float32
    scale = tl.cast(scale_hi, acc_ty) + tl.cast(scale_lo, acc_ty)  # see _split_scale
    k = _tile(K + b * skb + h * skh, cols, offs_d, skn, N, D, not EVEN_N, not EVEN_D)
    v = _tile(V + b * svb + h * svh, cols, offs_d, svn, N, D, not EVEN_N, not EVEN_D)
    q_base = Q + b * sqb + h * sqh
    do_base = DOUT + bh * N * D
    dk = tl.zeros([BLOCK_N, DP], acc_ty)
    dv = tl.zeros([BLOCK_N, DP], acc_ty)
    for start_m in range(0, N, BLOCK_M):
        rows = start_m + offs_m
        q = _tile(q_base, rows, offs_d, sqn, N, D, not EVEN_N, not EVEN_D)
        do = _tile(do_base, rows, offs_d, D, N, D, not EVEN_N, not EVEN_D)
        lse = tl.load(LSE + bh * N + rows, mask=rows < N, other=0)
        delta = tl.load(DELTA + bh * N + rows, mask=rows < N, other=0)
        p = _probs(q, k, lse, rows, cols, N, scale, PREC, EVEN_N)
        dv = tl.dot(tl.trans(p.to(do.dtype)), do, dv, input_precision=PREC, out_dtype=acc_ty)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC, out_dtype=acc_ty)
        ds = p * (dp - delta[:, None])
        dk = tl.dot(tl.trans(ds.to(q.dtype)), q, dk, input_precision=PREC, out_dtype=acc_ty)
    _store_tile(DK + bh * N * D, cols, offs_d, N, D, dk * scale, not EVEN_N, not EVEN_D)
    _store_tile(DV + bh * N * D, cols, offs_d, N, D, dv, not EVEN_N, not EVEN_D)


@triton.autotune(configs=_BWD_CONFIGS, key=["N", "DP", "EVEN_D"])
@triton.jit
def _bwd_dq_kernel(
    Q, K, V,   # [B, H, N, D], unit stride in D
    DOUT,      # [B, H, N, D] contiguous
    LSE,       # [B, H, N]
    DELTA,     # [B, H, N]
    DQ,        # [B, H, N, D] out, contiguous
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn,
    H, N, D, scale_hi, scale_lo,
    DP: tl.constexpr, EVEN_D: tl.constexpr, EVEN_N: tl.constexpr, F64: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    num_m = tl.cdiv(N, BLOCK_M)
    bh = (pid // num_m).to(tl.int64)
    b, h = bh // H, bh % H
    rows = (pid % num_m) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, DP)
    acc_ty = tl.float64 if F64 else tl.float32
    scale = tl.cast(scale_hi, acc_ty) + tl.cast(scale_lo, acc_ty)  # see _split_scale
    q = _tile(Q + b * sqb + h * sqh, rows, offs_d, sqn, N, D, not EVEN_N, not EVEN_D)
    do = _tile(DOUT + bh * N * D, rows, offs_d, D, N, D, not EVEN_N, not EVEN_D)
    lse = tl.load(LSE + bh * N + rows, mask=rows < N, other=0)
    delta = tl.load(DELTA + bh * N + rows, mask=rows < N, other=0)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    dq = tl.zeros([BLOCK_M, DP], acc_ty)
    for start_n in range(0, N, BLOCK_N):
        cols = start_n + offs_n
        k = _tile(k_base, cols, offs_d, skn, N, D, not EVEN_N, not EVEN_D)
        v = _tile(v_base, cols, offs_d, svn, N, D, not EVEN_N, not EVEN_D)
        p = _probs(q, k, lse, rows, cols, N, scale, PREC, EVEN_N)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC, out_dtype=acc_ty)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PREC, out_dtype=acc_ty)
    _store_tile(DQ + bh * N * D, rows, offs_d, N, D, dq * scale, not EVEN_N, not EVEN_D)


# --- launchers ----------------------------------------------------------------

def _meta(q: torch.Tensor) -> dict:
    """Compile-time arguments shared by every kernel of one call."""
    f64 = stat_dtype(q.dtype) == torch.float64  # the kernels' accumulation dtype
    # 32-bit and 64-bit products stay exact; 16-bit ones run on tensor cores anyway.
    prec = "ieee" if q.dtype in (torch.float32, torch.float64) else "tf32"
    dp = max(16, triton.next_power_of_2(q.shape[-1]))
    return {"DP": dp, "EVEN_D": dp == q.shape[-1], "EVEN_N": q.shape[-2] % _EVEN_BLOCK == 0, "F64": f64,
            "PREC": prec}


def _unit_last(*ts: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor with stride 1 in its last dim (copied only if it is not)."""
    return [t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous() for t in ts]


def _strides(*ts: torch.Tensor) -> list[int]:
    """(batch, head, row) strides of each [B, H, N, D] tensor."""
    return [n for t in ts for n in t.stride()[:3]]


def _split_scale(scale: float) -> tuple[float, float]:
    """(hi, lo), float32 numbers with hi + lo = scale to ~2**-48 relative.

    A Python float reaches a Triton kernel as a float32 scalar, which would
    round float64 attention's logits at 1e-8; code generated by inductor
    passes float64 scalars instead, so the kernels convert both parts to
    their accumulation dtype. A symbolic scale is passed as it is."""
    if not isinstance(scale, float) or not math.isfinite(scale) or abs(scale) > 3e38:
        return scale, 0.0
    def f32(x: float) -> float:
        return struct.unpack("f", struct.pack("f", x))[0]

    hi = f32(scale)
    return hi, f32(scale - hi)


# The C++ ops' argument checks, {"fwd": ..., "bwd": ...}, set by mcvd.ops (_checks.run).
checks = {}


@triton_op("mcvd::attention_fwd_triton", mutates_args=())
def fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, v: [B, heads, N, D], one float dtype. Returns out: [B, heads, N, D]
    (q's dtype, contiguous) and lse: [B, heads, N] float32 (float64 for float64 q)."""
    _checks.run(checks, "attention", "fwd", q, k, v, scale)
    B, H, N, D = q.shape
    out = torch.empty((B, H, N, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, N), dtype=stat_dtype(q.dtype), device=q.device)
    if lse.numel() == 0:
        return out, lse
    q, k, v = _unit_last(q, k, v)

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_M"]) * B * H,)

    wrap_triton(_fwd_kernel)[grid](q, k, v, out, lse, *_strides(q, k, v), H, N, D, *_split_scale(scale),
                                   **_meta(q))
    return out, lse


@triton_op("mcvd::attention_bwd_triton", mutates_args=())
def bwd(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
        lse: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) of attention_fwd, [B, heads, N, D] contiguous."""
    _checks.run(checks, "attention", "bwd", grad_out, q, k, v, out, lse, scale)
    B, H, N, D = q.shape
    grad_out, out, lse = grad_out.contiguous(), out.contiguous(), lse.contiguous()
    dq, dk, dv = (torch.empty((B, H, N, D), dtype=q.dtype, device=q.device) for _ in range(3))
    if lse.numel() == 0:
        return dq, dk, dv
    meta = _meta(q)
    q, k, v = _unit_last(q, k, v)
    delta = torch.empty_like(lse)
    block_r = max(1, 4096 // meta["DP"])
    wrap_triton(_bwd_delta_kernel)[(triton.cdiv(B * H * N, block_r),)](
        out, grad_out, delta, B * H * N, D, DP=meta["DP"], EVEN_D=meta["EVEN_D"], F64=meta["F64"], BLOCK_R=block_r)
    strides = _strides(q, k, v)

    def grid_n(meta):
        return (triton.cdiv(N, meta["BLOCK_N"]) * B * H,)

    def grid_m(meta):
        return (triton.cdiv(N, meta["BLOCK_M"]) * B * H,)

    scales = _split_scale(scale)
    wrap_triton(_bwd_dkdv_kernel)[grid_n](q, k, v, grad_out, lse, delta, dk, dv, *strides, H, N, D, *scales, **meta)
    wrap_triton(_bwd_dq_kernel)[grid_m](q, k, v, grad_out, lse, delta, dq, *strides, H, N, D, *scales, **meta)
    return dq, dk, dv
