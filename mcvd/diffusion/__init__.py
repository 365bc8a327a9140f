"""Noise schedules, schedulers, the sampling loop and the video tasks."""
from .schedule import Schedule, cosine_betas, linear_betas

__all__ = ["Schedule", "cosine_betas", "linear_betas"]
