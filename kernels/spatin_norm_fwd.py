"""Triton kernels of the spatin_norm forward, and the @triton.jit helpers that
the backward kernels (spatin_norm_bwd.py) share: the normalisation chain and
the loads of optional arguments. The algorithm and the launchers are in
spatin_norm.py."""
import triton
import triton.language as tl


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
