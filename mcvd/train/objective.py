"""The MCVD training objective (Voleti et al. 2022, eq. 4 with masks):

    L = E_{x0, p, f, t, eps, m_p, m_f} 1/2 || eps - eps_theta(x_t | m_p p, m_f f, t) ||^2,
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,

summed over the pixels of the k current frames and averaged over the batch,
as the reference code's `anneal_dsm_score_estimation` (losses/dsm.py) does.
A network that predicts x0, v or EDM's F (`ModelConfig.prediction`) is
compared with that target instead (mcvd.schedule.prediction_target), and
min-SNR-gamma weighting (Hang et al. 2023) scales each sample's error by
min(SNR_t, gamma) / SNR_t, / (SNR_t + 1), / 1 or * c_out^2 for eps, v, x0 or
edm, which makes it min(SNR_t, gamma) ||x0 - x0_hat||^2 for every prediction.

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

import dataclasses
from dataclasses import dataclass

import torch

from mcvd.diffusion import Schedule
from mcvd.nn import ModelConfig
from mcvd.schedule import edm_scales, eps_from_prediction, prediction_target


@dataclass
class StepRandomness:
    """Everything random in one step of the objective, for a batch of B clips."""

    t: torch.Tensor          # int64 [B]
    noise: torch.Tensor      # [B, k, C, H, W]
    cond_mask: torch.Tensor  # bool [B, 2]
    flip: torch.Tensor       # bool [B], left-right flip of the whole clip
    # With rollout training (TrainConfig.rollout_prob > 0), else None: which clips are conditioned on
    # predicted frames, and the step and noise of the pass that predicts them.
    rollout: torch.Tensor | None = None       # bool [B]
    rollout_t: torch.Tensor | None = None     # int64 [B]
    rollout_noise: torch.Tensor | None = None  # [B, k, C, H, W]

    def __getitem__(self, rows: slice) -> StepRandomness:
        # dataclasses.astuple would deep-copy the tensors.
        return StepRandomness(*(None if v is None else v[rows]
                                for v in (getattr(self, f.name) for f in dataclasses.fields(self))))


def draw_step_randomness(cfg: ModelConfig, batch: int, *, prob_mask_cond: float, prob_mask_future: float,
                         prob_mask_sync: bool, random_flip: bool, generator: torch.Generator,
                         device: torch.device, rollout_prob: float = 0.0) -> StepRandomness:
    """Draw t, eps, the masks and the flips of `batch` clips from `generator`, in a fixed order; with
    rollout_prob > 0, then the rollout draws (so a run without them draws what it always did)."""
    k, C, S = cfg.num_frames, cfg.channels, cfg.image_size
    t = torch.randint(0, cfg.num_timesteps, (batch,), generator=generator, device=device)
    noise = torch.randn((batch, k, C, S, S), generator=generator, device=device)
    u = torch.rand((batch, 2), generator=generator, device=device)
    flip_u = torch.rand((batch,), generator=generator, device=device)
    # P(u >= p) = 1 - p exactly for p in [0, 1], u in [0, 1): p = 0 never masks, p = 1 always does.
    past = u[:, 0] >= prob_mask_cond
    future = past if prob_mask_sync else u[:, 1] >= prob_mask_future
    flip = flip_u < 0.5 if random_flip else torch.zeros_like(past)
    rnd = StepRandomness(t, noise, torch.stack([past, future], dim=1), flip)
    if rollout_prob > 0:
        rnd.rollout = torch.rand((batch,), generator=generator, device=device) < rollout_prob
        rnd.rollout_t = torch.randint(0, cfg.num_timesteps, (batch,), generator=generator, device=device)
        rnd.rollout_noise = torch.randn((batch, k, C, S, S), generator=generator, device=device)
    return rnd


def split_clip(clip: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[B, p+k+f, C, H, W] -> (x0 [B, k, C, H, W], cond [B, p+f, C, H, W] or None when p + f == 0)."""
    p, k, f = cfg.num_frames_cond, cfg.num_frames, cfg.num_frames_future
    if clip.dim() != 5 or clip.shape[1] != p + k + f:
        raise ValueError(f"clip: expected [B, p+k+f = {p + k + f}, C, H, W], got shape {list(clip.shape)}")
    x0 = clip[:, p:p + k]
    if p + f == 0:
        return x0, None
    return x0, torch.cat([clip[:, :p], clip[:, p + k:]], dim=1)


def rollout_clip(model, clip: torch.Tensor, rnd: StepRandomness, schedule: Schedule,
                 cfg: ModelConfig) -> torch.Tensor:
    """[B, p+2k, C, H, W] -> [B, p+k, ...]: the current block (the last k frames) after the p frames
    before it, which are the truth, or, where rnd.rollout, the last p frames of the true past followed
    by the network's prediction of the block before the current one (TrainConfig.rollout_prob)."""
    p, k = cfg.num_frames_cond, cfg.num_frames
    if clip.dim() != 5 or clip.shape[1] != p + 2 * k:
        raise ValueError(f"clip: expected [B, p+2k = {p + 2 * k}, C, H, W] for rollout training, "
                         f"got shape {list(clip.shape)}")
    true = clip[:, k:]
    with torch.no_grad():
        x0, cond = split_clip(clip[:, :p + k], cfg)
        x_t = schedule.q_sample(x0, rnd.rollout_t, rnd.rollout_noise)
        given = torch.ones((clip.shape[0], 2), dtype=torch.bool, device=clip.device)
        out = model(x_t, rnd.rollout_t, cond, given, raw=True)
        a, s = schedule.signal_noise_at(rnd.rollout_t)
        eps = eps_from_prediction(out, x_t, a, s, cfg.prediction, cfg.sigma_data)
        shape = (-1,) + (1,) * (x_t.dim() - 1)
        predicted = ((x_t - s.view(shape) * eps) / a.view(shape)).clamp(-1, 1).to(clip.dtype)
    rolled = torch.cat([clip[:, :p], predicted], dim=1)[:, -p:]
    past = torch.where(rnd.rollout.view(-1, 1, 1, 1, 1), rolled, true[:, :p])
    return torch.cat([past, true[:, p:]], dim=1)


def min_snr_weight(abar_t: torch.Tensor, prediction: str, gamma: float, sigma_data: float = 0.5) -> torch.Tensor:
    """min-SNR-gamma's weight of the squared error of a `prediction` network, float32 [B]: min(SNR_t, gamma)
    times d x0_hat / d prediction squared (1/SNR_t for eps, 1/(SNR_t + 1) for v, EDM's c_out^2 for edm)."""
    snr = abar_t / (1 - abar_t)
    clipped = snr.clamp(max=gamma)
    if prediction == "edm":
        c_out = edm_scales(abar_t.sqrt(), (1 - abar_t).sqrt(), sigma_data)[2]
        return (clipped * c_out.square()).float()
    return {"eps": clipped / snr, "v": clipped / (snr + 1), "x0": clipped}[prediction].float()


def mcvd_loss(model, clip: torch.Tensor, rnd: StepRandomness, schedule: Schedule, *, weighting: str = "none",
              min_snr_gamma: float = 5.0) -> torch.Tensor:
    """Per-sample loss, float32 [B]: 1/2 ||target - model(x_t, t, cond, cond_mask)||^2 over pixels,
    with the target of the model's prediction (eps in the paper), weighted when weighting = "min_snr".

    model: callable (x_t, t, cond, cond_mask, raw=True) -> its prediction, with a ModelConfig at
        `model.config` (or `model.module.config` for a DistributedDataParallel wrapper).
    clip: [B, p+k+f, C, H, W] in [-1, 1] ([B, p+2k, ...] with rollout draws in rnd, see rollout_clip);
        rnd: the step's draws for these B clips.
    """
    cfg = model.module.config if hasattr(model, "module") else model.config
    clip = torch.where(rnd.flip[:, None, None, None, None], clip.flip(-1), clip)
    if rnd.rollout is not None:
        clip = rollout_clip(model, clip, rnd, schedule, cfg)
    x0, cond = split_clip(clip, cfg)
    x_t = schedule.q_sample(x0, rnd.t, rnd.noise)
    out = model(x_t, rnd.t, cond, None if cond is None else rnd.cond_mask, raw=True)
    if cfg.prediction == "eps":
        target = rnd.noise
    else:
        a, s = schedule.signal_noise_at(rnd.t)
        target = prediction_target(x0, rnd.noise, a, s, cfg.prediction, cfg.sigma_data)
    loss = 0.5 * (target - out.float()).square().flatten(1).sum(1)
    if weighting == "min_snr":
        abar = schedule.alphas_cumprod_on(x0.device)[rnd.t]
        loss = loss * min_snr_weight(abar, cfg.prediction, min_snr_gamma, cfg.sigma_data)
    elif weighting != "none":
        raise ValueError(f"weighting: expected 'none' or 'min_snr', got {weighting!r}")
    return loss
