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

The autograd of these Triton ops is registered by mcvd/ops/spatin_norm.py,
which imports this module; this module imports nothing from mcvd.
"""
import functools

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ._dtypes import stat_dtype

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


@triton.jit
def _chain(x, mean, rstd, w, bias, gamma, beta, scale, shift):
    xhat = (x - mean) * rstd
    h1 = xhat * w + bias
    h2 = h1 * (1 + gamma) + beta
    h3 = h2 * (1 + scale) + shift
    return xhat, h1, h2, h3


@triton.jit
def _dchain(dy, h3, gamma, scale, SILU: tl.constexpr):
    dh3 = dy
    if SILU:
        s = tl.sigmoid(h3)
        dh3 = dy * s * (1 + h3 * (1 - s))
    dh2 = dh3 * (1 + scale)
    dh1 = dh2 * (1 + gamma)
    return dh3, dh2, dh1


@triton.jit
def _load_or(ptr, offs, mask, value, HAS: tl.constexpr, F64: tl.constexpr):
    """ptr[offs] in the accumulation dtype, or `value` when the tensor is absent."""
    out = value
    if HAS:
        out = tl.load(ptr + offs, mask=mask, other=0).to(tl.float64 if F64 else tl.float32)
    return out


@triton.jit
def _column_or(ptr, idx, mask, value, HAS: tl.constexpr, F64: tl.constexpr):
    """ptr[idx] as a [len(idx), 1] column in the accumulation dtype, or `value`."""
    out = value
    if HAS:
        out = tl.load(ptr + idx, mask=mask, other=0).to(tl.float64 if F64 else tl.float32)[:, None]
    return out


@triton.jit
def _scalar_or(ptr, idx, value, HAS: tl.constexpr, F64: tl.constexpr):
    out = value
    if HAS:
        out = tl.load(ptr + idx).to(tl.float64 if F64 else tl.float32)
    return out


@triton.jit
def _row_params(MEAN, RSTD, W, BIAS, SCALE, SHIFT, row, C, CG,
                HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
                F64: tl.constexpr):
    """The per-row scalars of row = b * C + c; its group b * G + c // CG is row // CG."""
    c = row % C
    grp = row // CG
    mean = tl.load(MEAN + grp)
    rstd = tl.load(RSTD + grp)
    w = _scalar_or(W, c, 1.0, HAS_W, F64)
    bias = _scalar_or(BIAS, c, 0.0, HAS_B, F64)
    scale = _scalar_or(SCALE, row, 0.0, HAS_SCALE, F64)
    shift = _scalar_or(SHIFT, row, 0.0, HAS_SHIFT, F64)
    return grp, mean, rstd, w, bias, scale, shift


@triton.jit
def _stats_kernel(
    X,     # [B*C, HW] input rows
    PART,  # [3, NPART] out: count, mean, M2 of each (row, chunk), NPART = B*C*NCH
    HW, CHUNK, NCH, NPART,
    F64: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    row = pid // NCH
    start = (pid % NCH) * CHUNK
    end = tl.minimum(start + CHUNK, HW)
    base = X + row.to(tl.int64) * HW
    acc_ty = tl.float64 if F64 else tl.float32
    # Welford per lane, merged across lanes at the end: no cancellation when
    # the mean is large against the spread.
    cnt = tl.zeros([BLOCK], acc_ty)
    mean = tl.zeros([BLOCK], acc_ty)
    m2 = tl.zeros([BLOCK], acc_ty)
    for off in range(start, end, BLOCK):
        idx = off + tl.arange(0, BLOCK)
        mask = idx < end
        x = tl.load(base + idx, mask=mask, other=0).to(acc_ty)
        cnt += mask.to(acc_ty)
        delta = x - mean
        mean += tl.where(mask, delta / tl.maximum(cnt, 1), 0)
        m2 += tl.where(mask, delta * (x - mean), 0)
    n = tl.sum(cnt, 0)
    mean_all = tl.sum(cnt * mean, 0) / n
    dev = mean - mean_all
    m2_all = tl.sum(m2 + cnt * dev * dev, 0)
    tl.store(PART + pid, n)
    tl.store(PART + NPART + pid, mean_all)
    tl.store(PART + 2 * NPART + pid, m2_all)


@triton.jit
def _combine_kernel(
    PART,  # [3, NPART] count, mean, M2 per (row, chunk); a group's P partials are contiguous
    MEAN,  # [B*G] out
    RSTD,  # [B*G] out
    P, NPART, eps,
    F64: tl.constexpr, PBLOCK: tl.constexpr,
):
    grp = tl.program_id(0)
    acc_ty = tl.float64 if F64 else tl.float32
    cnt = tl.zeros([PBLOCK], acc_ty)
    mean = tl.zeros([PBLOCK], acc_ty)
    m2 = tl.zeros([PBLOCK], acc_ty)
    for off in range(0, P, PBLOCK):
        idx = off + tl.arange(0, PBLOCK)
        mask = idx < P
        ptr = PART + grp * P + idx
        n_b = tl.load(ptr, mask=mask, other=0)
        mean_b = tl.load(ptr + NPART, mask=mask, other=0)
        m2_b = tl.load(ptr + 2 * NPART, mask=mask, other=0)
        # Chan et al.'s pairwise merge of (cnt, mean, m2) with (n_b, mean_b, m2_b).
        total = cnt + n_b
        frac = n_b / tl.maximum(total, 1)
        delta = mean_b - mean
        mean += delta * frac
        m2 += m2_b + delta * delta * cnt * frac
        cnt = total
    n = tl.sum(cnt, 0)
    mean_all = tl.sum(cnt * mean, 0) / n
    dev = mean - mean_all
    var = tl.sum(m2 + cnt * dev * dev, 0) / n
    tl.store(MEAN + grp, mean_all.to(MEAN.dtype.element_ty))
    tl.store(RSTD + grp, (1 / tl.sqrt(var + eps)).to(RSTD.dtype.element_ty))


@triton.jit
def _fwd_apply_kernel(
    X,             # [B*C, HW] input rows
    Y,             # [B*C, HW] out
    MEAN, RSTD,    # [B*G] group statistics
    W, BIAS,       # [C] per-channel affine
    GAMMA, BETA,   # [B*C, HW] SPATIN maps
    SCALE, SHIFT,  # [B*C] time-embedding modulation
    C, CG, HW, CHUNK, NCH,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_GAMMA: tl.constexpr, HAS_BETA: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr, F64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    row = pid // NCH
    start = (pid % NCH) * CHUNK
    end = tl.minimum(start + CHUNK, HW)
    _grp, mean, rstd, w, bias, scale, shift = _row_params(MEAN, RSTD, W, BIAS, SCALE, SHIFT, row, C, CG, HAS_W,
                                                         HAS_B, HAS_SCALE, HAS_SHIFT, F64)
    base = row.to(tl.int64) * HW
    for off in range(start, end, BLOCK):
        idx = base + off + tl.arange(0, BLOCK)
        mask = off + tl.arange(0, BLOCK) < end
        x = tl.load(X + idx, mask=mask, other=0).to(mean.dtype)
        gamma = _load_or(GAMMA, idx, mask, 0.0, HAS_GAMMA, F64)
        beta = _load_or(BETA, idx, mask, 0.0, HAS_BETA, F64)
        _xhat, _h1, _h2, h3 = _chain(x, mean, rstd, w, bias, gamma, beta, scale, shift)
        if SILU:
            h3 = h3 * tl.sigmoid(h3)
        tl.store(Y + idx, h3.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _group_tile(grp, CG, HW, CBLOCK: tl.constexpr, HBLOCK: tl.constexpr):
    """Group grp of the [B*G, CG, HW] layout as a [CBLOCK, HBLOCK] tile:
    (channel offsets cc, their mask, the element mask, element indices)."""
    cc = tl.arange(0, CBLOCK)
    cmask = cc < CG
    mask = cmask[:, None] & (tl.arange(0, HBLOCK) < HW)[None, :]
    idx = grp.to(tl.int64) * CG * HW + cc[:, None] * HW + tl.arange(0, HBLOCK)[None, :]
    return cc, cmask, mask, idx


@triton.jit
def _row_columns(W, BIAS, SCALE, SHIFT, row, C, cmask, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                 HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, F64: tl.constexpr):
    """w, bias, scale, shift of the rows b * C + c as [len(row), 1] columns: one load per channel."""
    w = _column_or(W, row % C, cmask, 1.0, HAS_W, F64)
    bias = _column_or(BIAS, row % C, cmask, 0.0, HAS_B, F64)
    scale = _column_or(SCALE, row, cmask, 0.0, HAS_SCALE, F64)
    shift = _column_or(SHIFT, row, cmask, 0.0, HAS_SHIFT, F64)
    return w, bias, scale, shift


@triton.jit
def _fused_fwd_kernel(
    X,             # [B*G, CG, HW] input groups (a group's channels are contiguous)
    Y,             # [B*G, CG, HW] out
    MEAN, RSTD,    # [B*G] out: group statistics
    W, BIAS,       # [C] per-channel affine
    GAMMA, BETA,   # [B*G, CG, HW] SPATIN maps
    SCALE, SHIFT,  # [B*C] time-embedding modulation
    C, CG, HW, eps,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_GAMMA: tl.constexpr, HAS_BETA: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr, F64: tl.constexpr,
    CBLOCK: tl.constexpr, HBLOCK: tl.constexpr,
):
    grp = tl.program_id(0)
    acc_ty = tl.float64 if F64 else tl.float32
    cc, cmask, mask, idx = _group_tile(grp, CG, HW, CBLOCK, HBLOCK)
    x = tl.load(X + idx, mask=mask, other=0).to(acc_ty)
    n = CG * HW
    mean = tl.sum(tl.sum(x, 1), 0) / n
    dev = tl.where(mask, x - mean, 0)
    rstd = 1 / tl.sqrt(tl.sum(tl.sum(dev * dev, 1), 0) / n + eps)
    tl.store(MEAN + grp, mean.to(MEAN.dtype.element_ty))
    tl.store(RSTD + grp, rstd.to(RSTD.dtype.element_ty))
    row = grp * CG + cc  # b * C + c
    w, bias, scale, shift = _row_columns(W, BIAS, SCALE, SHIFT, row, C, cmask, HAS_W, HAS_B, HAS_SCALE, HAS_SHIFT,
                                         F64)
    gamma = _load_or(GAMMA, idx, mask, 0.0, HAS_GAMMA, F64)
    beta = _load_or(BETA, idx, mask, 0.0, HAS_BETA, F64)
    _xhat, _h1, _h2, h3 = _chain(x, mean, rstd, w, bias, gamma, beta, scale, shift)
    if SILU:
        h3 = h3 * tl.sigmoid(h3)
    tl.store(Y + idx, h3.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _fused_bwd_kernel(
    DY,            # [B*G, CG, HW] gradient of y
    X,             # [B*G, CG, HW] input groups
    MEAN, RSTD,    # [B*G] group statistics
    W, BIAS,       # [C]
    GAMMA, BETA,   # [B*G, CG, HW]
    SCALE, SHIFT,  # [B*C]
    DSCALE,        # [B*C] out: sum dh3 * h2 per row
    DSHIFT,        # [B*C] out: sum dh3 per row
    RSUM,          # [2, B*C] out: sums of dh1 and dh1 * xhat per row (for dweight, dbias)
    DX,            # [B*G, CG, HW] out
    DGAMMA, DBETA, # [B*G, CG, HW] out
    C, CG, HW, NROWS,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_GAMMA: tl.constexpr, HAS_BETA: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr, F64: tl.constexpr,
    CBLOCK: tl.constexpr, HBLOCK: tl.constexpr,
):
    grp = tl.program_id(0)
    acc_ty = tl.float64 if F64 else tl.float32
    cc, cmask, mask, idx = _group_tile(grp, CG, HW, CBLOCK, HBLOCK)
    x = tl.load(X + idx, mask=mask, other=0).to(acc_ty)
    # dy = 0 off the group, so every sum below gets 0 there.
    dy = tl.load(DY + idx, mask=mask, other=0).to(acc_ty)
    mean = tl.load(MEAN + grp)
    rstd = tl.load(RSTD + grp)
    row = grp * CG + cc  # b * C + c
    w, bias, scale, shift = _row_columns(W, BIAS, SCALE, SHIFT, row, C, cmask, HAS_W, HAS_B, HAS_SCALE, HAS_SHIFT,
                                         F64)
    gamma = _load_or(GAMMA, idx, mask, 0.0, HAS_GAMMA, F64)
    beta = _load_or(BETA, idx, mask, 0.0, HAS_BETA, F64)
    xhat, h1, h2, h3 = _chain(x, mean, rstd, w, bias, gamma, beta, scale, shift)
    dh3, dh2, dh1 = _dchain(dy, h3, gamma, scale, SILU)
    if HAS_SHIFT:
        tl.store(DSHIFT + row, tl.sum(dh3, 1).to(DSHIFT.dtype.element_ty), mask=cmask)
    if HAS_SCALE:
        tl.store(DSCALE + row, tl.sum(dh3 * h2, 1).to(DSCALE.dtype.element_ty), mask=cmask)
    s_dh1 = tl.sum(dh1, 1)
    s_dh1x = tl.sum(dh1 * xhat, 1)
    if HAS_W or HAS_B:
        tl.store(RSUM + row, s_dh1, mask=cmask)
        tl.store(RSUM + NROWS + row, s_dh1x, mask=cmask)
    # The group means of dxhat = dh1 * w and dxhat * xhat (w: 1 or a column).
    n = CG * HW
    m_dx = tl.sum(tl.sum(s_dh1[:, None] * w, 1), 0) / n
    m_dxx = tl.sum(tl.sum(s_dh1x[:, None] * w, 1), 0) / n
    if HAS_GAMMA:
        tl.store(DGAMMA + idx, (dh2 * h1).to(DGAMMA.dtype.element_ty), mask=mask)
    if HAS_BETA:
        tl.store(DBETA + idx, dh2.to(DBETA.dtype.element_ty), mask=mask)
    dx = rstd * (dh1 * w - m_dx - xhat * m_dxx)
    tl.store(DX + idx, dx.to(DX.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_reduce_kernel(
    DY,            # [B*C, HW] gradient of y
    X,             # [B*C, HW] input rows
    MEAN, RSTD,    # [B*G] group statistics
    W, BIAS,       # [C]
    GAMMA, BETA,   # [B*C, HW]
    SCALE, SHIFT,  # [B*C]
    PART,          # [4, NPART] out: sums of dh3, dh3 * h2, dh1, dh1 * xhat per (row, chunk)
    C, CG, HW, CHUNK, NCH, NPART,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_GAMMA: tl.constexpr, HAS_BETA: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr, F64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    row = pid // NCH
    start = (pid % NCH) * CHUNK
    end = tl.minimum(start + CHUNK, HW)
    _grp, mean, rstd, w, bias, scale, shift = _row_params(MEAN, RSTD, W, BIAS, SCALE, SHIFT, row, C, CG, HAS_W,
                                                         HAS_B, HAS_SCALE, HAS_SHIFT, F64)
    base = row.to(tl.int64) * HW
    s_dh3 = tl.zeros([BLOCK], mean.dtype)
    s_dh3h2 = tl.zeros([BLOCK], mean.dtype)
    s_dh1 = tl.zeros([BLOCK], mean.dtype)
    s_dh1x = tl.zeros([BLOCK], mean.dtype)
    for off in range(start, end, BLOCK):
        idx = base + off + tl.arange(0, BLOCK)
        mask = off + tl.arange(0, BLOCK) < end
        x = tl.load(X + idx, mask=mask, other=0).to(mean.dtype)
        # dy = 0 off the row, so every sum below gets 0 there.
        dy = tl.load(DY + idx, mask=mask, other=0).to(mean.dtype)
        gamma = _load_or(GAMMA, idx, mask, 0.0, HAS_GAMMA, F64)
        beta = _load_or(BETA, idx, mask, 0.0, HAS_BETA, F64)
        xhat, _h1, h2, h3 = _chain(x, mean, rstd, w, bias, gamma, beta, scale, shift)
        dh3, _dh2, dh1 = _dchain(dy, h3, gamma, scale, SILU)
        s_dh3 += dh3
        s_dh3h2 += dh3 * h2
        s_dh1 += dh1
        s_dh1x += dh1 * xhat
    tl.store(PART + pid, tl.sum(s_dh3, 0))
    tl.store(PART + NPART + pid, tl.sum(s_dh3h2, 0))
    tl.store(PART + 2 * NPART + pid, tl.sum(s_dh1, 0))
    tl.store(PART + 3 * NPART + pid, tl.sum(s_dh1x, 0))


@triton.jit
def _bwd_finalize_kernel(
    PART,    # [4, NPART] sums per (row, chunk); a group's CG * NCH partials are contiguous
    W,       # [C]
    DSCALE,  # [B*C] out: sum dh3 * h2 per row
    DSHIFT,  # [B*C] out: sum dh3 per row
    RSUM,    # [2, B*C] out: sums of dh1 and dh1 * xhat per row
    GMEAN,   # [2, B*G] out: group means of dxhat and dxhat * xhat
    C, CG, HW, NCH, NPART, NROWS, NGRP,
    HAS_W: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, F64: tl.constexpr,
    CBLOCK: tl.constexpr, HBLOCK: tl.constexpr,
):
    grp = tl.program_id(0)
    acc_ty = tl.float64 if F64 else tl.float32
    g_dx = tl.zeros([CBLOCK], acc_ty)
    g_dxx = tl.zeros([CBLOCK], acc_ty)
    for c0 in range(0, CG, CBLOCK):
        cc = c0 + tl.arange(0, CBLOCK)
        cmask = cc < CG
        # Sum whole tiles across the chunk loop and reduce once after it.
        a_dh3 = tl.zeros([CBLOCK, HBLOCK], acc_ty)
        a_dh3h2 = tl.zeros([CBLOCK, HBLOCK], acc_ty)
        a_dh1 = tl.zeros([CBLOCK, HBLOCK], acc_ty)
        a_dh1x = tl.zeros([CBLOCK, HBLOCK], acc_ty)
        for h0 in range(0, NCH, HBLOCK):
            hh = h0 + tl.arange(0, HBLOCK)
            ptr = PART + (grp * CG + cc[:, None]) * NCH + hh[None, :]
            mask = cmask[:, None] & (hh < NCH)[None, :]
            a_dh3 += tl.load(ptr, mask=mask, other=0)
            a_dh3h2 += tl.load(ptr + NPART, mask=mask, other=0)
            a_dh1 += tl.load(ptr + 2 * NPART, mask=mask, other=0)
            a_dh1x += tl.load(ptr + 3 * NPART, mask=mask, other=0)
        t_dh3 = tl.sum(a_dh3, 1)
        t_dh3h2 = tl.sum(a_dh3h2, 1)
        t_dh1 = tl.sum(a_dh1, 1)
        t_dh1x = tl.sum(a_dh1x, 1)
        rows = grp * CG + cc
        if HAS_SHIFT:
            tl.store(DSHIFT + rows, t_dh3.to(DSHIFT.dtype.element_ty), mask=cmask)
        if HAS_SCALE:
            tl.store(DSCALE + rows, t_dh3h2.to(DSCALE.dtype.element_ty), mask=cmask)
        tl.store(RSUM + rows, t_dh1, mask=cmask)
        tl.store(RSUM + NROWS + rows, t_dh1x, mask=cmask)
        w = _load_or(W, rows % C, cmask, 1.0, HAS_W, F64)
        g_dx += t_dh1 * w
        g_dxx += t_dh1x * w
    n = CG * HW
    tl.store(GMEAN + grp, tl.sum(g_dx, 0) / n)
    tl.store(GMEAN + NGRP + grp, tl.sum(g_dxx, 0) / n)


@triton.jit
def _bwd_wsum_kernel(
    RSUM,    # [2, B*C] sums of dh1 and dh1 * xhat per row
    DW, DB,  # [C] out
    B, C, NROWS,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, F64: tl.constexpr,
    BBLOCK: tl.constexpr, CBLOCK: tl.constexpr,
):
    cc = tl.program_id(0) * CBLOCK + tl.arange(0, CBLOCK)
    cmask = cc < C
    acc_ty = tl.float64 if F64 else tl.float32
    db = tl.zeros([BBLOCK, CBLOCK], acc_ty)
    dw = tl.zeros([BBLOCK, CBLOCK], acc_ty)
    for b0 in range(0, B, BBLOCK):
        bb = b0 + tl.arange(0, BBLOCK)
        ptr = RSUM + bb[:, None] * C + cc[None, :]
        mask = (bb < B)[:, None] & cmask[None, :]
        db += tl.load(ptr, mask=mask, other=0)
        dw += tl.load(ptr + NROWS, mask=mask, other=0)
    db = tl.sum(db, 0)
    dw = tl.sum(dw, 0)
    if HAS_W:
        tl.store(DW + cc, dw.to(DW.dtype.element_ty), mask=cmask)
    if HAS_B:
        tl.store(DB + cc, db.to(DB.dtype.element_ty), mask=cmask)


@triton.jit
def _bwd_apply_kernel(
    DY,              # [B*C, HW] gradient of y
    X,               # [B*C, HW] input rows
    MEAN, RSTD,      # [B*G] group statistics
    W, BIAS,         # [C]
    GAMMA, BETA,     # [B*C, HW]
    SCALE, SHIFT,    # [B*C]
    GMEAN,           # [2, B*G] group means of dxhat and dxhat * xhat
    DX,              # [B*C, HW] out
    DGAMMA, DBETA,   # [B*C, HW] out
    C, CG, HW, CHUNK, NCH, NGRP,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_GAMMA: tl.constexpr, HAS_BETA: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr, F64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    row = pid // NCH
    start = (pid % NCH) * CHUNK
    end = tl.minimum(start + CHUNK, HW)
    grp, mean, rstd, w, bias, scale, shift = _row_params(MEAN, RSTD, W, BIAS, SCALE, SHIFT, row, C, CG, HAS_W,
                                                         HAS_B, HAS_SCALE, HAS_SHIFT, F64)
    m_dx = tl.load(GMEAN + grp)
    m_dxx = tl.load(GMEAN + NGRP + grp)
    base = row.to(tl.int64) * HW
    for off in range(start, end, BLOCK):
        idx = base + off + tl.arange(0, BLOCK)
        mask = off + tl.arange(0, BLOCK) < end
        x = tl.load(X + idx, mask=mask, other=0).to(mean.dtype)
        dy = tl.load(DY + idx, mask=mask, other=0).to(mean.dtype)
        gamma = _load_or(GAMMA, idx, mask, 0.0, HAS_GAMMA, F64)
        beta = _load_or(BETA, idx, mask, 0.0, HAS_BETA, F64)
        xhat, h1, _h2, h3 = _chain(x, mean, rstd, w, bias, gamma, beta, scale, shift)
        _dh3, dh2, dh1 = _dchain(dy, h3, gamma, scale, SILU)
        if HAS_GAMMA:
            tl.store(DGAMMA + idx, (dh2 * h1).to(DGAMMA.dtype.element_ty), mask=mask)
        if HAS_BETA:
            tl.store(DBETA + idx, dh2.to(DBETA.dtype.element_ty), mask=mask)
        dx = rstd * (dh1 * w - m_dx - xhat * m_dxx)
        tl.store(DX + idx, dx.to(DX.dtype.element_ty), mask=mask)


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


@triton_op("mcvd::spatin_norm_fwd_triton", mutates_args=())
def fwd(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
        gamma: torch.Tensor | None, beta: torch.Tensor | None, scale: torch.Tensor | None,
        shift: torch.Tensor | None, eps: float, silu: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x: [B, C, H, W]; weight, bias: [C]; gamma, beta: [B, C, H, W]; scale, shift:
    [B, C] (each optional, x's dtype). Returns y: [B, C, H, W] and mean, rstd:
    [B, num_groups] float32 (float64 for float64 x)."""
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
    if y.numel() == 0:
        return y, mean.fill_(float("nan")), rstd.fill_(float("nan"))
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
