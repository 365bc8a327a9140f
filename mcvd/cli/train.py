"""`mcvd train --config CONFIG.yml --workdir DIR [--set section.key=value ...] [--minutes M]
[--init-from MODEL] [--dry-run] [--no-progress]`

The config file has the sections `model`, `data` and `training` (schema:
mcvd.train.config; example: configs/smmnist_small.yml). A workdir holding a
checkpoint.pt is resumed; a new run needs a missing or empty workdir, or one
left by a run stopped before its first checkpoint (only its config.yml and
metrics.csv), which starts over. The workdir and MCVD_BACKEND are checked
before anything is written.
Multi-GPU: `torchrun --nproc_per_node N -m mcvd train ...`; several nodes:
`torchrun --nnodes M --nproc_per_node N --rdzv_backend c10d --rdzv_endpoint HOST:PORT -m mcvd train ...`
with the workdir on a shared file system. training.batch_size is the global batch;
process 0 writes the workdir and prints the final line. A divergence (the loss and
gradient norm are all-reduced, so every process meets it at the same step) is
reported by process 0; any other error by each process that meets it, with its rank.
--minutes stops this call after that much training time, at the end of a step,
with a checkpoint there; running the same command again resumes the run. So
does Ctrl-C (in a single-process run): the run stops at the end of the step
under way, writes its checkpoint there and exits with code 130; a second
Ctrl-C stops at once. SIGTERM (kill, timeout, a batch scheduler) does the same,
with exit code 143. Two runs never share a workdir: the second is refused
while the first holds it (a lock that ends with its process).
--init-from starts a new run from the weights of a model file instead of the
random initialisation (fine-tuning): any file mcvd.load reads (a model file, a
training checkpoint's EMA weights, a reference-code checkpoint) or a shipped
model's name (mcvd.pretrained: smmnist-demo-cpu), whose model
must equal the config's model section; the optimizer starts afresh. A resumed
run continues from its checkpoint and ignores it, with a warning.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import yaml

from ._common import (EXIT_FAILURE, EXIT_USAGE, as_flag, check_output_folder, error, positive_float,
                      read_model_arg)

HELP = "train an MCVD network (resumes a workdir that holds a checkpoint)"


def add_parser(sub):
    p = sub.add_parser("train", help=HELP, description=HELP)
    p.add_argument("--config", required=True, help="YAML file with model, data and training sections")
    p.add_argument("--workdir", required=True, help="run folder: config.yml, metrics.csv, checkpoint.pt")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (YAML syntax), e.g. --set training.lr=1e-4; repeatable")
    p.add_argument("--minutes", type=positive_float, default=None,
                   help="stop after this much training time, checkpointed (the same command resumes)")
    p.add_argument("--init-from", type=Path, default=None, metavar="MODEL",
                   help="start a new run from this model file's weights, or a shipped model's (its name); its model "
                        "must equal the config's")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config, the model size, the data's clips and whether the workdir "
                        "resumes (its checkpoint, and --init-from's model, checked against the config), then exit; "
                        "writes nothing")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar: a line per metrics row on stderr instead (mcvd.train: step ...)")
    p.set_defaults(run=run)


# The arguments of the library's errors as this command's: the data set's are the config's keys.
FLAGS = {"root": "data.root", "channels": "model.channels", "workdir": "--workdir"}


def run(args) -> int:
    # --no-progress: a line per metrics row instead of the bar, and the resume said (mcvd.train's INFO records);
    # the level put back after, for a caller that runs several commands in one process.
    logger = logging.getLogger("mcvd.train")
    level = logger.level
    if args.no_progress:
        logger.setLevel(logging.INFO)
    try:
        return _run(args)
    finally:
        logger.setLevel(level)


def _run(args) -> int:
    from mcvd.nn import MCVD
    from mcvd.train import TrainingDiverged, TrainingInterrupted, load_run_config, train
    from mcvd.train.trainer import make_dataset, resume_point

    try:
        cfg = load_run_config(args.config, args.overrides)
    except (ValueError, TypeError, FileNotFoundError) as err:
        return _error(err, EXIT_USAGE)
    if args.dry_run:
        params = sum(p.numel() for p in MCVD(cfg.model).parameters())
        try:  # the data set is opened as training opens it: a missing or empty data.root is named here
            data = make_dataset(cfg)
        except (ValueError, FileNotFoundError) as err:
            return _error(as_flag(err, FLAGS), EXIT_USAGE)
        except ImportError as err:  # PyAV, for a folder of video files
            return _error(err, EXIT_FAILURE)
        try:
            start = resume_point(cfg, args.workdir)
            if args.init_from is not None:  # read and checked against the model section as training does
                _init_model(args.init_from, cfg.model)
        except (ValueError, OSError) as err:  # FileExistsError, PermissionError, ... naming the workdir
            return _error(as_flag(err, FLAGS), EXIT_USAGE)
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        print(f"# model parameters: {params:,}")
        ckpt = Path(args.workdir) / "checkpoint.pt"
        if start is None:
            print(f"# workdir: a new run in {args.workdir}"
                  + ("" if args.init_from is None else f", from the weights of {args.init_from}"))
        elif start < cfg.training.steps:
            print(f"# workdir: resumes {ckpt} at step {start:,} of {cfg.training.steps:,}")
        else:
            print(f"# workdir: nothing to train: {ckpt} is at step {start:,} and training.steps is "
                  f"{cfg.training.steps:,}")
        videos = f" from {len(data.videos):,} video(s)" if cfg.data.dataset == "video_folder" else ""
        epochs = cfg.training.steps * cfg.training.batch_size / len(data)
        print(f"# data: {len(data):,} clips of {data.num_frames} frames{videos} per epoch; "
              f"{f'{epochs:,.1f}' if epochs >= 1 else f'{epochs:.2g}'} epochs in training.steps")
        return 0
    try:
        check_output_folder("--workdir", Path(args.workdir))
        init = None if args.init_from is None else _init_model(args.init_from, cfg.model)
        result = train(cfg, args.workdir, progress=not args.no_progress,
                       time_limit=None if args.minutes is None else 60 * args.minutes, init_model=init)
    except (ValueError, FileExistsError, FileNotFoundError) as err:  # UsageError included
        return _error(as_flag(err, FLAGS), EXIT_USAGE)
    except ImportError as err:  # PyAV, for a folder of video files
        return _error(err, EXIT_FAILURE)
    except TrainingDiverged as err:
        return _error(err, EXIT_FAILURE, every_rank=False)
    except TrainingInterrupted as err:
        print(f"mcvd train: {err}", file=sys.stderr)
        return 128 + err.signum  # the shell's code for the signal: 130 for Ctrl-C, 143 for SIGTERM
    if result.rank == 0:  # one line per run, not per process
        if not result.losses:
            print(f"mcvd train: nothing to train: {result.checkpoint} is at step {result.step} and "
                  f"training.steps is {cfg.training.steps} (raise it to train on)")
            return 0
        stopped = ("" if result.step >= cfg.training.steps
                   else f" of {cfg.training.steps} (time limit; run again to resume)")
        print(f"mcvd train: step {result.step}{stopped}, checkpoint {result.checkpoint}")
    return 0


def _init_model(path: Path, model_config):
    """The network of the model file at `path`, checked against the model section
    here so that a mismatch is named by the flag (the trainer checks it again)."""
    from mcvd.train.trainer import check_init_model

    source = read_model_arg("--init-from", path)
    try:
        model = source.build()[0]
    except ValueError as err:  # weights that do not fit the file's config
        raise as_flag(err, {"path": "--init-from"}) from None
    check_init_model(model, model_config, name=f"--init-from {path}")
    return model


def _error(err, code: int, *, every_rank: bool = True) -> int:
    """`error`, labelled with the process's rank under torchrun (an error may be one process's own,
    e.g. a file missing on its node); with every_rank=False only process 0 prints it."""
    # Read as text: a malformed variable must not hide the error being reported.
    rank, world = os.environ.get("RANK", "0").strip(), os.environ.get("WORLD_SIZE", "1").strip()
    if world in ("", "0", "1"):
        return error("train", err, code)
    if every_rank:
        return error("train", f"(process {rank} of {world}) {err}", code)
    return error("train", err, code) if rank == "0" else code
