"""Checks of the metrics' inputs, in the message style of mcvd/ops/_checks.py:
each names the argument, what was expected and what it got.

A metric scores videos as floats in [-1, 1]; values outside that range
(8-bit levels 0..255, integer videos, NaN) would give a number that means
nothing, so they are refused. Videos in [0, 1] lie inside the range and
cannot be told apart from dark [-1, 1] videos: they score wrong without an
error. Values within range_margin of [-1, 1] are taken as float rounding
and clamped by the metrics."""
from __future__ import annotations

import math

import numpy as np
import torch

DATA_RANGE = "[-1, 1]"


def range_margin(dtype: torch.dtype) -> float:
    """How far beyond [-1, 1] a value may lie and count as in the range, for
    float rounding of values computed in the range: 1e-3, or 4 ULPs of 1 in
    the dtype where that is more (float16 3.9e-3, bfloat16 0.031). Far below
    what a wrong scaling gives (x 255, or [0, 255])."""
    return max(1e-3, 4 * torch.finfo(dtype).eps)


def check_video(x, name: str, layout: str) -> None:
    """`x` must be a float tensor with values in [-1, 1] (up to range_margin)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected floats in {DATA_RANGE} (shape {layout}), got {type(x).__name__}")
    if not x.is_floating_point():
        hint = " (8-bit levels map to [-1, 1] as x / 127.5 - 1)" if x.dtype == torch.uint8 else ""
        raise TypeError(f"{name}: expected floats in {DATA_RANGE} (shape {layout}), got dtype {x.dtype}{hint}")
    if x.numel() == 0:
        return
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))  # one pass; NaN propagates to both
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"{name}: expected values in {DATA_RANGE} (floats), got {int(x.isnan().sum())} NaN values")
    margin = range_margin(x.dtype)
    if lo < -1 - margin or hi > 1 + margin:
        raise ValueError(f"{name}: expected values in {DATA_RANGE} (up to {margin:.2g} beyond, float rounding), "
                         f"got values in [{lo:.6g}, {hi:.6g}]")


def check_frames(x: torch.Tensor, name: str) -> None:
    """`x` [..., T, C, H, W] must hold frames: T, C, H, W >= 1 (an empty batch is fine)."""
    if min(x.shape[-4:]) < 1:
        raise ValueError(f"{name}: expected at least one frame of at least 1x1 pixels [..., T, C, H, W], "
                         f"got shape {list(x.shape)}")


def check_features(f: np.ndarray, name: str) -> None:
    """Features must be finite numbers."""
    bad = int(np.count_nonzero(~np.isfinite(f)))
    if bad:
        raise ValueError(f"{name}: expected finite features, got {bad} NaN or infinite value{'s' if bad > 1 else ''}")
