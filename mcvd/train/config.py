"""Run configuration: the `model`, `data` and `training` sections of a config file.

Schema (YAML; every key optional, defaults below; unknown keys raise):

    model:                      # mcvd.ModelConfig fields (image_size, channels, num_frames k,
      preset: smmnist           # num_frames_cond p, num_frames_future f, ngf, ...); `preset`
      ngf: 32                   # starts from ModelConfig.preset(name), the other keys override it
    data:                       # DataConfig
      dataset: smmnist          # "smmnist" (Stochastic Moving MNIST, train digits) or "video_folder"
      root: null                # video_folder: the folder of videos (mcvd.data.VideoFolder)
      ...
    training:                   # TrainConfig
      batch_size: 64
      ...

Clips have p + k + f frames of the model's image_size and channels; the data
section only says where they come from.

Values are type-checked per field: ints must be ints, floats accept ints and
numeric strings (PyYAML reads `1e-4` as a string), tuples accept lists.
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mcvd.nn import ModelConfig

DATASETS = ("smmnist", "video_folder")
PRECISIONS = ("fp32", "bf16", "fp16")
LOSS_WEIGHTINGS = ("none", "min_snr")
DEVICES = ("auto", "cpu", "cuda")
SECTIONS = ("model", "data", "training")


def _coerce(tp: Any, value: Any, name: str) -> Any:
    """`value` as the annotated type `tp`, or TypeError naming `name`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, name)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{name}: expected a list, got {value!r}")
        return tuple(_coerce(args[0], v, name) for v in value)
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{name}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name}: expected an int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError(f"{name}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{name}: unsupported field type {tp}")  # a new field type needs a rule here


def _typed_kwargs(cls, d: dict, section: str) -> dict:
    """Check keys against the dataclass `cls` and coerce every value to its field's type."""
    if not isinstance(d, dict):
        raise TypeError(f"{section}: expected a mapping of keys to values, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key in d:
        if key not in known:
            raise ValueError(f"{section}: unknown key {key!r} (known keys: {', '.join(known)})")
    return {k: _coerce(hints[k], v, f"{section}.{k}") for k, v in d.items()}


def _check_range(section: str, name: str, value, low=None, high=None, *, low_open=False, high_open=False):
    bad = (low is not None and (value <= low if low_open else value < low)) or \
          (high is not None and (value >= high if high_open else value > high))
    if bad or (isinstance(value, float) and not math.isfinite(value)):
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
        raise ValueError(f"{section}.{name}: expected {' and '.join(s for s in (lo, hi) if s)}, got {value}")


# The data keys that only one data set reads (root and length: one data set only, refused for the other).
DATASET_KEYS = {"smmnist": ("num_digits", "digit_size"), "video_folder": ("frame_stride", "clip_step")}


def ignored_data_keys(data: "DataConfig") -> list[str]:
    """Messages naming the keys of `data` set away from their defaults that its data set does not read: a
    config written for the other data set (mcvd.train.trainer.make_dataset warns with them)."""
    other = "video_folder" if data.dataset == "smmnist" else "smmnist"
    return [f"data.{name}: {other} only; dataset {data.dataset!r} ignores it (got {getattr(data, name)!r})"
            for name in DATASET_KEYS[other]
            if getattr(data, name) != DataConfig.__dataclass_fields__[name].default]


@dataclass(frozen=True)
class DataConfig:
    """Where training clips come from.

    dataset: "smmnist" or "video_folder".
    root: video_folder only, the folder searched for videos / frame folders.
    length: smmnist only, clips per epoch (None: 60,000, the reference's).
    num_digits, digit_size: smmnist only (2 and 32 in the paper; digit_size < image_size).
    frame_stride, clip_step: video_folder only (see mcvd.data.VideoFolder).
    random_flip: flip clips left-right with probability 1/2 (the reference
        does for KTH, BAIR, Cityscapes and UCF-101, not for SMMNIST).
    num_workers: DataLoader worker processes.
    """

    dataset: str = "smmnist"
    root: str | None = None
    length: int | None = None
    num_digits: int = 2
    digit_size: int = 32
    frame_stride: int = 1
    clip_step: int = 1
    random_flip: bool = False
    num_workers: int = 0

    def __post_init__(self):
        for k, v in _typed_kwargs(DataConfig, dataclasses.asdict(self), "data").items():
            object.__setattr__(self, k, v)
        if self.dataset not in DATASETS:
            raise ValueError(f"data.dataset: expected one of {DATASETS}, got {self.dataset!r}")
        if (self.dataset == "video_folder") != (self.root is not None):
            raise ValueError("data.root: expected the video folder for dataset 'video_folder', and no root for "
                             f"'smmnist'; got dataset {self.dataset!r} with root {self.root!r}")
        if self.length is not None:
            if self.dataset == "video_folder":  # its clips are what the folder holds: nothing to set
                raise ValueError(f"data.length: smmnist only (a video folder's length is its clips), got "
                                 f"{self.length} with dataset 'video_folder'; remove it (--set data.length=null)")
            _check_range("data", "length", self.length, 1)
        for name in ("num_digits", "digit_size", "frame_stride", "clip_step"):
            _check_range("data", name, getattr(self, name), 1)
        _check_range("data", "num_workers", self.num_workers, 0)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of the MCVD objective. Defaults: the reference code's configs.

    batch_size: global batch (all processes and accumulation steps together).
    steps: optimizer steps of the whole run (a resumed run stops at the same step).
    lr, beta1, beta2, eps, weight_decay: Adam.
    warmup: steps of linear learning-rate warm-up, lr_s = lr * min((s + 1) / warmup, 1).
    lr_decay_start: None (the rate stays constant after warm-up, as in the reference code) or a step from
        which it decays along a half cosine to 0 at `steps` (one at or after `steps` never decays). The steps
        before it are those of a constant run, so a constant run's checkpoint at that step continues into the
        decay exactly.
    grad_clip: max global gradient norm (None: no clipping).
    ema_rate: EMA of the weights, shadow = rate * shadow + (1 - rate) * weights after each step.
    prob_mask_cond: probability that a sample's past frames are masked (zeroed).
    prob_mask_future: probability that a sample's future frames are masked.
    prob_mask_sync: mask the future exactly when the past is masked (needs prob_mask_cond and prob_mask_future > 0).
    rollout_prob: probability that a clip's past frames are the network's own prediction instead of the
        truth, as in a block-autoregressive rollout, where every block after the first is conditioned on
        predicted frames (a form of scheduled sampling, against the rollout's drift). With rollout_prob > 0
        every clip has k more frames; for the clips drawn, the network predicts the block before the current
        one from the true frames before that (one pass, without gradient, at a random noise level), and the
        current block is conditioned on the p frames before it, predicted where they fall in that block.
        Needs p >= 1 and no future frames.
    grad_accum: micro-batches per step (batch_size must divide evenly).
    precision: "fp32", or autocast to "bf16" / "fp16" (fp16 on CUDA, with a gradient scaler).
    loss_weighting: "none" (each prediction's plain squared error; the paper's with eps) or "min_snr":
        min-SNR-gamma (Hang et al. 2023), the squared error weighted so that it equals
        min(SNR_t, gamma) ||x0 - x0_hat||^2 for any prediction (SNR_t = abar_t / (1 - abar_t)).
    min_snr_gamma: gamma of "min_snr" (5 in the paper).
    device: "auto" (CUDA when present), "cpu" or "cuda".
    compile: torch.compile (inductor) the network for training, forward and backward; the first
        step compiles (minutes on a 2-core CPU; inductor caches it on disk). Checkpoints are the
        same files; the losses agree with an eager run's to float rounding, not bit for bit;
        resuming is exact. On a single CUDA device without grad_accum the compiled forward and
        backward are also replayed as CUDA graphs (bf16 on an H200, batch 8: 4.1x the eager float32
        step on the reference ops; benchmarks/results/h200_levers.md).
    seed: seeds the weights, the data order, the noise and the masks.
    ckpt_every: write the checkpoint every this many steps (and at the last step).
    log_every: one metrics row (means over the interval) every this many steps, and one at every
        checkpoint, so that a resumed run's log is the uninterrupted run's.
    """

    batch_size: int = 64
    steps: int = 3_000_000
    lr: float = 2e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup: int = 1000
    lr_decay_start: int | None = None
    grad_clip: float | None = 1.0
    ema_rate: float = 0.999
    prob_mask_cond: float = 0.0
    prob_mask_future: float = 0.0
    prob_mask_sync: bool = False
    rollout_prob: float = 0.0
    grad_accum: int = 1
    precision: str = "fp32"
    loss_weighting: str = "none"
    min_snr_gamma: float = 5.0
    device: str = "auto"
    compile: bool = False
    seed: int = 0
    ckpt_every: int = 1000
    log_every: int = 50

    def __post_init__(self):
        for k, v in _typed_kwargs(TrainConfig, dataclasses.asdict(self), "training").items():
            object.__setattr__(self, k, v)
        for name in ("batch_size", "steps", "grad_accum", "ckpt_every", "log_every"):
            _check_range("training", name, getattr(self, name), 1)
        _check_range("training", "warmup", self.warmup, 0)
        # torch seeds take up to 2**64 - 1, and step s is seeded with seed + s.
        _check_range("training", "seed", self.seed, 0, 2**63 - 1)
        _check_range("training", "lr", self.lr, 0.0, low_open=True)
        if self.lr_decay_start is not None:
            _check_range("training", "lr_decay_start", self.lr_decay_start, 0)
        for name in ("beta1", "beta2", "ema_rate"):
            _check_range("training", name, getattr(self, name), 0.0, 1.0, high_open=True)
        _check_range("training", "eps", self.eps, 0.0, low_open=True)
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"training.loss_weighting: expected one of {LOSS_WEIGHTINGS}, "
                             f"got {self.loss_weighting!r}")
        _check_range("training", "min_snr_gamma", self.min_snr_gamma, 0.0, low_open=True)
        _check_range("training", "weight_decay", self.weight_decay, 0.0)
        if self.grad_clip is not None:
            _check_range("training", "grad_clip", self.grad_clip, 0.0, low_open=True)
        for name in ("prob_mask_cond", "prob_mask_future", "rollout_prob"):
            _check_range("training", name, getattr(self, name), 0.0, 1.0)
        if self.prob_mask_sync and self.prob_mask_future == 0.0:
            raise ValueError("training.prob_mask_sync: needs prob_mask_future > 0 (with 0 the future is never "
                             "masked, as in the reference code)")
        if self.prob_mask_sync and self.prob_mask_cond == 0.0:
            raise ValueError("training.prob_mask_sync: needs prob_mask_cond > 0 (the future is masked exactly when "
                             "the past is, so with 0 nothing is ever masked)")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"training.grad_accum: expected a divisor of batch_size {self.batch_size}, "
                             f"got {self.grad_accum}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"training.precision: expected one of {PRECISIONS}, got {self.precision!r}")
        if self.device not in DEVICES:
            raise ValueError(f"training.device: expected one of {DEVICES}, got {self.device!r}")


def model_config_from_dict(d: dict) -> ModelConfig:
    """ModelConfig from a config file's model section (optional `preset`, then overrides)."""
    if not isinstance(d, dict):
        raise TypeError(f"model: expected a mapping of keys to values, got {type(d).__name__}")
    d = dict(d)
    try:
        base = ModelConfig.preset(d.pop("preset")).to_dict() if "preset" in d else {}
    except (TypeError, ValueError) as err:
        raise ValueError(f"model.preset: {str(err).removeprefix('name: ')}") from None
    known = [f.name for f in dataclasses.fields(ModelConfig)]
    for key in d:
        if key not in known:
            raise ValueError(f"model: unknown key {key!r} (known keys: preset, {', '.join(known)})")
    try:
        return ModelConfig.from_dict({**base, **_typed_kwargs(ModelConfig, d, "model")})
    except (TypeError, ValueError) as err:  # "image_size: ..." -> "model.image_size: ...", the key in the file
        text = str(err)
        if any(text.startswith(f"{name}:") for name in known):
            raise type(err)(f"model.{text}") from None
        raise


@dataclass(frozen=True)
class RunConfig:
    """A training run: the model, where its clips come from, and how it is optimised."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    training: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def __post_init__(self):
        m, t = self.model, self.training
        if self.data.dataset == "smmnist":
            if m.channels != 1:
                raise ValueError(f"model.channels: Stochastic Moving MNIST has 1 channel, got {m.channels}")
            if self.data.digit_size >= m.image_size:
                raise ValueError(f"data.digit_size: expected < model.image_size ({m.image_size}), "
                                 f"got {self.data.digit_size}")
        if t.prob_mask_cond > 0 and m.num_frames_cond == 0:
            raise ValueError("training.prob_mask_cond: the model has no past frames (num_frames_cond = 0)")
        if t.prob_mask_future > 0 and m.num_frames_future == 0:
            raise ValueError("training.prob_mask_future: the model has no future frames (num_frames_future = 0)")
        if t.rollout_prob > 0 and (m.num_frames_cond == 0 or m.num_frames_future > 0):
            raise ValueError("training.rollout_prob: needs a prediction model (num_frames_cond >= 1, "
                             f"num_frames_future = 0), got p = {m.num_frames_cond}, f = {m.num_frames_future}")

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        if not isinstance(d, dict):
            raise TypeError(f"config: expected a mapping with sections {SECTIONS}, got {type(d).__name__}")
        for key in d:
            if key not in SECTIONS:
                raise ValueError(f"config: unknown section {key!r} (known sections: {', '.join(SECTIONS)})")
        sections = {}
        for name in SECTIONS:  # an empty section (`training:` alone) is YAML's null: the defaults
            section = d.get(name)
            if section is not None and not isinstance(section, dict):
                raise TypeError(f"{name}: expected a mapping of keys to values, got {type(section).__name__}")
            sections[name] = section or {}
        return cls(model=model_config_from_dict(sections["model"]),
                   data=DataConfig(**_typed_kwargs(DataConfig, sections["data"], "data")),
                   training=TrainConfig(**_typed_kwargs(TrainConfig, sections["training"], "training")))

    def to_dict(self) -> dict:
        return {"model": self.model.to_dict(), "data": dataclasses.asdict(self.data),
                "training": dataclasses.asdict(self.training)}

    def with_overrides(self, overrides: list[str]) -> RunConfig:
        """Apply `section.key=value` strings (value in YAML syntax: 3, 1e-4, true, [8, 16], null)."""
        d = self.to_dict()
        for item in overrides:
            path, sep, text = item.partition("=")
            section, dot, key = path.strip().partition(".")
            if not sep or not dot or not key:
                raise ValueError(f"--set: expected section.key=value, got {item!r}")
            if section not in SECTIONS:
                raise ValueError(f"--set {item}: unknown section {section!r} (known sections: {', '.join(SECTIONS)})")
            if section == "model" and key == "preset":
                raise ValueError("--set model.preset: a preset can only be chosen in the config file")
            try:
                d[section][key] = yaml.safe_load(text)
            except yaml.YAMLError as err:
                raise ValueError(f"--set {item}: the value is not valid YAML ({_yaml_problem(err)})") from None
        return RunConfig.from_dict(d)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's error as one line: the problem and where (1-based line and column)."""
    def at(mark) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
    text = f"{at(mark)}: {problem}" if mark is not None and problem else str(err).splitlines()[0]
    context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context:
        text += f" ({context}{f' from {at(context_mark)}' if context_mark is not None else ''})"
    return text


def load_run_config(path: str | os.PathLike, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML run config and apply `section.key=value` overrides. A file that
    is not valid YAML (or not UTF-8 text) raises ValueError naming it and, for
    YAML, the line of the error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config: no such file: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            d = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise ValueError(f"config: {path} is not valid YAML: {_yaml_problem(err)}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"config: {path} is not UTF-8 text (byte {err.start}: {err.reason})") from None
    if d is None:  # an empty file, or comments only: more likely a slip than a wish for every default
        raise ValueError(f"config: {path} holds no settings (empty, or comments only); a run config has the "
                         f"sections {', '.join(SECTIONS)} (see configs/); write {{}} to run with every default")
    cfg = RunConfig.from_dict(d)
    return cfg.with_overrides(list(overrides)) if overrides else cfg
