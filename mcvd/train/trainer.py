"""The training loop: the MCVD objective, Adam with warm-up and clipping, EMA,
mixed precision, gradient accumulation, DDP, exact resume.

A run lives in a work folder:

    config.yml      the resolved RunConfig (written at the start, and again when a resume changes it)
    metrics.csv     step, loss, lr, grad_norm, it_per_s (appended; means over log_every steps)
    checkpoint.pt   the latest checkpoint (mcvd.train.checkpoint), replaced atomically

A work folder that holds checkpoint.pt is resumed; a new run needs a missing
or empty folder, or one that holds only config.yml and metrics.csv: the files
of a run stopped before its first checkpoint (killed, or diverged), which
then starts over, replacing them. Temporary files that a killed checkpoint
write left (mcvd.fileio) are removed. Nothing else in the folder is ever
deleted or overwritten. The folder must be writable, checked before anything
runs; a disk that fills raises mcvd.fileio.NoSpaceError, naming the file, and
leaves the last checkpoint intact.
With several nodes the folder must be on a file system that all of them see
(process 0 writes, every process reads the checkpoint to resume).
Rows of metrics.csv written after the last checkpoint of an interrupted run
are dropped on resume, which writes those steps again: one row per step.
Ctrl-C (SIGINT, in a single-process run) stops the run at the end of the
step under way and writes its checkpoint there, then raises
TrainingInterrupted; a second Ctrl-C stops at once, losing the steps since
the last checkpoint.

Everything random is a function of the seed and the step: clips by
StepBatchSampler, (t, eps, masks, flips) by one generator that every process
advances over the whole global batch before keeping its slice. So a resumed
run repeats the losses of an uninterrupted one bit for bit (on the CPU; also
with training.compile, dropout included), and
N processes compute what one process computes on the same global batch,
except for dropout, whose masks each process draws from its own RNG.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mcvd.data import StochasticMovingMNIST, VideoFolder
from mcvd.data.smmnist import DEFAULT_LENGTH as SMMNIST_LENGTH
from mcvd.diffusion import Schedule
from mcvd.fileio import (NO_SPACE, NoSpaceError, atomic_write, check_writable_folder, folder_lock,
                         remove_stale_temporaries, temporary_name)
from mcvd.nn import MCVD
from mcvd.nn.precision import warn_if_slow_on_cpu
from mcvd.ops._backend import check_env_backend

from . import distributed as D
from .checkpoint import CHECKPOINT_NAME, capture_rng, read_checkpoint, restore_rng, training_payload
from .config import RunConfig, ignored_data_keys
from .ema import EMA
from .objective import draw_step_randomness, mcvd_loss
from .sampler import StepBatchSampler

log = logging.getLogger("mcvd.train")
# train's time limit: seconds, or a function of (steps done by the call, their seconds) that returns them.
TimeLimit = float | Callable[[int, float], float]

CONFIG_NAME, METRICS_NAME = "config.yml", "metrics.csv"
METRICS_FIELDS = ("step", "loss", "lr", "grad_norm", "it_per_s")
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM (`signum`) stopped the run at a step end, after writing its checkpoint there
    (`step`, `checkpoint`)."""

    def __init__(self, step: int, checkpoint: Path, signum: int = signal.SIGINT):
        by = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
        super().__init__(f"interrupted{by} at step {step}; {checkpoint} holds it: run the same command to resume")
        self.step, self.checkpoint, self.signum = step, checkpoint, signum


@dataclass
class TrainResult:
    step: int                # optimizer steps done by the run so far
    losses: list[float]      # loss of every step this call ran (global batch mean)
    checkpoint: Path
    model: MCVD              # this process's network with its final (raw, not EMA) weights; with
                             # training.compile its calls stay compiled (another mode or shape recompiles)
    run: RunConfig           # the run config the checkpoint records (see train's time_limit_ends_run)
    rank: int = 0            # this process's rank (0: the one that writes, and reports)


def read_metrics(path) -> list[dict[str, float]]:
    """The rows of a run's metrics.csv (METRICS_FIELDS), as floats."""
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def learning_rate(step: int, cfg) -> float:
    """Linear warm-up: lr * min((step + 1) / warmup, 1) for the update after `step` completed steps; from
    step lr_decay_start (when set) times 1/2 (1 + cos(pi (step - start) / (steps - start))), 0 at the end.

    The reference code uses step / warmup, which makes its first update a no-op (lr 0).
    """
    lr = cfg.lr * min((step + 1) / cfg.warmup, 1.0) if cfg.warmup else cfg.lr
    start = cfg.lr_decay_start
    if start is not None and step >= start:
        lr *= 0.5 * (1 + math.cos(math.pi * (step - start) / (cfg.steps - start)))
    return lr


def make_optimizer(params, tc) -> torch.optim.Adam:
    """The optimizer of a run (tc: its TrainConfig): Adam with the config's rate, betas, eps and weight
    decay, fused: one kernel for every parameter's update (CPU and CUDA) instead of a Python loop of ~6
    ops per parameter - 0.9 ms against 7.9 ms a step on the demo's cpu size (170 tensors), the same update
    up to float rounding (1 ulp after 50 steps). A checkpoint's own setting comes back with its
    optimizer state (load_state_dict), so a run saved unfused resumes as it ran."""
    return torch.optim.Adam(params, lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.eps,
                            weight_decay=tc.weight_decay, fused=True)


def make_dataset(run: RunConfig) -> Dataset:
    """The training clips of `run`: [p+k+f, C, image_size, image_size] in [-1, 1], with k more frames
    (the block the rollout predicts first) when training.rollout_prob > 0."""
    m, d = run.model, run.data
    for message in ignored_data_keys(d):
        warnings.warn(message, stacklevel=2)
    frames = m.num_frames_cond + m.num_frames + m.num_frames_future
    if run.training.rollout_prob > 0:
        frames += m.num_frames
    if d.dataset == "smmnist":
        return StochasticMovingMNIST(frames, split="train", length=d.length, seed=run.training.seed,
                                     num_digits=d.num_digits, image_size=m.image_size, digit_size=d.digit_size)
    return VideoFolder(d.root, frames, m.image_size, channels=m.channels, frame_stride=d.frame_stride,
                       clip_step=d.clip_step)


def _device(cfg) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("training.device: 'cuda' requested but torch sees no CUDA device")
    dev = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
                       else "cpu")
    if cfg.precision == "fp16" and dev.type != "cuda":
        raise ValueError("training.precision: 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on the CPU")
    if cfg.precision in AUTOCAST:
        warn_if_slow_on_cpu(dev, AUTOCAST[cfg.precision], f"training.precision: {cfg.precision!r}")
    return dev


def _check_workdir(workdir: Path, run: RunConfig) -> tuple[bool, list[Path]]:
    """(whether a run in `workdir` resumes: checkpoint.pt there; else the files of a run stopped before its first
    checkpoint that a new run replaces), after the checks a run makes before it writes anything: FileExistsError
    or OSError naming workdir for a file, a folder that takes no files, one holding other files, or one whose
    metrics.csv logged steps past its run's first checkpoint (ckpt_every: config.yml's, else `run`'s) while
    checkpoint.pt is gone: that log is not a run stopped before its first checkpoint, and is kept."""
    if workdir.exists() and not workdir.is_dir():
        raise FileExistsError(f"workdir: {workdir} is a file; expected a folder")
    check_writable_folder(workdir, "workdir")
    if (workdir / CHECKPOINT_NAME).is_file():
        return True, []
    if not workdir.exists():
        return False, []
    # A young temporary file of an interrupted write is left alone (remove_stale_temporaries), not foreign.
    temporaries = [temporary_name(workdir / name) for name in (CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME)]
    entries = [p for p in workdir.iterdir() if not any(t.fullmatch(p.name) for t in temporaries)]
    ours = [p for p in entries if written_by_a_run(p)]
    if len(ours) < len(entries):
        raise FileExistsError(f"workdir: {workdir} exists and holds files but no {CHECKPOINT_NAME} to resume "
                              f"from; choose a new or empty folder (existing files are never overwritten)")
    if workdir / METRICS_NAME in ours:
        every = _logged_ckpt_every(workdir / CONFIG_NAME) or run.training.ckpt_every
        steps = [_row_step(line) for line in (workdir / METRICS_NAME).read_text().splitlines()[1:]]
        reached = max((n for n in steps if n is not None), default=0)
        # The log comes before the checkpoint at a step, so a run killed while writing its first one logged
        # up to `every`: past it, that checkpoint was written, and has been moved or deleted since.
        if reached > every:
            raise FileExistsError(f"workdir: {workdir} holds the {METRICS_NAME} of a run that reached step "
                                  f"{reached}, past its first checkpoint (every {every} steps), but no "
                                  f"{CHECKPOINT_NAME}: put its {CHECKPOINT_NAME} back to resume, or choose a new "
                                  f"or empty folder (the log is not replaced)")
    return False, ours


def _logged_ckpt_every(config_path: Path) -> int | None:
    """training.ckpt_every of the config.yml a run wrote (None: none there, or none readable)."""
    try:
        every = yaml.safe_load(config_path.read_text())["training"]["ckpt_every"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError):
        return None
    return every if isinstance(every, int) and not isinstance(every, bool) and every > 0 else None


def _prepare_workdir(workdir: Path, run: RunConfig, hold: contextlib.ExitStack) -> bool:
    """True to resume (checkpoint.pt present); else create the folder, config.yml and metrics.csv
    (replacing those of a run that stopped before its first checkpoint). The folder's lock goes into `hold`:
    FolderInUse while another run holds it."""
    _check_workdir(workdir, run)  # before anything is written or removed
    workdir.mkdir(parents=True, exist_ok=True)
    hold.enter_context(folder_lock(workdir, "workdir", "another training run (mcvd train or mcvd demo)"))
    # Again, holding the lock: a run that ended meanwhile may have left its checkpoint.
    resume, ours = _check_workdir(workdir, run)  # (it counts no temporary file as foreign)
    for name in (CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME):
        for path in remove_stale_temporaries(workdir / name, min_age_s=0):  # of any age: the folder is ours
            log.warning("removed %s, left by an interrupted write", path)
    if resume:
        return True
    if ours:
        log.warning("workdir: %s holds the %s of a run stopped before its first checkpoint; starting the run "
                    "over, replacing them", workdir, " and ".join(p.name for p in ours))
    text = yaml.safe_dump(run.to_dict(), sort_keys=False).encode()
    atomic_write(workdir / CONFIG_NAME, lambda fh: fh.write(text))
    atomic_write(workdir / METRICS_NAME, lambda fh: fh.write((",".join(METRICS_FIELDS) + "\n").encode()))
    return False


def _resume_files(workdir: Path, run: RunConfig, step: int) -> None:
    """On resume at `step`: metrics.csv without the rows past it (those steps run again, and a row cut short
    by a kill is dropped with them), config.yml as this call's run config (its training or data section may
    have changed)."""
    path = workdir / METRICS_NAME
    header = ",".join(METRICS_FIELDS)
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = ""
    lines = text.splitlines()
    kept = [header] + [line for line in lines[1:] if _row_step(line) is not None and _row_step(line) <= step]
    if kept != lines or not text.endswith("\n"):
        if len(kept) < len(lines):
            log.info("%s: dropping %d rows past the checkpoint's step %d (resuming writes them again)", path,
                     len(lines) - len(kept), step)
        text = "".join(line + "\n" for line in kept).encode()
        atomic_write(path, lambda fh: fh.write(text))
    config = yaml.safe_dump(run.to_dict(), sort_keys=False)
    if not (workdir / CONFIG_NAME).is_file() or (workdir / CONFIG_NAME).read_text() != config:
        atomic_write(workdir / CONFIG_NAME, lambda fh: fh.write(config.encode()))


def _row_step(line: str) -> int | None:
    """The step of a metrics.csv row, None for a row that is not whole."""
    fields = line.split(",")
    if len(fields) != len(METRICS_FIELDS):
        return None
    try:
        return int(fields[0])
    except ValueError:
        return None


def written_by_a_run(path: Path) -> bool:
    """Whether `path` is a config.yml or metrics.csv as a run writes them (the config's YAML dump, the metrics'
    header and rows), so that starting over may replace it: a config file of the user's own, its comments or
    layout, is not."""
    if path.name not in (CONFIG_NAME, METRICS_NAME) or not path.is_file() or path.is_symlink():
        return False
    try:
        text = path.read_text()
        if path.name == METRICS_NAME:
            return text.split("\n", 1)[0] == ",".join(METRICS_FIELDS)
        config = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(config, dict) and yaml.safe_dump(config, sort_keys=False) == text


def _differences(old: dict, new: dict) -> list[str]:
    return [f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def check_init_model(init_model: MCVD, model_config, name: str = "init_model") -> None:
    """ValueError naming `name` and each differing key when the network to start
    from (train's init_model) is not one of `model_config` (the model section)."""
    changed = _differences(init_model.config.to_dict(), model_config.to_dict())
    if changed:
        raise ValueError(f"{name}: the network to start from differs from the model section in "
                         f"{', '.join(changed)}")


def _resolved(section: str, values: dict) -> dict:
    """A config section with its defaults that stand for a value written out (an SMMNIST data.length of None
    is the train split's length), so that resuming with either is no change."""
    if section == "data" and values.get("dataset") == "smmnist" and values.get("length") is None:
        return {**values, "length": SMMNIST_LENGTH["train"]}
    return values


def resume_point(run: RunConfig, workdir) -> int | None:
    """The step a run of `run` in `workdir` would resume from (None: a new run), checked as train checks the
    workdir (FileExistsError or OSError naming it) and its checkpoint's config (a changed model section raises
    ValueError; other changes are logged), without writing anything."""
    workdir = Path(workdir)
    resume, _ = _check_workdir(workdir, run)
    if workdir.is_dir():  # a run in it now would be refused
        with folder_lock(workdir, "workdir", "another training run (mcvd train or mcvd demo)"):
            pass
    return int(_read_resumable(workdir / CHECKPOINT_NAME, run)["step"]) if resume else None


def _read_resumable(ckpt_path: Path, run: RunConfig) -> dict:
    """The checkpoint a run resumes from, its config checked against `run`."""
    try:
        ckpt = read_checkpoint(ckpt_path)
    except ValueError as err:  # damaged: nothing here deletes it, so say what the user can do
        raise ValueError(f"workdir: cannot resume from {str(err).removeprefix('path: ')}; move it out of the "
                         f"way to start the run over, or choose a new workdir") from None
    _check_resume_config(ckpt["run_config"], run, ckpt_path)
    return ckpt


def _check_resume_config(saved: dict, run: RunConfig, path: Path) -> None:
    new = run.to_dict()
    changed = _differences(saved["model"], new["model"])
    if changed:
        raise ValueError(f"config: the model section differs from the checkpoint's in {path}: "
                         f"{', '.join(changed)}; resume with the checkpoint's model or use a new workdir")
    for section in ("data", "training"):
        changed = _differences(_resolved(section, saved[section]), _resolved(section, new[section]))
        if changed:
            log.warning("resuming %s with a changed %s section: %s", path, section, ", ".join(changed))


def train(run: RunConfig, workdir, *, progress: bool = True, time_limit: TimeLimit | None = None,
          time_limit_ends_run: bool = False, init_model: MCVD | None = None) -> TrainResult:
    """Train (or resume training) an MCVD network in `workdir` until run.training.steps.

    init_model: a network (e.g. mcvd.load(path)[0]) whose weights a new run
    starts from instead of the random initialisation (fine-tuning; the EMA
    starts from them too, the optimizer afresh); a resumed run continues from
    its checkpoint and ignores it. Its config must equal run.model, else
    ValueError naming the differences, before the workdir is touched.

    time_limit: seconds of training (from the first step of this call, which
    with training.compile includes compiling the network) after
    which the run stops early, at the end of the step that crossed it, and
    writes its checkpoint there; every process stops at the same step (each
    must be given a time limit, or none). Nothing
    in a step depends on run.training.steps but the cosine decay of
    training.lr_decay_start, which aims at it; without one, a run stopped at
    step N holds the weights of a run of N steps. Resuming continues it. It may be a
    function of (steps done by this call, their seconds) that returns the
    limit in seconds, asked after every step: a limit that depends on the
    measured speed (mcvd demo's deadline).

    time_limit_ends_run: the time limit is the run's budget, not a pause: a run
    it stops at step N is a run of N steps, and its checkpoint's run config
    (and TrainResult.run) record training.steps = N (ckpt_every at most N), so
    resuming it trains no further (with lr_decay_start set, that record is not
    the schedule it trained with: its decay aimed at the steps given).
    Otherwise they keep run.training.steps, and a later call resumes towards it.

    Started by torchrun, every process calls this; the global batch
    run.training.batch_size is split evenly over processes and accumulation steps.
    Raises TrainingDiverged (naming the step) if the loss or gradient norm turns
    NaN/Inf; the weights of that step are not applied and checkpoint.pt keeps
    the last good state. Before the workdir is touched: ValueError for a
    training.device or an MCVD_BACKEND this machine cannot run, an OSError
    naming the workdir if files cannot be created in it. A full disk raises
    mcvd.fileio.NoSpaceError naming the file and, for a checkpoint, the step
    checkpoint.pt keeps.
    """
    if not isinstance(run, RunConfig):
        raise TypeError(f"run: expected a mcvd.train.RunConfig (RunConfig.from_dict makes one of a dict, "
                        f"load_run_config of a YAML file), got {type(run).__name__}")
    tc = run.training
    device = _device(tc)
    try:  # before the workdir is made: an op would refuse the variable at the first step
        check_env_backend(device)
    except RuntimeError as err:  # a backend this machine lacks: a setting to change, as an unknown name is
        raise ValueError(str(err)) from None
    env = D.setup(device.type)
    try:
        local = device if device.type == "cpu" else torch.device("cuda", env.local_rank)
        with contextlib.ExitStack() as hold:  # the workdir's lock, taken by process 0 before it writes there
            result = _train(run, Path(workdir), local, env, progress, time_limit, time_limit_ends_run, init_model,
                            hold)
    except TrainingDiverged:
        # Every process meets it at the same step (the loss and gradient norm are all-reduced), so all
        # of them arrive here and can leave together.
        D.teardown(env, together=True)
        raise
    except BaseException:
        D.teardown(env)
        raise
    D.teardown(env, together=True)
    return result


def _train(run: RunConfig, workdir: Path, device: torch.device, env: D.DistEnv, progress: bool,
           time_limit: TimeLimit | None, time_limit_ends_run: bool,
           init_model: MCVD | None, hold: contextlib.ExitStack) -> TrainResult:
    tc = run.training
    if time_limit is not None and not callable(time_limit) and not (time_limit >= 0):
        raise ValueError(f"time_limit: expected seconds >= 0 or None, got {time_limit}")
    B, world, accum = tc.batch_size, env.world_size, tc.grad_accum
    if B % (world * accum):
        raise ValueError(f"training.batch_size: {B} does not split into {world} processes x {accum} "
                         f"accumulation steps")
    local, micro = B // world, B // (world * accum)
    torch.manual_seed(tc.seed)  # same initial weights in every process
    model = MCVD(run.model)
    if init_model is not None:
        check_init_model(init_model, run.model)
        model.load_state_dict(init_model.state_dict())
    dataset = make_dataset(run)  # before the workdir is touched: a folder without videos writes nothing

    # Rank 0 owns the folder; every process learns its decision (or its error).
    decision = None
    if env.is_main:
        try:
            decision = _prepare_workdir(workdir, run, hold)
        except (OSError, ValueError) as err:
            decision = err
    decision = D.broadcast_object(decision, env)
    if isinstance(decision, Exception):
        raise decision
    resume, ckpt_path = decision, workdir / CHECKPOINT_NAME

    model = model.to(device)
    ema = EMA(model, tc.ema_rate)
    optimizer = make_optimizer(model.parameters(), tc)
    scaler = torch.amp.GradScaler(device.type, enabled=tc.precision == "fp16")
    generator = torch.Generator(device).manual_seed(tc.seed)
    step = 0
    if resume:
        ckpt = _read_resumable(ckpt_path, run)
        try:
            model.load_state_dict(ckpt["model"])
            ema.load_state_dict(ckpt["ema"])
            optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt["scaler"] is not None:
                scaler.load_state_dict(ckpt["scaler"])
        except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{ckpt_path}: its saved state does not fit the run it records (damaged or edited): "
                             f"{err}") from None
        step = ckpt["step"]
        try:
            generator.set_state(ckpt["rng"]["generator"])
        except RuntimeError:  # a CPU generator's state does not fit a CUDA one, nor the reverse
            log.warning("resuming %s, written on another kind of device, on %s: data continue exactly, the noise "
                        "and masks do not", ckpt_path, device.type)
            generator.manual_seed(tc.seed + step)
        per_rank = ckpt["rng"]["per_rank"]
        if len(per_rank) == world:
            restore_rng(per_rank[env.rank])
        else:
            log.warning("resuming a %d-process run with %d processes: data, noise and masks continue exactly, "
                        "dropout masks do not", len(per_rank), world)
            torch.manual_seed(tc.seed + env.rank)
        if ckpt["data_position"]["num_clips"] != len(dataset):
            log.warning("the data set has %d clips, the checkpoint's had %d: the data order differs from "
                        "an uninterrupted run", len(dataset), ckpt["data_position"]["num_clips"])
        if init_model is None:
            if env.is_main:
                log.info("resuming %s at step %d", ckpt_path, step)
        else:  # a fine-tuning command run again: worth saying that its initial model plays no part
            log.warning("resuming %s at step %d from its own weights: the initial model given is not used",
                        ckpt_path, step)
        del ckpt
        if env.is_main and step < tc.steps:  # (a run with nothing to train leaves its files as they are)
            _resume_files(workdir, run, step)
    else:
        if init_model is not None:
            log.info("starting from the weights of the initial model given, not a random initialisation")
        torch.manual_seed(tc.seed + env.rank)  # dropout: independent masks per process

    # CUDA graphs on one device and without accumulation: a graph replay reuses its outputs' memory, so
    # gradients kept from one micro-batch to the next would be written over by the next backward.
    graphs = tc.compile and device.type == "cuda" and not env.enabled and accum == 1
    if tc.compile:
        compile_for_training(model, cuda_graphs=graphs)
    net = model
    if env.enabled:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    model.train()
    sampler = StepBatchSampler(len(dataset), B, seed=tc.seed, start_step=step, rank=env.rank, world_size=world)
    # Its own generator: creating the iterator must not draw from the global RNG (dropout's), or a
    # resumed run would draw different dropout masks. The data sets do not use worker seeds.
    # Workers ignore SIGINT and SIGTERM: Ctrl-C (and a scheduler's SIGTERM) reaches the whole process group, and
    # the main process decides (a worker killed by it would fail the next batch, before the step could end with
    # a checkpoint).
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=run.data.num_workers,
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(tc.seed),
                        worker_init_fn=_ignore_stop_signals if run.data.num_workers > 0 else None)
    schedule = Schedule.named(run.model.schedule, run.model.num_timesteps)
    autocast = torch.autocast(device.type, dtype=AUTOCAST.get(tc.precision), enabled=tc.precision != "fp32")
    params = [p for p in model.parameters() if p.requires_grad]
    mine = slice(env.rank * local, (env.rank + 1) * local)

    losses: list[float] = []
    interval = {"loss": 0.0, "grad_norm": 0.0, "n": 0, "t0": time.perf_counter()}
    last_ckpt = step if resume else None
    bar = tqdm(total=tc.steps, initial=step, disable=not (progress and env.is_main) or step >= tc.steps, desc="train",
               unit="step", dynamic_ncols=True)  # (no bar for nothing to train: the command says so)
    batches = iter(loader)
    started, first_step = time.perf_counter(), step
    # Several processes would each see Ctrl-C at their own step: there it stops them at once, as before.
    interrupt = _StopOnInterrupt(enabled=not env.enabled)
    try:
        while step < tc.steps:
            if graphs:  # the last step's graph outputs are consumed: their memory may be reused
                torch.compiler.cudagraph_mark_step_begin()
            clips = next(batches).to(device, non_blocking=True)
            rnd = draw_step_randomness(run.model, B, prob_mask_cond=tc.prob_mask_cond,
                                       prob_mask_future=tc.prob_mask_future, prob_mask_sync=tc.prob_mask_sync,
                                       random_flip=run.data.random_flip, generator=generator, device=device,
                                       rollout_prob=tc.rollout_prob)[mine]
            lr = learning_rate(step, tc)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            total = torch.zeros((), device=device)
            for i in range(accum):
                rows = slice(i * micro, (i + 1) * micro)
                # Gradients are all-reduced once, on the last micro-batch.
                sync = contextlib.nullcontext() if not env.enabled or i == accum - 1 else net.no_sync()
                with sync:
                    with autocast:
                        loss = mcvd_loss(net, clips[rows], rnd[rows], schedule, weighting=tc.loss_weighting,
                                         min_snr_gamma=tc.min_snr_gamma).mean() / accum
                    scaler.scale(loss).backward()
                total += loss.detach()
            loss_value = D.all_mean(total, env).item()
            if not math.isfinite(loss_value):
                raise TrainingDiverged(_diverged("loss", loss_value, step + 1, ckpt_path, last_ckpt))
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip or math.inf).item()
            # With fp16 an infinite gradient is the scaler's signal to skip the step and lower its scale.
            if not math.isfinite(grad_norm) and tc.precision != "fp16":
                raise TrainingDiverged(_diverged("gradient norm", grad_norm, step + 1, ckpt_path, last_ckpt))
            scaler.step(optimizer)
            scaler.update()
            ema.update(model)
            step += 1
            losses.append(loss_value)

            interval["loss"] += loss_value
            interval["grad_norm"] += grad_norm
            interval["n"] += 1
            bar.update(1)
            timed_out = time_limit is not None and step < tc.steps and _time_is_up(started, time_limit,
                                                                                   step - first_step, device, env)
            interrupted = interrupt.pressed  # read once: a SIGINT from here on is seen at the next step
            stop = timed_out or interrupted
            if timed_out and time_limit_ends_run:
                run = dataclasses.replace(run, training=dataclasses.replace(
                    tc, steps=step, ckpt_every=min(tc.ckpt_every, step)))
            checkpoint = step % tc.ckpt_every == 0 or step == tc.steps or stop
            # A row at every checkpoint too: a run resumed from one logs what the uninterrupted run logs (the
            # steps after it would otherwise be averaged with those before it, which the resumed run never ran).
            if step % tc.log_every == 0 or checkpoint:
                _log_interval(workdir, env, bar, step, lr, interval)
            if checkpoint:
                try:
                    _save(ckpt_path, env, run, model, ema, optimizer, scaler, generator, step, sampler,
                          len(dataset))
                except NoSpaceError as err:
                    kept = (f"{ckpt_path} keeps step {last_ckpt}; free some space and run the same command to "
                            f"resume" if last_ckpt is not None else "no checkpoint was written yet")
                    raise NoSpaceError(err.errno, f"step {step}: {err} ({kept})", ckpt_path) from err
                last_ckpt = step
            if interrupted and step < tc.steps:  # (at the last step the run has ended anyway)
                raise TrainingInterrupted(step, ckpt_path, interrupt.signum)
            if timed_out:
                bar.total = step  # the bar ends full, at the step the limit ended
                bar.refresh()
                if env.is_main:
                    log.info("training stopped at step %d of %d: the time limit is spent (%.0f s)", step,
                             tc.steps, time.perf_counter() - started)
                break
    finally:
        interrupt.restore()
        bar.close()
    return TrainResult(step, losses, ckpt_path, model, run, env.rank)


def _ignore_stop_signals(worker_id: int) -> None:
    """worker_init_fn of the training DataLoader: SIGINT and SIGTERM sent to the whole process group (a
    terminal's Ctrl-C, a batch scheduler's SIGTERM) are the main process's to act on."""
    for signum in _StopOnInterrupt.SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class _StopOnInterrupt:
    """While installed (from construction to restore()), the first SIGINT (Ctrl-C) or SIGTERM (what `kill`,
    `timeout` and batch schedulers send) asks the loop to stop at the end of the step under way (`pressed`,
    `signum`), and puts back the previous handlers, so that a second signal acts at once. Only the main thread
    can install a handler; elsewhere, or with enabled=False, they are left alone, and so is a signal the
    process ignores (a SIGINT for a run started in the background)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    MESSAGES = {
        signal.SIGINT: b"\nCtrl-C: stopping at the end of this step to write the checkpoint (Ctrl-C again stops at "
                       b"once, losing the steps since the last checkpoint)\n",
        signal.SIGTERM: b"\nSIGTERM: stopping at the end of this step to write the checkpoint (a second signal "
                        b"stops at once, losing the steps since the last checkpoint)\n",
    }

    def __init__(self, *, enabled: bool = True):
        self.pressed, self.signum, self._previous = False, signal.SIGINT, {}
        if not enabled or threading.current_thread() is not threading.main_thread():
            return
        for signum in self.SIGNALS:
            if signal.getsignal(signum) is signal.SIG_IGN:
                continue
            previous = signal.signal(signum, self._handle)
            # None: a handler set outside Python, which cannot be put back; the default then.
            self._previous[signum] = signal.SIG_DFL if previous is None else previous

    def _handle(self, signum, frame):
        self.pressed, self.signum = True, signum
        self.restore()
        try:  # a raw write: the handler may interrupt a write of the progress bar to the same stream
            os.write(2, self.MESSAGES[signum])
        except OSError:
            pass

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}


def compile_for_training(model: MCVD, *, cuda_graphs: bool = False) -> None:
    """Compile the network's calls for training (training.compile): inductor, forward and backward.

    cuda_graphs: replay the compiled forward and backward as CUDA graphs
    (inductor's "reduce-overhead" mode; the trainer asks for it on a single
    CUDA device without gradient accumulation). On a GPU the eager step is
    bound by the host, which launches ~2,500 kernels at batch 8; a graph is
    one launch. On an H200,
    SMMNIST preset, batch 8, bf16: 28.5 ms a step against 99 ms compiled
    without graphs and 117 ms eager float32 on the reference ops
    (benchmarks/results/h200_levers.md). The caller marks each step's start
    (torch.compiler.cudagraph_mark_step_begin), after the last step's
    outputs are consumed.

    In place (nn.Module.compile): the module keeps its class, parameters and
    state_dict keys (no `_orig_mod.` prefix), so checkpoints, the EMA and DDP
    (which wraps it as it wraps the eager one) see the network itself; only its
    calls run compiled code. dynamic=False: every call of a run has the same shapes (full global
    batches only, micro-batches of equal size), so a run compiles once, at its
    first step, and a change of shape would recompile rather than trade speed
    for symbolic sizes. Compiling the loss around the network (flip, q_sample,
    the squared error) measured no faster on the CPU
    (benchmarks/results/cpu_train_step.md) and would put DDP's wrapper inside
    the traced function.
    """
    model.compile(dynamic=False, mode="reduce-overhead" if cuda_graphs else None)


def _time_is_up(started: float, time_limit: TimeLimit, steps: int, device: torch.device, env: D.DistEnv) -> bool:
    """Whether the time limit has passed since `started`, `steps` steps ago. With several
    processes, one decision for all (any one past the limit stops them all), so
    that none waits on a collective the others have left; a single process
    decides on the host, with no device tensor or sync per step."""
    seconds = time.perf_counter() - started
    up = seconds >= (time_limit(steps, seconds) if callable(time_limit) else time_limit)
    if not env.enabled:
        return up
    return D.all_mean(torch.tensor(float(up), device=device), env).item() > 0


def _diverged(what: str, value: float, step: int, ckpt_path: Path, last_ckpt: int | None) -> str:
    if last_ckpt is None:
        kept, then = "no checkpoint was written yet", "then the same command starts the run over"
    else:
        kept, then = f"{ckpt_path} keeps step {last_ckpt}", "then resume"
    return (f"step {step}: the {what} is {value}; training stopped before applying this step ({kept}). "
            f"Lower training.lr, raise training.warmup or set training.grad_clip, {then}.")


def _log_interval(workdir: Path, env: D.DistEnv, bar, step: int, lr: float, interval: dict) -> None:
    now = time.perf_counter()
    n = interval["n"]
    loss, grad_norm, rate = interval["loss"] / n, interval["grad_norm"] / n, n / (now - interval["t0"])
    if env.is_main:
        path = workdir / METRICS_NAME
        try:
            with open(path, "a") as f:
                f.write(f"{step},{loss:.6g},{lr:.6g},{grad_norm:.6g},{rate:.4g}\n")
        except OSError as err:
            if err.errno not in NO_SPACE:
                raise
            raise NoSpaceError(err.errno, f"step {step}: {NO_SPACE[err.errno]} for {path}, appending the step's "
                                          f"row (its last row may be cut short)", path) from err
        bar.set_postfix(loss=f"{loss:.4g}", lr=f"{lr:.2e}", refresh=False)
        if bar.disable:  # the bar shows them otherwise; a line would break into it
            log.info("step %d: loss %.4g, lr %.3g, grad_norm %.4g, %.3g steps/s", step, loss, lr, grad_norm, rate)
    interval.update(loss=0.0, grad_norm=0.0, n=0, t0=now)


def _save(path: Path, env: D.DistEnv, run: RunConfig, model: MCVD, ema: EMA, optimizer, scaler, generator,
          step: int, sampler: StepBatchSampler, num_clips: int) -> None:
    per_rank = D.gather_objects(capture_rng(), env)
    if not env.is_main:
        return
    epoch, batch = sampler.position(step)

    def cpu(state: dict) -> dict:
        return {k: v.detach().cpu() for k, v in state.items()}

    payload = training_payload(
        model_config=run.model.to_dict(), model=cpu(model.state_dict()), ema=cpu(ema.state_dict()),
        run_config=run.to_dict(), step=step,
        data_position={"epoch": epoch, "batch": batch, "num_clips": num_clips},
        optimizer=optimizer.state_dict(), scaler=scaler.state_dict() if scaler.is_enabled() else None,
        rng={"generator": generator.get_state(), "per_rank": per_rank}, world_size=env.world_size)
    atomic_write(path, lambda fh: torch.save(payload, fh))

