"""The MCVD training objective (Voleti et al. 2022, eq. 4 with masks):

    L = E_{x0, p, f, t, eps, m_p, m_f} 1/2 || eps - eps_theta(x_t | m_p p, m_f f, t) ||^2,
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,

summed over the pixels of the k current frames and averaged over the batch,
as the reference code's `anneal_dsm_score_estimation` (losses/dsm.py) does.
A network that predicts x0 or v (`ModelConfig.prediction`) is compared with
that target instead (mcvd.schedule.prediction_target), and min-SNR-gamma
weighting (Hang et al. 2023) scales each sample's error by
min(SNR_t, gamma) / SNR_t, / (SNR_t + 1) or / 1 for eps, v or x0, which makes
it min(SNR_t, gamma) ||x0 - x0_hat||^2 for every prediction.

| code       | symbol                                        |
|------------|-----------------------------------------------|
| x0         | the k current frames                          |
| cond       | p past then f future frames                   |
| cond_mask  | (m_p, m_f), True = block given                |
| t          | DDPM step, uniform in 0..T-1                  |
| noise      | eps ~ N(0, I)                                 |

Masks as in the reference's `conditioning_fn` (runners/ncsn_runner.py): the
past is masked with probability prob_mask_cond; the future with probability
prob_mask_future, or, with prob_mask_sync, exactly when the past is.

The random draws are made by the caller (`draw_step_randomness`) for the
whole global batch, so the objective itself is a pure function.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mcvd.diffusion import Schedule
from mcvd.nn import ModelConfig
from mcvd.schedule import prediction_target


@dataclass
class StepRandomness:
    """Everything random in one step of the objective, for a batch of B clips."""

    t: torch.Tensor          # int64 [B]
    noise: torch.Tensor      # [B, k, C, H, W]
    cond_mask: torch.Tensor  # bool [B, 2]
    flip: torch.Tensor       # bool [B], left-right flip of the whole clip

    def __getitem__(self, rows: slice) -> StepRandomness:
        return StepRandomness(self.t[rows], self.noise[rows], self.cond_mask[rows], self.flip[rows])


def draw_step_randomness(cfg: ModelConfig, batch: int, *, prob_mask_cond: float, prob_mask_future: float,
                         prob_mask_sync: bool, random_flip: bool, generator: torch.Generator,
                         device: torch.device) -> StepRandomness:
    """Draw t, eps, the masks and the flips of `batch` clips from `generator`, in a fixed order."""
    k, C, S = cfg.num_frames, cfg.channels, cfg.image_size
    t = torch.randint(0, cfg.num_timesteps, (batch,), generator=generator, device=device)
    noise = torch.randn((batch, k, C, S, S), generator=generator, device=device)
    u = torch.rand((batch, 2), generator=generator, device=device)
    flip_u = torch.rand((batch,), generator=generator, device=device)
    # P(u >= p) = 1 - p exactly for p in [0, 1], u in [0, 1): p = 0 never masks, p = 1 always does.
    past = u[:, 0] >= prob_mask_cond
    future = past if prob_mask_sync else u[:, 1] >= prob_mask_future
    flip = flip_u < 0.5 if random_flip else torch.zeros_like(past)
    return StepRandomness(t, noise, torch.stack([past, future], dim=1), flip)


def split_clip(clip: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[B, p+k+f, C, H, W] -> (x0 [B, k, C, H, W], cond [B, p+f, C, H, W] or None when p + f == 0)."""
    p, k, f = cfg.num_frames_cond, cfg.num_frames, cfg.num_frames_future
    if clip.dim() != 5 or clip.shape[1] != p + k + f:
        raise ValueError(f"clip: expected [B, p+k+f = {p + k + f}, C, H, W], got shape {list(clip.shape)}")
    x0 = clip[:, p:p + k]
    if p + f == 0:
        return x0, None
    return x0, torch.cat([clip[:, :p], clip[:, p + k:]], dim=1)


def min_snr_weight(abar_t: torch.Tensor, prediction: str, gamma: float) -> torch.Tensor:
    """min-SNR-gamma's weight of the squared error of a `prediction` network, float32 [B]."""
    snr = abar_t / (1 - abar_t)
    clipped = snr.clamp(max=gamma)
    return {"eps": clipped / snr, "v": clipped / (snr + 1), "x0": clipped}[prediction].float()


def mcvd_loss(model, clip: torch.Tensor, rnd: StepRandomness, schedule: Schedule, *, weighting: str = "none",
              min_snr_gamma: float = 5.0) -> torch.Tensor:
    """Per-sample loss, float32 [B]: 1/2 ||target - model(x_t, t, cond, cond_mask)||^2 over pixels,
    with the target of the model's prediction (eps in the paper), weighted when weighting = "min_snr".

    model: callable (x_t, t, cond, cond_mask, raw=True) -> its prediction, with a ModelConfig at
        `model.config` (or `model.module.config` for a DistributedDataParallel wrapper).
    clip: [B, p+k+f, C, H, W] in [-1, 1]; rnd: the step's draws for these B clips.
    """
    cfg = model.module.config if hasattr(model, "module") else model.config
    clip = torch.where(rnd.flip[:, None, None, None, None], clip.flip(-1), clip)
    x0, cond = split_clip(clip, cfg)
    x_t = schedule.q_sample(x0, rnd.t, rnd.noise)
    out = model(x_t, rnd.t, cond, None if cond is None else rnd.cond_mask, raw=True)
    if cfg.prediction == "eps":
        target = rnd.noise
    else:
        a, s = schedule.signal_noise_at(rnd.t)
        target = prediction_target(x0, rnd.noise, a, s, cfg.prediction)
    loss = 0.5 * (target - out.float()).square().flatten(1).sum(1)
    if weighting == "min_snr":
        abar = schedule.alphas_cumprod_on(x0.device)[rnd.t]
        loss = loss * min_snr_weight(abar, cfg.prediction, min_snr_gamma)
    elif weighting != "none":
        raise ValueError(f"weighting: expected 'none' or 'min_snr', got {weighting!r}")
    return loss
