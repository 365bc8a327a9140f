"""This package's model file: one torch.save'd dict

    {"format": "mcvd", "version": 1, "model_config": ModelConfig.to_dict(), "model": state_dict}

written atomically (a temporary file beside the target, then os.replace) and
read with torch.load(weights_only=True). Other files may add keys (a training
checkpoint of mcvd.train adds "ema", "optimizer", ...). `load_model` reads
model files only; `mcvd.load` reads any of them (a training checkpoint's EMA
weights by default) and the reference code's checkpoints.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from mcvd.fileio import atomic_write, load_weights_only

from .config import ModelConfig
from .network import MCVD

FORMAT, VERSION = "mcvd", 1


def save_model(path: str | os.PathLike, model: MCVD, *, overwrite: bool = False,
               run_config: dict | None = None) -> Path:
    """Write `model` (config and state dict, tensors moved to the CPU) to `path`.

    run_config: the run config (mcvd.train.RunConfig.to_dict) that trained the
    weights, kept in the file so that what training did stays known (e.g. that
    the conditioning was masked, which guidance needs); None leaves it out.
    Raises FileExistsError if `path` exists and `overwrite` is False.
    """
    if not isinstance(model, MCVD):
        raise TypeError(f"model: expected a mcvd.MCVD, got {type(model).__name__}")
    if run_config is not None and not isinstance(run_config, dict):
        raise TypeError(f"run_config: expected None or a dict (RunConfig.to_dict()), got {type(run_config).__name__}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"path: {path} exists; pass overwrite=True to replace it")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "model_config": model.config.to_dict(), "model": state,
               **({} if run_config is None else {"run_config": run_config})}
    atomic_write(path, lambda fh: torch.save(payload, fh))
    return path


def read_model_file(path: str | os.PathLike) -> dict:
    """torch.load a model file (weights_only) and check its format and version."""
    return check_model_file(load_weights_only(path, "path"), path)


def check_model_file(payload, path: str | os.PathLike) -> dict:
    """`payload`, read from `path`, if it is a model file of this format and version; else ValueError naming `path`."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"path: {path} is not an mcvd model file (expected a dict with format={FORMAT!r}); "
                         f"for the reference code's checkpoints use mcvd.load or mcvd.load_official")
    if payload.get("version") != VERSION:
        raise ValueError(f"path: {path} has mcvd format version {payload.get('version')!r}; this mcvd reads "
                         f"version {VERSION}")
    for key in ("model_config", "model"):
        if key not in payload:
            raise ValueError(f"path: {path} lacks the key {key!r}")
    return payload


def build_model(payload: dict, path: str | os.PathLike, weights: str = "model") -> MCVD:
    """The MCVD of a checked model file's config with the state dict `payload[weights]`, in eval mode on the CPU
    and in the weights' dtype;
    ValueError naming `path` (where the payload was read) when the config is not one or the weights do not fit it."""
    try:
        config = ModelConfig.from_dict(payload["model_config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"path: {path} holds a model config that is not one: {err}") from None
    model = MCVD(config)
    state = payload.get(weights)
    dtypes = {v.dtype for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()} \
        if isinstance(state, dict) else set()
    if len(dtypes) == 1:  # saved in one float dtype (float64, bfloat16, ...): built in it, not cast to float32
        model = model.to(dtypes.pop())
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:  # missing or unexpected keys, wrong shapes, not a dict
        raise ValueError(f"path: {path}: its {weights!r} weights do not fit its model config: {err}") from None
    # Refused here, not after minutes of sampling noise: a run that diverged, or a damaged file.
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"path: {path}: its {weights!r} weights hold NaN or infinite values, in {len(bad)} "
                         f"tensor(s): {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}")
    return model.eval()


def load_model(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> MCVD:
    """Read a model written by `save_model`: an MCVD in eval mode on `map_location`.

    A training checkpoint holds two sets of weights, so it is refused here
    (ValueError): `mcvd.load` reads it, with its EMA weights by default.
    """
    payload = read_model_file(path)
    if "ema" in payload:
        raise ValueError(f"path: {path} is a training checkpoint, with raw and EMA weights; load it with "
                         f"mcvd.load(path) (EMA weights) or mcvd.load(path, use_ema=False) (raw weights)")
    return build_model(payload, path).to(map_location)
