"""What the `mcvd` commands share: exit codes and the usage error, argparse
types for numbers, the device, output folders, the model file and what it
was trained for (sampler steps, guidance), and the SMMNIST test clips.

Exit codes, the same in every command: 0 done; EXIT_USAGE (2, argparse's own
code) when the command cannot start with what it was given (its options, and
the files and folders they name); EXIT_FAILURE (1) when the run itself fails
(training diverged, a metric's weights or a package missing); EXIT_INTERRUPTED
(130, the shell's code for a run ended by Ctrl-C) when Ctrl-C stopped the
command (`mcvd train` first writes its checkpoint).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class UsageError(ValueError):
    """A bad command line, reported as `mcvd <command>: error: ...` with EXIT_USAGE."""


def as_flag(err: Exception, flags: dict[str, str]) -> UsageError:
    """A library error whose message starts with the argument it names ("root: ...") as the UsageError
    of the command-line flag that gave that argument ("--data: ..."); flags: {argument: flag}."""
    text = str(err)
    for name, flag in flags.items():
        if text.startswith(f"{name}:"):
            return UsageError(flag + text[len(name):])
    return UsageError(text)


def error(command: str, message, code: int) -> int:
    """Print `mcvd <command>: error: <message>` to stderr; returns `code` for the command to return."""
    print(f"mcvd {command}: error: {message}", file=sys.stderr)
    return code


# The modules the commands' outputs need beyond the core install, and the PyPI packages that give them
# (all three in the extra mcvd[video]).
PACKAGES = {"PIL": "pillow", "av": "av", "matplotlib": "matplotlib"}


def missing_packages(command: str, modules: tuple[str, ...]) -> int | None:
    """EXIT_FAILURE, with a message naming what to install, when any of `modules` (keys of PACKAGES) is not
    installed; else None. Checked before the work starts: a command would otherwise fail after it, at the
    file it writes."""
    import importlib.util

    missing = [PACKAGES[m] for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return error(command, f"needs {' and '.join(missing)}, not installed: pip install {' '.join(missing)} "
                          f"(or pip install 'mcvd[video]')", EXIT_FAILURE)


def _integer(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected >= {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _integer(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _integer(text, 0)


MAX_SEED = 2**63 - 1  # torch.manual_seed takes up to 2**64 - 1; training seeds step s with seed + s


def seed_int(text: str) -> int:
    """argparse type: a seed, an integer from 0 to MAX_SEED."""
    value = _integer(text, 0)
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**63 - 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def finite_float(text: str) -> float:
    """argparse type: any finite number."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def float_range(low: float, high: float):
    """argparse type: a number from `low` to `high` (both included)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:  # NaN fails both comparisons
            raise argparse.ArgumentTypeError(f"expected a number from {low:g} to {high:g}, got {text!r}")
        return value
    return parse


def resolve_device(name: str):
    """torch.device of a --device value: "auto" is CUDA when torch sees one, else the CPU.
    Also checks MCVD_BACKEND for that device, so that a bad value stops the command now."""
    import torch

    from mcvd.ops._backend import check_env_backend

    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name)
        except RuntimeError as err:
            raise UsageError(f"--device: {err}") from err
        if device.type not in ("cpu", "cuda"):  # the ops' kernels are for these; mps, xpu, meta are not supported
            raise UsageError(f"--device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device: CUDA requested but torch sees no CUDA device")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device: {name} requested but torch sees {torch.cuda.device_count()} CUDA "
                             f"device(s)")
    try:
        check_env_backend(device)
    except (ValueError, RuntimeError) as err:
        raise UsageError(str(err)) from err
    return device


def check_output_folder(arg: str, folder: Path) -> None:
    """UsageError naming `arg` unless files can be created in `folder`, or, when it
    does not exist yet, where it would be created (mcvd.fileio.check_writable_folder)."""
    from mcvd.fileio import check_writable_folder

    try:
        check_writable_folder(folder, arg)
    except OSError as err:
        raise UsageError(str(err)) from None


def refuse_folders(paths) -> None:
    """UsageError naming --out when one of `paths`, where a command writes a file, is a folder: --force
    replaces files, never folders. Checked before the work, not when the file is written at its end."""
    folders = [path for path in paths if path.is_dir()]
    if folders:
        raise UsageError(f"--out: {folders[0]} is a folder, where this command writes a file; choose another "
                         f"folder")


def check_steps(arg: str, steps: int, cfg) -> None:
    """UsageError naming `arg` unless 1 <= steps <= the model's num_timesteps."""
    if steps > cfg.num_timesteps:
        raise UsageError(f"{arg}: expected 1 to {cfg.num_timesteps} (the model's num_timesteps), got {steps}")


def default_steps(steps: int | None, cfg) -> int:
    """--steps: as given (checked), else 100 or every timestep of a model with fewer."""
    if steps is None:
        return min(100, cfg.num_timesteps)
    check_steps("--steps", steps, cfg)
    return steps


def check_guidance(guidance: float | None, run_config: dict, cfg, command: str) -> None:
    """--guidance needs a model trained with everything masked at times: its unconditional
    eps, eps_uncond in eps_uncond + w (eps_cond - eps_uncond), is the model's with the past
    and future frames masked. Refused (UsageError) when the file's run config says that
    never happened in training; a warning when the file has no run config to tell."""
    if guidance is None:
        return
    training = run_config.get("training", {})
    if "prob_mask_cond" not in training:
        print(f"mcvd {command}: warning: --guidance: this file holds no training config, so whether the model "
              f"was trained with masked conditioning (training.prob_mask_cond > 0) is unknown; without it, "
              f"guided samples are wrong", file=sys.stderr)
        return
    if not _trained_with(training, cfg, past_given=False, future_given=False):
        raise UsageError(f"--guidance: needs a model trained with masked conditioning (training.prob_mask_cond > 0, "
                         f"and prob_mask_future > 0 or prob_mask_sync for future frames), whose unconditional "
                         f"prediction guidance uses; this one never saw its condition frames all masked in "
                         f"training ({_masks(training)})")


def _trained_with(training: dict, cfg, past_given: bool, future_given: bool) -> bool:
    """Whether training (mcvd.train's masks: prob_mask_cond, prob_mask_future, prob_mask_sync) ever gave
    the network this conditioning: the past frames given or masked, the future frames given or masked."""
    p, f = cfg.num_frames_cond, cfg.num_frames_future
    pc, pf = training.get("prob_mask_cond", 0.0), training.get("prob_mask_future", 0.0)

    def ever(masked_prob: float, given: bool) -> bool:
        return masked_prob < 1 if given else masked_prob > 0

    if training.get("prob_mask_sync") and f > 0:  # the future masked exactly when the past is
        return ever(pc, future_given) and (p == 0 or past_given == future_given)
    return (p == 0 or ever(pc, past_given)) and (f == 0 or ever(pf, future_given))


def warn_untrained_task(task: str, frames: int, run_config: dict, cfg, command: str) -> None:
    """A warning when the file's run config says the network never saw in training the conditioning that
    `task` samples with (prediction: the past given, the future masked; generation: both masked, and for
    more than k frames of a model with past frames prediction's too): its samples there are not what it
    learnt. Nothing for a file without a run config."""
    training = run_config.get("training", {})
    if "prob_mask_cond" not in training:
        return
    needs = {"predict": [(True, False)], "interpolate": [(True, True)],
             "generate": [(False, False)] + ([(True, False)] if cfg.num_frames_cond and frames > cfg.num_frames
                                             else [])}[task]
    what = {(True, False): "the past given and the future masked", (True, True): "the past and future given",
            (False, False): "the past and future masked"}
    if cfg.num_frames_future == 0:
        what = {**what, (True, False): "the past given", (False, False): "the past masked"}
    unseen = [c for c in needs if not _trained_with(training, cfg, *c)]
    if unseen:
        cause = ("prob_mask_sync masks the future only together with the past, so set it false; "
                 if training.get("prob_mask_sync") and cfg.num_frames_future and (True, False) in unseen else "")
        print(f"mcvd {command}: warning: --task {task}: this model never saw {' nor '.join(what[c] for c in unseen)} "
              f"in training ({_masks(training)}), so its samples are not what it learnt; {cause}a model for this "
              f"task is trained with its past and future frames each masked in some clips but not all "
              f"(training.prob_mask_cond and prob_mask_future above 0 and below 1)", file=sys.stderr)


def _masks(training: dict) -> str:
    """The run config's masking settings, for a message."""
    return "its run config: training." + ", ".join(
        f"{k} {training.get(k, False if k == 'prob_mask_sync' else 0.0)}"
        for k in ("prob_mask_cond", "prob_mask_future", "prob_mask_sync"))


def add_guidance_interval_flag(parser) -> None:
    """--guidance-interval LO HI: mcvd.SamplerConfig's guidance_interval (check_guidance_interval)."""
    parser.add_argument("--guidance-interval", type=nonnegative_int, nargs=2, default=None, metavar=("LO", "HI"),
                        help="guide only the steps whose timestep t has LO <= t <= HI, the others unguided at half "
                             "the cost (default: every step); needs --guidance")


def check_guidance_interval(args) -> tuple[int, int] | None:
    """--guidance-interval as a (lo, hi) pair, or None; a UsageError without --guidance or with LO > HI."""
    interval = args.guidance_interval
    if interval is None:
        return None
    if args.guidance is None:
        raise UsageError("--guidance-interval: limits --guidance to some steps; give --guidance W too")
    if interval[0] > interval[1]:
        raise UsageError(f"--guidance-interval: expected LO <= HI, got {interval[0]} {interval[1]}")
    return tuple(interval)


def sampler_of_flags(args, steps: int, guidance_interval: tuple[int, int] | None, model):
    """The mcvd.SamplerConfig of --method, --steps, --guidance and --guidance-interval for `model`; a UsageError
    naming --guidance-interval when it holds none of the steps the sampler takes (nothing would be guided)."""
    from mcvd.diffusion import SamplerConfig

    sampler = SamplerConfig(method=args.method, steps=steps, guidance=args.guidance,
                            guidance_interval=guidance_interval)
    timesteps = sampler.make_scheduler(model).timesteps.tolist()
    if guidance_interval is not None and not any(sampler.guided_steps(timesteps)):
        raise UsageError(f"--guidance-interval: {guidance_interval[0]} {guidance_interval[1]} holds none of the "
                         f"sampler's timesteps ({min(timesteps)} to {max(timesteps)}, {len(timesteps)} steps): "
                         f"nothing would be guided")
    return sampler


def read_model_arg(flag: str, path: Path):
    """The model named by `flag` as mcvd.loader.ModelSource: a file mcvd.load reads (any kind), or, where no
    such file exists, the name of a shipped model (mcvd.pretrained), its SHA-256 checked."""
    from mcvd import pretrained
    from mcvd.loader import read

    try:
        if path.is_file():
            return read(path)
        if str(path) in pretrained.MODELS:  # even where a folder of that name exists (an earlier --out)
            return pretrained.source(str(path))
        if path.is_dir():  # read() names it as a folder, and a workdir's checkpoint in it
            return read(path)
    except (ValueError, FileNotFoundError) as err:  # damaged, of no known kind, not its recorded SHA-256
        raise as_flag(err, {"path": flag, "file": flag}) from None
    raise UsageError(f"{flag}: no such file: {path} (nor the name of a shipped model: "
                     f"{', '.join(sorted(pretrained.MODELS))})")


SAMPLER_FLAGS = ("method", "steps", "guidance", "guidance_interval")
SHIPPED_SAMPLER_HELP = ("default: ddim; a shipped model named with none of --method, --steps, --guidance and "
                        "--guidance-interval samples as it was measured to sample best, smmnist-demo-cpu with ddpm, "
                        "20 steps, guidance 2 at t <= 700")


def fill_sampler_defaults(args) -> None:
    """The sampler flags of `mcvd sample` and `eval` left unset: a shipped model named by --checkpoint with
    none of them given (and condition frames to guide on) samples as mcvd.pretrained records it samples
    best (DDPM, its steps, guidance and guidance interval), as the demo samples it; otherwise --method
    defaults to DDIM and the others stay unset (default_steps, no guidance)."""
    from mcvd import pretrained

    name = str(args.checkpoint)
    shipped = name in pretrained.MODELS and not Path(name).is_file()
    if shipped and args.task != "generate" and all(getattr(args, flag) is None for flag in SAMPLER_FLAGS):
        entry = pretrained.MODELS[name]
        args.method, args.steps, args.guidance = "ddpm", entry.sample_steps, entry.guidance
        args.guidance_interval = entry.guidance_interval
    if args.method is None:
        args.method = "ddim"


def load_checkpoint_arg(path: Path, no_ema: bool, device):
    """The --checkpoint model (read_model_arg) as (model, config, which weights, the file's run config).

    Which weights: "EMA" or "raw" for a training or reference checkpoint, "model file" for a model file."""
    from mcvd.loader import MODEL_FILE

    source = read_model_arg("--checkpoint", path)
    if source.kind == MODEL_FILE and no_ema:
        raise UsageError(f"--no-ema: {path} is a model file with a single set of weights, not a training checkpoint")
    try:
        model, cfg = source.build(use_ema=not no_ema, map_location=device)
    except ValueError as err:  # weights that do not fit the file's config; a damaged reference checkpoint
        raise as_flag(err, {"path": "--checkpoint", "checkpoint": "--checkpoint"}) from None
    weights = "model file" if source.kind == MODEL_FILE else "raw" if no_ema else "EMA"
    return model, cfg, weights, source.run_config


def add_threads_flag(parser) -> None:
    """--threads N: torch's CPU threads (apply_threads)."""
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="CPU threads for torch (default: torch's; on a machine shared with other jobs, 1 can be "
                             "faster: threads that wait on each other stall)")


def apply_threads(args) -> None:
    """Sets torch's CPU threads to --threads, when given."""
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)


def add_frame_stride_flag(parser, which: str) -> None:
    """--frame-stride: every how many source frames `which` takes one (default: the model's training stride)."""
    parser.add_argument("--frame-stride", type=positive_int, default=None, metavar="S",
                        help=f"take every S-th frame of {which} (default: the data.frame_stride the checkpoint "
                             f"was trained with on a video folder, so that its frames move as fast as in "
                             f"training; 1 for SMMNIST or a file without a run config)")


def frame_stride_of(run_config: dict) -> int:
    """The frame stride the model was trained with on a video folder (data.frame_stride of the checkpoint's run
    config; 1 for SMMNIST or a file without one): its clips' frames are that many source frames apart, so a
    video is read so too."""
    data = run_config.get("data", {})
    return int(data.get("frame_stride", 1)) if data.get("dataset") == "video_folder" else 1


def frame_stride(args, run_config: dict) -> tuple[int, str]:
    """(the stride a video is read with, what set it): --frame-stride, or the training run's."""
    if args.frame_stride is not None:
        return args.frame_stride, "--frame-stride"
    return frame_stride_of(run_config), "the model's training stride"


def smmnist_test_clips(cfg, frames: int, run_config: dict):
    """The Stochastic Moving MNIST test clips (seed 0) of `frames` frames, drawn
    like the model's training clips (`run_config`'s data section: num_digits and
    digit_size; for a file without one, 2 digits of half the frame size, the
    paper's proportions)."""
    from mcvd.data import StochasticMovingMNIST

    if cfg.channels != 1:
        raise UsageError(f"--data: smmnist clips are greyscale; the model takes {cfg.channels} channels")
    data = run_config.get("data", {})
    if data.get("dataset") == "smmnist":
        digits, digit_size = data["num_digits"], data["digit_size"]
    else:
        digits, digit_size = 2, cfg.image_size // 2
    return StochasticMovingMNIST(frames, split="test", seed=0, image_size=cfg.image_size, num_digits=digits,
                                 digit_size=digit_size)


PRECISIONS = ("fp32", "bf16", "fp16")


def add_optimize_flag(parser, *, precision: bool = True) -> None:
    """--optimize / --no-optimize: whether the command samples with mcvd.optimize's compiled network
    (resolve_optimize); with `precision`, --precision: the dtype mcvd.optimize compiles it in."""
    also = ", or with --precision other than fp32" if precision else ""
    parser.add_argument("--optimize", action=argparse.BooleanOptionalAction, default=None,
                        help=f"sample with mcvd.optimize's compiled network (default: on a CUDA device{also}). "
                             "On the CPU the default is the eager network, its weights laid out channels_last: "
                             "compiling there takes 0.5-2 minutes per batch shape in every run, then makes a step "
                             "1.15-1.5x faster than the eager network (docs/optimize.md, docs/stream.md). "
                             "--no-optimize: the eager model exactly as it is")
    if precision:
        add_precision_flag(parser)


def resolve_optimize(args, device) -> bool:
    """Whether the command compiles its network: --optimize / --no-optimize as given, else on a CUDA device or
    with --precision other than fp32; --precision (where the command has it) checked against it."""
    precision = getattr(args, "precision", "fp32")
    optimized = (device.type == "cuda" or precision != "fp32") if args.optimize is None else args.optimize
    check_precision(precision, not optimized, device)
    return optimized


def add_precision_flag(parser) -> None:
    """--precision: the dtype mcvd.optimize compiles the network in (check_precision)."""
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="the dtype mcvd.optimize runs the network in (default fp32). bf16 on a CPU with AMX "
                             "(bfloat16 matrix units): 3.2-4.3x the reference code's float32 forward on the SMMNIST "
                             "preset, relative error ~1e-2 (at most 6e-2); a CPU without AMX emulates it, slowly, and "
                             "one without AVX-512 runs its convolutions 7-22x slower than fp32 (a warning says so). "
                             "fp16: CUDA")


def check_precision(precision: str, no_optimize: bool, device) -> None:
    """--precision other than fp32 needs mcvd.optimize, and fp16 a CUDA device (UsageError)."""
    if precision != "fp32" and no_optimize:
        raise UsageError(f"--precision {precision}: runs in mcvd.optimize's network; drop --no-optimize")
    if precision == "fp16" and device.type != "cuda":
        raise UsageError(f"--precision fp16: needs a CUDA device, got {device.type}; use bf16 on a CPU")


def inference_model(model, no_optimize: bool, precision: str = "fp32", *, channels_last: bool = False):
    """The network the command samples with: `mcvd.optimize(model)` in `precision` (check_precision), or
    the model itself, eager, with no_optimize.

    channels_last: for an eager model on the CPU, lay its weights out channels_last (in place), so that
    oneDNN runs the convolutions in NHWC, which the fused norms take as it is. The demo and `mcvd stream`
    ask for it when they choose the eager network themselves: a sampling step of the demo's networks is
    1.12-1.59x faster (batch 64 and 1), the SMMNIST preset's 1.0-1.08x, the outputs equal to float32
    rounding (docs/demo.md, "192 clips, scored in channels_last"). --no-optimize keeps the model exactly
    as it is."""
    import torch

    if no_optimize:
        if channels_last and next(model.parameters()).device.type == "cpu":
            model.to(memory_format=torch.channels_last)
        return model
    from mcvd.nn.optimize import optimize

    return optimize(model, dtype={"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision])
