"""Building blocks of the MCVD U-Net: the fused norm (GroupNorm + SPATIN +
time modulation + SiLU), BigGAN-style ResBlocks and multi-head self-attention.

Every normalisation runs through `mcvd.ops.spatin_norm`, every attention
through `mcvd.ops.attention` and every dropout through `mcvd.ops.dropout`;
`backend` (None = auto) is passed to each.

Condition frames reach SPATIN layers as a *pyramid*: a dict mapping a spatial
size H to the stacked condition frames resized (nearest) to H x H,
[B, (p+f)*C, H, H], built once per forward pass; or, when the network samples
many steps with the same condition frames, as `SpatinMaps`: every SPATIN
layer's gamma and beta, computed once (`MCVD.condition`).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from mcvd import ops

from .layers import fir_downsample, fir_kernel, fir_upsample, group_count

# Inside BigGAN-style blocks the reference code normalises with eps 1e-5
# (plain GroupNorm) but 1e-6 in SPADE/SPATIN and attention layers.
GROUPNORM_EPS = 1e-5
SPATIN_EPS = 1e-6
ATTENTION_EPS = 1e-6


def ddpm_init_(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """DDPM initialisation (Ho et al. 2020): uniform variance scaling with
    fan_avg. `scale=0` gives 1e-10 (the reference code's near-zero init of the
    last layer of each residual branch)."""
    scale = 1e-10 if scale == 0 else scale
    receptive = weight[0, 0].numel() if weight.dim() > 2 else 1
    fan_avg = (weight.shape[0] + weight.shape[1]) * receptive / 2
    bound = math.sqrt(3 * scale / fan_avg)
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def conv2d(in_ch: int, out_ch: int, kernel_size: int, init_scale: float = 1.0) -> nn.Conv2d:
    """'same'-padded convolution with DDPM init and zero bias."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)
    ddpm_init_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def linear(in_dim: int, out_dim: int, init_scale: float = 1.0) -> nn.Linear:
    """Linear layer with DDPM init and zero bias."""
    layer = nn.Linear(in_dim, out_dim)
    ddpm_init_(layer.weight, init_scale)
    nn.init.zeros_(layer.bias)
    return layer


class Spatin(nn.Module):
    """SPATIN maps (the reference code's SPADE): gamma, beta [B, C, H, W] from
    the condition frames resized to the layer's resolution,

        a = SiLU(conv3x3(cond)),   gamma = conv3x3_g(a),   beta = conv3x3_b(a).

    The gamma and beta convolutions share one weight `gamma_beta` (their
    output channels stacked, gamma first) so they run as one GEMM.

    Args:
        cond_channels: (p+f)*C, the stacked condition frames.
        channels: C of the normalised feature map.
        hidden: width of the shared hidden layer (spade_dim).
    """

    def __init__(self, cond_channels: int, channels: int, hidden: int):
        super().__init__()
        self.shared = conv2d(cond_channels, hidden, 3)
        self.gamma_beta = conv2d(hidden, 2 * channels, 3)
        for w in self.gamma_beta.weight.data.chunk(2):  # initialised as two convolutions
            ddpm_init_(w)

    def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = nn.functional.silu(self.shared(cond))
        return self.gamma_beta(a).chunk(2, dim=1)


class SpatinMaps(dict):
    """Precomputed SPATIN maps: each SPATIN `Norm` (the module itself is the
    key) -> its (gamma, beta) [B, C, H, W]. Handed to the blocks in place of
    the condition pyramid, it makes every SPATIN layer skip its convolutions;
    the maps are those the layer would compute from the pyramid."""


class Norm(nn.Module):
    """One fused `spatin_norm` call: GroupNorm -> [affine] -> [SPATIN] ->
    [scale/shift from the time embedding] -> [SiLU].

    Args:
        channels: C.
        eps: GroupNorm epsilon.
        affine: learn a per-channel weight and bias (`weight`, `bias` [C]).
        emb_dim: width of the (activated) time embedding; if given, a linear
            layer `emb` maps it to scale and shift [B, C] (AdaGN, Dhariwal &
            Nichol 2021).
        spatin: (cond_channels, hidden) for SPATIN maps, or None.
        silu: apply SiLU last.
    """

    def __init__(self, channels: int, *, eps: float, affine: bool = False, emb_dim: int | None = None,
                 spatin: tuple[int, int] | None = None, silu: bool = True, backend: str | None = None):
        super().__init__()
        self.num_groups = group_count(channels)
        self.eps = eps
        self.silu = silu
        self.backend = backend
        self.weight = nn.Parameter(torch.ones(channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(channels)) if affine else None
        self.emb = linear(emb_dim, 2 * channels) if emb_dim is not None else None
        self.spatin = Spatin(spatin[0], channels, spatin[1]) if spatin is not None else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None,
                cond: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """x: [B, C, H, W]; emb: [B, emb_dim] activated time embedding (if the
        layer has `emb`); cond: condition pyramid or SpatinMaps (if the layer
        has SPATIN)."""
        scale = shift = gamma = beta = None
        if self.emb is not None:
            scale, shift = self.emb(emb).chunk(2, dim=1)
        if self.spatin is not None:
            gamma, beta = cond[self] if isinstance(cond, SpatinMaps) else self.spatin(cond[x.shape[-1]])
        return ops.spatin_norm(x, self.num_groups, weight=self.weight, bias=self.bias, gamma=gamma, beta=beta,
                               scale=scale, shift=shift, eps=self.eps, silu=self.silu, backend=self.backend)


class Dropout(nn.Module):
    """nn.Dropout through `mcvd.ops.dropout` (on the CPU 6-7x faster than
    PyTorch's, whose mask is drawn one element at a time). No parameters or
    buffers: state dicts are those of nn.Dropout."""

    def __init__(self, p: float, backend: str | None = None):
        super().__init__()
        self.p = p
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.dropout(x, self.p, self.training, backend=self.backend)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ResBlock(nn.Module):
    """BigGAN-style residual block (Brock et al. 2019; Song et al. 2021, NCSN++):

        h = conv0(resample(norm0(x)));  h = conv1(dropout(norm1(h)))
        out = (skip(resample(x)) + h) / sqrt(2)

    Each norm is GroupNorm (or SPATIN) with the time embedding's scale/shift
    and SiLU, fused. `resample` is FIR up- or down-sampling ([1, 3, 3, 1]).

    Args:
        in_ch, out_ch: channels in and out (out_ch defaults to in_ch).
        emb_dim: width of the time embedding.
        dropout: dropout probability before conv1.
        resample: None, "up" or "down".
        spatin: (cond_channels, hidden) for SPATIN norms, or None for GroupNorm.
    """

    def __init__(self, in_ch: int, out_ch: int | None = None, *, emb_dim: int, dropout: float,
                 resample: str | None = None, spatin: tuple[int, int] | None = None, backend: str | None = None):
        super().__init__()
        out_ch = out_ch or in_ch
        if resample not in (None, "up", "down"):
            raise ValueError(f"resample: expected None, 'up' or 'down', got {resample!r}")
        eps = SPATIN_EPS if spatin is not None else GROUPNORM_EPS
        self.resample = resample
        self.norm0 = Norm(in_ch, eps=eps, emb_dim=emb_dim, spatin=spatin, backend=backend)
        self.conv0 = conv2d(in_ch, out_ch, 3)
        self.norm1 = Norm(out_ch, eps=eps, emb_dim=emb_dim, spatin=spatin, backend=backend)
        self.dropout = Dropout(dropout, backend=backend)
        self.conv1 = conv2d(out_ch, out_ch, 3, init_scale=0.0)
        self.skip = conv2d(in_ch, out_ch, 1) if in_ch != out_ch or resample else None
        if resample is not None:
            self.register_buffer("fir", fir_kernel(4.0 if resample == "up" else 1.0), persistent=False)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, cond: dict[int, torch.Tensor] | None = None):
        """x: [B, in_ch, H, W] -> [B, out_ch, H', W'] (H' = 2H up, H/2 down)."""
        h = self.norm0(x, emb, cond)
        if self.resample == "up":
            h, x = fir_upsample(h, self.fir), fir_upsample(x, self.fir)
        elif self.resample == "down":
            h, x = fir_downsample(h, self.fir), fir_downsample(x, self.fir)
        h = self.conv0(h)
        h = self.norm1(h, emb, cond)
        h = self.conv1(self.dropout(h))
        if self.skip is not None:
            x = self.skip(x)
        # x + h spelt x - (-1) * h: the same sum bit for bit, but not the `add`
        # that inductor's oneDNN pass (CPU, freezing) fuses into conv1 as a write
        # into x's buffer in place. torch 2.13 can lose the order of that write
        # when it fuses a reader of the sum with a loop of another shape (such
        # as the copy into a decoder level's torch.cat): the scheduler's
        # recompute_size_and_body re-applies the node's mutation renames only
        # when it has fake dependencies, so the reader may run first and read x
        # without h (relative error 0.75 on a checkpoint's weights;
        # tests/nn/test_compile_freezing.py).
        return torch.sub(x, h, alpha=-1) / math.sqrt(2.0)


class AttnBlock(nn.Module):
    """Multi-head self-attention over the H*W positions (Vaswani et al. 2017),
    residual with 1/sqrt(2) rescaling:

        q, k, v = split(qkv(GroupNorm(x))),  out = (x + proj(attention(q, k, v))) / sqrt(2)

    Heads split the channels head-major (channel c = head * D + d), D = C / heads.

    Args:
        channels: C.
        heads: number of heads (a divisor of C).
    """

    def __init__(self, channels: int, heads: int, backend: str | None = None):
        super().__init__()
        if channels % heads:
            raise ValueError(f"heads: expected a divisor of channels={channels}, got {heads}")
        self.heads = heads
        self.backend = backend
        self.norm = Norm(channels, eps=ATTENTION_EPS, affine=True, silu=False, backend=backend)
        self.qkv = linear(channels, 3 * channels)
        for w in self.qkv.weight.data.chunk(3):  # initialised as three C x C projections
            ddpm_init_(w, 0.1)
        self.proj = linear(channels, channels, init_scale=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] -> [B, C, H, W]."""
        B, C, H, W = x.shape
        N, D = H * W, C // self.heads
        h = self.norm(x).flatten(2).transpose(1, 2)                               # [B, N, C]
        q, k, v = self.qkv(h).view(B, N, 3, self.heads, D).permute(2, 0, 3, 1, 4)  # 3 x [B, heads, N, D]
        o = ops.attention(q, k, v, backend=self.backend)                          # [B, heads, N, D]
        o = self.proj(o.transpose(1, 2).reshape(B, N, C))                         # [B, N, C]
        return (x + o.transpose(1, 2).reshape(B, C, H, W)) / math.sqrt(2.0)
