"""`mcvd sample`: predict, generate or interpolate frames with a trained model.

    mcvd sample --checkpoint CKPT (--input VIDEO|FRAMES [--start S] [--frame-stride N]
                                   | --data smmnist [--index I ...])
                --task predict|generate|interpolate [--frames N] [--method ddim|ddpm|dpm++]
                [--steps S] [--guidance W [--guidance-interval LO HI]] [--samples n] [--seed S] --out DIR [--force]
                [--optimize | --no-optimize] [--precision fp32|bf16|fp16] [--threads N]

CKPT: any model file that mcvd.load reads: a training checkpoint (EMA
weights; --no-ema for the raw ones), a model file or a reference-code
checkpoint (config.yml beside it); or the name of a model shipped with the
package (mcvd.pretrained: smmnist-demo-cpu, its SHA-256 checked), where no
file of that name exists. The condition frames come from a video
file or a folder of frames (--input: a video decoded with PyAV, or the
folder's image files in natural name order as mcvd.data.VideoFolder reads
them; resized and centre-cropped to the model's frames, from frame --start
on, every --frame-stride-th: by default the data.frame_stride of the
checkpoint's training run on a video folder, so that the frames move as
fast as the model learnt them) or from clips of the built-in Stochastic Moving MNIST test split (--data
smmnist, seed 0, with the checkpoint's digit settings). With p past, f future
and k current frames of the model:

    predict      the first p frames -> the next N (default k; more than k by
                 block-autoregressive rollout); the N frames after them, when
                 the input has them, are the truth
    interpolate  p past + f future frames -> the k frames between them (N = k),
                 which are the truth
    generate     no input -> --samples videos of N frames

--guidance W samples with classifier-free guidance, eps = eps_uncond +
W (eps_cond - eps_uncond), where eps_uncond is the model's with all
condition frames masked: it needs a model trained with masked conditioning
(training.prob_mask_cond > 0; and prob_mask_future > 0 or prob_mask_sync
when the model has future frames). A checkpoint whose run config (for a
reference checkpoint: its config.yml) says otherwise is refused; a file
without one (a model file) gets a warning. --guidance-interval LO HI guides
only the steps whose timestep t has LO <= t <= HI and calls the conditional
network alone at the others (mcvd.SamplerConfig's guidance_interval). A
shipped model named by --checkpoint, with none of --method, --steps,
--guidance and --guidance-interval given, samples as mcvd.pretrained records
it samples best, as the demo samples it (smmnist-demo-cpu: DDPM, 20 steps,
guidance 2 at t <= 700); with any of them given, the others take their usual
defaults.

Writes to --out: sample.gif and sample.mp4 (a grid, one row per clip and
sample: condition | prediction | truth) and frames.npz (float32 in [-1, 1]:
past [B, p, C, H, W], prediction [samples, B, N, C, H, W], truth
[B, N, C, H, W] and future [B, f, C, H, W] when present; task, method,
steps, seed, guidance and --input's frame stride as scalars, the guidance
interval as a pair). Existing files are
kept unless --force is given; each file is written atomically.

The network runs eagerly on the CPU and compiled by mcvd.optimize on a
CUDA device or with --precision bf16/fp16 (--optimize and --precision say
more).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ._common import (EXIT_FAILURE, EXIT_USAGE, SHIPPED_SAMPLER_HELP, UsageError, add_frame_stride_flag,
                      add_guidance_interval_flag, add_optimize_flag, add_threads_flag, apply_threads, as_flag,
                      check_guidance, check_guidance_interval, check_output_folder, default_steps, error,
                      fill_sampler_defaults, finite_float, float_range, frame_stride, inference_model,
                      load_checkpoint_arg, missing_packages, nonnegative_int, positive_int, resolve_device,
                      refuse_folders, resolve_optimize, sampler_of_flags, seed_int, smmnist_test_clips,
                      warn_untrained_task)

HELP = "predict, generate or interpolate video frames with a trained model (GIF, MP4, .npz)"
TASKS = ("predict", "interpolate", "generate")
OUTPUTS = ("sample.gif", "sample.mp4", "frames.npz")


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help=HELP, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="training checkpoint, model file or reference checkpoint, or the name of a shipped "
                        "model (smmnist-demo-cpu)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--input", type=Path, default=None,
                        help="video file or folder of frames holding the condition frames")
    source.add_argument("--data", choices=("smmnist",), default=None,
                        help="clips of the Stochastic Moving MNIST test split")
    p.add_argument("--index", type=nonnegative_int, nargs="+", default=None, help="--data: clip numbers (default: 0)")
    p.add_argument("--start", type=nonnegative_int, default=None, help="--input: first frame used (default: 0)")
    add_frame_stride_flag(p, "--input")
    p.add_argument("--task", choices=TASKS, default="predict")
    p.add_argument("--frames", type=positive_int, default=None, help="N, frames to sample (default: the model's k)")
    p.add_argument("--method", choices=("ddim", "ddpm", "dpm++"), default=None,
                   help=f"sampler ({SHIPPED_SAMPLER_HELP})")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="sampler steps, network calls per block: 1 to the model's num_timesteps (default: 100, or "
                        "all of a model with fewer)")
    p.add_argument("--guidance", type=finite_float, default=None, metavar="W",
                   help="classifier-free guidance weight (1 samples as without it, at twice the cost); needs a "
                        "model trained with training.prob_mask_cond > 0")
    add_guidance_interval_flag(p)
    p.add_argument("--samples", type=positive_int, default=1, help="samples per clip (generate: videos; default 1)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the sampler (default 0)")
    p.add_argument("--device", default="auto", help="'auto' (CUDA when there is one), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument("--out", type=Path, required=True, help="folder for sample.gif, sample.mp4, frames.npz")
    p.add_argument("--fps", type=float_range(0.01, 50), default=4.0,
                   help="frames per second of the GIF and MP4, 0.01 to 50 (default 4; GIF frame delays are whole "
                        "centiseconds)")
    p.add_argument("--no-ema", action="store_true", help="the raw weights of a checkpoint, not the EMA")
    p.add_argument("--force", action="store_true", help="replace sample.gif, sample.mp4, frames.npz in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_optimize_flag(p)
    add_threads_flag(p)
    p.set_defaults(run=run)


def _check_args(args) -> None:
    if args.index is not None and args.data is None:
        raise UsageError("--index: selects clips of --data smmnist; it does not apply to --input")
    if args.start is not None and args.input is None:
        raise UsageError("--start: selects the first frame of --input; it does not apply to --data")
    if args.frame_stride is not None and args.input is None:
        raise UsageError("--frame-stride: selects the frames of --input; it does not apply to --data or generate")
    given = args.input is not None or args.data is not None
    if args.task == "generate" and given:
        raise UsageError("--input/--data: the task 'generate' samples without condition frames; drop them")
    if args.task != "generate" and not given:
        raise UsageError(f"--input or --data: the task {args.task!r} needs condition frames: a video file or a "
                         f"folder of frames (--input) or --data smmnist")
    if args.task == "generate" and args.guidance is not None:
        raise UsageError("--guidance: guides on condition frames; the task 'generate' has none")
    check_output_folder("--out", args.out)
    existing = [name for name in OUTPUTS if (args.out / name).exists()]
    refuse_folders(args.out / name for name in existing)
    if existing and not args.force:
        raise UsageError(f"--out: {args.out} already holds {', '.join(existing)}; choose another folder or pass "
                         f"--force to replace them")


def _frame_counts(task: str, cfg, frames: int | None) -> tuple[int, int, int]:
    """(p, n, f): past frames used, frames sampled, future frames used, for the task and the model."""
    p, k, f = cfg.num_frames_cond, cfg.num_frames, cfg.num_frames_future
    n = k if frames is None else frames
    if task == "predict" and p == 0:
        raise UsageError("--task: 'predict' needs a model with past frames (num_frames_cond > 0)")
    if task == "interpolate":
        if f == 0:
            raise UsageError("--task: 'interpolate' needs a model with future frames (num_frames_future > 0)")
        if n != k:
            raise UsageError(f"--frames: interpolation fills exactly the model's k={k} frames, got {n}")
    if task == "generate":
        if n > k and p == 0:
            raise UsageError(f"--frames: a model without past frames generates at most k={k} frames, got {n}")
        return 0, n, 0
    return p, n, (f if task == "interpolate" else 0)


def _condition_clips(args, cfg, run_config: dict, p: int, n: int, f: int, stride: tuple[int, str]):
    """(clips [B, <= p+n+f, C, H, W] on the CPU, a description of where they come from); --input is read with
    `stride` (frame_stride's: the stride, what set it)."""
    import torch

    from mcvd.video import load_clip

    need = p + n + f
    if args.input is not None:
        start = args.start or 0
        stride, why = stride
        clip = load_clip(args.input, cfg.image_size, cfg.channels, start=start, max_frames=need, stride=stride)
        T = clip.shape[0]
        where = f"from frame {start}" + ("" if stride == 1 else f", one frame in {stride} ({why})")
        if args.task == "interpolate" and T < need:
            raise UsageError(f"--input: {args.input} has {T} frames {where}; interpolation needs "
                             f"{need} ({p} past, {n} between, {f} future)")
        if T < p:
            raise UsageError(f"--input: {args.input} has {T} frames {where}; the model needs {p} "
                             f"condition frames")
        return clip[None], f"{args.input} {where}"
    indices = args.index or [0]
    clips = smmnist_test_clips(cfg, need, run_config)
    bad = [i for i in indices if i >= len(clips)]
    if bad:
        raise UsageError(f"--index: the smmnist test split has clips 0..{len(clips) - 1}, got {bad}")
    return torch.stack([clips[i] for i in indices]), f"smmnist test clips {indices}"


def run(args: argparse.Namespace) -> int:
    if (code := missing_packages("sample", ("PIL", "av"))) is not None:
        return code
    import numpy as np
    import torch

    from mcvd.diffusion import predict
    from mcvd.metrics.psnr_ssim import psnr, ssim
    from mcvd.video import grid_frames, task_panels, write_gif, write_mp4, write_npz

    try:
        fill_sampler_defaults(args)
        _check_args(args)
        device = resolve_device(args.device)
        apply_threads(args)
        model, cfg, weights, run_config = load_checkpoint_arg(args.checkpoint, args.no_ema, device)
        steps = default_steps(args.steps, cfg)
        check_guidance(args.guidance, run_config, cfg, "sample")
        guidance_interval = check_guidance_interval(args)
        sampler = sampler_of_flags(args, steps, guidance_interval, model)
        optimized = resolve_optimize(args, device)
        p, n, f = _frame_counts(args.task, cfg, args.frames)
        warn_untrained_task(args.task, n, run_config, cfg, "sample")
        if args.task == "generate":
            clips, source = None, "no condition (generation)"
        else:
            stride = frame_stride(args, run_config)
            clips, source = _condition_clips(args, cfg, run_config, p, n, f, stride)
    except (FileNotFoundError, ValueError) as err:  # UsageError included
        return error("sample", as_flag(err, {"input": "--input"}), EXIT_USAGE)
    except ImportError as err:
        return error("sample", err, EXIT_FAILURE)

    past = future = truth = None
    if clips is not None:
        clips = clips.to(device)
        past = clips[:, :p] if p else None
        future = clips[:, p + n:p + n + f] if f else None
        truth = clips[:, p:p + n] if clips.shape[1] >= p + n else None
    torch.manual_seed(args.seed)
    generator = torch.Generator(device).manual_seed(args.seed)
    generating = clips is None
    net = inference_model(model, not optimized, args.precision, channels_last=args.optimize is None)
    video = predict(net, past, n, future=future, samples=1 if generating else args.samples,
                    batch_size=args.samples if generating else None, device=device, sampler=sampler,
                    generator=generator, progress=not args.no_progress)
    # Always [samples, B, N, C, H, W]: generation draws `samples` videos of one "clip".
    video = video[:, None] if generating else video.reshape(args.samples, -1, *video.shape[-4:])
    samples, B = video.shape[:2]

    def rows(x):  # [B, T, ...] -> [B * samples, T, ...], clip-major, as the prediction rows
        return None if x is None else x.repeat_interleave(samples, dim=0)
    panels = task_panels(video.transpose(0, 1).flatten(0, 1), past=rows(past), truth=rows(truth),
                         future=rows(future))
    frames = grid_frames(panels)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    arrays = {"prediction": video.float(), "task": np.array(args.task), "method": np.array(args.method),
              "steps": np.array(steps), "seed": np.array(args.seed)}
    if args.input is not None:
        arrays["frame_stride"] = np.array(stride[0])
    if args.guidance is not None:
        arrays["guidance"] = np.array(args.guidance)
    if guidance_interval is not None:
        arrays["guidance_interval"] = np.array(guidance_interval)
    arrays.update({name: x.float() for name, x in (("past", past), ("truth", truth), ("future", future))
                   if x is not None})
    written = [write_gif(out / OUTPUTS[0], frames, fps=args.fps, overwrite=args.force),
               write_mp4(out / OUTPUTS[1], frames, fps=args.fps, overwrite=args.force),
               write_npz(out / OUTPUTS[2], arrays, overwrite=args.force)]

    guided = "" if args.guidance is None else f", guidance {args.guidance:g}"
    if guidance_interval is not None:
        guided += f" at {guidance_interval[0]} <= t <= {guidance_interval[1]}"
    print(f"mcvd sample: {args.task}, {samples} sample(s) of {B} clip(s) ({source}), {n} frames, "
          f"{args.method} {steps} steps{guided}, {weights} weights, {device}")
    if truth is None and args.task == "predict":
        print(f"mcvd sample: the input ends before {p + n} frames, so there is no truth to compare with")
    if truth is not None:
        scores = f"PSNR {psnr(video, truth).mean():.2f} dB"
        if min(truth.shape[-2:]) >= 11:  # SSIM's 11 x 11 window
            scores += f", SSIM {ssim(video, truth).mean():.4f}"
        print(f"mcvd sample: prediction vs truth, mean over clips and samples: {scores}")
    print(f"mcvd sample: wrote {', '.join(map(str, written))}")
    return 0
