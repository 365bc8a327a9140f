"""`mcvd stream`: run the streaming predictor over a video as it plays.

    mcvd stream --checkpoint CKPT --input VIDEO|FRAMES [--out FILE.mp4|FILE.gif] [--method dpm++]
                [--steps 10] [--every N] [--max-frames N] [--frame-stride N] [--fps F] [--seed S] [--device D]
                [--threads N] [--optimize | --no-optimize] [--precision fp32|bf16|fp16] [--force]

CKPT: any model file that mcvd.load reads, or, where no file of that name
exists, a shipped model's name (mcvd.pretrained: smmnist-demo-cpu). The frames of --input (a video
file decoded with PyAV, or a folder of frames in natural name order) are read
one at a time and converted to the model's frames as mcvd.data.VideoFolder
converts them (short side resized, centre crop, RGB or luma); one frame in
--frame-stride is read (default: the data.frame_stride of the checkpoint's
training run on a video folder, so that the frames move as fast as the model
learnt them; the stream's rate is then the source's divided by it). Each frame is
pushed to mcvd.StreamingPredictor when it arrives; once p frames are in, a
prediction of the next k frames is made every --every frames (default k),
right after the newest frame is pushed, so the prediction shown for time t is
made from frames before t only (mcvd.diffusion.stream_video).

Every frame read is processed as fast as the machine goes (none is dropped),
and the output plays at the source's pace (its rate divided by the stride,
at most 50 fps for a GIF): the side-by-side video shows at each
time t the observed frame t (input) beside the prediction for t (blank for
the first p frames). It prints the frames in, the predictions made, the
predicted frames per second, the latency per prediction (median and p90;
the first, which builds the sampler, apart) and per predicted frame, and
whether that keeps up with the source: 90% of the predictions ready before
the next is due, --every frames read later at the source's pace.

The network runs as mcvd.optimize compiles it on a CUDA device (--no-optimize:
eagerly), eagerly on the CPU (--optimize to compile it; minutes there for a
large network), its weights laid out channels_last there (--no-optimize keeps
the model as it is): the shipped demo model's predictions take 1.0-1.3x less
time so, the SMMNIST preset's about the same (docs/stream.md). --precision
bf16 (or fp16, CUDA) compiles it in that dtype and implies --optimize: on a
CPU with AMX the SMMNIST preset predicts about 2x faster than eagerly in
float32 (docs/stream.md). The compilation happens in the first prediction,
whose latency is left out of the figures.

Writes --out (default stream_out/<input name>.mp4; .gif for a GIF, at most
50 fps), refused if it exists unless --force is given.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ._common import (EXIT_FAILURE, EXIT_USAGE, UsageError, add_frame_stride_flag, add_optimize_flag, add_threads_flag,
                      apply_threads, as_flag, check_output_folder, check_steps, error, float_range, frame_stride,
                      inference_model, load_checkpoint_arg, missing_packages, positive_int, resolve_device,
                      resolve_optimize, seed_int)

HELP = "run the streaming predictor over a video as it plays: side-by-side video, frame rate, latency"
FORMATS = (".mp4", ".gif")
FOLDER_FPS = 10.0  # a folder of frames has no frame rate of its own


def add_parser(sub) -> None:
    p = sub.add_parser("stream", help=HELP, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="training checkpoint, model file or reference checkpoint, or the name of a shipped "
                        "model (smmnist-demo-cpu)")
    p.add_argument("--input", type=Path, required=True, help="video file or folder of frames")
    p.add_argument("--out", type=Path, default=None,
                   help="side-by-side video, .mp4 or .gif (default: stream_out/<input name>.mp4)")
    p.add_argument("--method", choices=("dpm++", "ddim", "ddpm"), default="dpm++", help="sampler (default: dpm++)")
    p.add_argument("--steps", type=positive_int, default=10,
                   help="sampler steps per prediction, 1 to the model's num_timesteps (default: 10)")
    p.add_argument("--every", type=positive_int, default=None,
                   help="frames between predictions, 1 to the model's k (default: k, each predicted frame shown once)")
    p.add_argument("--max-frames", type=positive_int, default=None,
                   help="stop after this many input frames (frames read, after the frame stride)")
    add_frame_stride_flag(p, "--input")
    p.add_argument("--fps", type=float_range(0.01, 1000), default=None,
                   help=f"the source's frame rate (default: the video's own; {FOLDER_FPS:g} for a folder of frames)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the sampler")
    p.add_argument("--device", default="auto", help="'auto' (CUDA when there is one), 'cpu', 'cuda', 'cuda:1', ...")
    add_threads_flag(p)
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="replay each prediction's denoising loop as a CUDA graph (default: on a CUDA device)")
    add_optimize_flag(p)
    p.add_argument("--no-ema", action="store_true", help="the raw weights of a checkpoint, not the EMA")
    p.add_argument("--force", action="store_true", help="replace --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _output(args) -> Path:
    """--out, checked: a new (or, with --force, existing) .mp4 or .gif file in a folder that takes files."""
    if not args.input.exists():
        raise UsageError(f"--input: no such file or folder: {args.input}")
    name = args.input.stem if args.input.is_file() else args.input.resolve().name  # "." is the folder's name
    out = args.out or Path("stream_out") / f"{name}.mp4"
    if out.suffix.lower() not in FORMATS:
        raise UsageError(f"--out: expected a file ending in {' or '.join(FORMATS)}, got {out}")
    if out.is_dir():
        raise UsageError(f"--out: {out} is a folder; expected a video file")
    if out.exists() and out.resolve() == args.input.resolve():
        raise UsageError(f"--out: {out} is the --input video; choose another file (--force would replace it)")
    if out.exists() and not args.force:
        raise UsageError(f"--out: {out} exists; choose another file or pass --force to replace it")
    check_output_folder("--out", out.parent)
    return out


def fmt_seconds(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def run(args: argparse.Namespace) -> int:
    # PyAV decodes a video file and encodes an MP4; a folder of frames streamed to a GIF needs Pillow only.
    video = args.input.is_file() or args.out is None or args.out.suffix.lower() == ".mp4"
    if (code := missing_packages("stream", ("PIL", "av") if video else ("PIL",))) is not None:
        return code
    import torch

    from mcvd.diffusion import SamplerConfig, stream_video
    from mcvd.video import (FPS_RANGE, count_frames, frame_rate, gif_centiseconds, grid_frames, iter_clip, write_gif,
                            write_mp4)

    try:
        out = _output(args)
        device = resolve_device(args.device)
        cuda_graph = device.type == "cuda" if args.cuda_graph is None else args.cuda_graph
        if cuda_graph and device.type != "cuda":
            raise UsageError(f"--cuda-graph: needs a CUDA device, got {device}")
        model, cfg, weights, run_config = load_checkpoint_arg(args.checkpoint, args.no_ema, device)
        stride, why = frame_stride(args, run_config)
        p, k = cfg.num_frames_cond, cfg.num_frames
        if p < 1:
            raise UsageError("--checkpoint: streaming prediction needs a model with past frames (num_frames_cond "
                             ">= 1), got 0")
        if cfg.channels not in (1, 3):
            raise UsageError(f"--checkpoint: video frames are read as RGB or luma; the model takes {cfg.channels} "
                             f"channels")
        check_steps("--steps", args.steps, cfg)
        if args.every is not None and args.every > k:
            raise UsageError(f"--every: expected 1 to the model's k={k} (frames per prediction), got {args.every}")
        in_source = count_frames(args.input)
        available = -(-in_source // stride)  # frames 0, stride, 2 stride, ...
        frames = available if args.max_frames is None else min(available, args.max_frames)
        if frames < p + 1:
            limit = "" if frames == available else f" of its {available} (--max-frames)"
            if stride > 1:
                limit += f", one in {stride} of its {in_source} ({why})"
            raise UsageError(f"--input: {args.input}: {frames} frames{limit}; streaming needs at least p + 1 = "
                             f"{p + 1} (the model's p = {p} past frames, then one frame to predict)")
        source_fps = args.fps or frame_rate(args.input)
        fps_source = "--fps" if args.fps else "the video's" if source_fps else "assumed"
        source_fps = source_fps or FOLDER_FPS
        rate = source_fps / stride  # of the frames read
        sampler = SamplerConfig(method=args.method, steps=args.steps)
        optimized = resolve_optimize(args, device)
    except (FileNotFoundError, ValueError) as err:  # UsageError included
        return error("stream", as_flag(err, {"input": "--input"}), EXIT_USAGE)
    except ImportError as err:
        return error("stream", err, EXIT_FAILURE)

    apply_threads(args)
    torch.manual_seed(args.seed)
    generator = torch.Generator(device).manual_seed(args.seed)
    net = inference_model(model, not optimized, args.precision, channels_last=args.optimize is None)
    try:
        result = stream_video(net, iter_clip(args.input, cfg.image_size, cfg.channels, max_frames=args.max_frames,
                                             stride=stride),
                              sampler=sampler, every=args.every, generator=generator, cuda_graph=cuda_graph,
                              source_fps=rate, progress=not args.no_progress, total=frames)
    except ValueError as err:  # a frame that cannot be decoded or read
        return error("stream", as_flag(err, {"input": "--input"}), EXIT_USAGE)
    grid = grid_frames(result.panels())
    out.parent.mkdir(parents=True, exist_ok=True)
    gif = out.suffix.lower() == ".gif"
    low, high = FPS_RANGE["GIF" if gif else "MP4"]  # the source's rate, within what the format can show
    out_fps = min(max(rate, low), high)
    written = (write_gif if gif else write_mp4)(out, grid, fps=out_fps, overwrite=args.force)
    if gif:  # the rate it plays at: whole centiseconds per frame
        out_fps = 100 / gif_centiseconds(out_fps)

    s = result.summary()
    every = "frame" if result.every == 1 else f"{result.every} frames"
    threads = f", {torch.get_num_threads()} thread(s)" if device.type == "cpu" else ""
    graph = (", optimized" if optimized else "") + (", CUDA graph" if cuda_graph else "")
    first = (f"the first, building the sampler, {fmt_seconds(s['first_latency'])}, left out" if s["predictions"] > 1
             else "a single prediction, which also built the sampler")
    read = "" if stride == 1 else f", one in {stride} ({why}): {rate:g} fps"
    past_end = " (the last past the video's end: timed, not shown)" if result.past_end else ""
    print(f"mcvd stream: {args.input}: {s['frames_in']} frames in at {source_fps:g} fps ({fps_source}){read}; "
          f"{s['predictions']} predictions of k={k} frames, one every {every} from frame {p}{past_end}; "
          f"{args.method} {args.steps} steps, {weights} weights, {device}{threads}{graph}")
    print(f"mcvd stream: {s['predicted_fps']:.2f} predicted frames per second ({k} per prediction); latency per "
          f"prediction median {fmt_seconds(s['latency_median'])}, p90 {fmt_seconds(s['latency_p90'])}, max "
          f"{fmt_seconds(s['latency_max'])} ({first}), per predicted frame {fmt_seconds(s['latency_per_frame'])}; "
          f"{s['frames_in'] / s['seconds']:.2f} input frames per second overall")
    verdict = "keeps up with" if result.keeps_up else "does not keep up with"
    pace = f"the source's {source_fps:g} fps" if stride == 1 else f"the {rate:g} fps of the frames read"
    print(f"mcvd stream: {verdict} {pace}: a prediction is due every {every}, "
          f"{fmt_seconds(result.budget)}; 90% took at most {fmt_seconds(s['latency_p90'])}")
    print(f"mcvd stream: wrote {written} (input | prediction, {s['frames_in']} frames at {out_fps:.4g} fps)")
    return 0
