"""The network's parameterisation (ModelConfig.prediction: eps, x0 or v) and schedule:
what it predicts, the eps it returns, and what is kept in its files."""
import dataclasses
import math

import numpy as np
import pytest
import torch

import mcvd
from mcvd.nn import ModelConfig, save_model
from mcvd.schedule import PREDICTIONS, Schedule, eps_from_prediction, prediction_target

CFG = ModelConfig(image_size=8, channels=1, num_frames=2, num_frames_cond=2, ngf=8, ch_mult=(1, 2),
                  num_res_blocks=1, attn_resolutions=(4,), n_head_channels=-1, dropout=0.0, num_timesteps=100)


def _angles(t, T, schedule):
    """(cos phi, sin phi) with x_t = cos phi x0 + sin phi eps, from numpy in float64 (Salimans & Ho 2022)."""
    if schedule == "linear":
        betas = np.linspace(1e-4, 0.02, T)
    else:
        f = lambda i: math.cos((i / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        betas = np.minimum([1 - f(i + 1) / f(i) for i in range(T)], 0.999)
    abar = np.cumprod(1 - betas)[t]
    return torch.from_numpy(np.sqrt(abar)), torch.from_numpy(np.sqrt(1 - abar))


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_target_and_implied_eps_invert_each_other(prediction):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(6, 2, 3, 5, dtype=torch.float64, generator=g) * 2 - 1, torch.randn(6, 2, 3, 5, generator=g,
                                                                                               dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 50, 98, 99])
    a, s = _angles(t.numpy(), 100, "linear")
    x_t = a.view(-1, 1, 1, 1) * x0 + s.view(-1, 1, 1, 1) * noise
    y = prediction_target(x0, noise, a, s, prediction)
    expected = {"eps": noise, "x0": x0, "v": a.view(-1, 1, 1, 1) * noise - s.view(-1, 1, 1, 1) * x0}[prediction]
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(eps_from_prediction(y, x_t, a, s, prediction), noise, rtol=0, atol=1e-12)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_signal_noise_matches_the_betas(schedule):
    a, s = Schedule.named(schedule, 100).signal_noise()
    ea, es = _angles(np.arange(100), 100, schedule)
    assert a.dtype == s.dtype == torch.float32
    torch.testing.assert_close(a.double(), ea, rtol=1e-7, atol=0)
    torch.testing.assert_close(s.double(), es, rtol=1e-7, atol=0)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_tables_at_timesteps_are_the_tables_rows(schedule):
    """What a training step reads at its timesteps (from the table kept on the
    device) is the same as the rows of the tables made in float64, bit for bit."""
    sched = Schedule.named(schedule, 100)
    t = torch.tensor([0, 7, 99, 7])
    a, s = sched.signal_noise_at(t)
    ea, es = sched.signal_noise()
    assert torch.equal(a, ea[t]) and torch.equal(s, es[t])
    kept = sched.alphas_cumprod_on("cpu")
    assert kept is sched.alphas_cumprod_on(torch.device("cpu")) and torch.equal(kept, sched.alphas_cumprod)
    x0, noise = torch.randn(4, 3), torch.randn(4, 3)
    abar = sched.alphas_cumprod[t].float()[:, None]
    assert torch.equal(sched.q_sample(x0, t, noise), abar.sqrt() * x0 + (1 - abar).sqrt() * noise)
    ea64, es64 = _angles(t.numpy(), 100, schedule)
    torch.testing.assert_close(a.double(), ea64, rtol=1e-7, atol=0)
    torch.testing.assert_close(s.double(), es64, rtol=1e-7, atol=0)


@pytest.mark.parametrize("prediction, schedule", [("v", "linear"), ("x0", "linear"), ("v", "cosine")])
def test_network_returns_the_eps_its_prediction_implies(prediction, schedule):
    torch.manual_seed(0)
    model = mcvd.MCVD(dataclasses.replace(CFG, prediction=prediction, schedule=schedule)).double().eval()
    for p in model.parameters():  # non-trivial weights: conv_out starts at zero
        p.data.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(4, 2, 1, 8, 8, dtype=torch.float64)
    cond = torch.rand(4, 2, 1, 8, 8, dtype=torch.float64) * 2 - 1
    t = torch.tensor([0, 3, 60, 99])
    with torch.no_grad():
        raw, eps = model(x, t, cond, raw=True), model(x, t, cond)
    a, s = (v.view(-1, 1, 1, 1, 1) for v in _angles(t.numpy(), 100, schedule))
    expected = (x - a * raw) / s if prediction == "x0" else s * x + a * raw
    assert raw.abs().max() > 0.1
    torch.testing.assert_close(eps, expected, rtol=1e-6, atol=1e-6)


def test_eps_network_output_is_its_raw_output():
    model = mcvd.MCVD(CFG).eval()
    x, cond, t = torch.randn(2, 2, 1, 8, 8), torch.zeros(2, 2, 1, 8, 8), torch.tensor([5, 7])
    with torch.no_grad():
        assert torch.equal(model(x, t, cond), model(x, t, cond, raw=True))


def test_state_dict_and_model_file_keep_the_prediction(tmp_path):
    eps_net, v_net = mcvd.MCVD(CFG), mcvd.MCVD(dataclasses.replace(CFG, prediction="v", schedule="cosine"))
    # The conversion's buffers are not weights: the state dict is the reference code's layout either way.
    assert list(eps_net.state_dict()) == list(v_net.state_dict())
    for p in v_net.parameters():
        p.data.add_(0.01)
    path = save_model(tmp_path / "v.mcvd", v_net)
    loaded, cfg = mcvd.load(path)
    assert cfg.prediction == "v" and cfg.schedule == "cosine"
    x, cond, t = torch.randn(2, 2, 1, 8, 8), torch.zeros(2, 2, 1, 8, 8), torch.tensor([5, 90])
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x, t, cond), v_net.eval()(x, t, cond))


def test_sampler_uses_the_models_schedule():
    from mcvd.diffusion import default_schedule

    model = mcvd.MCVD(dataclasses.replace(CFG, schedule="cosine"))
    assert torch.equal(default_schedule(model).betas, Schedule.cosine(100).betas)


@pytest.mark.parametrize("field, value", [("prediction", "noise"), ("schedule", "quadratic")])
def test_unknown_prediction_or_schedule_is_refused(field, value):
    with pytest.raises(ValueError, match=f"{field}: expected one of"):
        dataclasses.replace(CFG, **{field: value})
