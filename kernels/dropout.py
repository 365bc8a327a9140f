"""Triton kernel of mcvd::dropout: the counter-based dropout of csrc/philox.h.

Element i (row-major) is kept when word i % 4 of Philox4x32-10 at counter
(i // 4, 0) under the key (seed's low, high 32 bits) is at least the
threshold: tl.randint4x(seed, i // 4) is that counter's four words, so this
kernel draws the mask of the C++ and CUDA kernels bit for bit. Each program
computes BLOCK / 4 counters and interleaves their words into BLOCK elements.

The autograd of this Triton op is registered by mcvd/ops/dropout.py, which
imports this module; this module imports nothing from mcvd.
"""

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from . import _checks

_BLOCK = 1024


@triton.jit
def _dropout_kernel(X, Y, SEED, SCALE, N, threshold, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    counters = pid.to(tl.int64) * (BLOCK // 4) + tl.arange(0, BLOCK // 4)
    w0, w1, w2, w3 = tl.randint4x(tl.load(SEED), counters)
    # join stacks on a new last axis: [c, j, i] is word 2 j + i of counter c,
    # so the row-major BLOCK gives element 4 c + q word q.
    words = tl.reshape(tl.join(tl.join(w0, w2), tl.join(w1, w3)), (BLOCK,))
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    scale = tl.load(SCALE)
    x = tl.load(X + offs, mask=mask, other=0).to(scale.dtype)
    y = tl.where(words.to(tl.int64) >= threshold, x * scale, 0.0)
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


# The C++ op's argument checks, {"fwd": ...}, set by mcvd.ops (_checks.run).
checks = {}


@triton_op("mcvd::dropout_triton", mutates_args=())
def fwd(x: torch.Tensor, p: float, seed: torch.Tensor) -> torch.Tensor:
    """x: any float tensor; p in [0, 1); seed: 0-d int64 on x's device.
    Returns y, contiguous, shaped like x."""
    _checks.run(checks, "dropout", "fwd", x, p, seed)
    x = x.contiguous()
    y = torch.empty_like(x)
    n = x.numel()
    if n:
        # The scale in the arithmetic's dtype (float64 for float64 x), read
        # from memory: a float kernel argument would be float32.
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        scale = torch.full((1,), 1.0 / (1.0 - p), dtype=dtype, device=x.device)
        threshold = min(round(p * 2.0**32), 2**32 - 1)  # csrc/philox.h's dropout_threshold
        wrap_triton(_dropout_kernel)[(triton.cdiv(n, _BLOCK),)](
            x, y, seed, scale, n, threshold, BLOCK=_BLOCK, num_warps=4)
    return y
