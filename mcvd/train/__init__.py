"""Training MCVD: configs, the masked objective, the loop (EMA, mixed precision,
accumulation, DDP, exact resume) and checkpoints."""
from .checkpoint import load_checkpoint, read_checkpoint
from .config import DataConfig, RunConfig, TrainConfig, load_run_config
from .ema import EMA
from .objective import StepRandomness, draw_step_randomness, mcvd_loss, split_clip
from .trainer import (TrainingDiverged, TrainingInterrupted, TrainResult, learning_rate, make_dataset, make_optimizer,
                      train)

__all__ = [
    "EMA",
    "DataConfig",
    "RunConfig",
    "StepRandomness",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "TrainingInterrupted",
    "draw_step_randomness",
    "learning_rate",
    "load_checkpoint",
    "load_run_config",
    "make_dataset",
    "make_optimizer",
    "mcvd_loss",
    "read_checkpoint",
    "split_clip",
    "train",
]
