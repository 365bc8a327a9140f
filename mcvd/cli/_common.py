"""What the `mcvd` commands share: exit codes and the usage error, argparse
types for numbers, the device, the model file and the SMMNIST test clips.

Exit codes, the same in every command: 0 done; EXIT_USAGE (2, argparse's own
code) when the command cannot start with what it was given (its options, and
the files and folders they name); EXIT_FAILURE (1) when the run itself fails
(training diverged, a metric's weights or a package missing).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

EXIT_FAILURE, EXIT_USAGE = 1, 2


class UsageError(ValueError):
    """A bad command line, reported as `mcvd <command>: error: ...` with EXIT_USAGE."""


def error(command: str, message, code: int) -> int:
    """Print `mcvd <command>: error: <message>` to stderr; returns `code` for the command to return."""
    print(f"mcvd {command}: error: {message}", file=sys.stderr)
    return code


def _integer(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected >= {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _integer(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _integer(text, 0)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def resolve_device(name: str):
    """torch.device of a --device value: "auto" is CUDA when torch sees one, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UsageError(f"--device: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device: CUDA requested but torch sees no CUDA device")
    return device


def load_checkpoint_arg(path: Path, no_ema: bool, device):
    """The --checkpoint model file (mcvd.load: any kind) as (model, config, which weights, the file's run config).

    Which weights: "EMA" or "raw" for a training or reference checkpoint, "model file" for a model file."""
    from mcvd.loader import MODEL_FILE, read

    if not path.is_file():
        raise UsageError(f"--checkpoint: no such file: {path}")
    source = read(path)
    if source.kind == MODEL_FILE and no_ema:
        raise UsageError(f"--no-ema: {path} is a model file with a single set of weights, not a training checkpoint")
    model, cfg = source.build(use_ema=not no_ema, map_location=device)
    weights = "model file" if source.kind == MODEL_FILE else "raw" if no_ema else "EMA"
    return model, cfg, weights, source.run_config


def smmnist_test_clips(cfg, frames: int, run_config: dict):
    """The Stochastic Moving MNIST test clips (seed 0) of `frames` frames, drawn
    like the model's training clips (`run_config`'s data section: num_digits and
    digit_size; for a file without one, 2 digits of half the frame size, the
    paper's proportions)."""
    from mcvd.data import StochasticMovingMNIST

    if cfg.channels != 1:
        raise UsageError(f"--data: smmnist clips are greyscale; the model takes {cfg.channels} channels")
    data = run_config.get("data", {})
    if data.get("dataset") == "smmnist":
        digits, digit_size = data["num_digits"], data["digit_size"]
    else:
        digits, digit_size = 2, cfg.image_size // 2
    return StochasticMovingMNIST(frames, split="test", seed=0, image_size=cfg.image_size, num_digits=digits,
                                 digit_size=digit_size)
