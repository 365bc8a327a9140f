"""PSNR and SSIM of predicted videos, with the MCVD paper's protocol.

Videos are [..., T, C, H, W], floats in [-1, 1]. Both metrics first map them
to [0, 1] by (x + 1) / 2 clamped to [0, 1] (the reference code's
inverse_data_transform) and compute in float64. The clamp only absorbs float
rounding: values further than a small margin outside [-1, 1]
(mcvd.nn.data_range.range_margin: 1e-3 in float32), NaN, integer dtypes
and empty videos raise an error naming the argument. Videos in [0, 1]
(frames not mapped to [-1, 1]) lie inside the range and cannot be told
apart: they score wrong without an error.

PSNR, per clip: MSE over all its frames, channels and pixels (equal to the
mean of the per-frame MSEs, which is how the reference code accumulates it),
then PSNR = min(10 log10(1 / MSE), PSNR_MAX). Averaging per-frame PSNRs
instead would give a different, larger number; `per_frame=True` returns
those for plots. PSNR_MAX = 100 dB (MSE <= 1e-10, as libvpx and x264 cap
it): a perfectly predicted clip (MSE 0, PSNR infinite) scores 100 dB, so
that means and confidence intervals over clips (mcvd.metrics.stats, which
refuses infinities) stay defined. It is far above any prediction's PSNR (an
error of one 8-bit level in every pixel is 48 dB), so the cap changes no
score but those of (nearly) exact copies.

SSIM, per frame: scikit-image's structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1): an 11x11 Gaussian
window, K1 = 0.01, K2 = 0.03, averaged over the positions where the window
fits (H, W >= 11) and over channels; per clip, the mean over frames.
(The reference code scores 8-bit greyscale frames, rounded to black/white for
Moving MNIST; these functions score the frames as given.)

Best of n (the paper's protocol with several samples per clip): compute the
per-clip score of each sample and take `best_of_samples` (max over samples).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mcvd.metrics._checks import check_frames, check_video

_WIN, _SIGMA, _K1, _K2 = 11, 1.5, 0.01, 0.03
PSNR_MAX = 100.0  # dB


def _unit(x: torch.Tensor) -> torch.Tensor:
    return ((x.to(torch.float64) + 1) / 2).clamp(0, 1)


def _check_pair(pred, target, per_frame) -> None:
    if not isinstance(per_frame, bool):  # "no" would read as True
        raise TypeError(f"per_frame: expected a bool, got {type(per_frame).__name__} {per_frame!r}")
    for name, x in (("pred", pred), ("target", target)):
        if isinstance(x, torch.Tensor) and x.dim() < 4:
            raise ValueError(f"{name}: expected a video [..., T, C, H, W], got shape {list(x.shape)}")
        check_video(x, name, "[..., T, C, H, W]")
        check_frames(x, name)
    if target.device != pred.device:
        raise ValueError(f"target: expected the device of pred ({pred.device}), got {target.device}")
    if target.dim() > pred.dim() or pred.shape[pred.dim() - target.dim():] != target.shape:
        raise ValueError(f"target: expected the shape of pred {list(pred.shape)} or a trailing part of it "
                         f"(broadcast over samples), got {list(target.shape)}")


def psnr(pred: torch.Tensor, target: torch.Tensor, *, per_frame: bool = False) -> torch.Tensor:
    """PSNR in dB of videos in [-1, 1] (data range mapped to [0, 1]; see the
    module docstring for what is refused).

    Args:
        pred, target: [..., T, C, H, W]; target may leave out leading
            dimensions of pred (e.g. [B, ...] against [samples, B, ...]).
        per_frame: False: one value per clip from the clip's MSE (the paper's
            protocol), shape [...]; True: one value per frame, [..., T].
    Returns:
        float64 tensor, at most PSNR_MAX (100 dB, where the frames are equal).
    """
    _check_pair(pred, target, per_frame)
    mse = (_unit(pred) - _unit(target)).square().mean(dim=(-3, -2, -1))
    if not per_frame:
        mse = mse.mean(dim=-1)
    return (10 * torch.log10(1 / mse)).clamp(max=PSNR_MAX)


def _gaussian_window(device) -> torch.Tensor:
    x = torch.arange(_WIN, dtype=torch.float64, device=device) - _WIN // 2
    g = torch.exp(-x.square() / (2 * _SIGMA**2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, 'valid' positions only: [N, 1, H, W] -> [N, 1, H-10, W-10]."""
    return F.conv2d(F.conv2d(x, g.view(1, 1, _WIN, 1)), g.view(1, 1, 1, _WIN))


def ssim(pred: torch.Tensor, target: torch.Tensor, *, per_frame: bool = False) -> torch.Tensor:
    """SSIM of videos in [-1, 1] (data range mapped to [0, 1]; see the module
    docstring for what is refused).

    Args:
        pred, target: [..., T, C, H, W], H and W >= 11; target may leave
            out leading dimensions of pred (broadcast over samples).
        per_frame: False: the mean over frames per clip, shape [...];
            True: one value per frame, [..., T].
    Returns:
        float64 tensor.
    """
    _check_pair(pred, target, per_frame)
    *lead, C, H, W = pred.shape
    if H < _WIN or W < _WIN:
        raise ValueError(f"pred: SSIM's {_WIN}x{_WIN} window needs frames of at least {_WIN}x{_WIN}, "
                         f"got {H}x{W}")
    x = _unit(pred).reshape(-1, 1, H, W)
    y = _unit(target).expand(pred.shape).reshape(-1, 1, H, W)
    g = _gaussian_window(x.device)
    mx, my = _blur(x, g), _blur(y, g)
    vx = _blur(x * x, g) - mx * mx
    vy = _blur(y * y, g) - my * my
    cxy = _blur(x * y, g) - mx * my
    c1, c2 = _K1**2, _K2**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    frame = s.mean(dim=(-2, -1)).reshape(*lead, C).mean(dim=-1)
    return frame if per_frame else frame.mean(dim=-1)


def best_of_samples(scores: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Best score over the samples of each clip (max along `dim`), for
    higher-is-better scores such as per-clip PSNR and SSIM of
    [samples, B, T, C, H, W] predictions against [B, T, C, H, W] targets."""
    if scores.dim() == 0:
        raise ValueError("scores: expected a tensor with a samples dimension, got a 0-d tensor")
    return scores.amax(dim=dim)
