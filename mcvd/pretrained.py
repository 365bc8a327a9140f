"""Models shipped with the package: small networks trained with `mcvd train`
by a config kept in the repository, their weights in mcvd/weights/.

    model, cfg = mcvd.pretrained.load("smmnist-demo-cpu")

Every load checks the file's SHA-256 against the one recorded here before
reading it (weights-only), so a damaged or replaced copy is refused instead
of giving wrong predictions.

smmnist-demo-cpu: Stochastic Moving MNIST at 32 x 32 with 16-pixel digits, 2
past -> 2 frames, x0-prediction: the data, frames and objective of the demo's
`cpu` size with a wider network (ngf 32 instead of 16, attention at 16 x 16
and 8 x 8; 1.69M parameters against 0.42M) trained for 22,000 steps, then
30,000 more from those weights on clips it had not seen, then 6,000 more with
the past masked in a fifth of the clips, so that it samples with
classifier-free guidance (58,000 in all), by scripts/make_pretrained.sh with
configs/pretrained/smmnist_demo_cpu.yml, smmnist_demo_cpu_finetune.yml and
smmnist_demo_cpu_guidance.yml. It samples best guided, w = 2 with 20 DDPM
steps: its digits stay recognisable longer than with 50 unguided steps, in
less time (docs/demo.md, "The shipped model samples with guidance"). Guiding
only the steps at t <= 700 scores within 0.002 SSIM in 16% less time
("Guidance where it counts"):

    mcvd.predict(model, past, 6, method="ddpm", steps=20, guidance=2.0, guidance_interval=(0, 700))
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mcvd.fileio import DigestMismatch
from mcvd.loader import ModelSource, read
from mcvd.nn import MCVD, ModelConfig

WEIGHTS = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class Pretrained:
    """One shipped model: its file in mcvd/weights/, that file's SHA-256, the
    configs that trained it (paths in the repository, in order: each stage after
    the first starts from the weights of the one before, `mcvd train --init-from`)
    and its training steps, all stages together; how it samples best, measured
    (the demo samples it so): the steps of its DDPM sampler, its classifier-free
    guidance weight (None: unguided) and the timesteps it guides (mcvd.SamplerConfig's
    guidance_interval; None: every step)."""

    file: str
    sha256: str
    configs: tuple[str, ...]
    steps: int
    sample_steps: int
    guidance: float | None = None
    guidance_interval: tuple[int, int] | None = None


MODELS = {
    "smmnist-demo-cpu": Pretrained(
        file="smmnist_demo_cpu.mcvd",
        sha256="0b49678a081e55e59c7b67c896ddaeb940b58da8333354136c7360748f7927af",
        configs=("configs/pretrained/smmnist_demo_cpu.yml", "configs/pretrained/smmnist_demo_cpu_finetune.yml",
                 "configs/pretrained/smmnist_demo_cpu_guidance.yml"),
        steps=58000, sample_steps=20, guidance=2.0, guidance_interval=(0, 700)),
}


def path(name: str) -> Path:
    """Where the shipped model `name` is installed."""
    return WEIGHTS / _entry(name).file


def load(name: str = "smmnist-demo-cpu", *, file: str | os.PathLike | None = None,
         map_location: str | torch.device | None = None) -> tuple[MCVD, ModelConfig]:
    """The shipped model `name` (one of MODELS): (model in eval mode, its ModelConfig).

    file: read this copy instead of the installed one (its SHA-256 must still
        be the recorded one). map_location: as mcvd.load.
    Raises ValueError when the file's SHA-256 differs from the recorded one
    (damaged, truncated or replaced), FileNotFoundError when it is missing.
    """
    return source(name, file=file).build(map_location=map_location)


def source(name: str, *, file: str | os.PathLike | None = None) -> ModelSource:
    """The shipped model `name`'s file read, checked and not yet built (mcvd.loader.ModelSource: its run
    config too); what `load` builds, and what the commands read for `--checkpoint NAME`. Raises as `load`."""
    entry = _entry(name)
    target = Path(file) if file is not None else WEIGHTS / entry.file
    if not target.is_file():
        raise FileNotFoundError(f"file: no such file: {target} (the shipped model {name!r}; reinstall mcvd)")
    try:
        return read(target, sha256=entry.sha256)  # the bytes checked are the bytes loaded
    except DigestMismatch as err:
        raise ValueError(f"file: {target} has SHA-256 {err.digest}, not the {entry.sha256} recorded for the "
                         f"shipped model {name!r}: the file is damaged or was replaced; reinstall mcvd, or remake "
                         f"it with scripts/make_pretrained.sh") from None


def _entry(name: str) -> Pretrained:
    if name not in MODELS:
        raise ValueError(f"name: expected one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name]
