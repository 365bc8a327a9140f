"""This package's model file: one torch.save'd dict

    {"format": "mcvd", "version": 1, "model_config": ModelConfig.to_dict(), "model": state_dict}

written atomically (a temporary file beside the target, then os.replace) and
read with torch.load(weights_only=True). Other files may add keys (a training
checkpoint adds "ema", "optimizer", ...); `load_model` reads only these.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from mcvd.fileio import atomic_write, load_weights_only

from .config import ModelConfig
from .network import MCVD

FORMAT, VERSION = "mcvd", 1


def save_model(path: str | os.PathLike, model: MCVD, *, overwrite: bool = False) -> Path:
    """Write `model` (config and state dict, tensors moved to the CPU) to `path`.

    Raises FileExistsError if `path` exists and `overwrite` is False.
    """
    if not isinstance(model, MCVD):
        raise TypeError(f"model: expected a mcvd.MCVD, got {type(model).__name__}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"path: {path} exists; pass overwrite=True to replace it")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "model_config": model.config.to_dict(), "model": state}
    atomic_write(path, lambda fh: torch.save(payload, fh))
    return path


def read_model_file(path: str | os.PathLike) -> dict:
    """torch.load a model file (weights_only) and check its format and version."""
    payload = load_weights_only(path, "path")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"path: {path} is not an mcvd model file (expected a dict with format={FORMAT!r}); "
                         f"for the reference code's checkpoints use mcvd.load_official")
    if payload.get("version") != VERSION:
        raise ValueError(f"path: {path} has mcvd format version {payload.get('version')!r}; this mcvd reads "
                         f"version {VERSION}")
    for key in ("model_config", "model"):
        if key not in payload:
            raise ValueError(f"path: {path} lacks the key {key!r}")
    return payload


def load_model(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> MCVD:
    """Read a model written by `save_model`: an MCVD in eval mode on `map_location`."""
    payload = read_model_file(path)
    model = MCVD(ModelConfig.from_dict(payload["model_config"]))
    model.load_state_dict(payload["model"])
    return model.eval().to(map_location)
