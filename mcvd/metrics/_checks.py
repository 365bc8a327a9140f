"""Checks of the metrics' inputs, in the message style of mcvd/ops/_checks.py:
each names the argument, what was expected and what it got.

A metric scores videos as floats in [-1, 1]; values outside that range
(8-bit levels 0..255, integer videos, NaN) would give a number that means
nothing, so they are refused. Videos in [0, 1] lie inside the range and
cannot be told apart from dark [-1, 1] videos: they score wrong without an
error. Values within range_margin of [-1, 1] are taken as float rounding
and clamped by the metrics."""
from __future__ import annotations

import numpy as np
import torch

from mcvd.nn.data_range import DATA_RANGE, check_data_range


def check_video(x, name: str, layout: str) -> None:
    """`x` must be a float tensor with values in [-1, 1] (up to range_margin)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected floats in {DATA_RANGE} (shape {layout}), got {type(x).__name__}")
    if not x.is_floating_point():
        hint = " (8-bit levels map to [-1, 1] as x / 127.5 - 1)" if x.dtype == torch.uint8 else ""
        raise TypeError(f"{name}: expected floats in {DATA_RANGE} (shape {layout}), got dtype {x.dtype}{hint}")
    check_data_range(x, name, what="values")


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
