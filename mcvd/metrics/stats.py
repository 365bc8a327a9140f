"""Summary statistics of per-clip metric values, as the MCVD evaluation reports them.

mean and std (population, ddof 0, numpy's default) of the values, and the
half-width of the normal 95% confidence interval of the mean,
z_0.975 * s / sqrt(n) with s the sample std (ddof 1) - the reference code's
`mean - st.norm.interval(0.95, loc=mean, scale=st.sem(values))[0]`.
"""
from __future__ import annotations

import math
import statistics

Z95 = statistics.NormalDist().inv_cdf(0.975)  # 1.959963984540054


def summary(values) -> dict[str, float | None]:
    """values: a non-empty sequence of finite floats -> {"mean", "std", "conf95"};
    conf95 is None for a single value. NaN or infinite values raise: they have
    no mean and spread to report (mcvd.metrics.psnr_ssim.psnr caps identical
    frames' PSNR at 100 dB for this reason)."""
    try:
        v = [float(x) for x in values]
    except (TypeError, ValueError, RuntimeError) as err:  # a string, a tensor of several values, ...
        raise TypeError(f"values: expected a sequence of numbers, got {type(values).__name__} ({err})") from None
    if not v:
        raise ValueError("values: expected at least one value")
    for i, x in enumerate(v):
        if not math.isfinite(x):
            raise ValueError(f"values: expected finite numbers, got {x} at index {i}")
    n = len(v)
    mean = math.fsum(v) / n
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in v) / n)
    conf95 = Z95 * statistics.stdev(v) / math.sqrt(n) if n > 1 else None
    return {"mean": mean, "std": std, "conf95": conf95}
