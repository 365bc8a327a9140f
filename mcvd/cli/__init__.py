"""The `mcvd` command. One module per subcommand, each with
`add_parser(subparsers)` and `run(args) -> int`; what they share is in
`_common` (exit codes: 2 for a bad command line in every command). A disk
or quota that fills while a command writes is reported here for all of them
(exit code 1, naming the file), and so is Ctrl-C (exit code 130)."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

COMMANDS = ("demo", "train", "sample", "eval", "stream", "convert_official")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcvd", description="Masked Conditional Video Diffusion")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"mcvd.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]); returns the exit code, argparse's errors included."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # argparse has printed a usage error (code 2, as _common.EXIT_USAGE) or the help
        return int(done.code or 0)
    from mcvd.fileio import NoSpaceError

    from ._common import EXIT_FAILURE, EXIT_INTERRUPTED, error

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    # A warning as a line of the command's output, not with the source line that raised it.
    plain, warnings.formatwarning = warnings.formatwarning, (
        lambda message, category, *_: f"mcvd {args.command}: {category.__name__}: {message}\n")
    try:
        return int(args.run(args) or 0)
    except NoSpaceError as err:  # every file is written atomically: what was there before is intact
        return error(args.command, err, EXIT_FAILURE)
    except KeyboardInterrupt:  # Ctrl-C: a line, not a traceback; files being written are left as they were
        print(f"mcvd {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (MemoryError, RuntimeError) as err:  # torch.OutOfMemoryError is a RuntimeError, as is the CPU's
        if not _out_of_memory(err):
            raise
        return error(args.command, f"out of memory ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
                                   f"ask for less at once: fewer clips, samples or frames per call (--batch-size, "
                                   f"--samples, --frames where the command has them), or a smaller model",
                     EXIT_FAILURE)
    finally:
        warnings.formatwarning = plain


def _out_of_memory(err: BaseException) -> bool:
    """Whether `err` says that memory ran out: MemoryError, torch's OutOfMemoryError (a GPU), or the CPU
    allocator's RuntimeError."""
    return (isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in str(err))


if __name__ == "__main__":
    sys.exit(main())
