"""`mcvd eval`: the paper's evaluation of a trained model (mcvd.metrics.protocol).

    mcvd eval --checkpoint CKPT --data smmnist|VIDEO_FOLDER --task predict|interpolate|generate
              [--cond p] [--pred n] --samples k [--seed S] [--guidance W [--guidance-interval LO HI]]
              [--out DIR] [--num-clips N] [--frame-stride N] [--optimize | --no-optimize]
              [--precision fp32|bf16|fp16] [--threads N] [--force]

CKPT: any model file that mcvd.load reads: a training checkpoint (its EMA
weights; --no-ema for the raw ones), a model file (mcvd convert-official,
mcvd.nn.save_model) or a reference-code checkpoint (config.yml beside it); or, where no file of
that name exists, a shipped model's name (mcvd.pretrained: smmnist-demo-cpu). --data smmnist is
the built-in Stochastic Moving MNIST test split (mcvd.data, its test digits,
seed 0: the same clips in every run; digit count and size as in the
checkpoint's training run, else 2 digits of half the frame); a folder is read with
mcvd.data.VideoFolder as consecutive, non-overlapping clips (frames as many
source frames apart as in the checkpoint's training run, data.frame_stride, or
--frame-stride), every one
read or the run stops (exit 2, naming --data): none is replaced by another. The first N
clips are evaluated (default: all). --seed seeds the sampler, so a run is
reproducible with the same --batch-size (a batch's noise is drawn for all its
clips at once, so another batch size gives other samples). PSNR, SSIM and
LPIPS are reported twice from the same k samples per clip: best of k (the
paper's protocol: the best sample per clip and metric) and one sample (per clip the mean over its k samples: what a
single prediction scores); with --samples 1 they are the same. Writes
metrics.json ("one_sample" holds the second), metrics.md and per_frame.png to --out
(default mcvd_eval/<checkpoint name>_<data name>_<task>_p<p>_n<n>_k<k>_<method><steps>, then
_g<W> and _t<LO>-<HI> where the sampler is guided, the checkpoint's name prefixed with its folder's for a
workdir's checkpoint.pt); existing
results there are kept unless --force is given. --out is checked before the
evaluation starts. --guidance W samples with classifier-free guidance, which
needs a model trained with masked conditioning (see mcvd sample --help);
--guidance-interval LO HI guides only the steps with LO <= t <= HI; a
shipped model named with none of the sampler's flags samples as it samples
best (as mcvd sample does).
The network runs as in mcvd sample: see --optimize and --precision.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ._common import (EXIT_FAILURE, EXIT_USAGE, SHIPPED_SAMPLER_HELP, UsageError, add_frame_stride_flag,
                      add_guidance_interval_flag, add_optimize_flag, add_threads_flag, apply_threads, as_flag,
                      check_guidance, check_guidance_interval, check_output_folder, default_steps, error,
                      fill_sampler_defaults, finite_float, frame_stride, inference_model, load_checkpoint_arg,
                      missing_packages, positive_int, resolve_device, resolve_optimize, sampler_of_flags, seed_int,
                      refuse_folders, smmnist_test_clips, warn_untrained_task)

HELP = "evaluate a model with the paper's protocol (best-of-k and one-sample PSNR, SSIM, LPIPS; FVD)"


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help=HELP, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="training checkpoint, model file or reference checkpoint, or the name of a shipped "
                        "model (smmnist-demo-cpu)")
    p.add_argument("--data", required=True, help="'smmnist' or a folder of videos / frame folders")
    add_frame_stride_flag(p, "a video of --data")
    p.add_argument("--task", choices=("predict", "interpolate", "generate"), default="predict")
    p.add_argument("--cond", type=int, default=None,
                   help="p, past frames: the model's num_frames_cond for predict and interpolate (the default); "
                        "other counts only for generate")
    p.add_argument("--pred", type=int, default=None, help="n, frames to predict (default: the model's num_frames)")
    p.add_argument("--samples", type=positive_int, default=1,
                   help="k, samples per clip: scored as the best of k per metric and as one sample (the mean "
                        "over the k; default 1)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the sampler (default 0)")
    p.add_argument("--out", type=Path, default=None, help="folder for the results")
    p.add_argument("--num-clips", type=positive_int, default=None,
                   help="evaluate the first N clips (default: all); more than --data holds is refused, with the count")
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="clips per sampling call (k times as many videos; default 8)")
    p.add_argument("--method", choices=("ddpm", "ddim", "dpm++"), default=None,
                   help=f"sampler ({SHIPPED_SAMPLER_HELP})")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="sampler steps: 1 to the model's num_timesteps (default: 100, or all of a model with fewer)")
    p.add_argument("--guidance", type=finite_float, default=None, metavar="W",
                   help="classifier-free guidance weight; needs a model trained with training.prob_mask_cond > 0")
    add_guidance_interval_flag(p)
    p.add_argument("--device", default="auto", help="'auto' (CUDA when there is one), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument("--no-ema", action="store_true", help="the raw weights of a checkpoint, not the EMA")
    p.add_argument("--no-fvd", action="store_true", help="skip FVD (and the I3D network)")
    p.add_argument("--force", action="store_true", help="replace results already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_optimize_flag(p)
    add_threads_flag(p)
    p.set_defaults(run=run)


def eval_clips(data: str, frames: int, config, run_config: dict, stride: int):
    """The evaluation clips: the SMMNIST test split drawn like the model's
    training clips (`run_config`, the checkpoint's), or non-overlapping clips of a video folder, their frames
    `stride` source frames apart."""
    from mcvd.data import VideoFolder

    if data == "smmnist":
        return smmnist_test_clips(config, frames, run_config)
    try:  # strict: a clip that cannot be read stops the evaluation rather than be replaced by another
        return VideoFolder(data, frames, config.image_size, channels=config.channels, frame_stride=stride,
                           clip_step=(frames - 1) * stride + 1, strict=True)
    except (ValueError, FileNotFoundError) as err:
        raise as_flag(err, {"root": "--data"}) from None


def _model_name(checkpoint: Path) -> str:
    """The model's part of the default --out: the file's stem, with its folder's name for a training
    workdir's checkpoint.pt (every run's checkpoint has that name)."""
    stem = checkpoint.stem
    return f"{checkpoint.parent.name}_{stem}" if stem == "checkpoint" and checkpoint.parent.name else stem


def _guidance_tag(sampler) -> str:
    """The guidance's part of the default --out, so that a guided and an unguided evaluation of the same
    model keep apart: _g<W>, then _t<LO>-<HI> for a guidance interval; empty when unguided."""
    if sampler.guidance is None:
        return ""
    interval = sampler.guidance_interval
    return f"_g{sampler.guidance:g}" + ("" if interval is None else f"_t{interval[0]}-{interval[1]}")


def run(args: argparse.Namespace) -> int:
    if (code := missing_packages("eval", ("PIL", "matplotlib"))) is not None:
        return code
    import torch

    from mcvd.metrics.protocol import Task, evaluate
    from mcvd.metrics.report import existing_results, write_report
    from mcvd.metrics.weights import WeightsError

    try:
        if args.data == "smmnist" and args.frame_stride is not None:
            raise UsageError("--frame-stride: reads a video folder's frames; --data smmnist draws its clips")
        fill_sampler_defaults(args)
        device = resolve_device(args.device)
        apply_threads(args)
        model, cfg, weights, run_config = load_checkpoint_arg(args.checkpoint, args.no_ema, device)
        steps = default_steps(args.steps, cfg)
        if args.guidance is not None and args.task == "generate":
            raise UsageError("--guidance: guides on condition frames; the task 'generate' has none")
        check_guidance(args.guidance, run_config, cfg, "eval")
        guidance_interval = check_guidance_interval(args)
        sampler = sampler_of_flags(args, steps, guidance_interval, model)
        optimized = resolve_optimize(args, device)
        try:
            task = Task.of(args.task, cfg, cond=args.cond, pred=args.pred)
        except ValueError as err:
            raise as_flag(err, {"task": "--task", "cond": "--cond", "pred": "--pred"}) from None
        warn_untrained_task(task.name, task.pred, run_config, cfg, "eval")
        stride, _ = frame_stride(args, run_config)
        clips = eval_clips(args.data, task.clip_frames, cfg, run_config, stride)
        if args.num_clips is not None and args.num_clips > len(clips):
            raise UsageError(f"--num-clips: expected 1 to {len(clips)} (the clips of --data {args.data}), "
                             f"got {args.num_clips}")
        out = args.out or Path("mcvd_eval") / (f"{_model_name(args.checkpoint)}_{Path(args.data).name}_{task.name}"
                                               f"_p{task.cond}_n{task.pred}_k{args.samples}_{sampler.method}"
                                               f"{sampler.steps or 'all'}{_guidance_tag(sampler)}")
        check_output_folder("--out", out)
        existing = existing_results(out)
        refuse_folders(existing)
        if existing and not args.force:  # checked before the long run, not after it
            raise UsageError(f"--out: {out} already holds results ({', '.join(p.name for p in existing)}); "
                             f"choose another folder or pass --force to replace them")
    except (FileNotFoundError, ValueError) as e:  # UsageError included
        return error("eval", e, EXIT_USAGE)
    except ImportError as e:
        return error("eval", e, EXIT_FAILURE)

    torch.manual_seed(args.seed)
    generator = torch.Generator(device).manual_seed(args.seed)
    start = time.perf_counter()
    net = inference_model(model, not optimized, args.precision, channels_last=args.optimize is None)
    try:
        result = evaluate(net, clips, task, samples=args.samples, num_clips=args.num_clips,
                          batch_size=args.batch_size,
                          sampler=sampler,
                          generator=generator, compute_fvd=not args.no_fvd, progress=not args.no_progress)
    except ValueError as e:
        if str(e).startswith("root:"):  # a clip of --data that cannot be read (VideoFolder's strict mode)
            return error("eval", as_flag(e, {"root": "--data"}), EXIT_USAGE)
        flags = {"compute_fvd": "--no-fvd", "pred": "--pred", "num_clips": "--num-clips"}
        if str(e).split(":")[0] in flags:  # generation, which FVD cannot score here (raised before sampling)
            return error("eval", as_flag(e, flags), EXIT_USAGE)
        return error("eval", e, EXIT_FAILURE)
    except (WeightsError, ImportError) as e:
        return error("eval", e, EXIT_FAILURE)
    seconds = time.perf_counter() - start
    num_clips = len(clips) if args.num_clips is None else args.num_clips
    run_info = {
        "checkpoint": str(args.checkpoint), "weights": weights, "data": args.data,
        **({} if args.data == "smmnist" else {"frame_stride": stride}),
        "task": task.name, "cond": task.cond, "pred": task.pred, "future": task.future, "samples": args.samples,
        "num_clips": num_clips, "seed": args.seed, "method": args.method, "steps": steps, "guidance": args.guidance,
        **({} if guidance_interval is None else {"guidance_interval": list(guidance_interval)}),
        "device": str(device), **({"threads": torch.get_num_threads()} if device.type == "cpu" else {}),
        "optimized": optimized, "precision": args.precision, "seconds": round(seconds, 1),
    }
    paths = write_report(out, run_info, result, first_frame=task.cond + 1, overwrite=args.force)
    print(Path(paths[1]).read_text(), end="")
    print(f"mcvd eval: wrote {', '.join(map(str, paths))}")
    return 0
