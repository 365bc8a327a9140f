"""Training checkpoints: this package's model file plus the training state.

    {"format": "mcvd", "version": 1,
     "model_config": ModelConfig.to_dict(), "model": state_dict,   # the model file (mcvd.nn.model_file)
     "ema": state_dict,                                             # EMA weights, same keys
     "run_config": RunConfig.to_dict(),                             # as run: see train(time_limit_ends_run=)
     "step": int, "data_position": {"epoch", "batch", "num_clips"},
     "optimizer": Adam state, "scaler": GradScaler state or None,
     "rng": {"generator": state of the objective's generator (shared by all processes),
             "per_rank": [{"torch", "cuda", "numpy", "python"} per process]},
     "world_size": int}

The learning rate is a function of the step, so the step restores the
schedule. Written atomically (a temporary file beside the target, fsync,
os.replace): a crash mid-write leaves the previous checkpoint intact. Read
with torch.load(weights_only=True), so every value is a tensor or a builtin.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from mcvd.nn import MCVD, ModelConfig
from mcvd.nn.model_file import FORMAT, VERSION, build_model, read_model_file

CHECKPOINT_NAME = "checkpoint.pt"


def capture_rng() -> dict:
    """This process's global RNG states (torch, CUDA, NumPy, Python) as tensors and builtins."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
    }


def restore_rng(state: dict) -> None:
    """Restore `capture_rng()`'s states; CUDA states only where CUDA is (a CPU run has none)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def training_payload(**state) -> dict:
    return {"format": FORMAT, "version": VERSION, **state}


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The whole checkpoint dict (CPU tensors); raises naming the file if it is not one of ours."""
    payload = read_model_file(path)
    for key in ("ema", "run_config", "step", "optimizer", "rng", "data_position"):
        if key not in payload:
            raise ValueError(f"path: {path} is a model file, not a training checkpoint (no {key!r}); "
                             f"read it with mcvd.load or mcvd.nn.load_model")
    return payload


def load_checkpoint(path: str | os.PathLike, use_ema: bool = True, *,
                    map_location: str | torch.device = "cpu") -> tuple[MCVD, ModelConfig]:
    """The network of a training checkpoint, in eval mode: (model, its ModelConfig).

    use_ema: the EMA weights (what the paper samples with) or the raw weights.
    """
    model = checkpoint_model(read_model_file(path), path, use_ema)
    return model.to(map_location), model.config


def checkpoint_model(payload: dict, path: str | os.PathLike, use_ema: bool = True) -> MCVD:
    """The network of a training checkpoint's contents (read from `path`), EMA or raw weights, in eval mode on
    the CPU."""
    key = "ema" if use_ema else "model"
    if key not in payload:
        raise ValueError(f"path: {path} holds no EMA weights; pass use_ema=False for its raw weights")
    return build_model(payload, path, key)
