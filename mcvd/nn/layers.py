"""Stateless pieces of the network: group counts, the sinusoidal time
embedding and FIR up/down-sampling (Karras et al. 2020, StyleGAN2)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# The [1, 3, 3, 1] binomial filter of the BigGAN-style blocks.
FIR_KERNEL = (1.0, 3.0, 3.0, 1.0)


def group_count(channels: int) -> int:
    """GroupNorm groups for `channels`: the largest divisor of `channels` that is
    at most min(channels // 4, 32) (the reference code's rule)."""
    groups = min(channels // 4, 32)
    if groups < 1:
        raise ValueError(f"channels: expected >= 4 for GroupNorm, got {channels}")
    while channels % groups:
        groups -= 1
    return groups


def timestep_embedding(steps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017; Ho et al. 2020), float32 [B, dim].

    e(s) = [sin(s * w_0), ..., sin(s * w_{h-1}), cos(s * w_0), ..., cos(s * w_{h-1})],
    w_i = max_period ** (-i / (h - 1)), h = dim // 2; zero-padded when dim is odd.
    Computed in float32 exactly as the reference code does, so converted
    checkpoints see bit-identical features.

    Args:
        steps: [B] integer or float step indices.
        dim: embedding width, >= 4.
    """
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=steps.device) * (-math.log(max_period) / (half - 1)))
    args = steps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


def fir_kernel(gain: float) -> torch.Tensor:
    """The separable 2-d FIR filter [4, 4] (outer product of FIR_KERNEL),
    normalised to sum to `gain`, float32. Blocks keep it as a buffer so that it
    follows the module's dtype and device."""
    k = torch.tensor(FIR_KERNEL, dtype=torch.float64)
    k2 = torch.outer(k, k)
    return (k2 * (gain / k2.sum())).float()


def fir_upsample(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """2x up-sampling with the FIR filter: [B, C, H, W] -> [B, C, 2H, 2W].

    Zero-insertion then filtering (StyleGAN2 `upsample_2d`, pad (2, 1)), which is
    the transposed depthwise convolution with stride 2 and padding 1. `kernel`
    is `fir_kernel(4.0)`: it sums to 4 so that a constant image keeps its value.
    The filter is symmetric, so convolution and correlation agree.
    """
    C = x.shape[1]
    return F.conv_transpose2d(x, kernel.expand(C, 1, 4, 4), stride=2, padding=1, groups=C)


def fir_downsample(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """2x down-sampling with the FIR filter: [B, C, H, W] -> [B, C, H/2, W/2].

    Filtering then decimation (StyleGAN2 `downsample_2d`, pad (1, 1)), i.e. a
    depthwise convolution with stride 2 and padding 1. `kernel` is
    `fir_kernel(1.0)`.
    """
    C = x.shape[1]
    return F.conv2d(x, kernel.expand(C, 1, 4, 4), stride=2, padding=1, groups=C)
