"""`mcvd convert-official` (not yet implemented)."""


def add_parser(sub):
    p = sub.add_parser("convert-official", help="(not yet implemented)")
    p.set_defaults(run=run)


def run(args) -> int:
    raise SystemExit("mcvd convert-official: not yet implemented")
