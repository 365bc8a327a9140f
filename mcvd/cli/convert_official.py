"""`mcvd convert-official`: a checkpoint of the paper's public code -> an mcvd model file.

    mcvd convert-official logs/checkpoint.pt --out smmnist.pt [--config config.yml] [--no-ema] [--force]

The output is this package's model file (mcvd.nn.save_model), loadable with
mcvd.load or mcvd.nn.load_model. An existing output file is kept unless --force
is given; a folder is never replaced, --force or not. (mcvd sample and mcvd
eval also read the reference checkpoint itself.)
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mcvd.compat import load_official
from mcvd.nn import save_model

from ._common import EXIT_USAGE, UsageError, as_flag, check_output_folder, error


def add_parser(sub) -> None:
    p = sub.add_parser("convert-official", help="convert a checkpoint of the paper's public code to an mcvd model file",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="the reference code's checkpoint.pt")
    p.add_argument("--config", type=Path, default=None, help="its config.yml (default: config.yml beside it)")
    p.add_argument("--out", type=Path, required=True, help="the model file to write")
    p.add_argument("--no-ema", action="store_true", help="convert the raw weights instead of the EMA weights")
    p.add_argument("--force", action="store_true", help="overwrite --out if it is an existing file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    def fail(message) -> int:
        return error("convert-official", message, EXIT_USAGE)

    if args.out.is_dir():
        return fail(f"--out: {args.out} is a folder; expected the path of the model file to write")
    if args.out.exists() and not args.force:
        return fail(f"--out: {args.out} exists; pass --force to overwrite it")
    try:  # a missing folder is created, as the other commands create theirs; a file in its place is named
        check_output_folder("--out", args.out.parent)
    except UsageError as e:
        return fail(e)
    try:
        model, cfg = load_official(args.checkpoint, args.config, use_ema=not args.no_ema)
        args.out.parent.mkdir(parents=True, exist_ok=True)  # after the load: a failed one leaves no folder
        save_model(args.out, model, overwrite=args.force)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        if args.config is not None and str(e).startswith(f"{args.config}:"):  # the config's own errors name its file
            return fail(f"--config: {e}")
        return fail(as_flag(e, {"config": "--config"}) if args.config is not None else e)
    params = sum(p.numel() for p in model.parameters())
    weights = "raw" if args.no_ema else "EMA"
    print(f"wrote {args.out}: {cfg.conditioning} MCVD, {params / 1e6:.2f}M parameters ({weights} weights), "
          f"k={cfg.num_frames} p={cfg.num_frames_cond} f={cfg.num_frames_future}, {cfg.image_size}x{cfg.image_size}")
    return 0
