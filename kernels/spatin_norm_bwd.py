"""Triton kernels of the spatin_norm backward. The algorithm and the launchers
are in spatin_norm.py; the shared @triton.jit helpers in spatin_norm_fwd.py."""
import triton
import triton.language as tl

from .spatin_norm_fwd import _chain, _dchain, _group_tile, _load_or, _row_columns, _row_params


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
