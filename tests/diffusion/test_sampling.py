"""The sampling loop: exact Gaussian recovery, determinism, no host sync, errors.

Data N(MU, S^2) has the exact noise predictor
    eps*(x_t, t) = (x_t - sqrt(abar) MU) sqrt(1 - abar) / (abar S^2 + 1 - abar),
so a correct sampler driven by eps* must return N(MU, S^2) up to its
discretisation error.
"""
import math
from types import SimpleNamespace

import pytest
import torch

import mcvd
from mcvd.diffusion import DDPMScheduler, Schedule, denoise, make_scheduler

MU, S = 0.5, 0.5
ABAR = Schedule.linear().alphas_cumprod


def eps_star(x, t, cond=None):
    a = ABAR.to(device=x.device, dtype=x.dtype)[t].view(-1, *[1] * (x.dim() - 1))
    return (x - a.sqrt() * MU) * (1 - a).sqrt() / (a * S * S + 1 - a)


def ideal_deterministic(t_last):
    """Mean and std of an exact probability-flow solve from x_T ~ N(0, 1) to
    t_last followed by the jump to E[x0 | x_{t_last}] (every method's last
    step). The flow keeps (x_t - sqrt(abar_t) MU) / sqrt(v_t) fixed for
    Gaussian data, v_t = abar_t S^2 + 1 - abar_t, and E[x0 | x_t] =
    MU + sqrt(abar_t) S^2 (x_t - sqrt(abar_t) MU) / v_t."""
    aT, al = ABAR[-1].item(), ABAR[t_last].item()
    vT, vl = aT * S * S + 1 - aT, al * S * S + 1 - al
    gain = math.sqrt(al) * S * S / math.sqrt(vl * vT)
    return MU - gain * math.sqrt(aT) * MU, gain


def affine_moments(method, steps):
    """Exact mean and std of a deterministic sampler's output over x_T ~ N(0, 1):
    with eps* the whole sampler is affine in x_T, so two runs (x_T = 0, 1) give it."""
    out = mcvd.sample(eps_star, (2, 1), method=method, steps=steps, clip_x0=False,
                      x_T=torch.tensor([[0.0], [1.0]], dtype=torch.float64))
    return out[0, 0].item(), (out[1, 0] - out[0, 0]).abs().item()


@pytest.mark.parametrize("method, steps, rel_tol", [
    # DDIM is a first-order solver: error O(1/n); allowed 4/n.
    ("ddim", 1000, 4e-3), ("ddim", 100, 4e-2),
    # DPM-Solver++(2M) is second order in between; its first and last steps
    # are first order. Allowed 3% at 10 and 20 steps.
    ("dpm++", 10, 3e-2), ("dpm++", 20, 3e-2)])
def test_deterministic_samplers_recover_the_gaussian_exactly_computed(method, steps, rel_tol):
    t_last = make_scheduler(method).set_timesteps(steps).timesteps[-1].item()
    mean, std = affine_moments(method, steps)
    ideal_mean, ideal_std = ideal_deterministic(t_last)
    assert abs(mean - ideal_mean) < 1e-3
    assert abs(std / ideal_std - 1) < rel_tol


def test_dpm_solver_beats_ddim_at_ten_steps():
    ideal = ideal_deterministic(make_scheduler("ddim").set_timesteps(10).timesteps[-1].item())[1]
    err_ddim = abs(affine_moments("ddim", 10)[1] / ideal - 1)
    err_dpm = abs(affine_moments("dpm++", 10)[1] / ideal - 1)
    assert err_dpm < err_ddim / 3


def test_ddpm_output_moments_exactly_computed():
    """DDPM's output is affine in (x_T, z_1..z_n): probe each input with a unit
    in its own batch row (row 0 is all zeros) to read the exact mean and std."""
    n = 1000
    sch = DDPMScheduler(clip_x0=False).set_timesteps(n)
    eye = torch.eye(n + 2, dtype=torch.float64)[:, :, None]  # [rows, inputs, 1]
    x = eye[:, 1]  # input 1 is x_T
    for i, t in enumerate(sch.timesteps.tolist()):
        x, _ = sch.step(eps_star(x, torch.full((n + 2,), t)), t, x, noise=eye[:, i + 2])
    mean = x[0, 0].item()
    std = (x[1:, 0] - mean).square().sum().sqrt().item()
    # The step noise washes out x_T's mismatch with the forward marginal.
    assert abs(mean - MU) < 1e-4
    # Posterior variance beta~ is the smaller of Ho et al.'s two choices: the
    # std falls short of S by under 1.5% at T = 1000 (measured 0.8%).
    assert -1.5e-2 < std / S - 1 < 0


@pytest.mark.parametrize("method, steps", [("ddpm", 1000), ("ddim", 100), ("dpm++", 10)])
def test_samples_have_the_data_mean_and_std(method, steps):
    n = 4000
    g = torch.Generator().manual_seed(1)
    x = mcvd.sample(eps_star, (n, 1), method=method, steps=steps, clip_x0=False, generator=g, dtype=torch.float64)
    # DDPM's noise makes it sample N(MU, S^2); the deterministic samplers end
    # with the jump to E[x0 | x_t] (see ideal_deterministic).
    t_last = make_scheduler(method).set_timesteps(steps).timesteps[-1].item()
    mean, std = (MU, S) if method == "ddpm" else ideal_deterministic(t_last)
    # 4 standard errors of the sample mean / std, plus the discretisation
    # bounds of the exact tests above.
    assert abs(x.mean().item() - mean) < 4 * std / math.sqrt(n) + 2e-3
    assert abs(x.std().item() / std - 1) < 4 / math.sqrt(2 * n) + 0.04


def test_same_seed_same_samples():
    def draw(seed):
        return mcvd.sample(eps_star, (3, 2, 4), method="ddpm", steps=20, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(draw(7), draw(7), rtol=0, atol=0)
    assert not torch.equal(draw(7), draw(8))


def test_ddim_eta_zero_is_deterministic_given_x_T():
    x_T = torch.randn(3, 5)
    runs = [mcvd.sample(eps_star, (3, 5), method="ddim", steps=10, eta=0.0, x_T=x_T,
                        generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    noisy = [mcvd.sample(eps_star, (3, 5), method="ddim", steps=10, eta=1.0, x_T=x_T,
                         generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    assert not torch.equal(noisy[0], noisy[1])


def test_callback_sees_every_step_and_progress_shows_a_bar(capsys):
    seen = []
    mcvd.sample(eps_star, (2, 3), method="ddim", steps=7, progress=True,
                callback=lambda i, t, x, x0: seen.append((i, t, tuple(x.shape), tuple(x0.shape))))
    ts = make_scheduler("ddim").set_timesteps(7).timesteps.tolist()
    assert seen == [(i, t, (2, 3), (2, 3)) for i, t in enumerate(ts)]
    assert "ddim: " in capsys.readouterr().err


def test_cond_and_cond_mask_reach_the_model():
    calls = []

    def model(x, t, cond, **kw):
        calls.append((cond, kw))
        return torch.zeros_like(x)

    cond, mask = torch.randn(2, 3), torch.tensor([[True, False], [False, False]])
    mcvd.sample(model, (2, 4), method="ddim", steps=2, cond=cond)
    mcvd.sample(model, (2, 4), method="ddim", steps=2, cond=cond, cond_mask=mask)
    assert calls[0][0] is cond and calls[0][1] == {}
    assert calls[2][0] is cond and calls[2][1]["cond_mask"] is mask


def test_default_schedule_follows_the_models_num_timesteps():
    class Model:
        config = SimpleNamespace(num_timesteps=50)

        def __call__(self, x, t, cond):
            assert int(t.max()) < 50
            return torch.zeros_like(x)

    seen = []
    mcvd.sample(Model(), (1, 2), method="ddpm", callback=lambda i, t, x, x0: seen.append(t))
    assert seen == list(range(49, -1, -1))


def test_the_loop_reads_no_device_value():
    """On the meta device every read of a tensor's value (.item(), bool(),
    .tolist(), printing) raises, so a loop that runs there never syncs a GPU."""
    for method, eta in (("ddpm", 0.0), ("ddim", 0.5), ("dpm++", 0.0)):
        x = mcvd.sample(eps_star, (2, 3, 4), method=method, eta=eta, steps=6, device="meta", backend="reference")
        assert x.device.type == "meta" and x.shape == (2, 3, 4)


def test_denoise_runs_a_prepared_scheduler():
    sch = make_scheduler("ddim", eta=0.0).set_timesteps(10)
    x_T = torch.randn(2, 3)
    out = denoise(lambda x, t: eps_star(x, t), sch, x_T)
    torch.testing.assert_close(out, mcvd.sample(eps_star, (2, 3), method="ddim", steps=10, x_T=x_T))


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(method="euler"), ValueError, r"method: expected one of \('ddpm', 'ddim', 'dpm\+\+'\), got 'euler'"),
    (dict(method="ddpm", eta=0.5), ValueError, r"eta: only method='ddim' takes eta"),
    (dict(x_T=torch.zeros(2, 4)), ValueError, r"x_T: expected shape \[2, 3\], got \[2, 4\]"),
    (dict(x_T=torch.zeros(2, 3), dtype=torch.float64), ValueError, r"dtype: torch.float64 disagrees with x_T's"),
    (dict(dtype=torch.int32), TypeError, r"dtype: expected a floating torch.dtype or None, got torch.int32"),
    (dict(device="meta", cond=torch.zeros(2)), ValueError, r"cond: expected device meta \(the sampling device\)"),
    (dict(device="meta", generator=torch.Generator()), ValueError,
     r"generator: expected a generator on meta \(the sampling device\), got one on cpu"),
    (dict(generator=0), TypeError, r"generator: expected a torch.Generator or None, got int 0"),
    (dict(spacing="leading"), ValueError, r"spacing: expected one of \('trailing'"),
    (dict(steps=0), ValueError, r"steps: expected an int >= 1 or None \(every timestep\), got 0"),
    (dict(steps=1001), ValueError, r"steps: expected an int in 1\.\.1000"),
    (dict(sampler=mcvd.SamplerConfig(method="dpm++", steps=3)), ValueError,
     r"sampler: given together with method='ddim', steps=2; pass the sampler options either"),
    (dict(method="ddpm", steps=None, sampler=mcvd.SamplerConfig(guidance=1.5)), ValueError,
     r"sampler: mcvd.sample takes no guidance"),
    (dict(method="ddpm", steps=None, sampler=dict(method="ddim")), TypeError,
     r"sampler: expected an mcvd.SamplerConfig or None, got dict"),
])
def test_bad_arguments_are_named(kwargs, error, message):
    kwargs = {"method": "ddim", "steps": 2, **kwargs}
    with pytest.raises(error, match=message):
        mcvd.sample(eps_star, (2, 3), **kwargs)


def test_an_eps_model_that_is_not_callable_is_named():
    with pytest.raises(TypeError, match=r"eps_model: expected a callable eps_model\(x_t, t, cond\) -> eps"):
        mcvd.sample(5, (2, 3))


def test_bad_shape_is_named():
    with pytest.raises(ValueError, match=r"shape: expected \[B, \.\.\.\] with positive sizes, got \[2, 0\]"):
        mcvd.sample(eps_star, (2, 0))
    with pytest.raises(ValueError, match=r"shape: expected \[B, \.\.\.\] with positive sizes, got \[\]"):
        mcvd.sample(eps_star, ())
    expected = r"shape: expected a sequence of ints \[B, \.\.\.\] \(a tuple, list or torch.Size\), got "
    with pytest.raises(TypeError, match=expected + r"int 4 \(for 4 samples of one number, pass \(4,\)\)"):
        mcvd.sample(eps_star, 4)
    with pytest.raises(TypeError, match=expected + r"\(4.0, 2.5\)"):  # int(2.5) would sample 2
        mcvd.sample(eps_star, (4.0, 2.5))
    with pytest.raises(TypeError, match=expected + r"\(2, True\)"):
        mcvd.sample(eps_star, (2, True))
    with pytest.raises(TypeError, match=expected + r"str '23'"):
        mcvd.sample(eps_star, "23")
    assert mcvd.sample(eps_star, torch.Size([2, 3]), method="ddim", steps=2).shape == (2, 3)
    np = pytest.importorskip("numpy")
    assert mcvd.sample(eps_star, np.array([2, 3]).tolist(), method="ddim", steps=2).shape == (2, 3)
    assert mcvd.sample(eps_star, (np.int64(2), 3), method="ddim", steps=2).shape == (2, 3)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(dtype="float32"), TypeError, r"dtype: expected a floating torch.dtype or None, got str 'float32'"),
    (dict(x_T=[[0.0, 0.0, 0.0]] * 2), TypeError, r"x_T: expected a tensor or None, got list"),
    (dict(cond=[1.0, 2.0]), TypeError, r"cond: expected a tensor or None, got list"),
    (dict(callback=3), TypeError, r"callback: expected a callable or None, got int 3"),
    (dict(progress="no"), TypeError, r"progress: expected a bool, got str 'no'"),
])
def test_bad_argument_types_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        mcvd.sample(eps_star, (2, 3), method="ddim", steps=2, **kwargs)


def test_a_scheduler_step_takes_an_integer_timestep():
    """A bool is an int to Python (True == 1): refused, as are float tensors."""
    sch = DDPMScheduler().set_timesteps(1000)
    x = torch.zeros(2)
    for t in (True, torch.tensor(1.0), torch.tensor(True)):
        with pytest.raises(TypeError, match=r"t: expected an int or a 0-d integer CPU tensor \(an element of "
                                            r"\.timesteps\), got"):
            sch.step(x, t, x)
