"""Noise schedules, schedulers, the sampling loop and the video tasks."""
from .sampling import METHODS, denoise, make_scheduler, sample
from .schedule import Schedule, cosine_betas, linear_betas
from .schedulers import SPACINGS, DDIMScheduler, DDPMScheduler, DPMSolverScheduler, Scheduler, spaced_timesteps

__all__ = [
    "METHODS",
    "SPACINGS",
    "DDIMScheduler",
    "DDPMScheduler",
    "DPMSolverScheduler",
    "Schedule",
    "Scheduler",
    "cosine_betas",
    "denoise",
    "linear_betas",
    "make_scheduler",
    "sample",
    "spaced_timesteps",
]
