"""Stochastic Moving MNIST (Denton & Fergus 2018), generated on the fly.

Behaviour of the reference code (mcvd-pytorch `datasets/stochastic_moving_mnist.py`,
itself from SVG's `data/moving_mnist.py`):

- each MNIST digit is resized from 28 x 28 to `digit_size` x `digit_size`
  (32 by default; bilinear, as torchvision's `Resize(32)` on a PIL image);
- every digit starts at a uniform position in [0, image_size - digit_size)
  with an integer velocity (dx, dy) uniform in [-4, 4] pixels per frame;
- when a digit leaves the canvas it is put back on the border and gets a new
  random velocity pointing away from that border (1..4 pixels), the other
  component redrawn in [-4, 4] ("stochastic" bounces); `deterministic=True`
  mirrors the velocity instead;
- digits are added and the sum clipped at 1 (overlaps saturate).

The reference config's `step_length: 0.1` is not read by this generator
(velocities are whole pixels), so it has no parameter here.

Unlike the reference (one NumPy seed per worker process), a clip here is a
pure function of `(seed, index)`: the same index gives the same clip in any
process, worker or epoch, which makes training runs resumable exactly.
"""
from __future__ import annotations

import functools
import numbers

import numpy as np
import torch
from torch.utils.data import Dataset

from .mnist import SPLITS, mnist_digits
from .pillow import pil_image

# Clips per "epoch" by default: the reference's train length is that of the
# MNIST training set, its test set 256 clips.
DEFAULT_LENGTH = {"train": 60_000, "test": 256}
MAX_SPEED = 4


@functools.cache
def _resized_digits(split: str, digit_size: int) -> np.ndarray:
    """float32 [N, digit_size, digit_size] in [0, 1]."""
    Image = pil_image()
    images, _ = mnist_digits(split)
    out = np.empty((len(images), digit_size, digit_size), dtype=np.float32)
    for i, img in enumerate(images):
        out[i] = np.asarray(Image.fromarray(img).resize((digit_size, digit_size), Image.BILINEAR)) / 255.0
    return out


@functools.cache
def _digit_classes(split: str) -> np.ndarray:
    """int64 [N]: the class of each digit of `split`, in the order of _resized_digits."""
    return mnist_digits(split)[1].astype(np.int64)


class StochasticMovingMNIST(Dataset):
    """Clips of `num_digits` MNIST digits bouncing in a square canvas.

    Args:
        num_frames: T, frames per clip (p + k + f for training).
        split: "train" or "test" digits (see mcvd.data.mnist: 4,000 / 1,000 real digits).
        length: clips in the data set (default 60,000 for train, 256 for test).
        seed: with the index, determines every clip.
        num_digits: digits per clip (2 in the paper).
        image_size: canvas side (64 in the paper); must exceed digit_size.
        digit_size: side of a resized digit (32 in the reference code).
        deterministic: mirror velocities at the borders instead of redrawing them.

    Items are float32 tensors [T, 1, image_size, image_size] in [-1, 1];
    `labels(index)` gives the classes of a clip's digits.
    """

    def __init__(self, num_frames: int, *, split: str = "train", length: int | None = None, seed: int = 0,
                 num_digits: int = 2, image_size: int = 64, digit_size: int = 32, deterministic: bool = False):
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        for name, value, low in (("num_frames", num_frames, 1), ("num_digits", num_digits, 1),
                                 ("digit_size", digit_size, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
        if not isinstance(image_size, int) or image_size <= digit_size:
            raise ValueError(f"image_size: expected an int > digit_size ({digit_size}), got {image_size!r}")
        if length is None:
            length = DEFAULT_LENGTH[split]
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"length: expected an int >= 1, got {length!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
        self.digits = _resized_digits(split, digit_size)
        self.num_frames, self.split, self.length, self.seed = num_frames, split, length, seed
        self.num_digits, self.image_size, self.digit_size = num_digits, image_size, digit_size
        self.deterministic = deterministic

    def __len__(self) -> int:
        return self.length

    def _bounce(self, rng, pos: int, speed: int, other: int, limit: int) -> tuple[int, int, int]:
        """One axis at a wall: (pos, speed, the other axis's speed). Deterministic
        clips reflect; stochastic ones draw a new speed away from the wall and a
        new speed on the other axis, as the reference does."""
        if 0 <= pos < limit:
            return pos, speed, other
        low = pos < 0
        pos = 0 if low else limit - 1
        if self.deterministic:
            return pos, -speed, other
        speed = rng.integers(1, MAX_SPEED + 1) if low else rng.integers(-MAX_SPEED, 0)
        return pos, speed, rng.integers(-MAX_SPEED, MAX_SPEED + 1)

    def __getitem__(self, index: int) -> torch.Tensor:
        video, _ = self._draw(index)
        return torch.from_numpy(video * 2 - 1).unsqueeze(1)

    def labels(self, index: int) -> list[int]:
        """The classes (0-9) of clip `index`'s digits, in the order they were drawn."""
        _, drawn = self._draw(index)
        return [int(c) for c in _digit_classes(self.split)[drawn]]

    def _draw(self, index: int) -> tuple[np.ndarray, list[int]]:
        """Clip `index`: (frames float32 [T, H, W] in [0, 1], the indices of its digits in self.digits)."""
        if not isinstance(index, numbers.Integral) or isinstance(index, bool):  # else another clip, or NumPy's error
            raise TypeError(f"index: expected an int, got {type(index).__name__} {index!r}")
        index = int(index)
        if not 0 <= index < self.length:
            raise IndexError(f"index: expected 0 <= index < {self.length}, got {index}")
        rng = np.random.default_rng([self.seed, index])
        size, ds = self.image_size, self.digit_size
        limit = size - ds  # a digit's top-left corner stays in [0, limit)
        video = np.zeros((self.num_frames, size, size), dtype=np.float32)
        drawn = []
        for _ in range(self.num_digits):
            drawn.append(int(rng.integers(len(self.digits))))
            digit = self.digits[drawn[-1]]
            sx, sy = rng.integers(limit), rng.integers(limit)
            dx, dy = rng.integers(-MAX_SPEED, MAX_SPEED + 1), rng.integers(-MAX_SPEED, MAX_SPEED + 1)
            for t in range(self.num_frames):
                # Vertical then horizontal bounce, in the reference's order (it fixes the RNG draws).
                sy, dy, dx = self._bounce(rng, sy, dy, dx, limit)
                sx, dx, dy = self._bounce(rng, sx, dx, dy, limit)
                video[t, sy:sy + ds, sx:sx + ds] += digit
                sy, sx = sy + dy, sx + dx
        np.minimum(video, 1.0, out=video)
        return video, drawn
