"""The network's parameterisation (ModelConfig.prediction: eps, x0, v or edm) and schedule:
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


def _karras(x_t, a, s, sigma_data):
    """EDM's preconditioning (Karras et al. 2022, table 1) in its own variables: sigma = s / a, the noisy
    input x_t / a = x0 + sigma eps; returns (c_in, c_skip, c_out) as they act on x_t / a, and x_t / a."""
    a, s = a.view(-1, 1, 1, 1), s.view(-1, 1, 1, 1)
    sigma = s / a
    root = torch.sqrt(sigma**2 + sigma_data**2)
    return 1 / root, sigma_data**2 / root**2, sigma * sigma_data / root, x_t / a


def _edm_target(x0, noise, a, s, sigma_data):
    x_t = a.view(-1, 1, 1, 1) * x0 + s.view(-1, 1, 1, 1) * noise
    _, c_skip, c_out, x_edm = _karras(x_t, a, s, sigma_data)
    return (x0 - c_skip * x_edm) / c_out


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_target_and_implied_eps_invert_each_other(prediction):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(6, 2, 3, 5, dtype=torch.float64, generator=g) * 2 - 1, torch.randn(6, 2, 3, 5, generator=g,
                                                                                               dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 50, 98, 99])
    a, s = _angles(t.numpy(), 100, "linear")
    x_t = a.view(-1, 1, 1, 1) * x0 + s.view(-1, 1, 1, 1) * noise
    y = prediction_target(x0, noise, a, s, prediction)
    expected = {"eps": noise, "x0": x0, "v": a.view(-1, 1, 1, 1) * noise - s.view(-1, 1, 1, 1) * x0,
                "edm": _edm_target(x0, noise, a, s, 0.5)}[prediction]
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(eps_from_prediction(y, x_t, a, s, prediction), noise, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sigma_data", [0.3, 0.5, 1.0, 2.0])
def test_edm_is_karras_preconditioning(sigma_data):
    """The target of F and the eps a prediction F implies are EDM's D = c_skip x + c_out F written for
    x_t = a x0 + s eps; with sigma_data = 1 F is -v."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(5, 2, 3, 4, dtype=torch.float64, generator=g) * 2 - 1
    noise = torch.randn(5, 2, 3, 4, dtype=torch.float64, generator=g)
    F = torch.randn(5, 2, 3, 4, dtype=torch.float64, generator=g)
    a, s = _angles(np.array([0, 5, 40, 80, 99]), 100, "cosine")
    x_t = a.view(-1, 1, 1, 1) * x0 + s.view(-1, 1, 1, 1) * noise
    torch.testing.assert_close(prediction_target(x0, noise, a, s, "edm", sigma_data),
                               _edm_target(x0, noise, a, s, sigma_data), rtol=1e-12, atol=1e-12)
    _, c_skip, c_out, x_edm = _karras(x_t, a, s, sigma_data)
    D = c_skip * x_edm + c_out * F
    expected_eps = (x_t - a.view(-1, 1, 1, 1) * D) / s.view(-1, 1, 1, 1)
    torch.testing.assert_close(eps_from_prediction(F, x_t, a, s, "edm", sigma_data), expected_eps,
                               rtol=1e-12, atol=1e-12)
    if sigma_data == 1.0:
        torch.testing.assert_close(prediction_target(x0, noise, a, s, "edm", 1.0),
                                   -prediction_target(x0, noise, a, s, "v"), rtol=1e-12, atol=1e-12)


def test_edm_network_reads_c_in_x_and_returns_the_eps_of_its_denoiser():
    """An edm network is the same weights run as an x0 network on EDM's scaled input c_in x_t / a, with
    D = c_skip x_t / a + c_out F as its x0."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(CFG, prediction="edm", sigma_data=0.7)
    edm = mcvd.MCVD(cfg).double().eval()
    for p in edm.parameters():  # non-trivial weights: conv_out starts at zero
        p.data.add_(torch.randn_like(p) * 0.05)
    plain = mcvd.MCVD(dataclasses.replace(cfg, prediction="x0")).double().eval()
    plain.load_state_dict(edm.state_dict())
    x = torch.randn(4, 2, 8, 8, dtype=torch.float64)  # k = 2 frames of 1 channel, stacked
    cond = torch.rand(4, 2, 8, 8, dtype=torch.float64) * 2 - 1
    t = torch.tensor([0, 3, 60, 99])
    a, s = _angles(t.numpy(), 100, "linear")
    c_in, c_skip, c_out, x_edm = _karras(x, a, s, 0.7)
    with torch.no_grad():
        F, eps = edm(x, t, cond, raw=True), edm(x, t, cond)
        expected_F = plain(c_in * x_edm, t, cond, raw=True)
    assert F.abs().max() > 0.1
    torch.testing.assert_close(F, expected_F, rtol=1e-6, atol=1e-6)
    D = c_skip * x_edm + c_out * F
    torch.testing.assert_close(eps, (x - a.view(-1, 1, 1, 1) * D) / s.view(-1, 1, 1, 1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("conditioning", ["concat", "spatin"])
def test_edm_network_scales_its_input_with_the_condition_cache_too(conditioning):
    """The sampler's cached call (condition once per block) reads the same c_in x_t as forward."""
    torch.manual_seed(1)
    cfg = dataclasses.replace(CFG, prediction="edm", conditioning=conditioning, spade_dim=8)
    model = mcvd.MCVD(cfg).double().eval()
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    x, t = torch.randn(3, 2, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 40, 99])
    cond = torch.rand(3, 2, 1, 8, 8, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, cache=model.condition(cond)), model(x, t, cond),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("value, error", [(0.0, ValueError), (-1.0, ValueError), (float("nan"), ValueError),
                                          (float("inf"), ValueError), ("0.5", TypeError), (True, TypeError)])
def test_sigma_data_must_be_a_positive_float(value, error):
    with pytest.raises(error, match="sigma_data: expected a positive float"):
        dataclasses.replace(CFG, sigma_data=value)


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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_q_sample_keeps_the_noise_in_low_precision(dtype):
    """At small t, 1 - abar_t is below bfloat16's resolution near 1: its square root must not be taken there."""
    sched = Schedule.linear(1000)
    t = torch.tensor([0, 2, 50, 200])
    x0, noise = torch.zeros(4, 3, dtype=dtype), torch.ones(4, 3, dtype=dtype)
    abar = sched.alphas_cumprod[t]  # float64
    expected = (1 - abar).sqrt()[:, None].expand(4, 3)  # 0.0100, 0.0190, 0.173, 0.586
    got = sched.q_sample(x0, t, noise)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), expected, rtol=8e-3, atol=0)
    x1 = torch.ones(4, 3, dtype=dtype)  # the signal term too
    torch.testing.assert_close(sched.q_sample(x1, t, 0 * noise).double(), abar.sqrt()[:, None].expand(4, 3),
                               rtol=8e-3, atol=0)


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
    eps_net = mcvd.MCVD(CFG)
    v_net = mcvd.MCVD(dataclasses.replace(CFG, prediction="edm", sigma_data=0.8, schedule="cosine"))
    # The conversion's buffers are not weights: the state dict is the reference code's layout either way.
    assert list(eps_net.state_dict()) == list(v_net.state_dict())
    for p in v_net.parameters():
        p.data.add_(0.01)
    path = save_model(tmp_path / "v.mcvd", v_net)
    loaded, cfg = mcvd.load(path)
    assert cfg.prediction == "edm" and cfg.sigma_data == 0.8 and cfg.schedule == "cosine"
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
