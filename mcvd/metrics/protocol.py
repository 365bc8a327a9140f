"""The MCVD paper's evaluation protocol (the reference code's `video_gen`).

For each test clip, k samples are drawn given its condition frames; each
sample is scored against the true frames, and the clip keeps its best
sample per metric (best of k): max PSNR, max SSIM, min LPIPS, each chosen
separately. Per-clip scores are:

    PSNR   10 log10(1 / MSE), MSE over all predicted frames in [0, 1]
           (mcvd.metrics.psnr_ssim.psnr)
    SSIM   mean over the predicted frames (mcvd.metrics.psnr_ssim.ssim)
    LPIPS  mean over the predicted frames of AlexNet LPIPS on frames resized
           to 128 x 128 (mcvd.metrics.lpips)

and the report gives their mean, std and 95% interval over clips
(mcvd.metrics.stats). The per-frame curves average, over clips, the
per-frame values of the sample each clip kept for that metric.

Beside best of k, from the same samples: one sample, what a single
prediction scores. Per clip it is the mean of each metric over the clip's k
samples (PSNR from each sample's clip MSE, as above): an estimate of the
expected score of one draw, unbiased like sample 0 alone, with the sampling
noise's variance divided by k (the draws are independent). Its per-frame
curves average the k samples' per-frame values. For PSNR and SSIM best of
k >= one sample per clip, for LPIPS <=; with k = 1 the two are the same.

FVD (mcvd.metrics.fvd) is computed on whole clips with their condition
frames: real = past + true frames (+ future), generated = past + sample
(+ future), one real clip per test clip against all k samples; plus the
mean of the k per-trajectory FVDs. It needs at least 2 clips and clips of at
least 9 frames (I3D); otherwise it is not reported.

Tasks (p past, n predicted, f future frames; k, p, f of the model config):
    predict      past p frames -> the next n (block-autoregressive if n > k)
    interpolate  p past and f future frames -> the k frames between them (n = k)
    generate     no condition -> p + n frames, scored by FVD only (no true
                 frames to compare with), against the real first p + n frames
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from mcvd.diffusion import SamplerConfig, predict
from mcvd.metrics.fvd import fvd_protocol, i3d_features, require_scipy
from mcvd.metrics.i3d import I3D, MIN_FRAMES
from mcvd.metrics.lpips import LPIPS, lpips
from mcvd.metrics.psnr_ssim import psnr, ssim
from mcvd.metrics.stats import summary

TASKS = ("predict", "interpolate", "generate")
# metric: higher is better (best of k is the max) or not (the min)
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False}
I3D_FEATURES = 400  # the dimension of the features FVD compares (I3D's logits)


@dataclass(frozen=True)
class Task:
    """Which frames of a test clip are condition, target and future."""

    name: str
    cond: int    # p, past frames given (generate: the real frames prepended for FVD)
    pred: int    # n, frames sampled after them
    future: int  # f, frames given after the target (interpolate only)

    @classmethod
    def of(cls, name: str, config, *, cond: int | None = None, pred: int | None = None) -> Task:
        """The task `name` for a model with this ModelConfig; cond defaults to its
        num_frames_cond, pred to its num_frames."""
        if name not in TASKS:
            raise ValueError(f"task: expected one of {TASKS}, got {name!r}")
        p, k, f = config.num_frames_cond, config.num_frames, config.num_frames_future
        cond = p if cond is None else cond
        pred = k if pred is None else pred
        if pred < 1:
            raise ValueError(f"pred: expected >= 1 frames to predict, got {pred}")
        if name != "generate" and cond != p:
            raise ValueError(f"cond: the model conditions on num_frames_cond={p} past frames, got {cond}")
        if name == "generate" and cond < 0:
            raise ValueError(f"cond: expected >= 0 real frames before the generated ones, got {cond}")
        if name == "generate" and p == 0 and cond + pred > k:  # no past frames: no rollout past one block
            raise ValueError(f"pred: a model without past frames generates at most num_frames={k} frames, got "
                             f"cond + pred = {cond + pred}")
        if name == "predict" and p == 0:
            raise ValueError("task: 'predict' needs a model with past frames (num_frames_cond > 0)")
        if name == "interpolate":
            if f == 0:
                raise ValueError("task: 'interpolate' needs a model with future frames (num_frames_future > 0)")
            if pred != k:
                raise ValueError(f"pred: interpolation fills exactly the model's num_frames={k} frames, got {pred}")
        return cls(name, cond, pred, f if name == "interpolate" else 0)

    @property
    def clip_frames(self) -> int:
        return self.cond + self.pred + self.future

    @property
    def scored(self) -> bool:
        """Whether samples have true frames to be compared with (not in generation)."""
        return self.name != "generate"


def score_samples(samples: torch.Tensor, target: torch.Tensor, lpips_model: LPIPS) -> dict[str, torch.Tensor]:
    """Per-frame scores of each sample: samples [k, B, n, C, H, W] against target
    [B, n, C, H, W] -> {"psnr", "ssim", "lpips": float64 [k, B, n]} on the CPU,
    plus "psnr_clip" [k, B] (from the clip's MSE, not the mean of frame PSNRs)."""
    target = target.expand_as(samples)
    return {
        "psnr": psnr(samples, target, per_frame=True).cpu(),
        "psnr_clip": psnr(samples, target).cpu(),
        "ssim": ssim(samples, target, per_frame=True).cpu(),
        "lpips": lpips(samples, target, model=lpips_model).double().cpu(),
    }


def choose_best(clip: torch.Tensor, frames: torch.Tensor, higher_is_better: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """clip [k, N] per-sample clip scores, frames [k, N, n] their per-frame scores ->
    (best clip score [N], per-frame scores of that sample [N, n])."""
    best = clip.argmax(0) if higher_is_better else clip.argmin(0)
    cols = torch.arange(clip.shape[1])
    return clip[best, cols], frames[best, cols]


def one_sample(clip: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """clip [k, N] per-sample clip scores, frames [k, N, n] their per-frame scores ->
    (mean over the k samples [N], per-frame mean over the k samples [N, n]):
    the expected score of a single sample per clip."""
    return clip.mean(0), frames.mean(0)


def aggregate(clip_scores: dict[str, torch.Tensor], frame_scores: dict[str, torch.Tensor]) -> dict:
    """Best of k and one sample from the scores of k samples per clip.

    clip_scores: {"psnr", "ssim", "lpips": [k, N]} per-sample clip scores.
    frame_scores: {"psnr", "ssim", "lpips": [k, N, n]} their per-frame scores.
    Returns {"metrics", "per_frame", "per_clip"} of best of k (the paper's
    protocol; choose_best) with "one_sample" holding the same three entries
    for the mean over the k samples (one_sample).
    """
    best = {"metrics": {}, "per_frame": {}, "per_clip": {}}
    single = {"metrics": {}, "per_frame": {}, "per_clip": {}}
    for name, higher in HIGHER_IS_BETTER.items():
        clip, frames = clip_scores[name], frame_scores[name]
        for entry, (per_clip, curves) in ((best, choose_best(clip, frames, higher)),
                                          (single, one_sample(clip, frames))):
            entry["metrics"][name] = summary(per_clip.tolist())
            entry["per_clip"][name] = per_clip.tolist()
            curve = [summary(curves[:, j].tolist()) for j in range(curves.shape[1])]
            entry["per_frame"][name] = {"mean": [c["mean"] for c in curve], "conf95": [c["conf95"] for c in curve]}
    return {**best, "one_sample": single}


def evaluate(model, clips, task: Task, *, samples: int, num_clips: int | None = None, batch_size: int = 8,
             sampler: SamplerConfig = SamplerConfig(), generator: torch.Generator | None = None,
             compute_fvd: bool = True, lpips_model: LPIPS | None = None, i3d_model: I3D | None = None,
             progress: bool = False) -> dict:
    """Run the protocol on the first `num_clips` clips of `clips`.

    model: an MCVD network in eval mode, on the device to sample on.
    clips: a data set of [T, C, H, W] clips in [-1, 1] with T >= task.clip_frames.
    samples: k, samples per clip. batch_size: clips per sampling call (each
        call draws k * batch_size videos).
    sampler: the sampler's options (mcvd.SamplerConfig; default 100 DDIM steps).
    generator: source of the sampler's random draws (see mcvd.predict).
    compute_fvd: False skips FVD (and the I3D network).
    lpips_model, i3d_model: metric networks to use (default: built on the
        model's device).
    Returns a JSON-ready dict: "metrics" {name: {"mean", "std", "conf95"} or
    float}, "per_frame" {name: {"mean": [n], "conf95": [n]}}, "per_clip"
    {name: [N]} of best of k; "one_sample" {"metrics", "per_frame",
    "per_clip"}, the same for one sample (the mean over the k; {} when
    generating: nothing is scored but FVD); "notes" [str].
    """
    if samples < 1:
        raise ValueError(f"samples: expected >= 1, got {samples}")
    if not isinstance(sampler, SamplerConfig):
        raise TypeError(f"sampler: expected an mcvd.SamplerConfig, got {type(sampler).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    total = len(clips) if num_clips is None else num_clips
    if not 1 <= total <= len(clips):
        raise ValueError(f"num_clips: expected 1 .. {len(clips)} (clips in the data), got {num_clips}")
    device = next(model.parameters()).device
    if not task.scored:  # generation: FVD is its only score, so what keeps FVD from it is refused before sampling
        if not compute_fvd:
            raise ValueError("compute_fvd: the task 'generate' is scored by FVD alone: nothing would be measured")
        if task.clip_frames < MIN_FRAMES:
            raise ValueError(f"pred: generation is scored by FVD, whose I3D network needs clips of at least "
                             f"{MIN_FRAMES} frames; got cond {task.cond} + pred {task.pred} = {task.clip_frames}")
        if total < 2:
            raise ValueError(f"num_clips: generation is scored by FVD, which needs at least 2 clips; got {total}")
    notes = []
    if compute_fvd and task.clip_frames < MIN_FRAMES:
        notes.append(f"FVD not computed: clips of {task.clip_frames} frames, I3D needs at least {MIN_FRAMES}")
        compute_fvd = False
    if compute_fvd and total < 2:
        notes.append("FVD not computed: it needs at least 2 clips")
        compute_fvd = False
    if compute_fvd and total < I3D_FEATURES:
        notes.append(f"FVD from {total} clips, fewer than I3D's {I3D_FEATURES} features: its covariances are "
                     f"singular and the distance is biased upward; compare FVDs over equal numbers of clips only")
    if task.scored and lpips_model is None:
        lpips_model = LPIPS("alex").to(device)
    if compute_fvd:  # fail before sampling, not after it
        require_scipy()
        if i3d_model is None:
            i3d_model = I3D().to(device)

    collected = {name: [] for name in ("psnr", "psnr_clip", "ssim", "lpips")}
    real_feats, fake_feats = [], []
    batches = range(0, total, batch_size)
    for start in tqdm(batches, desc=f"mcvd eval ({task.name})", unit="batch", disable=not progress):
        end = min(start + batch_size, total)
        clip = torch.stack([clips[i] for i in range(start, end)]).to(device)
        if clip.shape[1] < task.clip_frames:
            raise ValueError(f"clips: expected clips of at least {task.clip_frames} frames, got {clip.shape[1]}")
        clip = clip[:, :task.clip_frames]
        p, n = task.cond, task.pred
        past, target, future = clip[:, :p], clip[:, p:p + n], clip[:, p + n:]
        if task.name == "generate":
            video = predict(model, None, p + n, samples=samples, batch_size=end - start, sampler=sampler,
                            generator=generator, device=device)
        else:
            video = predict(model, past, n, future=future if task.future else None, samples=samples,
                            sampler=sampler, generator=generator)
        video = video.reshape(samples, end - start, *video.shape[-4:])  # samples == 1 drops the samples axis
        if task.scored:
            for name, value in score_samples(video, target, lpips_model).items():
                collected[name].append(value)
        if compute_fvd:
            real_feats.append(i3d_features(clip, model=i3d_model))
            if task.name == "generate":
                fake = video
            else:
                fake = torch.cat([past.expand(samples, *past.shape), video, future.expand(samples, *future.shape)], dim=2)
            feats = i3d_features(fake.flatten(0, 1), model=i3d_model)  # sample-major: [k * B, 400]
            fake_feats.append(feats.unflatten(0, (samples, end - start)).transpose(0, 1))

    result = {"metrics": {}, "per_frame": {}, "per_clip": {}, "one_sample": {}}
    if task.scored:
        scores = {name: torch.cat(v, dim=1) for name, v in collected.items()}  # [k, N, n] / [k, N]
        clip_scores = {"psnr": scores.pop("psnr_clip"), **{m: scores[m].mean(-1) for m in ("ssim", "lpips")}}
        result.update(aggregate(clip_scores, scores))
    result["notes"] = notes
    if compute_fvd:
        result["metrics"].update(fvd_protocol(torch.cat(real_feats), torch.cat(fake_feats)))
    return result
