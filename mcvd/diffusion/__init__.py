"""Noise schedules, schedulers, the sampling loop and the video tasks."""
from .sampling import METHODS, denoise, make_scheduler, sample
from .schedule import Schedule, cosine_betas, linear_betas
from .schedulers import SPACINGS, DDIMScheduler, DDPMScheduler, DPMSolverScheduler, Scheduler, spaced_timesteps
from .streaming import StreamingPredictor
from .tasks import predict

__all__ = [
    "METHODS",
    "SPACINGS",
    "DDIMScheduler",
    "DDPMScheduler",
    "DPMSolverScheduler",
    "Schedule",
    "Scheduler",
    "StreamingPredictor",
    "cosine_betas",
    "denoise",
    "linear_betas",
    "make_scheduler",
    "predict",
    "sample",
    "spaced_timesteps",
]
