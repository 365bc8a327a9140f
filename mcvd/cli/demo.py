"""`mcvd demo` (not yet implemented)."""


def add_parser(sub):
    p = sub.add_parser("demo", help="(not yet implemented)")
    p.set_defaults(run=run)


def run(args) -> int:
    raise SystemExit("mcvd demo: not yet implemented")
