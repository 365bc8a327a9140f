"""Reverse-process schedulers: DDPM, DDIM and DPM-Solver++ (2M). No network here.

A scheduler owns the forward process (betas, alphas_cumprod); `set_timesteps(n)`
picks the n timesteps the sampler visits and precomputes, on the sampling
device, one row of reverse_step coefficients per step; `step(eps, t, x_t)`
runs one update, always through `mcvd.ops.reverse_step`:

    x0     = (x_t - a * eps) / b                       (clamped to [-1, 1] if clip_x0)
    x_prev = c_x0 * x0 + c_xt * x_t + sigma * z

Every step goes from t to s, the next timestep of `.timesteps` (s = -1 after
the last one, with abar_{-1} = 1, so the last step lands on the data). With
fewer steps than T the steps use the respaced process of improved DDPM
(Nichol & Dhariwal 2021, sec. 4): beta'_t = 1 - abar_t / abar_s.

| code                      | symbol                                      |
|---------------------------|---------------------------------------------|
| alphas_cumprod[t]         | abar_t                                      |
| abar_t, abar_s            | abar at the current step t and the next s   |
| a, b                      | sqrt(1 - abar_t), sqrt(abar_t)              |
| c_x0, c_xt, sigma         | the update's weights of x0, x_t and noise z |
| eta                       | DDIM's eta (0: deterministic, 1: DDPM)      |
| lam                       | lambda_t = log(sqrt(abar_t) / sqrt(1 - abar_t)) |
| h                         | lambda_s - lambda_t                         |

No step syncs the host with the device: the coefficient rows live on the
device (`set_timesteps(..., device=...)`), the step index is found from the
Python timestep, and noise is drawn on the sample's device.
"""
from __future__ import annotations

import math

import torch

from mcvd.ops._checks import describe, is_int
from mcvd.ops.reverse_step import reverse_step_coef, stat_dtype

from mcvd.schedule import Schedule

SPACINGS = ("trailing", "uniform", "linspace", "quadratic")
_CLIP = (-1.0, 1.0)


def spaced_timesteps(num_timesteps: int, steps: int, spacing: str = "trailing") -> list[int]:
    """The `steps` timesteps a sampler visits, noisiest first, strictly decreasing.

    spacing:
        "trailing"  t_i = round(T (n - i) / n) - 1: starts at T - 1, stride T / n.
                    This is the reference MCVD code's `range(0, T, T // n)`
                    (its index counts from the noisiest step, t = T - 1 - index)
                    whenever n divides T; otherwise that code visits
                    ceil(T / (T // n)) steps and this one exactly n.
        "uniform"   t_i = (n - 1 - i) * (T // n): the DDIM code's "uniform"
                    skip (diffusers' "leading"), ending at t = 0.
        "linspace"  round(linspace(T - 1, 0, n)): both ends included.
        "quadratic" the DDIM code's int(linspace(0, sqrt(0.8 T), n) ** 2);
                    raises if that repeats a timestep (too many steps).
    """
    T, n = num_timesteps, steps
    if not is_int(n) or not 1 <= n <= T:
        raise ValueError(f"steps: expected an int in 1..{T} (the schedule's num_timesteps), got {n!r}")
    n = int(n)
    if spacing == "trailing":
        ts = [(2 * T * (n - i) + n) // (2 * n) - 1 for i in range(n)]
    elif spacing == "uniform":
        ts = [(n - 1 - i) * (T // n) for i in range(n)]
    elif spacing == "linspace":
        ts = [T - 1] if n == 1 else [(2 * (T - 1) * (n - 1 - i) + n - 1) // (2 * (n - 1)) for i in range(n)]
    elif spacing == "quadratic":
        top = math.sqrt(0.8 * T)
        ts = [int((top * j / (n - 1)) ** 2) if n > 1 else 0 for j in range(n)][::-1]
        if len(set(ts)) != n:
            raise ValueError(f"spacing: 'quadratic' repeats timesteps for steps={n} of T={T}; "
                             "use fewer steps or another spacing")
    else:
        raise ValueError(f"spacing: expected one of {SPACINGS}, got {spacing!r}")
    return ts


class Scheduler:
    """Shared machinery of the schedulers; subclasses give `_coefficients`.

    Args:
        schedule: the forward process; default `Schedule.linear()` (the
            paper's betas 1e-4..0.02 over T = 1000).
        clip_x0: clamp the predicted x0 to [-1, 1] in every step (the data range).
        backend: reverse_step backend (None: auto; see mcvd.ops).
    """

    order = 1

    def __init__(self, schedule: Schedule | None = None, *, clip_x0: bool = True, backend: str | None = None):
        schedule = Schedule.linear() if schedule is None else schedule
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule: expected an mcvd.diffusion.Schedule, got {type(schedule).__name__}")
        self.schedule = schedule
        self.betas = schedule.betas
        self.alphas_cumprod = schedule.alphas_cumprod
        if not isinstance(clip_x0, bool):
            raise TypeError(f"clip_x0: expected a bool, got {describe(clip_x0)}")
        self.clip_x0 = clip_x0
        self.backend = backend
        self.timesteps: torch.Tensor | None = None
        self.coefficients: torch.Tensor | None = None

    @property
    def num_train_timesteps(self) -> int:
        return self.schedule.num_timesteps

    @property
    def num_inference_steps(self) -> int:
        self._check_ready()
        return self.timesteps.numel()

    @property
    def draws_noise(self) -> bool:
        """Whether some step draws fresh noise (uses its generator)."""
        self._check_ready()
        return any(self._has_sigma)

    def set_timesteps(self, steps: int, *, spacing: str = "trailing", device: torch.device | str | None = None):
        """Choose the timesteps (`.timesteps`, CPU LongTensor [steps], noisiest
        first) and precompute the coefficient rows (`.coefficients`, float64
        [steps, 5] on the CPU, rows (a, b, c_x0, c_xt, sigma)) and their
        float32 / float64 copies on `device` (default CPU)."""
        ts = spaced_timesteps(self.num_train_timesteps, steps, spacing)
        abar_t = self.alphas_cumprod[ts]
        abar_s = torch.cat([self.alphas_cumprod[ts[1:]], torch.ones(1, dtype=torch.float64)])
        coef = self._coefficients(abar_t, abar_s)
        if not bool(torch.isfinite(coef).all()):
            raise ValueError("schedule: its coefficients are not finite at these timesteps")
        self.timesteps = torch.tensor(ts, dtype=torch.long)
        self.coefficients = coef
        self._index = {t: i for i, t in enumerate(ts)}
        self._has_sigma = (coef[:, 4] != 0).tolist()
        self._t_device = self.timesteps.to("cpu" if device is None else device)
        self.device = self._t_device.device  # with its index: "cuda" becomes "cuda:0"
        self._rows = {dt: coef.to(device=self.device, dtype=dt) for dt in (torch.float32, torch.float64)}
        self._per_batch: dict = {}
        self._reset_state()
        return self

    def batched_timesteps(self, batch: int) -> torch.Tensor:
        """LongTensor [steps, batch] on the device: row i is `.timesteps[i]` for
        every sample, the `t` a network takes (built once per batch size)."""
        self._check_ready()
        key = ("t", batch)
        if key not in self._per_batch:
            self._per_batch[key] = self._t_device[:, None].expand(-1, batch).contiguous()
        return self._per_batch[key]

    def step(self, model_output: torch.Tensor, t, sample: torch.Tensor, *, generator: torch.Generator | None = None,
             noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One reverse step from timestep t to the next one of `.timesteps`.

        Args:
            model_output: eps predicted at (sample, t), shaped like sample.
            t: an int of `.timesteps` (or a 0-d integer CPU tensor, as iterating
                `.timesteps` gives).
            sample: x_t [B, ...], float, on the device given to set_timesteps.
            generator: draws the step's noise z (on sample's device) when the
                step has sigma > 0 and `noise` is None.
            noise: z to use instead of a fresh draw (shaped like sample).
        Returns:
            (prev_sample, pred_x0): x at the next timestep and the predicted
            (clipped) x0, both shaped like sample.
        """
        i = self._step_index(t)
        self._check_step(model_output, sample, generator, noise)
        coef = self._coef_rows(i, sample)
        z = self._noise_slot(i, sample, generator, noise)
        lo, hi = _CLIP if self.clip_x0 else (None, None)
        prev, x0 = reverse_step_coef(sample, model_output, z, coef, lo, hi, backend=self.backend)
        self._after_step(i, x0)
        return prev, x0

    # -- subclass hooks ------------------------------------------------------

    def _coefficients(self, abar_t: torch.Tensor, abar_s: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _noise_slot(self, i, sample, generator, noise):
        """The tensor multiplied by sigma: fresh standard normal noise."""
        if not self._has_sigma[i]:
            return None
        if noise is not None:
            return noise
        return torch.randn(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)

    def _after_step(self, i: int, x0: torch.Tensor) -> None:
        pass

    def _reset_state(self) -> None:
        pass

    # -- helpers -------------------------------------------------------------

    def _check_ready(self) -> None:
        if self.timesteps is None:
            raise RuntimeError(f"{type(self).__name__}: call set_timesteps(steps) first")

    def _step_index(self, t) -> int:
        self._check_ready()
        expected = "t: expected an int or a 0-d integer CPU tensor (an element of .timesteps), got"
        if isinstance(t, torch.Tensor):
            if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
                raise TypeError(f"{expected} a tensor of dtype {t.dtype}")
            if t.dim() != 0 or t.device.type != "cpu":
                raise ValueError(f"{expected} a tensor of shape {list(t.shape)} on {t.device} (reading a device "
                                 f"tensor would sync)")
            t = int(t)
        elif not is_int(t):  # 999.0 == 999, but a float is no timestep
            raise TypeError(f"{expected} {describe(t)}")
        if t not in self._index:
            raise ValueError(f"t: {t!r} is not one of this scheduler's timesteps "
                             f"({self.timesteps.numel()} steps from set_timesteps)")
        return self._index[t]

    def _check_step(self, model_output, sample, generator, noise) -> None:
        for name, x in (("sample", sample), ("model_output", model_output)):
            if not isinstance(x, torch.Tensor) or not x.is_floating_point():
                raise TypeError(f"{name}: expected a floating-point tensor, got {type(x).__name__}"
                                + (f" of dtype {x.dtype}" if isinstance(x, torch.Tensor) else ""))
        if sample.dim() < 1:
            raise ValueError("sample: expected a tensor [B, ...] with a batch dimension, got a 0-d tensor")
        if sample.device != self.device:
            raise ValueError(f"sample: expected device {self.device} (given to set_timesteps), got {sample.device}")
        for name, x in (("model_output", model_output), ("noise", noise)):
            if x is not None and (x.shape != sample.shape or x.device != sample.device or x.dtype != sample.dtype):
                raise ValueError(f"{name}: expected shape {list(sample.shape)}, dtype {sample.dtype} and device "
                                 f"{sample.device} (those of sample), got {list(x.shape)}, {x.dtype}, {x.device}")
        if generator is not None and generator.device.type != sample.device.type:
            raise ValueError(f"generator: expected a generator on {sample.device.type} (the sample's device), "
                             f"got one on {generator.device}")

    def _coef_rows(self, i: int, sample: torch.Tensor) -> torch.Tensor:
        """[5, B] coefficients of step i for sample's batch and dtype; the
        [steps, 5, B] table is built on the device once per batch size."""
        dtype = stat_dtype(sample.dtype)
        batch = sample.shape[0]
        key = (dtype, batch)
        if key not in self._per_batch:
            self._per_batch[key] = self._rows[dtype][:, :, None].expand(-1, -1, batch).contiguous()
        return self._per_batch[key][i]


def _lam(abar: torch.Tensor) -> torch.Tensor:
    """lambda_t = log(alpha_t / sigma_t), the half log-SNR."""
    return 0.5 * (abar.log() - (-abar).log1p())


def _stack_rows(abar_t, c_x0, c_xt, sigma) -> torch.Tensor:
    """[steps, 5] rows (a, b, c_x0, c_xt, sigma); every method predicts x0 from eps the same way."""
    return torch.stack([(1 - abar_t).sqrt(), abar_t.sqrt(), c_x0, c_xt, sigma], dim=1)


class DDPMScheduler(Scheduler):
    """Ancestral sampling from the posterior q(x_s | x_t, x0) (Ho et al. 2020,
    eqs. 6-7), x0 predicted from eps (eq. 15) and clipped, variance
    beta~ = (1 - abar_s) / (1 - abar_t) beta' (the reference code's choice):

        c_x0 = sqrt(abar_s) beta' / (1 - abar_t),  c_xt = sqrt(1 - beta') (1 - abar_s) / (1 - abar_t),
        sigma = sqrt(beta~),  beta' = 1 - abar_t / abar_s.

    With fewer steps than T, beta' is the respaced beta (improved DDPM) - the
    reference code's subsample_steps does the same. Unlike that code, no
    extra denoising pass runs after the last step: it already lands on abar = 1.
    """

    def _coefficients(self, abar_t, abar_s):
        beta = 1 - abar_t / abar_s
        c_x0 = abar_s.sqrt() * beta / (1 - abar_t)
        c_xt = (1 - beta).sqrt() * (1 - abar_s) / (1 - abar_t)
        sigma = (beta * (1 - abar_s) / (1 - abar_t)).sqrt()
        return _stack_rows(abar_t, c_x0=c_x0, c_xt=c_xt, sigma=sigma)


class DDIMScheduler(Scheduler):
    """DDIM (Song et al. 2021, eq. 12), with the noise direction recomputed
    from the clipped x0, eps' = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t):

        x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - sigma^2) eps' + sigma z,
        sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s)   (eq. 16),

    so c_xt = sqrt(1 - abar_s - sigma^2) / sqrt(1 - abar_t) and
    c_x0 = sqrt(abar_s) - c_xt sqrt(abar_t). eta = 0 is deterministic;
    eta = 1 is the DDPM posterior. (The reference code mixes the clipped x0
    with the unclipped eps; without clipping the two agree.)

    Args:
        eta: >= 0 (values above 1 are refused where sigma^2 would exceed 1 - abar_s).
    """

    def __init__(self, schedule: Schedule | None = None, *, eta: float = 0.0, clip_x0: bool = True,
                 backend: str | None = None):
        super().__init__(schedule, clip_x0=clip_x0, backend=backend)
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta >= 0:
            raise ValueError(f"eta: expected a float >= 0, got {eta!r}")
        self.eta = float(eta)

    def _coefficients(self, abar_t, abar_s):
        var = self.eta**2 * (1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)
        rest = 1 - abar_s - var
        if bool((rest < -1e-12).any()):
            raise ValueError(f"eta: {self.eta} makes sigma^2 exceed 1 - abar_s at some step; use eta <= 1")
        c_xt = rest.clamp_min(0).sqrt() / (1 - abar_t).sqrt()
        c_x0 = abar_s.sqrt() - c_xt * abar_t.sqrt()
        return _stack_rows(abar_t, c_x0=c_x0, c_xt=c_xt, sigma=var.sqrt())


class DPMSolverScheduler(Scheduler):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), data prediction, for
    ~10-20 step sampling. With x0_i the (clipped) data prediction at step i:

        x_s = (sigma_s / sigma_t) x_t + alpha_s (1 - e^{-h_i}) D_i,
        D_i = (1 + 1 / (2 r_i)) x0_i - 1 / (2 r_i) x0_{i-1},   r_i = h_{i-1} / h_i,

    with alpha = sqrt(abar), sigma = sqrt(1 - abar). The first step and the
    last (onto abar = 1, where h is infinite) are first order (D = x0_i;
    the DDIM eta = 0 step).

    Through reverse_step: the update is linear in (x_t, x0_i, x0_{i-1}), so
    the step passes x0_{i-1} in the kernel's noise slot, with
    c_x0 = alpha_s (1 - e^{-h}) (1 + 1/(2r)) and sigma = -alpha_s (1 - e^{-h}) / (2r):
    one fused pass, and clipping acts on x0_i itself, not on D.
    Steps must run in the order of `.timesteps` (the history is x0_{i-1}).
    """

    order = 2

    def _coefficients(self, abar_t, abar_s):
        n = abar_t.numel()
        # e^{-h} = (sqrt(abar_t) sqrt(1 - abar_s)) / (sqrt(1 - abar_t) sqrt(abar_s)), exact 0 at abar_s = 1.
        exp_neg_h = (abar_t * (1 - abar_s)).sqrt() / ((1 - abar_t) * abar_s).sqrt()
        c_xt = ((1 - abar_s) / (1 - abar_t)).sqrt()
        c1 = abar_s.sqrt() * (1 - exp_neg_h)
        c_x0 = c1.clone()
        hist = torch.zeros_like(c1)
        if n >= 3:
            h = _lam(abar_s[:-1]) - _lam(abar_t[:-1])  # steps 0..n-2 (finite h)
            half_inv_r = h[1:] / (2 * h[:-1])  # 1 / (2 r_i), i = 1..n-2
            c_x0[1:-1] = c1[1:-1] * (1 + half_inv_r)
            hist[1:-1] = -c1[1:-1] * half_inv_r
        return _stack_rows(abar_t, c_x0=c_x0, c_xt=c_xt, sigma=hist)

    def _reset_state(self) -> None:
        self._x0_prev = None
        self._last = -1

    def _noise_slot(self, i, sample, generator, noise):
        if noise is not None:
            raise ValueError("noise: DPMSolverScheduler is deterministic and takes no noise")
        if i != 0 and i != self._last + 1:
            raise RuntimeError(f"DPMSolverScheduler.step: expected timestep {int(self.timesteps[self._last + 1])} "
                               f"(step {self._last + 1}), got step {i}: multistep updates follow .timesteps in order")
        return self._x0_prev if self._has_sigma[i] else None

    @property
    def draws_noise(self) -> bool:
        return False  # sigma weighs the history x0_{i-1}, not noise

    def _after_step(self, i, x0):
        last = i == self.timesteps.numel() - 1
        self._x0_prev, self._last = (None, -1) if last else (x0, i)
