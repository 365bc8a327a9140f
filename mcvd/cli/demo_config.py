"""What a run of `mcvd demo` is: its sizes (tiny, cpu, gpu), the training run
each one makes, the calibration that turns a time budget into steps, the
temporary folders those runs train in, and the command that repeats a run
step for step."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import statistics
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

CALIBRATION_STEPS = 5
MIN_TRAIN_SECONDS = 60.0  # what a default budget keeps when the deadline leaves less (fit_deadline)
# The model trained here's sampling in the work after training (finish_work): 18 of 23 s on the cpu size.
FINISH_SAMPLING = 0.8
# The demo trains in temporary folders inside --out: `.train-` or `.calibration-` and tempfile's 8 characters.
WORK_FOLDER = re.compile(r"\.(train|calibration)-[a-z0-9_]{8}")
RUN_FILES = ("config.yml", "metrics.csv", "checkpoint.pt")  # mcvd.train's files in a workdir


@dataclass(frozen=True)
class DemoSize:
    """Everything the demo chooses for one size of machine.

    model: mcvd.ModelConfig fields. digit_size: side of a digit (half the frame, the paper's proportion).
    batch_size, lr, warmup, ema_rate, loss_weighting, num_workers: training (mcvd.train.TrainConfig /
    DataConfig).
    minutes: default training budget. min_steps, max_minutes: a machine on which `minutes` fits fewer than
        min_steps steps (by its calibration) trains min_steps steps or `minutes`, whichever is longer, and at
        most max_minutes; so the default run's model does not depend on the machine's speed from a step time
        of 60 * minutes / min_steps down to 60 * max_minutes / min_steps.
    clips: held-out clips scored. pred_frames: frames predicted per clip.
    method, sample_steps: the sampler. gif_rows: clips shown in demo.gif.
    expectation: what this size has been measured to reach, for the report.
    pretrained: the shipped model (mcvd.pretrained) for this size's clips and objective (a wider network trained
        longer), scored beside, or None.
    total_minutes, finish_steps: a default budget is shortened where the whole demo, counted from its start
        (`mcvd demo --started-at`: make demo's, set-up included), would otherwise end later than total_minutes;
        the work after training (the model trained here's predictions, their scores, the report; the shipped
        model's comes before training) is estimated as finish_steps training steps of the same machine for the
        size's clips, frames, sampler steps and batch (finish_work, fit_deadline).
    """

    model: dict
    digit_size: int
    batch_size: int
    lr: float
    warmup: int
    ema_rate: float
    loss_weighting: str
    num_workers: int
    minutes: float
    clips: int
    pred_frames: int
    method: str
    sample_steps: int
    gif_rows: int
    expectation: str
    pretrained: str | None = None
    min_steps: int | None = None
    max_minutes: float | None = None
    total_minutes: float | None = None
    finish_steps: int = 0


# x0-prediction: on the cpu size it reaches in 1,000 steps the SSIM that the paper's eps objective reached
# in 32,000 and v-prediction in 14,000; min-SNR-5 weighting lowers it (docs/demo.md). DDPM (ancestral)
# sampling by default: after minutes of training DDIM carries the network's errors at high noise to the end,
# where DDPM's fresh noise washes them out (measured on the cpu size after 500 to 1,000 steps: 2 to 4 dB
# higher PSNR than 25-step DDIM with eps, 0.1-0.4 dB and 0.05 SSIM with x0).
SIZES = {
    "tiny": DemoSize(model=dict(image_size=16, num_frames=2, num_frames_cond=2, ngf=8, ch_mult=(1, 2),
                                num_res_blocks=1, attn_resolutions=(), n_head_channels=-1, dropout=0.0,
                                prediction="x0"),
                     digit_size=8, batch_size=4, lr=1e-3, warmup=1, ema_rate=0.9, loss_weighting="none",
                     num_workers=0, minutes=0.05,
                     clips=4, pred_frames=3, method="ddim", sample_steps=2, gif_rows=2,
                     expectation="The tiny size checks the pipeline; it is not meant to learn."),
    "cpu": DemoSize(model=dict(image_size=32, num_frames=2, num_frames_cond=2, ngf=16, ch_mult=(1, 2, 2),
                               num_res_blocks=1, attn_resolutions=(8,), n_head_channels=32, dropout=0.0,
                               prediction="x0"),
                    digit_size=16, batch_size=16, lr=1e-3, warmup=50, ema_rate=0.99, loss_weighting="none",
                    num_workers=0, minutes=5.0,
                    clips=192, pred_frames=6, method="ddpm", sample_steps=25, gif_rows=6,
                    expectation=("Measured for this size on three kinds of 2-core AMD EPYC CPU and 2-core Intel "
                                 "Xeons (docs/demo.md), on these 192 held-out clips: the model trained here beat "
                                 "copy-last-frame on both metrics with each of seeds 0-9 on two EPYC kinds, seeds "
                                 "0-3 on an Intel Xeon, seeds 0-2 on an Intel Xeon with AMX and seed 0 on a Zen 5 "
                                 "EPYC. On the two quickest hosts the 5-minute budget trained 4,916-5,316 steps "
                                 "(+0.68 to +0.81 dB, +0.050 to +0.057 SSIM, the SSIM interval clearing zero by "
                                 "0.033-0.041); the 4,380-4,500 steps of the step floor gave +0.63 to +0.73 dB, "
                                 "+0.043 to +0.056 SSIM (clearing zero by 0.028-0.038). On an earlier EPYC with "
                                 "AVX-512 the 9.5-minute deadline left 2,075-3,302 training steps (+0.39 to +0.68 "
                                 "dB, +0.025 to +0.051 SSIM, clearing zero by 0.009-0.035; sampled with 50 steps "
                                 "then); with AVX2 only, 1,250-2,239 steps (+0.42 to +0.78 dB, +0.016 to +0.040 "
                                 "SSIM, clearing zero by 0.0004-0.024), so a run there can miss: on a slower day, "
                                 "with 1,163 steps, one did on SSIM (+0.014 ± 0.016). The margin is thin, a tenth to "
                                 "a third of the shipped model's on SSIM, and this model is behind the empty frame. "
                                 "The shipped model (a wider network, 58,000 steps, sampled with classifier-free "
                                 "guidance) beats copy-last-frame on both (+1.5 to +1.7 dB, +0.16 to +0.17 SSIM over "
                                 "seeds 0-9) and the empty frame on SSIM (beyond the interval with every seed), and "
                                 "is ahead of the empty frame on PSNR (beyond the interval with 4 seeds of 10); its "
                                 "digits are recognisable at the first predicted frames and some change shape or "
                                 "identity later in the rollout (digit recall, seed 0: 0.83 at the first predicted "
                                 "frame, 0.36 at the sixth; the true frames 0.93, chance 0.21; the model trained "
                                 "here 0.21-0.26)."),
                    pretrained="smmnist-demo-cpu", min_steps=4500, max_minutes=6.5,
                    # make demo in 10 minutes, with half a minute to spare. The shipped model predicts and streams
                    # before training; after it, the model trained here's 192 clips (DDPM 25), the scores, the
                    # digit recall and the files took as long as 265-275 of its training steps on a 2-core Intel
                    # Xeon; the 192 clips alone took 170-285 on the AVX2 AMD EPYC host (27-39 s at 0.136-0.157 s
                    # per step), the most where the host slowed after training (docs/demo.md, "The shipped model's
                    # work first").
                    total_minutes=9.5, finish_steps=400),
    "gpu": DemoSize(model=dict(image_size=64, num_frames=2, num_frames_cond=2, ngf=32, ch_mult=(1, 2, 2, 2),
                               num_res_blocks=2, attn_resolutions=(8, 16), n_head_channels=32, dropout=0.0,
                               prediction="x0"),
                    digit_size=32, batch_size=64, lr=5e-4, warmup=200, ema_rate=0.999, loss_weighting="none",
                    num_workers=4, minutes=10.0,
                    clips=256, pred_frames=6, method="ddpm", sample_steps=100, gif_rows=8,
                    expectation="This size has not been measured yet."),
}


def demo_ema_rate(size: DemoSize, steps: int) -> float:
    """An EMA of rate r weighs the initial weights by r**steps: keep that below e**-5 on short runs."""
    return max(0.0, min(size.ema_rate, 1 - 5 / steps))


def run_config(size: DemoSize, *, device: str, seed: int, steps: int, overrides: list[str]):
    """The training run (mcvd.train.RunConfig) of a demo size, with `--set` overrides applied."""
    from mcvd.nn import ModelConfig
    from mcvd.train import DataConfig, RunConfig, TrainConfig

    ema_rate = demo_ema_rate(size, steps)
    run = RunConfig(model=ModelConfig(**size.model),
                    data=DataConfig(dataset="smmnist", digit_size=size.digit_size, num_workers=size.num_workers),
                    training=TrainConfig(batch_size=size.batch_size, steps=steps, lr=size.lr, warmup=size.warmup,
                                         ema_rate=ema_rate, loss_weighting=size.loss_weighting, device=device,
                                         seed=seed, ckpt_every=steps,
                                         log_every=max(1, steps // 100)))
    return run.with_overrides(overrides) if overrides else run


@contextlib.contextmanager
def work_folder(parent: Path, kind: str):
    """A temporary folder `.<kind>-XXXXXXXX` in `parent` to train in, removed on
    exit. It is held (mcvd.fileio.folder_lock) while it exists, so that another demo
    never takes it for the leftover of a killed one; a killed process's lock is
    gone with it. mcvd.train, given it, holds it again without a second lock."""
    from mcvd.fileio import folder_lock

    with tempfile.TemporaryDirectory(prefix=f".{kind}-", dir=parent) as path, folder_lock(path, "--out"):
        yield path


def _is_run_file(path: Path) -> bool:
    """Whether `path` is a file a training run writes: its config.yml or metrics.csv as a run writes them, its
    checkpoint.pt a torch file (a zip archive), or a temporary file of their atomic writes."""
    from mcvd.fileio import temporary_name
    from mcvd.train.trainer import written_by_a_run

    if not path.is_file() or path.is_symlink():
        return False
    if path.name == "checkpoint.pt":
        return zipfile.is_zipfile(path)
    return written_by_a_run(path) or any(temporary_name(name).fullmatch(path.name) for name in RUN_FILES)


@contextlib.contextmanager
def _unless_locked(folder: Path):
    """Yields True holding `folder` (mcvd.fileio.folder_lock), or False when a running demo holds it."""
    from mcvd.fileio import FolderInUse, folder_lock

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(folder_lock(folder, "--out"))
        except FolderInUse:
            yield False
            return
        yield True


def leftover_work_folders(out: Path) -> list[Path]:
    """The training folders of demos killed while training in `out`: named as
    work_folder names them, holding nothing but a training run's files (RUN_FILES
    and their temporary files) and locked by no running demo."""
    found = []
    if not out.is_dir():
        return found
    for folder in sorted(out.iterdir()):
        if not WORK_FOLDER.fullmatch(folder.name) or folder.is_symlink() or not folder.is_dir():
            continue
        with _unless_locked(folder) as free:
            if free and all(_is_run_file(f) for f in folder.iterdir()):
                found.append(folder)
    return found


def remove_work_folder(folder: Path) -> bool:
    """Delete a leftover training folder (leftover_work_folders), checking again, under
    its lock, that it holds only a training run's files. Returns whether it did."""
    with _unless_locked(folder) as free:
        files = list(folder.iterdir()) if free else []
        if not free or not all(_is_run_file(f) for f in files):
            return False
        for f in files:
            f.unlink()
        folder.rmdir()  # fails, deleting nothing more, if a file appeared meanwhile
    return True


def seconds_per_step(run, parent: Path) -> float:
    """Median time of one training step of `run`, from a throwaway run of
    CALIBRATION_STEPS steps in a folder inside `parent` (the first step, with
    its one-time setup, left out)."""
    from mcvd.train import train
    from mcvd.train.trainer import METRICS_NAME, read_metrics

    t = run.training
    calib = dataclasses.replace(run, training=dataclasses.replace(t, steps=CALIBRATION_STEPS,
                                                                  ckpt_every=CALIBRATION_STEPS, log_every=1))
    with work_folder(parent, "calibration") as workdir:
        train(calib, workdir, progress=False)
        rates = [row["it_per_s"] for row in read_metrics(Path(workdir) / METRICS_NAME)[1:]]
    return statistics.median(1 / r for r in rates)


def calibrate(run, parent: Path, try_one_thread: bool) -> dict[int, float]:
    """Seconds per training step of `run` by thread count, measured with
    torch's thread count and, if `try_one_thread`, with one thread; torch keeps
    the faster count."""
    import torch

    threads = [torch.get_num_threads()]
    if try_one_thread and threads[0] > 1:
        # On a busy machine, threads that wait on each other can train many times slower than one.
        threads.append(1)
    timings = {}
    for n in threads:
        torch.set_num_threads(n)
        timings[n] = seconds_per_step(run, parent)
    torch.set_num_threads(min(timings, key=timings.get))
    return timings


def plan_budget(size: DemoSize, minutes: float | None, seconds_per_step: float) -> tuple[int, float, bool]:
    """(steps, time limit in seconds, whether the step floor set them) of a budgeted run.

    `minutes` given: that budget, and the steps expected to fit in it. Else the
    size's `minutes`, or, where they fit fewer than `min_steps` steps at
    `seconds_per_step`, `min_steps` steps with a time limit of `max_minutes`
    (which ends the run if they take longer; the demo trains on to the size's
    minutes if they take less)."""
    budget = 60 * (minutes if minutes is not None else size.minutes)
    steps = max(1, int(budget / seconds_per_step))
    if minutes is not None or size.min_steps is None or steps >= size.min_steps:
        return steps, budget, False
    return size.min_steps, 60 * size.max_minutes, True


def finish_work(size: DemoSize, *, block_frames: int, clips: int, pred_frames: int, sample_steps: int,
                batch_size: int) -> float:
    """Training steps' worth of the demo's work after training: the size's finish_steps for its own clips,
    frames, sampler steps and batch. The model trained here's sampling, four fifths of it (FINISH_SAMPLING),
    scales with this run's network calls (clips x blocks x steps); the rest (loading the checkpoint, the digit
    classifier, the files) does not. A batch smaller than the size's makes a training step quicker, not the
    work: counted as if the step time were in proportion to the batch (more than it is, so on the safe side)."""
    def calls(c: int, n: int, k: int, s: int) -> int:
        return c * math.ceil(n / k) * s

    ratio = calls(clips, pred_frames, block_frames, sample_steps) / calls(size.clips, size.pred_frames,
                                                                          size.model["num_frames"], size.sample_steps)
    smaller_batch = max(1.0, size.batch_size / batch_size)
    return size.finish_steps * (1 - FINISH_SAMPLING + FINISH_SAMPLING * ratio) * smaller_batch


def fit_deadline(size: DemoSize, budget: float, seconds_per_step: float, seconds_left: float,
                 finish_steps: float) -> float:
    """The time limit of a default training budget (plan_budget) when `seconds_left` of the size's
    total_minutes remain as training starts and a step takes `seconds_per_step`: training ends early enough
    for the work after it (finish_steps steps' worth: finish_work), but lasts at least MIN_TRAIN_SECONDS. The
    demo asks it again after every step with the speed measured so far."""
    if size.total_minutes is None:
        return budget
    return min(budget, max(seconds_left - finish_steps * seconds_per_step, MIN_TRAIN_SECONDS))


def reproduce_command(args, size: DemoSize, training) -> str:
    """The `mcvd demo` command that repeats this run step for step (--train-steps, not a time budget;
    the EMA rate is spelled out where the budget's calibration set it)."""
    import torch

    steps = training.steps
    # The thread count too: a CPU run's sums, and so its weights, depend on it.
    parts = ["mcvd demo", f"--out {args.out}", f"--train-steps {steps}", f"--device {args.device}",
             f"--seed {args.seed}", f"--threads {torch.get_num_threads()}"]
    for name in ("size", "clips", "pred_frames", "method", "sample_steps"):
        value = getattr(args, name)
        if value is not None:
            parts.append(f"--{name.replace('_', '-')} {value}")
    if args.optimize is not None:  # the network sampled with: compiled or the model as it is
        parts.append("--optimize" if args.optimize else "--no-optimize")
    parts += [f"--set {item}" for item in args.overrides]
    if training.ema_rate != demo_ema_rate(size, steps) and not any(
            item.startswith("training.ema_rate=") for item in args.overrides):
        parts.append(f"--set training.ema_rate={training.ema_rate!r}")
    return " ".join(parts) + " --force"
