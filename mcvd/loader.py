"""One loader for any model file: `mcvd.load`.

Three kinds of file hold an MCVD network:

| kind                  | written by                                  | weights                         |
|-----------------------|---------------------------------------------|---------------------------------|
| model file            | mcvd.nn.save_model, mcvd convert-official   | one set                         |
| training checkpoint   | mcvd train (mcvd.train.checkpoint)          | EMA (default) or raw            |
| reference checkpoint  | the paper's public code (mcvd.compat), with | EMA (default) or raw            |
|                       | its config.yml beside it                    |                                 |

The file is read once (torch.load with weights_only=True) and its kind told
from its contents, not its name. This module sits above mcvd.train and
mcvd.compat, whose formats it dispatches to.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mcvd.compat.official import official_model
from mcvd.compat.official_config import config_beside, official_masking
from mcvd.fileio import load_weights_only
from mcvd.nn import MCVD, ModelConfig
from mcvd.nn.devices import parse_device
from mcvd.nn.model_file import FORMAT, build_model, check_model_file
from mcvd.train.checkpoint import checkpoint_model

MODEL_FILE, TRAINING_CHECKPOINT, REFERENCE_CHECKPOINT = "model file", "training checkpoint", "reference checkpoint"


@dataclass(frozen=True)
class ModelSource:
    """A file read but not yet built into a network: its path, kind and contents."""

    path: Path
    kind: str       # MODEL_FILE, TRAINING_CHECKPOINT or REFERENCE_CHECKPOINT
    contents: Any   # what torch.load returned

    @property
    def run_config(self) -> dict:
        """The training run's config as saved (RunConfig.to_dict()); for a reference checkpoint, its
        masked-conditioning settings (section `training`) from the config.yml beside it; {} when
        there is none."""
        if self.kind == REFERENCE_CHECKPOINT:
            config = config_beside(self.path)
            return {"training": official_masking(config)} if config.is_file() else {}
        return self.contents.get("run_config", {}) if isinstance(self.contents, dict) else {}

    def build(self, *, use_ema: bool = True, map_location: str | torch.device | None = None
              ) -> tuple[MCVD, ModelConfig]:
        """(model in eval mode, its ModelConfig); see `load`."""
        if not isinstance(use_ema, bool):  # "no" would read as True
            raise TypeError(f"use_ema: expected a bool, got {type(use_ema).__name__} {use_ema!r}")
        if self.kind == MODEL_FILE:
            if not use_ema:
                raise ValueError(f"use_ema=False: {self.path} is a model file with a single set of weights, "
                                 f"not a training checkpoint")
            model = build_model(self.contents, self.path)
        elif self.kind == TRAINING_CHECKPOINT:
            model = checkpoint_model(self.contents, self.path, use_ema)
        else:
            model, _ = official_model(self.contents, self.path, use_ema=use_ema)
        if map_location is not None:
            model = model.to(parse_device(map_location, "map_location", kinds=("cpu", "cuda", "meta")))
        return model, model.config


def read(path: str | os.PathLike, *, sha256: str | None = None) -> ModelSource:
    """Read `path` and tell its kind. Raises FileNotFoundError for a missing
    file and ValueError, naming the file, for one that is unreadable (corrupt,
    truncated, not a torch file) or of no known kind. sha256: the file's
    expected SHA-256, checked on the bytes read (mcvd.fileio.DigestMismatch)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected the path of a model file (str or os.PathLike), got {type(path).__name__}")
    path = Path(path)
    try:
        contents = load_weights_only(path, "path", sha256=sha256)
    except FileNotFoundError as err:
        if path.suffix or path.exists():
            raise
        raise FileNotFoundError(f"{err} (a shipped model is loaded by its name with mcvd.pretrained.load)") from None
    if isinstance(contents, dict) and contents.get("format") == FORMAT:
        check_model_file(contents, path)
        # A training checkpoint holds the optimizer's state too: one that lost its EMA weights is still one.
        training = "ema" in contents or "optimizer" in contents
        return ModelSource(path, TRAINING_CHECKPOINT if training else MODEL_FILE, contents)
    if isinstance(contents, (list, tuple)):
        return ModelSource(path, REFERENCE_CHECKPOINT, contents)
    raise ValueError(f"path: {path} is not an mcvd model file, training checkpoint or reference-code checkpoint "
                     f"(expected a dict with format={FORMAT!r} or a list [model_state, optimizer_state, epoch, "
                     f"step, ema_shadow], got {type(contents).__name__})")


def load(path: str | os.PathLike, *, use_ema: bool = True,
         map_location: str | torch.device | None = None) -> tuple[MCVD, ModelConfig]:
    """Load the network of any model file: (model in eval mode, its ModelConfig), in the dtype its weights
    were saved in (float32 for a reference checkpoint).

    Args:
        path: this package's model file (mcvd.nn.save_model, mcvd
            convert-official), a training checkpoint of `mcvd train`, or a
            checkpoint of the reference code (its config.yml beside it; for
            another config path use mcvd.load_official).
        use_ema: a training or reference checkpoint's EMA weights (what the
            paper samples with); False for its raw weights. A model file holds
            one set of weights: use_ema=False raises there.
        map_location: device to move the model to; None leaves it on the CPU.
    Raises:
        FileNotFoundError: no file at `path` (or no config.yml beside a
            reference checkpoint).
        ValueError: the file is unreadable, of no known kind, or does not
            match its config; use_ema=False on a model file; use_ema=True on a
            checkpoint without EMA weights.
    """
    return read(path).build(use_ema=use_ema, map_location=map_location)
