"""`mcvd eval` (not yet implemented)."""


def add_parser(sub):
    p = sub.add_parser("eval", help="(not yet implemented)")
    p.set_defaults(run=run)


def run(args) -> int:
    raise SystemExit("mcvd eval: not yet implemented")
