"""`mcvd eval`: the paper's evaluation of a trained model (mcvd.metrics.protocol).

    mcvd eval --checkpoint CKPT --data smmnist|VIDEO_FOLDER --task predict|interpolate|generate
              [--cond p] [--pred n] --samples k [--seed S] [--out DIR] [--num-clips N] [--force]

CKPT: a training checkpoint (its EMA weights; --no-ema for the raw ones) or a
model file (mcvd convert-official, mcvd.nn.save_model). --data smmnist is
the built-in Stochastic Moving MNIST test split (mcvd.data, its test digits,
seed 0: the same clips in every run; digit count and size as in the
checkpoint's training run, else 2 digits of half the frame); a folder is read with
mcvd.data.VideoFolder as consecutive, non-overlapping clips. The first N
clips are evaluated (default: all). --seed seeds the sampler, so a run is
reproducible. Writes metrics.json, metrics.md and per_frame.png to --out
(default mcvd_eval/<checkpoint name>_<task>_p<p>_n<n>_k<k>); existing
results there are kept unless --force is given.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HELP = "evaluate a model with the paper's protocol (best-of-k PSNR, SSIM, LPIPS; FVD)"


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help=HELP, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="training checkpoint or model file")
    p.add_argument("--data", required=True, help="'smmnist' or a folder of videos / frame folders")
    p.add_argument("--task", choices=("predict", "interpolate", "generate"), default="predict")
    p.add_argument("--cond", type=int, default=None, help="p, past frames (default: the model's num_frames_cond)")
    p.add_argument("--pred", type=int, default=None, help="n, frames to predict (default: the model's num_frames)")
    p.add_argument("--samples", type=int, default=1, help="k, samples per clip; the best per metric counts")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler")
    p.add_argument("--out", type=Path, default=None, help="folder for the results")
    p.add_argument("--num-clips", type=int, default=None, help="evaluate the first N clips (default: all)")
    p.add_argument("--batch-size", type=int, default=8, help="clips per sampling call (k times as many videos)")
    p.add_argument("--method", choices=("ddpm", "ddim", "dpm++"), default="ddim", help="sampler")
    p.add_argument("--steps", type=int, default=100, help="sampler steps")
    p.add_argument("--device", default="auto", help="'auto' (CUDA when there is one), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument("--no-ema", action="store_true", help="the raw weights of a training checkpoint, not the EMA")
    p.add_argument("--no-fvd", action="store_true", help="skip FVD (and the I3D network)")
    p.add_argument("--force", action="store_true", help="replace results already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def load_for_eval(path: Path, use_ema: bool, device):
    """(model, config, which weights) of a training checkpoint (EMA or raw weights) or of a model file."""
    from mcvd.nn import load_model
    from mcvd.nn.model_file import read_model_file
    from mcvd.train import load_checkpoint

    if "ema" in read_model_file(path):
        return *load_checkpoint(path, use_ema=use_ema, map_location=device), "EMA" if use_ema else "raw"
    if not use_ema:
        raise ValueError(f"--no-ema: {path} is a model file with a single set of weights, not a training checkpoint")
    model = load_model(path, map_location=device)
    return model, model.config, "model file"


def eval_clips(data: str, frames: int, config, checkpoint: Path):
    """The evaluation clips: the SMMNIST test split drawn like the checkpoint's
    training clips, or non-overlapping clips of a video folder."""
    from mcvd.data import VideoFolder

    from .sample import smmnist_test_clips

    if data == "smmnist":
        return smmnist_test_clips(checkpoint, config, frames)
    return VideoFolder(data, frames, config.image_size, channels=config.channels, clip_step=frames)


def run(args: argparse.Namespace) -> int:
    import torch

    from mcvd.diffusion import SamplerConfig
    from mcvd.metrics.protocol import Task, evaluate
    from mcvd.metrics.report import existing_results, write_report
    from mcvd.metrics.weights import WeightsError

    def fail(message: str) -> int:
        print(f"mcvd eval: error: {message}", file=sys.stderr)
        return 1

    for name in ("samples", "batch_size", "steps"):
        if getattr(args, name) < 1:
            return fail(f"--{name.replace('_', '-')}: expected >= 1, got {getattr(args, name)}")
    if args.num_clips is not None and args.num_clips < 1:
        return fail(f"--num-clips: expected >= 1, got {args.num_clips}")
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(args.device)
        except RuntimeError as e:
            return fail(f"--device: {e}")
        if device.type == "cuda" and not torch.cuda.is_available():
            return fail("--device: CUDA requested but torch sees no CUDA device")
    try:
        model, cfg, weights = load_for_eval(args.checkpoint, not args.no_ema, device)
        task = Task.of(args.task, cfg, cond=args.cond, pred=args.pred)
        clips = eval_clips(args.data, task.clip_frames, cfg, args.checkpoint)
    except (FileNotFoundError, ValueError, ImportError) as e:
        return fail(str(e))
    out = args.out or Path("mcvd_eval") / (f"{args.checkpoint.stem}_{task.name}_p{task.cond}_n{task.pred}"
                                           f"_k{args.samples}")
    existing = existing_results(out)
    if existing and not args.force:  # checked before the long run, not after it
        return fail(f"--out: {out} already holds results ({', '.join(p.name for p in existing)}); "
                    f"choose another folder or pass --force to replace them")

    torch.manual_seed(args.seed)
    generator = torch.Generator(device).manual_seed(args.seed)
    start = time.perf_counter()
    try:
        result = evaluate(model, clips, task, samples=args.samples, num_clips=args.num_clips,
                          batch_size=args.batch_size, sampler=SamplerConfig(method=args.method, steps=args.steps),
                          generator=generator, compute_fvd=not args.no_fvd, progress=not args.no_progress)
    except (ValueError, WeightsError, ImportError) as e:
        return fail(str(e))
    seconds = time.perf_counter() - start
    num_clips = len(clips) if args.num_clips is None else args.num_clips
    run_info = {
        "checkpoint": str(args.checkpoint), "weights": weights, "data": args.data,
        "task": task.name, "cond": task.cond, "pred": task.pred, "future": task.future, "samples": args.samples,
        "num_clips": num_clips, "seed": args.seed, "method": args.method, "steps": args.steps,
        "device": str(device), "seconds": round(seconds, 1),
    }
    paths = write_report(out, run_info, result, first_frame=task.cond + 1, overwrite=args.force)
    print(Path(paths[1]).read_text(), end="")
    print(f"mcvd eval: wrote {', '.join(map(str, paths))}")
    return 0
