"""Toy models with MCVD's interface, for testing the samplers and the video tasks.

Frames here are constant images whose value is a label, so a test can read
which frame went where. `OracleModel` returns the eps for which the predicted
x0 equals a target computed from its conditioning, so every sampler ends
exactly on that target (the last step of every method is x_prev = x0).
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from mcvd.diffusion import Schedule

STEP = 0.01  # label distance between consecutive frames
GEN = -0.9  # label of the first frame the oracle generates without a past


def toy_config(k=3, p=2, f=0, channels=2, size=5, num_timesteps=1000):
    return SimpleNamespace(num_frames=k, num_frames_cond=p, num_frames_future=f, channels=channels,
                           image_size=size, num_timesteps=num_timesteps)


def labelled_video(labels: torch.Tensor, channels=2, size=5, dtype=torch.float32) -> torch.Tensor:
    """[B, T] labels -> [B, T, C, H, W] constant frames."""
    return labels.to(dtype)[:, :, None, None, None].expand(-1, -1, channels, size, size).clone()


def frame_labels(video: torch.Tensor) -> torch.Tensor:
    """[..., T, C, H, W] constant frames -> [..., T] labels (and checks they are constant)."""
    flat = video.flatten(-3)
    assert torch.allclose(flat, flat[..., :1].expand_as(flat), atol=1e-5), "frames are not constant"
    return flat[..., 0]


class OracleModel(torch.nn.Module):
    """eps such that x0 = target, where (per sample, frames j = 0..k-1):

    - past given, no future: the frames after the last past frame, label + STEP * (j + 1);
    - past and future given: the line from the last past to the first future label;
    - past masked: GEN + STEP * j (a generated video's first block).

    Records every call's (t, cond, cond_mask) in `.calls`. Only device ops:
    it can run inside a CUDA graph (move it with .to(device)).
    """

    def __init__(self, cfg, schedule: Schedule | None = None):
        super().__init__()
        self.config = cfg
        self.register_buffer("abar", (schedule or Schedule.linear(cfg.num_timesteps)).alphas_cumprod)
        self.calls = []

    def target(self, cond, cond_mask, shape):
        k, p = self.config.num_frames, self.config.num_frames_cond
        B = shape[0]
        j = torch.arange(k, dtype=torch.float64, device=cond.device)
        last = cond[:, p - 1].flatten(1)[:, 0].double()
        out = last[:, None] + STEP * (j + 1)
        if self.config.num_frames_future:
            first = cond[:, p].flatten(1)[:, 0].double()
            interp = last[:, None] + (first - last)[:, None] * (j + 1) / (k + 1)
            out = torch.where(cond_mask[:, 1:2], interp, out)
        out = torch.where(cond_mask[:, 0:1], out, GEN + STEP * j.expand(B, k))
        return out[:, :, None, None, None].expand(shape)

    def forward(self, x, t, cond, cond_mask=None):
        self.calls.append((t.clone(), None if cond is None else cond.clone(),
                           None if cond_mask is None else cond_mask.clone()))
        abar = self.abar[t].view(-1, 1, 1, 1, 1)
        x0 = self.target(cond, cond_mask, x.shape).double()
        return ((x.double() - abar.sqrt() * x0) / (1 - abar).sqrt()).to(x.dtype)


class ZeroEpsModel(torch.nn.Module):
    """eps = 0 whatever the input: the sample is then driven by x_T and the step noise."""

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg

    def forward(self, x, t, cond, cond_mask=None):
        return torch.zeros_like(x)


class ToyNet(torch.nn.Module):
    """A small random network with MCVD's interface and only device ops (it can
    run inside a CUDA graph): a 3x3 conv over the stacked noisy and condition
    frames, plus terms in t and in the mask."""

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        k, frames, C = cfg.num_frames, cfg.num_frames + cfg.num_frames_cond + cfg.num_frames_future, cfg.channels
        self.conv = torch.nn.Conv2d(frames * C, k * C, 3, padding=1)
        self.t_gain = torch.nn.Parameter(torch.randn(k * C))
        self.mask_gain = torch.nn.Parameter(torch.randn(2, k * C))

    def forward(self, x, t, cond, cond_mask=None):
        h = x.flatten(1, 2) if cond is None else torch.cat([x.flatten(1, 2), cond.flatten(1, 2)], dim=1)
        time = (t.to(x.dtype) / self.config.num_timesteps)[:, None, None, None]
        out = self.conv(h) + time * self.t_gain[None, :, None, None]
        if cond_mask is not None:
            out = out + (cond_mask.to(x.dtype) @ self.mask_gain)[:, :, None, None]
        return out.view_as(x)
