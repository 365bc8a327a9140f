"""The `mcvd` command. One module per subcommand, each with
`add_parser(subparsers)` and `run(args) -> int`."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = ("demo", "train", "sample", "eval", "convert_official")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcvd", description="Masked Conditional Video Diffusion")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"mcvd.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
