"""The reference code's config.yml -> ModelConfig.

Only the keys that shape `UNetMore_DDPM` are read (the table `_KEYS`), with
the reference code's defaults for the optional ones; options that change the
network's function in ways this package does not implement are rejected by
name.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
import yaml

from mcvd.nn.config import ModelConfig

log = logging.getLogger("mcvd.compat")

# (section, key) -> default; None marks a required key.
_KEYS = {
    ("data", "image_size"): None,
    ("data", "channels"): None,
    ("data", "num_frames"): None,
    ("data", "num_frames_cond"): None,
    ("data", "num_frames_future"): 0,
    ("model", "ngf"): None,
    ("model", "ch_mult"): None,
    ("model", "num_res_blocks"): None,
    ("model", "attn_resolutions"): None,
    ("model", "n_head_channels"): None,
    ("model", "dropout"): 0.0,
    ("model", "spade"): False,
    ("model", "spade_dim"): 128,
    ("model", "cond_emb"): False,
    ("model", "num_classes"): None,
    ("model", "arch"): None,
    ("model", "time_conditional"): True,
    ("model", "output_all_frames"): False,
    ("model", "noise_in_cond"): False,
    ("data", "rescaled"): True,
    ("data", "logit_transform"): False,
}

# Options with a value this package does not implement: (section, key) -> the one supported value.
_UNSUPPORTED = {
    ("model", "arch"): "unetmore",
    ("model", "time_conditional"): True,
    ("model", "output_all_frames"): False,
    ("model", "noise_in_cond"): False,
    # The reference maps the frames to the network's space by data_transform: 2x - 1 when rescaled (as this
    # package does everywhere), else [0, 1] frames, or logits; a model trained so takes and gives other values.
    ("data", "rescaled"): True,
    ("data", "logit_transform"): False,
}

# The paper's noise (linear betas from 0.0001 to 0.02, listed noisiest first by
# the reference code; Gaussian, not Gamma): other settings load fine, but the
# sampler must be told.
_PAPER_NOISE = {"sigma_dist": "linear", "sigma_begin": 0.02, "sigma_end": 0.0001, "gamma": False}


class _ReferenceYAMLLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, and the `!!python/tuple` tag: the reference code evaluates its --config_mod
    values in Python (`model.ch_mult=(1,2,3,4)` is a tuple) and its yaml.dump writes a tuple so. Read as a
    list, like the lists of its own configs; no other Python tag, and no code, is run."""


_ReferenceYAMLLoader.add_constructor("tag:yaml.org,2002:python/tuple",
                                     lambda loader, node: loader.construct_sequence(node, deep=True))


def read_yaml(path: str | os.PathLike) -> dict:
    """Parse a YAML mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config: no such file: {path}")
    try:
        with open(path) as fh:
            d = yaml.load(fh, Loader=_ReferenceYAMLLoader)
    except yaml.YAMLError as e:
        raise ValueError(f"config: {path} is not valid YAML ({e})") from e
    if not isinstance(d, dict):
        raise ValueError(f"config: {path} does not hold a YAML mapping")
    return d


def config_from_official_dict(d: dict, source: str = "config") -> ModelConfig:
    """ModelConfig from the parsed reference config (sections `data`, `model`)."""

    def get(section, key):
        sec = d.get(section)
        default = _KEYS[(section, key)]
        if not isinstance(sec, dict) or key not in sec:
            if default is None:
                raise ValueError(f"{source}: missing {section}.{key}")
            return default
        return sec[key]

    for (section, key), supported in _UNSUPPORTED.items():
        value = get(section, key)
        if value != supported:
            raise ValueError(f"{source}: {section}.{key} = {value!r} is not supported (only {supported!r})")

    image_size, ch_mult = get("data", "image_size"), get("model", "ch_mult")
    # The reference code silently skips attention resolutions the network never reaches.
    reached = [image_size // 2**i for i in range(len(ch_mult))] if isinstance(ch_mult, list) else []
    attn = get("model", "attn_resolutions")
    attn_kept = [r for r in attn if r in reached] if isinstance(attn, list) else attn
    if attn_kept != attn:
        log.info("%s: model.attn_resolutions %s: the network only reaches %s", source, attn, reached)

    # The reference's cosine schedule is this package's (Nichol & Dhariwal's, s = 0.008), which reads neither
    # sigma_begin nor sigma_end, to the last step: there this package clips beta at 0.999 as Nichol & Dhariwal
    # do (abar 2.4e-9 against the reference's 1.9e-15, at T = 1000). Any other setting has no
    # ModelConfig.schedule: the samplers' default is wrong.
    noise = {k: d["model"].get(k, v) for k, v in _PAPER_NOISE.items()}
    schedule = "cosine" if noise["sigma_dist"] == "cosine" else "linear"
    if noise["gamma"]:
        log.warning("%s: model.gamma is true: the network was trained on Gamma noise, which no sampler of this "
                    "package draws (they draw Gaussian noise): the network loads as trained, but its samples "
                    "here are not the reference's", source)
    elif schedule != "cosine" and noise != _PAPER_NOISE:
        log.warning("%s: noise settings %s differ from the paper's %s; sample with the matching schedule",
                    source, noise, _PAPER_NOISE)

    try:
        return ModelConfig(
            image_size=image_size,
            channels=get("data", "channels"),
            num_frames=get("data", "num_frames"),
            num_frames_cond=get("data", "num_frames_cond"),
            num_frames_future=get("data", "num_frames_future"),
            ngf=get("model", "ngf"),
            ch_mult=ch_mult,
            num_res_blocks=get("model", "num_res_blocks"),
            attn_resolutions=attn_kept,
            n_head_channels=get("model", "n_head_channels"),
            dropout=float(get("model", "dropout")),
            conditioning="spatin" if get("model", "spade") else "concat",
            spade_dim=get("model", "spade_dim"),
            cond_emb=bool(get("model", "cond_emb")),
            num_timesteps=get("model", "num_classes"),
            schedule=schedule,
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {e}") from e


def official_alphas(d: dict) -> torch.Tensor | None:
    """The schedule buffer `alphas` (abar, noisiest first, float32) that the reference's UNetMore_DDPM builds
    from its parsed config.yml `d` (models/better/ncsnpp_more.py with get_sigmas of models/__init__.py), or
    None for a sigma_dist it builds none for."""
    model = d.get("model") or {}
    T, dist = model.get("num_classes"), model.get("sigma_dist", "linear")
    if not isinstance(T, int) or T < 1:
        return None
    if dist == "linear":
        betas = torch.linspace(float(model.get("sigma_begin", 0.02)), float(model.get("sigma_end", 0.0001)), T)
        return torch.cumprod(1 - betas.flip(0), 0).flip(0)
    if dist == "cosine":
        t = torch.linspace(T, 0, T + 1) / T
        f = torch.cos((t + 0.008) / (1 + 0.008) * math.pi / 2) ** 2
        return f[:-1] / f[-1]
    return None


def read_official_config(path: str | os.PathLike) -> ModelConfig:
    """ModelConfig from the reference code's config.yml at `path`."""
    return config_from_official_dict(read_yaml(path), source=str(path))


def config_beside(checkpoint: str | os.PathLike) -> Path:
    """Where the reference code keeps a checkpoint's config: config.yml in the same folder."""
    return Path(checkpoint).parent / "config.yml"


def official_masking(path: str | os.PathLike) -> dict:
    """The masked-conditioning settings of the reference code's config.yml at `path`, under this
    package's names (mcvd.train.TrainConfig): prob_mask_cond, prob_mask_future, prob_mask_sync.
    The reference keeps them in its `data` section and reads a missing one as 0 (false)."""
    data = read_yaml(path).get("data") or {}
    return {"prob_mask_cond": float(data.get("prob_mask_cond", 0.0)),
            "prob_mask_future": float(data.get("prob_mask_future", 0.0)),
            "prob_mask_sync": bool(data.get("prob_mask_sync", False))}
