"""The MCVD network's configuration: a strict, frozen dataclass.

| field              | symbol / meaning                                              |
|--------------------|---------------------------------------------------------------|
| num_frames         | k, the current (noisy) frames the network denoises            |
| num_frames_cond    | p, past frames that condition it                              |
| num_frames_future  | f, future frames that condition it                            |
| num_timesteps      | T, diffusion steps (DDPM t in 0..T-1)                         |
| schedule           | the betas: "linear" (the paper's) or "cosine"                 |
| prediction         | what the network outputs: "eps" (the paper's), "x0", "v" or    |
|                    | "edm" (EDM's preconditioning, mcvd.schedule)                  |
| sigma_data         | the data's standard deviation, for "edm" only                 |
| ngf                | base channel count; level i has ngf * ch_mult[i] channels     |
| conditioning       | "concat" (frames stacked at the input) or "spatin" (SPATIN)   |
| cond_emb           | add a learned embedding of the past mask to the time embedding |

Unknown keys raise (naming the key), and every range is checked on
construction, so a config that builds is a network that builds.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mcvd.schedule import PREDICTIONS, SCHEDULES

CONDITIONINGS = ("concat", "spatin")


def level_channels(cfg: ModelConfig) -> list[int]:
    """Channels of each U-Net level, [ngf * m for m in ch_mult]."""
    return [cfg.ngf * m for m in cfg.ch_mult]


def level_resolutions(cfg: ModelConfig) -> list[int]:
    """Spatial size of each U-Net level, image_size / 2**i."""
    return [cfg.image_size // 2**i for i in range(len(cfg.ch_mult))]


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of `mcvd.MCVD`. Change one with `dataclasses.replace(cfg, field=value)`."""

    image_size: int = 64
    channels: int = 1
    num_frames: int = 5
    num_frames_cond: int = 5
    num_frames_future: int = 0
    ngf: int = 64
    ch_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (8, 16, 32)
    n_head_channels: int = 64
    dropout: float = 0.1
    conditioning: str = "concat"
    spade_dim: int = 128
    cond_emb: bool = False
    num_timesteps: int = 1000
    schedule: str = "linear"
    prediction: str = "eps"
    sigma_data: float = 0.5

    def __post_init__(self):
        # Lists (from YAML or JSON) become tuples, so configs compare and hash.
        for name in ("ch_mult", "attn_resolutions"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)):
                raise TypeError(f"{name}: expected a list of ints, got {type(value).__name__}")
            object.__setattr__(self, name, tuple(value))
        for name in ("dropout", "sigma_data"):
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))
        self._validate()

    def _validate(self) -> None:
        for name in ("image_size", "channels", "num_frames", "num_frames_cond", "num_frames_future", "ngf",
                     "num_res_blocks", "n_head_channels", "spade_dim", "num_timesteps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name}: expected an int, got {value!r}")
        for name, low in (("image_size", 1), ("channels", 1), ("num_frames", 1), ("num_frames_cond", 0),
                          ("num_frames_future", 0), ("num_res_blocks", 1), ("spade_dim", 1),
                          ("num_timesteps", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name}: expected >= {low}, got {getattr(self, name)}")
        # GroupNorm takes min(C // 4, 32) groups, so every level needs C >= 4.
        if self.ngf < 4:
            raise ValueError(f"ngf: expected >= 4, got {self.ngf}")
        if not self.ch_mult or any(not isinstance(m, int) or isinstance(m, bool) or m < 1 for m in self.ch_mult):
            raise ValueError(f"ch_mult: expected a non-empty list of positive ints, got {list(self.ch_mult)}")
        levels = len(self.ch_mult)
        if self.image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size: expected a multiple of 2**(len(ch_mult) - 1) = {2 ** (levels - 1)}, "
                             f"got {self.image_size}")
        resolutions = level_resolutions(self)
        for r in self.attn_resolutions:
            if r not in resolutions:
                raise ValueError(f"attn_resolutions: {r} is not a resolution of this network "
                                 f"(image_size {self.image_size}, {levels} levels: {resolutions})")
        if self.n_head_channels != -1 and self.n_head_channels < 1:
            raise ValueError(f"n_head_channels: expected -1 (one head) or >= 1, got {self.n_head_channels}")
        for ch in self.attention_channels():
            if self.n_head_channels != -1 and ch >= self.n_head_channels and ch % self.n_head_channels:
                raise ValueError(f"n_head_channels: {self.n_head_channels} does not divide the {ch} channels "
                                 f"of an attention layer")
        if not isinstance(self.dropout, float) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a float in [0, 1), got {self.dropout!r}")
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning: expected one of {CONDITIONINGS}, got {self.conditioning!r}")
        if self.conditioning == "spatin" and self.num_cond_frames == 0:
            raise ValueError("conditioning: 'spatin' needs condition frames (num_frames_cond + num_frames_future "
                             "> 0); use 'concat' for an unconditional network")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {self.schedule!r}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction: expected one of {PREDICTIONS}, got {self.prediction!r}")
        if not isinstance(self.sigma_data, float):
            raise TypeError(f"sigma_data: expected a positive float, got {self.sigma_data!r}")
        if not 0.0 < self.sigma_data < float("inf"):  # NaN fails too
            raise ValueError(f"sigma_data: expected a positive float, got {self.sigma_data!r}")
        if not isinstance(self.cond_emb, bool):
            raise TypeError(f"cond_emb: expected a bool, got {self.cond_emb!r}")

    @property
    def num_cond_frames(self) -> int:
        """p + f, the condition frames (past then future)."""
        return self.num_frames_cond + self.num_frames_future

    def attention_channels(self) -> list[int]:
        """Channel counts of every attention layer (the middle one included)."""
        chans = level_channels(self)
        return [c for c, r in zip(chans, level_resolutions(self)) if r in self.attn_resolutions] + [chans[-1]]

    def heads(self, channels: int) -> int:
        """Attention heads for a layer of `channels` channels (the reference code's rule)."""
        if self.n_head_channels == -1 or channels < self.n_head_channels:
            return 1
        return channels // self.n_head_channels

    # --- construction ---------------------------------------------------

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a plain dict (as written by `to_dict`); unknown keys raise."""
        if not isinstance(d, dict):
            raise TypeError(f"ModelConfig.from_dict: expected a dict, got {type(d).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in known:
                raise ValueError(f"ModelConfig: unknown key {key!r} (known keys: {', '.join(known)})")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of builtin types (lists for tuples), for YAML, JSON and checkpoints."""
        d = dataclasses.asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        d["attn_resolutions"] = list(self.attn_resolutions)
        return d

    @classmethod
    def preset(cls, name: str) -> ModelConfig:
        """The paper's concat-conditioned settings for one data set.

        "smmnist", "kth", "bair", "cityscapes", "ucf101" (the public code's
        configs/*.yml with the overrides of its training scripts). For the
        SPATIN variant: `dataclasses.replace(cfg, conditioning="spatin")`.
        """
        if name not in PRESETS:
            raise ValueError(f"name: expected one of {sorted(PRESETS)}, got {name!r}")
        return cls(**PRESETS[name])


# The paper's settings: configs/{smmnist_DDPM_big5,kth64_big,bair_big,cityscapes_big,ucf101}.yml of the public
# code with the overrides of its example_scripts/final/training_scripts.sh (frames, ngf, heads).
PRESETS: dict[str, dict[str, Any]] = {
    "smmnist": dict(image_size=64, channels=1, num_frames=5, num_frames_cond=5, ngf=64, ch_mult=(1, 2, 3, 4),
                    num_res_blocks=2, attn_resolutions=(8, 16, 32), n_head_channels=64, dropout=0.1),
    "kth": dict(image_size=64, channels=1, num_frames=5, num_frames_cond=10, ngf=96, ch_mult=(1, 2, 3, 4),
                num_res_blocks=2, attn_resolutions=(8, 16, 32), n_head_channels=96, dropout=0.1),
    "bair": dict(image_size=64, channels=3, num_frames=5, num_frames_cond=1, ngf=192, ch_mult=(1, 2, 3, 4),
                 num_res_blocks=2, attn_resolutions=(8, 16, 32), n_head_channels=192, dropout=0.1),
    "cityscapes": dict(image_size=128, channels=3, num_frames=5, num_frames_cond=2, ngf=192,
                       ch_mult=(1, 1, 2, 3, 4), num_res_blocks=2, attn_resolutions=(8, 16, 32),
                       n_head_channels=192, dropout=0.0),
    "ucf101": dict(image_size=64, channels=3, num_frames=4, num_frames_cond=4, ngf=288, ch_mult=(1, 2, 3, 4),
                   num_res_blocks=2, attn_resolutions=(8, 16, 32), n_head_channels=288, dropout=0.1),
}
