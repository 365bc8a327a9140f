"""Noise schedules, schedulers, the sampling loop and the video tasks."""
from .sampler_config import METHODS, SamplerConfig, default_schedule, make_scheduler
from .sampling import denoise, sample
from mcvd.schedule import Schedule, cosine_betas, linear_betas
from .schedulers import SPACINGS, DDIMScheduler, DDPMScheduler, DPMSolverScheduler, Scheduler, spaced_timesteps
from .streaming import StreamingPredictor
from .stream_video import StreamRun, stream_video
from .tasks import predict

__all__ = [
    "METHODS",
    "SPACINGS",
    "DDIMScheduler",
    "DDPMScheduler",
    "DPMSolverScheduler",
    "SamplerConfig",
    "Schedule",
    "Scheduler",
    "StreamRun",
    "StreamingPredictor",
    "cosine_betas",
    "default_schedule",
    "denoise",
    "linear_betas",
    "make_scheduler",
    "predict",
    "sample",
    "spaced_timesteps",
    "stream_video",
]
