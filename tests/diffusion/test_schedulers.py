"""Schedulers against closed forms computed here, independently, in float64 numpy."""
import itertools

import numpy as np
import pytest
import torch

from mcvd.diffusion import DDIMScheduler, DDPMScheduler, DPMSolverScheduler, Schedule, spaced_timesteps

T = 1000


def numpy_abar(T=T, beta_start=1e-4, beta_end=0.02):
    betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
    return betas, np.cumprod(1 - betas)


def test_alphas_cumprod_is_the_product_of_one_minus_beta():
    _, abar = numpy_abar()
    np.testing.assert_allclose(Schedule.linear().alphas_cumprod.numpy(), abar, rtol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 10, 100, 250, 1000])
def test_trailing_spacing_is_the_reference_codes(n):
    # The reference code's index counts from the noisiest step: t = T - 1 - index.
    assert spaced_timesteps(T, n, "trailing") == [T - 1 - j for j in range(0, T, T // n)]


@pytest.mark.parametrize("n", [1, 7, 10, 300, 999])
def test_spacings_give_n_strictly_decreasing_timesteps(n):
    for spacing in ("trailing", "uniform", "linspace"):
        ts = spaced_timesteps(T, n, spacing)
        assert len(ts) == n and all(a > b for a, b in itertools.pairwise(ts)) and 0 <= ts[-1] and ts[0] <= T - 1
    assert spaced_timesteps(T, n, "trailing")[0] == T - 1
    assert spaced_timesteps(T, n, "uniform") == list(range(0, T, T // n))[:n][::-1]
    assert spaced_timesteps(T, n, "linspace")[0] == T - 1
    assert spaced_timesteps(T, n, "linspace")[-1] == (0 if n > 1 else T - 1)


def test_quadratic_spacing_is_the_ddim_codes():
    expected = (np.linspace(0, np.sqrt(T * 0.8), 10) ** 2).astype(int)[::-1].tolist()
    assert spaced_timesteps(T, 10, "quadratic") == expected
    with pytest.raises(ValueError, match=r"spacing: 'quadratic' repeats timesteps for steps=100 of T=1000"):
        spaced_timesteps(T, 100, "quadratic")


@pytest.mark.parametrize("steps", [0, 1001, 2.5, True])
def test_bad_step_counts_are_rejected(steps):
    with pytest.raises(ValueError, match=r"steps: expected an int in 1\.\.1000"):
        DDPMScheduler().set_timesteps(steps)


def test_unknown_spacing_is_rejected():
    with pytest.raises(ValueError, match=r"spacing: expected one of \('trailing', .*\), got 'leading'"):
        spaced_timesteps(T, 10, "leading")


def test_ddpm_with_every_step_is_the_posterior_of_ho_et_al():
    betas, abar = numpy_abar()
    abar_prev = np.append(1.0, abar[:-1])
    sch = DDPMScheduler().set_timesteps(T)
    assert sch.timesteps.tolist() == list(range(T - 1, -1, -1))
    a, b, c_x0, c_xt, sigma = sch.coefficients.numpy()[::-1].T  # back to t = 0..T-1
    np.testing.assert_allclose(a, np.sqrt(1 - abar), rtol=1e-12)
    np.testing.assert_allclose(b, np.sqrt(abar), rtol=1e-12)
    # Ho et al. 2020, eq. 7: posterior mean coefficients and variance beta~.
    np.testing.assert_allclose(c_x0, np.sqrt(abar_prev) * betas / (1 - abar), rtol=1e-9)
    np.testing.assert_allclose(c_xt, np.sqrt(1 - betas) * (1 - abar_prev) / (1 - abar), rtol=1e-9)
    np.testing.assert_allclose(sigma**2, betas * (1 - abar_prev) / (1 - abar), rtol=1e-9, atol=1e-300)
    assert sigma[0] == 0


def test_respaced_ddpm_is_the_reference_codes_subsampling():
    # The reference code (index 0 = noisiest) with subsample_steps = 10.
    _, abar = numpy_abar()
    alphas = abar[::-1][list(range(0, T, T // 10))]
    alphas_prev = np.append(alphas[1:], 1.0)
    betas = 1 - alphas / alphas_prev
    sch = DDPMScheduler().set_timesteps(10)
    _, _, c_x0, c_xt, sigma = sch.coefficients.numpy().T
    np.testing.assert_allclose(c_x0, np.sqrt(alphas_prev) * betas / (1 - alphas), rtol=1e-10)
    np.testing.assert_allclose(c_xt, np.sqrt(1 - betas) * (1 - alphas_prev) / (1 - alphas), rtol=1e-10)
    np.testing.assert_allclose(sigma, np.sqrt((1 - alphas_prev) / (1 - alphas) * betas), rtol=1e-10)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_is_eq_12_of_song_et_al(eta):
    _, abar = numpy_abar()
    sch = DDIMScheduler(eta=eta, clip_x0=False).set_timesteps(20)
    ts = sch.timesteps.tolist()
    x = torch.randn(3, 4, dtype=torch.float64)
    for i, t in enumerate(ts):
        eps, z = torch.randn_like(x), torch.randn_like(x)
        prev, x0 = sch.step(eps, t, x, noise=z)
        at, as_ = abar[t], (abar[ts[i + 1]] if i + 1 < len(ts) else 1.0)
        xn, en, zn = x.numpy(), eps.numpy(), z.numpy()
        x0_ref = (xn - np.sqrt(1 - at) * en) / np.sqrt(at)
        sigma = eta * np.sqrt((1 - as_) / (1 - at)) * np.sqrt(1 - at / as_)
        prev_ref = np.sqrt(as_) * x0_ref + np.sqrt(1 - as_ - sigma**2) * en + sigma * zn
        np.testing.assert_allclose(x0.numpy(), x0_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(prev.numpy(), prev_ref, rtol=1e-9, atol=1e-12)
        x = prev


def test_ddim_with_eta_one_is_ddpm():
    ddim = DDIMScheduler(eta=1.0).set_timesteps(37)
    ddpm = DDPMScheduler().set_timesteps(37)
    torch.testing.assert_close(ddim.coefficients, ddpm.coefficients, rtol=1e-10, atol=1e-14)


def dpm_solver_pp_2m_numpy(abar, ts, x, eps_list):
    """DPM-Solver++(2M), Lu et al. 2022, Algorithm 2, data prediction, written
    from the paper; first order on the first step and on the last (to abar = 1)."""
    def alpha(t):
        return np.sqrt(abar[t]) if t >= 0 else 1.0

    def sigma(t):
        return np.sqrt(1 - abar[t]) if t >= 0 else 0.0

    def lam(t):
        return np.log(alpha(t) / sigma(t))
    nxt = ts[1:] + [-1]
    x0_prev, h_prev = None, None
    for i, (t, s) in enumerate(zip(ts, nxt)):
        x0 = (x - sigma(t) * eps_list[i]) / alpha(t)
        if s == -1:
            x = x0
            break
        h = lam(s) - lam(t)
        D = x0 if x0_prev is None else (1 + h / (2 * h_prev)) * x0 - h / (2 * h_prev) * x0_prev
        x = sigma(s) / sigma(t) * x - alpha(s) * (np.exp(-h) - 1) * D
        x0_prev, h_prev = x0, h
    return x


@pytest.mark.parametrize("n", [1, 2, 3, 6])
def test_dpm_solver_pp_2m_follows_algorithm_2(n):
    _, abar = numpy_abar()
    sch = DPMSolverScheduler(clip_x0=False).set_timesteps(n)
    x = torch.randn(2, 5, dtype=torch.float64)
    eps_list = [torch.randn_like(x) for _ in range(n)]
    expected = dpm_solver_pp_2m_numpy(abar, sch.timesteps.tolist(), x.numpy(), [e.numpy() for e in eps_list])
    for eps, t in zip(eps_list, sch.timesteps):  # 0-d CPU tensors, as iterating .timesteps gives
        x, _ = sch.step(eps, t, x)
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-9, atol=1e-12)


def test_first_order_dpm_step_is_the_ddim_step():
    dpm = DPMSolverScheduler().set_timesteps(10).coefficients
    ddim = DDIMScheduler().set_timesteps(10).coefficients
    torch.testing.assert_close(dpm[[0, -1], :4], ddim[[0, -1], :4], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler, DPMSolverScheduler])
def test_clip_x0_clamps_the_prediction_to_the_data_range(cls):
    sch = cls(clip_x0=True).set_timesteps(5)
    x = 3 * torch.randn(4, 6)
    eps = torch.randn_like(x)
    _, x0 = sch.step(eps, sch.timesteps[0], x)
    t = int(sch.timesteps[0])
    abar = Schedule.linear().alphas_cumprod[t]
    expected = ((x.double() - (1 - abar).sqrt() * eps.double()) / abar.sqrt()).clamp(-1, 1).float()
    assert x0.abs().max() <= 1
    torch.testing.assert_close(x0, expected, rtol=1e-5, atol=1e-6)


def test_float32_samples_step_with_float32_coefficients():
    sch = DDIMScheduler(clip_x0=False).set_timesteps(10)
    x = torch.randn(2, 3)
    eps = torch.randn_like(x)
    prev32, _ = sch.step(eps, 999, x)
    sch.set_timesteps(10)
    prev64, _ = sch.step(eps.double(), 999, x.double())
    assert prev32.dtype == torch.float32
    torch.testing.assert_close(prev32, prev64.float(), rtol=1e-5, atol=1e-6)


def test_step_errors_name_the_argument():
    sch = DDPMScheduler()
    x = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match=r"DDPMScheduler: call set_timesteps\(steps\) first"):
        sch.step(x, 999, x)
    sch.set_timesteps(10)
    with pytest.raises(ValueError, match=r"t: 998 is not one of this scheduler's timesteps \(10 steps"):
        sch.step(x, 998, x)
    with pytest.raises(ValueError, match=r"t: expected an int or a 0-d integer CPU tensor .* shape \[2\]"):
        sch.step(x, torch.tensor([999, 999]), x)
    with pytest.raises(ValueError, match=r"model_output: expected shape \[2, 3\], dtype torch.float32"):
        sch.step(torch.randn(2, 4), 999, x)
    with pytest.raises(ValueError, match=r"noise: expected shape \[2, 3\]"):
        sch.step(x, 999, x, noise=torch.randn(3))
    with pytest.raises(TypeError, match=r"sample: expected a floating-point tensor, got Tensor of dtype torch.int64"):
        sch.step(x, 999, torch.ones(2, 3, dtype=torch.long))


def test_dpm_solver_steps_must_follow_the_timesteps():
    sch = DPMSolverScheduler().set_timesteps(5)
    x = torch.randn(2, 3)
    ts = sch.timesteps.tolist()
    sch.step(x, ts[0], x)
    with pytest.raises(RuntimeError, match=rf"expected timestep {ts[1]} \(step 1\), got step 2"):
        sch.step(x, ts[2], x)
    with pytest.raises(ValueError, match=r"noise: DPMSolverScheduler is deterministic"):
        sch.step(x, ts[1], x, noise=x)


@pytest.mark.parametrize("eta, message", [(-0.1, r"eta: expected a float >= 0, got -0.1"),
                                          (3.0, r"eta: 3.0 makes sigma\^2 exceed 1 - abar_s")])
def test_bad_eta_is_rejected(eta, message):
    with pytest.raises(ValueError, match=message):
        DDIMScheduler(eta=eta).set_timesteps(10)


def test_schedule_must_be_a_schedule():
    with pytest.raises(TypeError, match=r"schedule: expected an mcvd.diffusion.Schedule, got Tensor"):
        DDPMScheduler(torch.linspace(1e-4, 0.02, 10))


@pytest.mark.parametrize("call, error, message", [
    # A bool is an int to Python: num_timesteps=True would be a 1-step schedule.
    (lambda: Schedule.linear(True), TypeError, r"num_timesteps: expected an int >= 1, got bool True"),
    (lambda: Schedule.linear(1000.0), TypeError, r"num_timesteps: expected an int >= 1, got float 1000.0"),
    (lambda: Schedule.cosine("1000"), TypeError, r"num_timesteps: expected an int >= 1, got str '1000'"),
    (lambda: Schedule.linear(0), ValueError, r"num_timesteps: expected an int >= 1, got 0"),
    (lambda: Schedule.linear(beta_start="1e-4"), TypeError,
     r"beta_start, beta_end: expected floats with 0 < beta_start <= beta_end < 1, got '1e-4', 0.02"),
    (lambda: Schedule.linear(beta_end=float("nan")), ValueError,
     r"beta_start, beta_end: expected floats with 0 < beta_start <= beta_end < 1, got 0.0001, nan"),
    (lambda: Schedule([1e-4, 0.02]), TypeError, r"betas: expected a float tensor \[T\], got list"),
    (lambda: Schedule(torch.tensor([True, True])), TypeError,
     r"betas: expected a float tensor \[T\], got dtype torch.bool"),
    (lambda: Schedule(torch.tensor([0.1, float("nan")])), ValueError, r"betas: expected every beta in \(0, 1\)"),
])
def test_bad_schedules_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_clip_x0_must_be_a_bool():
    with pytest.raises(TypeError, match=r"clip_x0: expected a bool, got str 'no'"):  # "no" is truthy
        DDPMScheduler(clip_x0="no")


def test_a_step_takes_its_timestep_as_an_integer():
    """A Python or NumPy int or a 0-d integer CPU tensor; not a bool (True == 1) or a float (999.0 == 999)."""
    np = pytest.importorskip("numpy")
    sch = DDIMScheduler().set_timesteps(5)
    x = torch.randn(2, 3)
    eps = torch.randn_like(x)
    t = int(sch.timesteps[1])
    expected = sch.step(eps, t, x)[0]
    for same in (np.int64(t), sch.timesteps[1]):
        torch.testing.assert_close(sch.step(eps, same, x)[0], expected, rtol=0, atol=0)
    for bad, kind in ((True, "bool True"), (float(t), f"float {float(t)!r}")):
        with pytest.raises(TypeError, match=rf"t: expected an int or a 0-d integer CPU tensor \(an element of "
                                            rf"\.timesteps\), got {kind}"):
            sch.step(eps, bad, x)
