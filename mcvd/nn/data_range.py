"""The data range of video frames: floats in [-1, 1].

The network is trained on frames in that range and conditions on frames in
it; frames scaled otherwise (8-bit levels 0..255, x100) would give a video
that means nothing, without an error, so the frames a caller hands over are
checked. Frames in [0, 1] lie inside the range and cannot be told apart from
dark [-1, 1] frames.
"""
from __future__ import annotations

import math

import torch

DATA_RANGE = "[-1, 1]"


def range_margin(dtype: torch.dtype) -> float:
    """How far beyond [-1, 1] a value may lie and count as in the range, for
    float rounding of values computed in the range: 1e-3, or 4 ULPs of 1 in
    the dtype where that is more (float16 3.9e-3, bfloat16 0.031). Far below
    what a wrong scaling gives."""
    return max(1e-3, 4 * torch.finfo(dtype).eps)


def check_data_range(x: torch.Tensor, name: str, what: str = "frames") -> None:
    """`x`, a float tensor of frames, must hold values in [-1, 1] (up to
    range_margin) and no NaN; `what` names its contents in the message. Reads
    its values: one pass over them and one read on the host, which on a GPU
    waits for the work queued before."""
    if x.numel() == 0 or x.device.type == "meta":  # nothing to read
        return
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))  # one pass; NaN propagates to both
    margin = range_margin(x.dtype)
    expected = f"{name}: expected {what} in {DATA_RANGE} (up to {margin:.2g} beyond, float rounding)"
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"{expected}, got {int(x.isnan().sum())} NaN values")
    if lo < -1 - margin or hi > 1 + margin:
        raise ValueError(f"{expected}, got values in [{lo:.6g}, {hi:.6g}]")
