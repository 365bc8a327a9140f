"""The masked epsilon objective, its random draws, the EMA and the data order."""
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from mcvd.diffusion import Schedule
from mcvd.nn import ModelConfig
from mcvd.train import EMA, StepRandomness, draw_step_randomness, mcvd_loss, split_clip
from mcvd.train.sampler import StepBatchSampler

CFG = ModelConfig(image_size=8, channels=2, num_frames=3, num_frames_cond=2, num_frames_future=1, ngf=4,
                  ch_mult=(1,), attn_resolutions=(), num_res_blocks=1, num_timesteps=50)


def draw(n, **kw):
    args = dict(prob_mask_cond=0.0, prob_mask_future=0.0, prob_mask_sync=False, random_flip=False)
    args.update(kw)
    return draw_step_randomness(CFG, n, generator=torch.Generator().manual_seed(1), device=torch.device("cpu"),
                                **args)


def test_draw_shapes_and_distributions():
    r = draw(20000)
    assert r.t.dtype == torch.int64 and r.t.shape == (20000,)
    assert r.t.min() == 0 and r.t.max() == CFG.num_timesteps - 1
    assert r.noise.shape == (20000, 3, 2, 8, 8)
    assert abs(r.noise.mean()) < 0.01 and abs(r.noise.std() - 1) < 0.01
    assert r.cond_mask.dtype == torch.bool and r.cond_mask.shape == (20000, 2)
    assert r.cond_mask.all() and not r.flip.any()


@pytest.mark.parametrize("p_cond,p_fut", [(0.3, 0.0), (0.0, 0.6), (0.5, 0.25), (1.0, 1.0)])
def test_masks_are_independent_bernoullis(p_cond, p_fut):
    n = 20000
    m = draw(n, prob_mask_cond=p_cond, prob_mask_future=p_fut).cond_mask.double()
    tol = 4 * 0.5 / n ** 0.5  # 4 standard deviations of a frequency
    assert abs(m[:, 0].mean() - (1 - p_cond)) < tol
    assert abs(m[:, 1].mean() - (1 - p_fut)) < tol
    assert abs((m[:, 0] * m[:, 1]).mean() - (1 - p_cond) * (1 - p_fut)) < tol


def test_sync_masks_the_future_with_the_past():
    m = draw(5000, prob_mask_cond=0.4, prob_mask_future=0.9, prob_mask_sync=True).cond_mask
    assert torch.equal(m[:, 0], m[:, 1]) and 0.55 < m[:, 0].double().mean() < 0.65


def test_flips_and_slicing():
    r = draw(4000, random_flip=True)
    assert 0.45 < r.flip.double().mean() < 0.55
    part = r[slice(10, 20)]
    assert torch.equal(part.noise, r.noise[10:20]) and torch.equal(part.t, r.t[10:20])
    # The same generator state draws the same values: the stream is reproducible.
    torch.testing.assert_close(draw(4000, random_flip=True).noise, r.noise, rtol=0, atol=0)


def test_split_clip_takes_past_current_future_in_order():
    clip = torch.arange(6.0).view(1, 6, 1, 1, 1).expand(2, 6, 2, 8, 8)
    x0, cond = split_clip(clip, CFG)
    assert x0[0, :, 0, 0, 0].tolist() == [2.0, 3.0, 4.0]
    assert cond[0, :, 0, 0, 0].tolist() == [0.0, 1.0, 5.0]
    with pytest.raises(ValueError, match=r"clip: expected \[B, p\+k\+f = 6, C, H, W\], got shape \[2, 5, 2, 8, 8\]"):
        split_clip(clip[:, :5], CFG)


class Recorder(nn.Module):
    """eps_theta = 0.5 * x_t; records its inputs."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.calls = []

    def forward(self, x_t, t, cond=None, cond_mask=None, raw=False):
        self.calls.append((x_t, t, cond, cond_mask))
        return 0.5 * x_t


def test_loss_against_a_float64_computation():
    B = 5
    clip = torch.rand(B, 6, 2, 8, 8) * 2 - 1
    r = draw(B, prob_mask_cond=0.5, random_flip=True)
    r = StepRandomness(r.t, r.noise, r.cond_mask, torch.tensor([True, False, True, False, False]))
    model = Recorder(CFG)
    loss = mcvd_loss(model, clip, r, Schedule.linear(CFG.num_timesteps))

    # Independent expectation: abar from numpy, frames flipped by index, 1/2 sum of squares per sample.
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, CFG.num_timesteps))[r.t.numpy()]
    c = clip.double().numpy().copy()
    c[[0, 2]] = c[[0, 2]][..., ::-1]
    x0 = c[:, 2:5]
    a = abar[:, None, None, None, None]
    x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * r.noise.double().numpy()
    expected = 0.5 * ((r.noise.double().numpy() - 0.5 * x_t) ** 2).reshape(B, -1).sum(1)
    torch.testing.assert_close(loss.double(), torch.from_numpy(expected), rtol=1e-5, atol=0)

    _, t_seen, cond_seen, mask_seen = model.calls[0]
    assert torch.equal(t_seen, r.t) and torch.equal(mask_seen, r.cond_mask)
    torch.testing.assert_close(cond_seen.double(), torch.from_numpy(np.concatenate([c[:, :2], c[:, 5:]], 1)),
                               rtol=0, atol=0)


def test_a_zero_model_costs_half_the_noise_energy():
    class Zero(Recorder):
        def forward(self, x_t, t, cond=None, cond_mask=None, raw=False):
            return torch.zeros_like(x_t)

    r = draw(3)
    loss = mcvd_loss(Zero(CFG), torch.zeros(3, 6, 2, 8, 8), r, Schedule.linear(CFG.num_timesteps))
    torch.testing.assert_close(loss, 0.5 * r.noise.square().sum((1, 2, 3, 4)))


def test_unconditional_model_gets_no_cond():
    cfg = ModelConfig(image_size=8, num_frames=2, num_frames_cond=0, ngf=4, ch_mult=(1,), attn_resolutions=())
    model = Recorder(cfg)
    r = draw_step_randomness(cfg, 2, prob_mask_cond=0.0, prob_mask_future=0.0, prob_mask_sync=False,
                             random_flip=False, generator=torch.Generator().manual_seed(0), device="cpu")
    mcvd_loss(model, torch.zeros(2, 2, 1, 8, 8), r, Schedule.linear())
    assert model.calls[0][2] is None and model.calls[0][3] is None


def test_ema_closed_form():
    model = nn.Linear(3, 2)
    model.register_buffer("counter", torch.zeros(1))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ema = EMA(model, rate=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(-2.0)
        model.counter.fill_(7.0)
    for _ in range(5):
        ema.update(model)
    # s_n = rate^n s_0 + (1 - rate^n) w for constant weights w
    r = 0.9 ** 5
    torch.testing.assert_close(ema.state_dict()["weight"], r * start["weight"] + (1 - r) * 1.0)
    torch.testing.assert_close(ema.state_dict()["bias"], r * start["bias"] + (1 - r) * -2.0)
    assert ema.state_dict()["counter"].item() == 7.0  # buffers are copied
    copy = nn.Linear(3, 2)
    copy.register_buffer("counter", torch.zeros(1))
    copy.load_state_dict(ema.state_dict())
    with pytest.raises(ValueError, match=r"state: EMA keys do not match the model \(missing \['counter'\]"):
        ema.load_state_dict({"weight": model.weight, "bias": model.bias})
    with pytest.raises(ValueError, match=r"rate: expected a float in \[0, 1\), got 1.0"):
        EMA(model, 1.0)


def test_sampler_visits_every_clip_once_per_epoch_and_resumes():
    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    s = StepBatchSampler(10, 4, seed=3)  # 2 batches per epoch, 2 clips dropped
    batches = take(s, 6)
    for epoch in range(3):
        seen = batches[2 * epoch] + batches[2 * epoch + 1]
        assert len(set(seen)) == 8 and set(seen) <= set(range(10))
    assert batches[:2] != batches[2:4]  # a new order every epoch
    assert take(StepBatchSampler(10, 4, seed=3, start_step=3), 3) == batches[3:6]
    assert s.position(5) == (2, 1)
    ranks = [take(StepBatchSampler(10, 4, seed=3, rank=r, world_size=2), 6) for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == batches
    with pytest.raises(ValueError, match=r"batch_size: expected a multiple of the 3 processes, got 4"):
        StepBatchSampler(10, 4, seed=0, world_size=3)
    with pytest.raises(ValueError, match=r"num_clips: the data set has 3 clips, fewer than one batch of 4"):
        StepBatchSampler(3, 4, seed=0)


def _x_t_and_abar(clip, r):
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, CFG.num_timesteps))[r.t.numpy()][:, None, None, None, None]
    x0 = clip.double().numpy()[:, 2:5]
    return x0, np.sqrt(abar) * x0 + np.sqrt(1 - abar) * r.noise.double().numpy(), abar


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "edm"])
def test_min_snr_loss_is_the_clipped_snr_times_the_x0_error(prediction):
    """min-SNR-gamma: the same weighted x0 error, whatever the network predicts (Hang et al. 2023, eq. 5)."""
    import dataclasses

    B = 6
    clip = torch.rand(B, 6, 2, 8, 8) * 2 - 1
    r = draw(B)
    model = Recorder(dataclasses.replace(CFG, prediction=prediction, sigma_data=0.6))  # predicts y = 0.5 x_t
    loss = mcvd_loss(model, clip, r, Schedule.linear(CFG.num_timesteps), weighting="min_snr", min_snr_gamma=5.0)
    x0, x_t, abar = _x_t_and_abar(clip, r)
    a, s, y = np.sqrt(abar), np.sqrt(1 - abar), 0.5 * x_t
    sigma = s / a  # EDM (Karras et al. 2022, table 1): D = c_skip x + c_out F on x = x_t / a = x0 + sigma eps
    c_skip, c_out = 0.36 / (sigma**2 + 0.36), sigma * 0.6 / np.sqrt(sigma**2 + 0.36)
    x0_hat = {"eps": (x_t - s * y) / a, "x0": y, "v": a * x_t - s * y, "edm": c_skip * x_t / a + c_out * y}[prediction]
    snr = (abar / (1 - abar)).reshape(B)
    expected = 0.5 * np.minimum(snr, 5.0) * ((x0 - x0_hat) ** 2).reshape(B, -1).sum(1)
    torch.testing.assert_close(loss.double(), torch.from_numpy(expected), rtol=2e-4, atol=0)


def test_v_loss_compares_with_v():
    import dataclasses

    B = 4
    clip = torch.rand(B, 6, 2, 8, 8) * 2 - 1
    r = draw(B)
    loss = mcvd_loss(Recorder(dataclasses.replace(CFG, prediction="v")), clip, r, Schedule.linear(CFG.num_timesteps))
    x0, x_t, abar = _x_t_and_abar(clip, r)
    v = np.sqrt(abar) * r.noise.double().numpy() - np.sqrt(1 - abar) * x0
    expected = 0.5 * ((v - 0.5 * x_t) ** 2).reshape(B, -1).sum(1)
    torch.testing.assert_close(loss.double(), torch.from_numpy(expected), rtol=1e-5, atol=0)


def test_unknown_weighting_is_refused():
    with pytest.raises(ValueError, match="weighting"):
        mcvd_loss(Recorder(CFG), torch.zeros(2, 6, 2, 8, 8), draw(2), Schedule.linear(CFG.num_timesteps),
                  weighting="snr")


# Rollout training (TrainConfig.rollout_prob): p = 3 past frames, k = 2, so the predicted block fills two of
# the three condition frames.
ROLL = ModelConfig(image_size=8, channels=1, num_frames=2, num_frames_cond=3, ngf=4, ch_mult=(1,),
                   attn_resolutions=(), num_res_blocks=1, num_timesteps=50, prediction="x0")


def roll_draw(n, rollout_prob, cfg=ROLL):
    return draw_step_randomness(cfg, n, prob_mask_cond=0.0, prob_mask_future=0.0, prob_mask_sync=False,
                                random_flip=False, generator=torch.Generator().manual_seed(3), device="cpu",
                                rollout_prob=rollout_prob)


def test_rollout_draws_come_after_the_usual_ones():
    plain, rolled = roll_draw(4000, 0.0), roll_draw(4000, 0.3)
    assert plain.rollout is None and plain.rollout_t is None and plain.rollout_noise is None
    assert torch.equal(plain.t, rolled.t) and torch.equal(plain.noise, rolled.noise)
    assert 0.27 < rolled.rollout.double().mean() < 0.33
    assert rolled.rollout_noise.shape == (4000, 2, 1, 8, 8) and rolled.rollout_t.max() < ROLL.num_timesteps
    part = rolled[slice(5, 9)]
    assert torch.equal(part.rollout, rolled.rollout[5:9]) and torch.equal(part.rollout_t, rolled.rollout_t[5:9])


class Constant(Recorder):
    """Predicts x0 = 0.25 everywhere (or, with prediction eps, the noise of the first call's draws)."""

    def __init__(self, config, eps=None):
        super().__init__(config)
        self.eps = eps

    def forward(self, x_t, t, cond=None, cond_mask=None, raw=False):
        self.calls.append((x_t, t, cond, cond_mask))
        if self.eps is not None and len(self.calls) == 1:
            return self.eps
        return torch.full_like(x_t, 0.25)


def test_rollout_conditions_the_drawn_clips_on_the_predicted_block():
    B = 4
    clip = torch.arange(7.0).view(1, 7, 1, 1, 1).expand(B, 7, 1, 8, 8) / 10  # frame i holds i / 10
    r = roll_draw(B, 0.5)
    r.rollout = torch.tensor([True, False, True, False])
    model = Constant(ROLL)
    mcvd_loss(model, clip, r, Schedule.linear(ROLL.num_timesteps))
    (x_t1, t1, cond1, mask1), (x_t2, t2, cond2, _) = model.calls
    # The first pass predicts frames 3-4 from the true frames 0-2, every clip given its past.
    assert cond1[0, :, 0, 0, 0].tolist() == pytest.approx([0.0, 0.1, 0.2]) and mask1.all()
    assert torch.equal(t1, r.rollout_t) and torch.equal(t2, r.t)
    a, s = Schedule.linear(ROLL.num_timesteps).signal_noise_at(r.rollout_t)
    rows = (-1, 1, 1, 1, 1)
    torch.testing.assert_close(x_t1, a.view(rows) * clip[:, 3:5] + s.view(rows) * r.rollout_noise)
    # The current block is frames 5-6 for every clip; its past is frames 2-4, true or (2, predicted, predicted).
    a, s = Schedule.linear(ROLL.num_timesteps).signal_noise_at(r.t)
    torch.testing.assert_close(x_t2, a.view(rows) * clip[:, 5:7] + s.view(rows) * r.noise)
    expected = torch.tensor([[0.2, 0.25, 0.25], [0.2, 0.3, 0.4], [0.2, 0.25, 0.25], [0.2, 0.3, 0.4]])
    torch.testing.assert_close(cond2[:, :, 0, 0, 0], expected)


def test_rollout_turns_an_eps_prediction_into_frames():
    # A network that predicts the very noise added predicts the true block: x0 = (x_t - s eps) / a.
    cfg = dataclasses.replace(ROLL, prediction="eps")
    B = 3
    clip = torch.rand(B, 7, 1, 8, 8, dtype=torch.float64) * 2 - 1
    r = roll_draw(B, 1.0, cfg)
    r.rollout_t = torch.tensor([0, 20, 40])
    model = Constant(cfg, eps=r.rollout_noise.double())
    mcvd_loss(model, clip, r, Schedule.linear(cfg.num_timesteps))
    # (q_sample and signal_noise_at round sqrt(abar) to float32 each its own way: ~1e-6 apart.)
    torch.testing.assert_close(model.calls[1][2][:, 1:], clip[:, 3:5], rtol=0, atol=1e-5)


def test_rollout_needs_the_longer_clip():
    r = roll_draw(2, 0.5)
    with pytest.raises(ValueError, match=r"clip: expected \[B, p\+2k = 7, C, H, W\] for rollout training"):
        mcvd_loss(Constant(ROLL), torch.zeros(2, 5, 1, 8, 8), r, Schedule.linear(ROLL.num_timesteps))
