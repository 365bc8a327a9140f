"""Frechet Video Distance (Unterthiner et al. 2018) as the MCVD paper computes it.

    FVD = |mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2))

over the 400 Kinetics logits of the I3D classifier (mcvd.metrics.i3d), the
features the reference code takes from its I3D (`return_features=True`,
"raw features before the softmax layer"). Means and covariances (unbiased)
in float64, the square root by scipy.linalg.sqrtm, its real part kept, as in
the reference code (models/fvd/fvd.py of voleti/mcvd-pytorch).

Preprocessing (the reference code's `preprocess_single`): each frame is
resized bilinearly (no antialiasing) so that its short side is 224, the long
side rounded up, then centre-cropped to 224 x 224; grey frames are repeated
to RGB; values stay in [-1, 1].

Inputs must be floats in [-1, 1] (up to a rounding margin,
mcvd.nn.data_range.range_margin); values outside it, NaN, integer dtypes,
fewer than 2 videos or fewer than I3D's 9 frames raise an error naming the
argument, and so do NaN or infinite features. Videos in [0, 1] (not mapped
to [-1, 1]) lie inside the range and cannot be told apart: they score wrong
without an error.

The paper's variants (`fvd_protocol`): the condition frames are prepended to
both the real and the generated clips (past before, future after); the
generated set holds every sample of every clip (k per clip) against one
real clip each, and the per-trajectory FVD takes the j-th sample of every
clip as one set, j = 0..k-1, and reports the mean, std and 95% interval of
those k values.
"""
from __future__ import annotations

import functools
import importlib.util
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from mcvd.metrics._checks import check_features, check_video
from mcvd.metrics.i3d import I3D, MIN_FRAMES
from mcvd.metrics.stats import summary

RESOLUTION = 224


def i3d_preprocess(videos: torch.Tensor) -> torch.Tensor:
    """videos float [B, T, C, H, W] in [-1, 1], C 1 or 3 -> float32 [B, 3, T, 224, 224]."""
    if videos.dim() != 5 or videos.shape[2] not in (1, 3):
        raise ValueError(f"videos: expected [B, T, C, H, W] with C 1 or 3, got {list(videos.shape)}")
    b, t, c, h, w = videos.shape
    scale = RESOLUTION / min(h, w)
    size = (RESOLUTION, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), RESOLUTION)
    x = F.interpolate(videos.reshape(b * t, c, h, w).float(), size=size, mode="bilinear", align_corners=False)
    top, left = (size[0] - RESOLUTION) // 2, (size[1] - RESOLUTION) // 2
    x = x[..., top:top + RESOLUTION, left:left + RESOLUTION].expand(-1, 3, -1, -1)
    return x.reshape(b, t, 3, RESOLUTION, RESOLUTION).transpose(1, 2).contiguous()


@functools.lru_cache(maxsize=2)
def _model(device: torch.device) -> I3D:
    return I3D().to(device)


def _check_videos(videos, name: str, *, min_videos: int = 0, i3d: bool = True) -> None:
    """`videos` [N, T, C, H, W] in [-1, 1] with C 1 or 3, N >= min_videos, and
    (for I3D) T >= MIN_FRAMES; the error names `name`."""
    check_video(videos, name, "[N, T, C, H, W]")
    if videos.dim() != 5 or videos.shape[2] not in (1, 3) or min(videos.shape[-2:]) < 1:
        raise ValueError(f"{name}: expected videos [N, T, C, H, W] with C 1 or 3 and H, W >= 1, "
                         f"got shape {list(videos.shape)}")
    if videos.shape[0] < min_videos:
        raise ValueError(f"{name}: expected at least {min_videos} videos [N >= {min_videos}, T, C, H, W], "
                         f"got shape {list(videos.shape)}")
    if i3d and videos.shape[1] < MIN_FRAMES:
        raise ValueError(f"{name}: expected videos of at least {MIN_FRAMES} frames (I3D's minimum), "
                         f"got {videos.shape[1]} frames (shape {list(videos.shape)})")


def i3d_features(videos: torch.Tensor, *, batch_size: int = 8, model: I3D | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """I3D logits of each video.

    videos: float [B, T, C, H, W] in [-1, 1], T >= 9 (for I3D), any H, W (see
        the module docstring for the resizing and what is refused), on any device.
    batch_size: videos per forward pass.
    model: the I3D to use (any module mapping [B, 3, T, 224, 224] to features);
        by default one I3D per device is built once and kept.
    device: where the network runs when `model` is None (default: videos' device).
    Returns float32 [B, 400] on the CPU.
    """
    _check_videos(videos, "videos", i3d=model is None or isinstance(model, I3D))
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    if model is None:
        model = _model(torch.device(device) if device is not None else videos.device)
    run_on = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, videos.shape[0], batch_size):
            # Clamped: values within the rounding margin of [-1, 1] (wider in half precision) stay in range.
            out.append(model(i3d_preprocess(videos[i:i + batch_size].to(run_on).clamp(-1, 1))).cpu())
    return torch.cat(out) if out else torch.empty(0, 400)


def require_scipy() -> None:
    """Raise ImportError naming the install command if scipy (the matrix square root) is missing."""
    if importlib.util.find_spec("scipy") is None:
        raise ImportError("FVD needs scipy: pip install scipy")


def frechet_distance(feats_a, feats_b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets.

    feats_a: [N, D], feats_b: [M, D] (tensors or arrays), N, M >= 2, finite.
    Returns a float >= 0 up to rounding (the square root's real part is kept);
    raises FloatingPointError where float64 statistics overflow.
    """
    require_scipy()
    from scipy.linalg import LinAlgWarning, sqrtm

    a, b = (np.asarray(torch.as_tensor(f).double().cpu()) for f in (feats_a, feats_b))
    for name, f in (("feats_a", a), ("feats_b", b)):
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"{name}: expected [N >= 2, D], got shape {list(f.shape)}")
        check_features(f, name)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feats_a, feats_b: expected the same feature size, got {a.shape[1]} and {b.shape[1]}")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused below, with a clearer message
        mu_a, mu_b = a.mean(0), b.mean(0)
        sigma_a, sigma_b = (np.atleast_2d(np.cov(f, rowvar=False)) for f in (a, b))
        product = sigma_a @ sigma_b
    if not np.isfinite(product).all():  # scipy's sqrtm fails on these with "Internal error"
        raise FloatingPointError("feats_a, feats_b: the Frechet distance is not finite: the product of the "
                                 "covariances overflows float64 (largest feature magnitude "
                                 f"{max(np.abs(a).max(), np.abs(b).max()):.3g})")
    with warnings.catch_warnings():
        # With fewer clips than feature dimensions (400) the covariances are singular by
        # construction and scipy warns on every call; the reference code silences it too (disp=False).
        warnings.simplefilter("ignore", LinAlgWarning)
        root = sqrtm(product)
    with np.errstate(over="ignore", invalid="ignore"):
        d = float(np.real(np.sum((mu_a - mu_b) ** 2) + np.trace(sigma_a + sigma_b - 2 * root)))
    if not math.isfinite(d):
        raise FloatingPointError(f"feats_a, feats_b: the Frechet distance is not finite ({d})")
    return d


def fvd(real: torch.Tensor, fake: torch.Tensor, *, batch_size: int = 8, device: torch.device | str | None = None) -> float:
    """FVD between two sets of videos, each float [N, T, C, H, W] in [-1, 1] (N >= 2, T >= 9;
    see the module docstring for what is refused)."""
    _check_videos(real, "real", min_videos=2)
    _check_videos(fake, "fake", min_videos=2)
    return frechet_distance(i3d_features(real, batch_size=batch_size, device=device),
                            i3d_features(fake, batch_size=batch_size, device=device))


def fvd_protocol(real_feats: torch.Tensor, fake_feats: torch.Tensor) -> dict[str, float]:
    """The paper's FVD figures from features.

    real_feats: [N, D], one real clip per test clip.
    fake_feats: [N, k, D], the k samples drawn for each clip.
    Returns {"fvd": FVD of all N*k samples against the N real clips,
             "fvd_traj_mean", "fvd_traj_std", "fvd_traj_conf95": over the k
             FVDs of sample j of every clip against the N real clips
             (only when k > 1)}.
    """
    if real_feats.dim() != 2 or real_feats.shape[0] < 2:
        raise ValueError(f"real_feats: expected [N >= 2, D] features of N real clips, got {list(real_feats.shape)}")
    if fake_feats.dim() != 3 or fake_feats.shape[0] != real_feats.shape[0] or fake_feats.shape[1] < 1:
        raise ValueError(f"fake_feats: expected [N, k, D] with N = {real_feats.shape[0]} real clips and k >= 1 "
                         f"samples, got {list(fake_feats.shape)}")
    for name, f in (("real_feats", real_feats), ("fake_feats", fake_feats)):
        check_features(np.asarray(torch.as_tensor(f).cpu()), name)
    k = fake_feats.shape[1]
    out = {"fvd": frechet_distance(real_feats, fake_feats.reshape(-1, fake_feats.shape[-1]))}
    if k > 1:
        per_traj = [frechet_distance(real_feats, fake_feats[:, j]) for j in range(k)]
        s = summary(per_traj)
        out.update(fvd_traj_mean=s["mean"], fvd_traj_std=s["std"], fvd_traj_conf95=s["conf95"])
    return out
