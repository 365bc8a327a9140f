"""One sampler configuration: the options every sampling entry point shares.

`SamplerConfig` holds the nine options of a reverse-diffusion sampler,
checked once when it is built; `mcvd.sample`, `mcvd.predict`,
`StreamingPredictor` and `mcvd.metrics.protocol.evaluate` take it as
`sampler=`, and `make_scheduler` turns it into a scheduler with its
timesteps set. `sample` and `predict` also take the options as keywords
(`resolve_sampler` builds the configuration from them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mcvd.ops._backend import BACKENDS
from mcvd.ops._checks import is_int, is_real

from mcvd.schedule import Schedule
from .schedulers import SPACINGS, DDIMScheduler, DDPMScheduler, DPMSolverScheduler, Scheduler, spaced_timesteps

METHODS = ("ddpm", "ddim", "dpm++")


@dataclass(frozen=True)
class SamplerConfig:
    """How to sample: the scheduler, its steps and the guidance weight. Frozen.

    Args:
        method: "ddpm" (ancestral), "ddim" or "dpm++" (DPM-Solver++ 2M; ~10
            steps for low latency).
        steps: network calls per block of frames, an int >= 1 (at most the
            schedule's num_timesteps); None: every timestep of the schedule.
        eta: DDIM's eta >= 0 (method "ddim" only; 0 is deterministic).
        clip_x0: clamp the predicted x0 to [-1, 1] at every step.
        schedule: the forward process (None: the paper's linear schedule over
            the model's num_timesteps, see `default_schedule`).
        spacing: timestep spacing, one of SPACINGS (see `spaced_timesteps`;
            "trailing" is the reference code's).
        backend: reverse_step backend, one of mcvd.ops' backends (None: auto).
        guidance: None, or the classifier-free guidance weight w of the video
            tasks (eps = eps_uncond + w (eps_cond - eps_uncond)); `mcvd.sample`
            refuses it (its eps_model has no unconditional call).
        guidance_interval: None (guide every step), or (lo, hi): guide only the
            steps whose timestep t has lo <= t <= hi, and call the conditional
            network alone at the others, at half the cost of a guided step
            (Kynkaanniemi et al. 2024 apply guidance in a limited interval). The
            shipped SMMNIST model samples with (0, 700): leaving its six noisiest
            steps unguided costs at most 0.014 dB and 0.002 SSIM and saves 16% of
            its sampling time (docs/demo.md, "Guidance where it counts").

    The defaults are `mcvd.predict`'s: 100 DDIM steps, trailing spacing.
    """

    method: str = "ddim"
    steps: int | None = 100
    eta: float = 0.0
    clip_x0: bool = True
    schedule: Schedule | None = None
    spacing: str = "trailing"
    backend: str | None = None
    guidance: float | None = None
    guidance_interval: tuple[int, int] | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {self.method!r}")
        steps = self.steps
        if steps is not None and (not is_int(steps) or steps < 1):
            raise ValueError(f"steps: expected an int >= 1 or None (every timestep), got {steps!r}")
        if steps is not None:
            object.__setattr__(self, "steps", steps := int(steps))
        if not is_real(self.eta) or not 0 <= self.eta < math.inf:
            raise ValueError(f"eta: expected a float >= 0, got {self.eta!r}")
        if self.method != "ddim" and self.eta != 0:
            raise ValueError(f"eta: only method='ddim' takes eta, got eta={self.eta!r} with method={self.method!r}")
        if not isinstance(self.clip_x0, bool):
            raise TypeError(f"clip_x0: expected a bool, got {self.clip_x0!r}")
        if self.schedule is not None and not isinstance(self.schedule, Schedule):
            raise TypeError(f"schedule: expected an mcvd.diffusion.Schedule or None, "
                            f"got {type(self.schedule).__name__}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"spacing: expected one of {SPACINGS}, got {self.spacing!r}")
        if self.backend is not None and self.backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {BACKENDS} or None, got {self.backend!r}")
        g = self.guidance
        if g is not None and not is_real(g):
            raise TypeError(f"guidance: expected None or a float weight, got {g!r}")
        if g is not None and not math.isfinite(g):
            raise ValueError(f"guidance: expected a finite weight, got {g!r}")
        interval = self.guidance_interval
        if interval is not None:
            if not (isinstance(interval, (tuple, list)) and len(interval) == 2
                    and all(is_int(v) for v in interval)
                    and 0 <= interval[0] <= interval[1]):
                raise ValueError(f"guidance_interval: expected None or a pair of timesteps (lo, hi) with "
                                 f"0 <= lo <= hi, got {interval!r}")
            if g is None:
                raise ValueError(f"guidance_interval: {tuple(interval)} limits guidance to some steps, but "
                                 f"guidance is None; give a guidance weight too")
            object.__setattr__(self, "guidance_interval", tuple(int(v) for v in interval))
        if self.schedule is not None and steps is not None:
            spaced_timesteps(self.schedule.num_timesteps, steps, self.spacing)  # steps <= T, spacing possible
        object.__setattr__(self, "eta", float(self.eta))
        if g is not None:
            object.__setattr__(self, "guidance", float(g))

    def guided_at(self, t: int) -> bool:
        """Whether the step at timestep t is guided (needs a guidance weight)."""
        if self.guidance is None:
            return False
        return self.guidance_interval is None or self.guidance_interval[0] <= t <= self.guidance_interval[1]

    def guided_steps(self, timesteps: list[int]) -> list[bool]:
        """Whether each of a scheduler's timesteps (in its order) is guided; an interval that holds none of
        them samples unguided."""
        return [self.guided_at(t) for t in timesteps]

    def make_scheduler(self, model=None, *, device: torch.device | str | None = None) -> Scheduler:
        """The scheduler of this configuration with its timesteps set on `device`
        (default CPU); `model` gives the schedule when .schedule is None
        (`default_schedule(model)`)."""
        schedule = default_schedule(model) if self.schedule is None else self.schedule
        model_steps = getattr(getattr(model, "config", None), "num_timesteps", None)
        if model_steps is not None and schedule.num_timesteps != model_steps:
            # The network reads t as a step of its own T: another T would feed it steps it never saw.
            raise ValueError(f"schedule: expected a schedule over the model's num_timesteps={model_steps}, got one "
                             f"over {schedule.num_timesteps}")
        scheduler = _new_scheduler(self.method, schedule, self.eta, self.clip_x0, self.backend)
        steps = scheduler.num_train_timesteps if self.steps is None else self.steps
        return scheduler.set_timesteps(steps, spacing=self.spacing, device=device)


def _new_scheduler(method: str, schedule: Schedule | None, eta: float, clip_x0: bool,
                   backend: str | None) -> Scheduler:
    if method == "ddim":
        return DDIMScheduler(schedule, eta=eta, clip_x0=clip_x0, backend=backend)
    cls = DDPMScheduler if method == "ddpm" else DPMSolverScheduler
    return cls(schedule, clip_x0=clip_x0, backend=backend)


def make_scheduler(method: str, *, schedule: Schedule | None = None, eta: float = 0.0, clip_x0: bool = True,
                   backend: str | None = None) -> Scheduler:
    """The scheduler of a method name: "ddpm", "ddim" (takes eta) or "dpm++"
    (DPM-Solver++ 2M), before set_timesteps; schedule None: `Schedule.linear()`."""
    SamplerConfig(method=method, eta=eta, clip_x0=clip_x0, schedule=schedule, backend=backend, steps=None)
    return _new_scheduler(method, schedule, eta, clip_x0, backend)


def default_schedule(model) -> Schedule:
    """The model's own schedule: `model.config.schedule` over `model.config.num_timesteps`
    for an MCVD network, else the paper's linear schedule over T = 1000."""
    cfg = getattr(model, "config", None)
    return Schedule.named(getattr(cfg, "schedule", "linear"), getattr(cfg, "num_timesteps", 1000))


def resolve_sampler(sampler: SamplerConfig | None, defaults: SamplerConfig, **options) -> SamplerConfig:
    """The configuration of a call that takes `sampler=` and the options as keywords.

    sampler: the caller's SamplerConfig, or None to build one from `options`.
    defaults: the configuration of the keywords' defaults in the caller's signature.
    options: the keyword values (names of SamplerConfig fields). With `sampler`
        given, a keyword that differs from its default is refused: the
        configuration would silently override it.
    """
    if sampler is None:
        return SamplerConfig(**options)
    if not isinstance(sampler, SamplerConfig):
        raise TypeError(f"sampler: expected an mcvd.SamplerConfig or None, got {type(sampler).__name__}")
    changed = []
    for name, value in options.items():
        default = getattr(defaults, name)
        same = value is default if name == "schedule" or value is None or default is None else value == default
        if not same:
            changed.append(f"{name}={value!r}")
    if changed:
        raise ValueError(f"sampler: given together with {', '.join(changed)}; pass the sampler options either "
                         f"as sampler=SamplerConfig(...) or as keywords, not both")
    return sampler
