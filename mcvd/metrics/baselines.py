"""Scoring video predictions against predictions made without a model, and
the verdict: does the model beat copy-last-frame on held-out clips?

Scores are PSNR and SSIM (mcvd.metrics.psnr_ssim, the paper's protocol) per
frame (mean over clips) and per clip; the comparison pairs the clips, so the
95% interval is that of the per-clip difference model - baseline.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from mcvd.diffusion import predict
from mcvd.metrics.psnr_ssim import psnr, ssim
from mcvd.metrics.stats import summary

MODEL, BASELINE, EMPTY = "MCVD", "copy last frame", "empty frame"


def predict_clips(model, clips, *, pred_frames: int, method: str, steps: int, seed: int, device, progress: bool,
                  guidance: float | None = None, guidance_interval: tuple[int, int] | None = None,
                  batch_size: int = 64):
    """Predict `pred_frames` frames after the first p frames of every clip.

    clips: a data set of [p + pred_frames, C, H, W] clips. guidance, guidance_interval: the
    classifier-free guidance weight and the timesteps it guides (mcvd.predict), or None. batch_size: the
    network's batch; a guided call holds each clip twice (with and without
    its past), so it predicts half as many clips per batch (on a 2-core AMD
    EPYC the shipped model's 192 clips take 111 s so, 132 s with 64 clips
    per guided batch; docs/demo.md). Returns (past [N, p, ...], truth [N, n, ...], prediction
    [N, n, ...]) on the CPU.
    """
    p = model.config.num_frames_cond
    generator = torch.Generator(device).manual_seed(seed)
    pasts, truths, preds = [], [], []
    batch_size = max(1, batch_size // 2) if guidance is not None else batch_size
    for start in tqdm(range(0, len(clips), batch_size), desc="predict", unit="batch", disable=not progress):
        clip = torch.stack([clips[i] for i in range(start, min(start + batch_size, len(clips)))])
        past, truth = clip[:, :p], clip[:, p:]
        pred = predict(model, past.to(device), pred_frames, method=method, steps=steps, guidance=guidance,
                       guidance_interval=guidance_interval, generator=generator)
        pasts.append(past)
        truths.append(truth)
        preds.append(pred.cpu())
    return torch.cat(pasts), torch.cat(truths), torch.cat(preds)


def score(pred: torch.Tensor, truth: torch.Tensor) -> dict:
    """PSNR and SSIM of predictions [N, n, C, H, W] against the truth: per
    frame (mean over clips) and per clip (the paper's protocol), as lists."""
    return {
        "psnr_per_frame": psnr(pred, truth, per_frame=True).mean(0).tolist(),
        "ssim_per_frame": ssim(pred, truth, per_frame=True).mean(0).tolist(),
        "psnr_per_clip": psnr(pred, truth).tolist(),
        "ssim_per_clip": ssim(pred, truth).tolist(),
    }


def baselines(past: torch.Tensor, truth: torch.Tensor) -> dict[str, torch.Tensor]:
    """Predictions made without a model, [N, n, C, H, W] like the truth: the last
    past frame held (copy-last-frame), and the empty frame (all background, -1),
    which shows how much PSNR and SSIM reward dark, blurry frames on this data."""
    return {BASELINE: past[:, -1:].expand_as(truth), EMPTY: torch.full_like(truth, -1.0)}


def score_with_baselines(past: torch.Tensor, truth: torch.Tensor, pred: torch.Tensor) -> dict[str, dict]:
    """`score` of the model's predictions (key MODEL) and of each of `baselines`, in that order."""
    return {MODEL: score(pred, truth), **{name: score(x, truth) for name, x in baselines(past, truth).items()}}


def compare(model_scores: dict, baseline_scores: dict) -> dict:
    """Mean per-clip PSNR and SSIM of the model and the baseline, and the
    paired difference model - baseline with its 95% interval over clips."""
    out = {}
    for metric in ("psnr", "ssim"):
        m, b = model_scores[f"{metric}_per_clip"], baseline_scores[f"{metric}_per_clip"]
        out[metric] = {"model": summary(m), "baseline": summary(b),
                       "difference": summary([x - y for x, y in zip(m, b)])}
    return out


def _standing(d: dict) -> str:
    half = d["conf95"]
    if half is None:  # one clip: no interval, so no side can be told
        return "is not distinguishable from"
    if d["mean"] - half > 0:
        return "beats"
    if d["mean"] + half < 0:
        return "is worse than"
    return "is not distinguishable from"


def wins(comparison: dict) -> bool:
    """Whether the model beats the baseline on both PSNR and SSIM (the paired 95% interval above zero)."""
    return all(_standing(comparison[m]["difference"]) == "beats" for m in ("psnr", "ssim"))


def verdict(comparison: dict, device: str, *, who: str = "the model", empty: dict | None = None,
            advice: bool = True) -> str:
    """Does the model beat copy-last-frame on held-out clips? Per metric, by the
    95% interval of the paired difference; with `empty` (its comparison with
    the empty frame) also whether it beats that; with `advice`, what to do
    when it does not win on both."""
    lines = []
    for metric, unit in (("psnr", " dB"), ("ssim", "")):
        d = comparison[metric]["difference"]
        spread = ("; one clip, no interval" if d["conf95"] is None
                  else f" ± {d['conf95']:.2g}, 95% interval over clips")
        lines.append(f"on {metric.upper()} {who} {_standing(d)} copy-last-frame ({d['mean']:+.4g}{unit}{spread})")
    text = "; ".join(lines) + "."
    if empty is not None:
        states = [f"{metric.upper()} {_standing(empty[metric]['difference']).replace('is ', '')} it "
                  f"({empty[metric]['difference']['mean']:+.4g})" for metric in ("psnr", "ssim")]
        text += f" Against the empty frame: {', '.join(states)}."
    if advice and not wins(comparison):
        more = "a GPU (--device cuda) or more time (--minutes)" if device == "cpu" else "more time (--minutes)"
        text += f" Not yet a win on both metrics: train longer, with {more}."
    return text[0].upper() + text[1:]
