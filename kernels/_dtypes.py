"""The statistics dtype, the one rule that the kernels and the op layer share.

Every kernel accumulates in, and hands to its backward, statistics of this
dtype: spatin_norm's mean and rstd, attention's row log-sum-exp, and
reverse_step's coefficient table (whose dtype its arithmetic runs in).
float16 and bfloat16 sums would round away the small terms of a reduction, so
they run in float32; float64 data keeps float64 so that its results are exact
to float64 rounding. The C++ kernels apply the same rule (stat_dtype in
csrc/op_checks.h).

This module imports torch only (never triton), so that mcvd.ops can import it
at import time; kernels/ imports nothing from mcvd, so the rule lives here and
the op layer imports it downward.
"""
import torch


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 data, float32 for every other float dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32
