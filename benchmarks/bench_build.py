"""How long the C++ build takes: the whole of it, and each source file compiled alone.

    python benchmarks/bench_build.py --md benchmarks/results/cpu_build.md

The build is most of a fresh machine's set-up (`make demo`, `make test`), and on
two cores its wall time is about half the files' summed compile times, or the
longest file's, whichever is more. The sources tracked by git are copied to a
temporary folder and built there with setup.py's flags (`build_ext`, ninja,
MAX_JOBS=2 unless set), which leaves the installed package alone; then each
object's compile command (`ninja -t commands`) runs again alone, one at a time,
--reps times, and its median is reported.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import environment  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def copy_sources(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for name in files:
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def timed(cmd: list[str] | str, **kwargs) -> float:
    """Seconds `cmd` ran; a failing command stops the benchmark with the end of its output."""
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
    if done.returncode != 0:
        sys.exit(f"bench_build: {cmd if isinstance(cmd, str) else ' '.join(cmd)} failed "
                 f"(exit {done.returncode}):\n{done.stdout[-3000:]}")
    return time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=1, help="times each file is compiled alone (median reported)")
    ap.add_argument("--md", help="write the Markdown table here")
    args = ap.parse_args(argv)
    # The environment's own ninja (the `ninja` package puts it beside the interpreter), as a build there finds it.
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "MAX_JOBS": os.environ.get("MAX_JOBS", "2"),
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    ninja = shutil.which("ninja", path=env["PATH"])
    if ninja is None:
        ap.error("ninja not found: pip install ninja")
    with tempfile.TemporaryDirectory(prefix="mcvd-build-") as tmp:
        src, temp = Path(tmp) / "src", Path(tmp) / "temp"
        copy_sources(src)
        build = [sys.executable, "setup.py", "build_ext", "--build-temp", str(temp),
                 "--build-lib", str(Path(tmp) / "lib")]
        whole = timed(build, cwd=src, env=env)
        ninja_file = next(temp.rglob("build.ninja"))
        objects = sorted(line.split()[1].rstrip(":") for line in ninja_file.read_text().splitlines()
                         if line.startswith("build ") and line.split()[2] in ("compile", "cuda_compile"))
        rows = []
        for obj in objects:
            cmd = subprocess.run([ninja, "-C", str(ninja_file.parent), "-t", "commands", obj], check=True,
                                 capture_output=True, text=True).stdout.strip().splitlines()[-1]
            seconds = statistics.median(timed(cmd, shell=True, cwd=ninja_file.parent) for _ in range(args.reps))
            name = os.path.relpath(obj, temp).removesuffix(".o")
            rows.append((name, seconds))
            print(f"  {name:32s} {seconds:6.1f} s", flush=True)
    total = sum(s for _, s in rows)
    lines = ["# The C++ build of mcvd._C, on the CPU", "", "    python benchmarks/bench_build.py --md FILE", "",
             f"The whole build ({env['MAX_JOBS']} jobs): {whole:.1f} s. Each file alone (median of {args.reps}), "
             f"{total:.1f} s in all, so {total / int(env['MAX_JOBS']):.1f} s on {env['MAX_JOBS']} cores at best:",
             "", "| file | seconds alone |", "|---|---:|"]
    lines += [f"| {name} | {s:.1f} |" for name, s in sorted(rows, key=lambda r: -r[1])]
    lines += ["", f"{environment('cpu')}, {compiler()}, setup.py's flags"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        Path(args.md).write_text(text)
    return 0


def compiler() -> str:
    try:
        return subprocess.run(["c++", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "c++ unknown"


if __name__ == "__main__":
    sys.exit(main())
