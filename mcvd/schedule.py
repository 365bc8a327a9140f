"""Noise schedules of the forward process q(x_t | x_0) (Ho et al. 2020, eq. 4).

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,    abar_t = prod_{s<=t} (1 - beta_s)

Timesteps follow DDPM: integer t in 0..T-1, larger is noisier. Built in
float64; the tensors handed to kernels are float32 copies on the data's device.

| code            | symbol                |
|-----------------|-----------------------|
| betas           | beta_t                |
| alphas          | alpha_t = 1 - beta_t  |
| alphas_cumprod  | abar_t                |

What a network predicts (its parameterisation, `ModelConfig.prediction`),
with a = sqrt(abar_t), s = sqrt(1 - abar_t), so that x_t = a x_0 + s eps:

| prediction | target            | eps from a prediction y |
|------------|-------------------|-------------------------|
| "eps"      | eps (the paper's) | y                       |
| "x0"       | x_0               | (x_t - a y) / s         |
| "v"        | a eps - s x_0     | s x_t + a y             |
| "edm"      | F (below)         | (x_t - a D) / s         |

(v: Salimans & Ho 2022.) "edm" is the preconditioning of Karras et al. 2022
(EDM, section 5 and table 1) written for this discrete VP process: with
sigma = s / a, x_t / a = x_0 + sigma eps is EDM's noisy input, and with the
data's standard deviation sd (`ModelConfig.sigma_data`) and r = sqrt(s^2 +
a^2 sd^2) EDM's scalings become

    network input  c_in x_t / a   = x_t / r
    denoiser       D = c_skip x_t / a + c_out F = (a sd^2 / r^2) x_t + (s sd / r) F
    target of F    (x_0 - c_skip x_t / a) / c_out = (s x_0 - a sd^2 eps) / (sd r)

so the unweighted squared error of F is EDM's loss weighting (lambda = 1 /
c_out^2 on ||D - x_0||^2). The t embedding stays the discrete one (EDM's
c_noise is a function of sigma, as t is) and t is drawn uniformly, not from
EDM's log-normal. With sd = 1, F = -v: the two coincide.

Every sampler works with eps: the network converts its prediction
(`eps_from_prediction`) before returning, so a v- or x0-network samples with
every scheduler unchanged. Training compares the prediction with its own
target (`prediction_target`).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from mcvd.ops._checks import describe, is_real


SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "x0", "v", "edm")


def _check_num_timesteps(n) -> None:
    # A bool is an int to Python: True would make a one-step schedule.
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"num_timesteps: expected an int >= 1, got {describe(n)}")
    if n < 1:
        raise ValueError(f"num_timesteps: expected an int >= 1, got {n}")


def linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """The paper's default: betas linear from 1e-4 to 0.02 over T = 1000, float64 [T]."""
    _check_num_timesteps(num_timesteps)
    ends = (f"beta_start, beta_end: expected floats with 0 < beta_start <= beta_end < 1, got {beta_start!r}, "
            f"{beta_end!r}")
    if not (is_real(beta_start) and is_real(beta_end)):
        raise TypeError(ends)
    if not 0 < beta_start <= beta_end < 1:  # NaN fails too
        raise ValueError(ends)
    return torch.linspace(float(beta_start), float(beta_end), int(num_timesteps), dtype=torch.float64)


def cosine_betas(num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: abar(t) = cos^2((t/T + s) / (1 + s) * pi/2), float64 [T]."""
    _check_num_timesteps(num_timesteps)
    f = lambda i: math.cos((i / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    betas = [min(1 - f(i + 1) / f(i), max_beta) for i in range(num_timesteps)]
    return torch.tensor(betas, dtype=torch.float64)


@dataclass(frozen=True)
class Schedule:
    """A discrete forward process given by its betas (float64 [T])."""

    betas: torch.Tensor

    def __post_init__(self):
        b = self.betas
        if not isinstance(b, torch.Tensor) or not b.is_floating_point():
            got = f"dtype {b.dtype}" if isinstance(b, torch.Tensor) else type(b).__name__
            raise TypeError(f"betas: expected a float tensor [T], got {got}")
        if b.dim() != 1 or b.numel() < 1:
            raise ValueError(f"betas: expected a 1-d tensor [T], got shape {list(b.shape)}")
        if not bool(((b > 0) & (b < 1)).all()):
            raise ValueError("betas: expected every beta in (0, 1)")
        object.__setattr__(self, "betas", b.to(torch.float64))
        object.__setattr__(self, "_on_device", {})  # device -> alphas_cumprod there (alphas_cumprod_on)

    # By value: the generated comparison would compare the betas tensors, whose truth value is ambiguous.
    def __eq__(self, other):
        return torch.equal(self.betas, other.betas) if isinstance(other, Schedule) else NotImplemented

    def __hash__(self):
        return hash(tuple(self.betas.tolist()))

    @classmethod
    def linear(cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "Schedule":
        return cls(linear_betas(num_timesteps, beta_start, beta_end))

    @classmethod
    def cosine(cls, num_timesteps: int = 1000) -> "Schedule":
        return cls(cosine_betas(num_timesteps))

    @classmethod
    def named(cls, name: str, num_timesteps: int = 1000) -> "Schedule":
        """The schedule called `name` (one of SCHEDULES; `ModelConfig.schedule`) over T steps."""
        if name not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {name!r}")
        return cls.linear(num_timesteps) if name == "linear" else cls.cosine(num_timesteps)

    @property
    def num_timesteps(self) -> int:
        return self.betas.numel()

    @property
    def alphas(self) -> torch.Tensor:
        return 1.0 - self.betas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(self.alphas, 0)

    def alphas_cumprod_on(self, device: torch.device | str) -> torch.Tensor:
        """alphas_cumprod (float64 [T]) on `device`, copied there once and kept: a
        training step indexes it with its timesteps where they are, instead of
        copying the table from the host every step (a blocking copy on a GPU).
        Shared: read it, do not write to it."""
        device = torch.device(device)
        if device not in self._on_device:
            self._on_device[device] = self.alphas_cumprod.to(device)
        return self._on_device[device]

    def signal_noise(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(abar_t), sqrt(1 - abar_t)), float32 [T] each on `device`, computed in float64."""
        return _signal_noise(self.alphas_cumprod, device)

    def signal_noise_at(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """signal_noise() at the timesteps t (int64 [B]), on t's device: float32 [B] each."""
        return _signal_noise(self.alphas_cumprod_on(t.device)[t], t.device)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) with the given noise.

        x0, noise: [B, ...]; t: LongTensor [B] in 0..T-1 on x0's device.
        """
        # In float32 at least: in bfloat16 or float16, 1 - abar_t would round to 0 at small t, and the noise with it.
        work = torch.promote_types(x0.dtype, torch.float32)
        abar = self.alphas_cumprod_on(x0.device)[t].to(torch.float32)
        abar = abar.view(-1, *([1] * (x0.dim() - 1))).to(work)
        return (abar.sqrt() * x0 + (1 - abar).sqrt() * noise).to(x0.dtype)


def _signal_noise(abar: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(sqrt(abar), sqrt(1 - abar)) of float64 abar, as float32 on `device`."""
    return (abar.sqrt().to(device=device, dtype=torch.float32),
            (1 - abar).sqrt().to(device=device, dtype=torch.float32))


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction: expected one of {PREDICTIONS}, got {prediction!r}")


def _rows(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def edm_scales(a_t: torch.Tensor, s_t: torch.Tensor, sigma_data: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EDM's (c_in, c_skip, c_out) in terms of x_t (see the module's docstring): the network reads
    c_in x_t and D = c_skip x_t + c_out F, where a_t, s_t are sqrt(abar_t), sqrt(1 - abar_t)."""
    sd2 = sigma_data * sigma_data
    r2 = s_t * s_t + a_t * a_t * sd2
    r = r2.sqrt()
    return 1 / r, a_t * sd2 / r2, s_t * sigma_data / r


def eps_from_prediction(y: torch.Tensor, x_t: torch.Tensor, a_t: torch.Tensor, s_t: torch.Tensor,
                        prediction: str, sigma_data: float = 0.5) -> torch.Tensor:
    """The noise eps that a network's prediction `y` of kind `prediction` implies.

    y, x_t: [B, ...]; a_t, s_t: [B], sqrt(abar) and sqrt(1 - abar) of each
    sample's step (`Schedule.signal_noise`), on y's device. The arithmetic runs
    in a_t's dtype when it is wider than y's; the result has y's dtype.
    sigma_data: the data's standard deviation, read by "edm" only.
    """
    _check_prediction(prediction)
    if prediction == "eps":
        return y
    dtype = torch.promote_types(y.dtype, a_t.dtype)
    a, s, yw, xw = _rows(a_t, y).to(dtype), _rows(s_t, y).to(dtype), y.to(dtype), x_t.to(dtype)
    if prediction == "edm":
        _, c_skip, c_out = edm_scales(a, s, sigma_data)
        eps = (xw - a * (c_skip * xw + c_out * yw)) / s
    else:
        eps = (xw - a * yw) / s if prediction == "x0" else s * xw + a * yw
    return eps.to(y.dtype)


def prediction_target(x0: torch.Tensor, noise: torch.Tensor, a_t: torch.Tensor, s_t: torch.Tensor,
                      prediction: str, sigma_data: float = 0.5) -> torch.Tensor:
    """What a network of kind `prediction` is trained to output for x_t = a_t x0 + s_t noise."""
    _check_prediction(prediction)
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    a, s = _rows(a_t, x0).to(x0.dtype), _rows(s_t, x0).to(x0.dtype)
    if prediction == "v":
        return a * noise - s * x0
    _, c_skip, c_out = edm_scales(a, s, sigma_data)
    return (x0 - c_skip * (a * x0 + s * noise)) / c_out
