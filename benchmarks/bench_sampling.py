"""Latency of one predicted block (k frames) of the SMMNIST-size MCVD model.

    python benchmarks/bench_sampling.py --device cpu --csv benchmarks/results/cpu_sampling.csv
    python benchmarks/bench_sampling.py --device cuda --csv benchmarks/results/h100_sampling.csv --md /tmp/s.md

Workloads: 100 DDIM steps (the paper's fast setting) and 10 DPM-Solver++(2M)
steps (low latency). Providers, all measured in the same run:
"reference" (every op through its pure-PyTorch reference, the baseline),
"fused" (the auto backend: C++ on the CPU, CUDA/Triton on a GPU) and
"fused+graph" (fused, the denoising loop replayed as a CUDA graph; GPU only).
Each timed call is StreamingPredictor.predict_next(): build the conditioning,
draw x_T, run every step.

On a CPU a full block takes minutes, so only --cpu-steps steps are timed and
the times are scaled by steps / timed steps (every step is one network call
and one reverse_step, so the cost per step is constant); such rows say so.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from harness import Row, environment, measure, write_outputs  # noqa: E402

import mcvd  # noqa: E402

WORKLOADS = [("ddim", 100), ("dpm++", 10)]


@contextlib.contextmanager
def backend_env(name: str | None):
    """MCVD_BACKEND for the duration (None: auto)."""
    before = os.environ.pop("MCVD_BACKEND", None)
    if name is not None:
        os.environ["MCVD_BACKEND"] = name
    try:
        yield
    finally:
        os.environ.pop("MCVD_BACKEND", None)
        if before is not None:
            os.environ["MCVD_BACKEND"] = before


def providers(device: str) -> list[tuple[str, str | None, bool]]:
    """(name, MCVD_BACKEND value, cuda_graph)."""
    out = [("reference", "reference", False), ("fused", None, False)]
    if device.startswith("cuda"):
        out.append(("fused+graph", None, True))
    return out


def bench_block(model, method, steps, timed_steps, provider, device, args) -> Row:
    name, backend, graph = provider
    cfg = model.config
    past = torch.rand(args.batch, cfg.num_frames_cond, cfg.channels, cfg.image_size, cfg.image_size,
                      device=device) * 2 - 1
    stream = mcvd.StreamingPredictor(model, mcvd.SamplerConfig(method=method, steps=timed_steps), cuda_graph=graph,
                                     generator=torch.Generator(device).manual_seed(0))
    stream.push(past)
    with backend_env(backend):
        med, p20, p80, _ = measure(stream.predict_next, device=device, warmup=args.warmup, reps=args.reps,
                                   max_time_s=args.max_time)
    scale = steps / timed_steps
    extra = f"{med / timed_steps:.2f} ms/step"
    if timed_steps != steps:
        extra += f"; timed {timed_steps} of {steps} steps, scaled x{scale:g}"
    shape = f"B{args.batch}xk{cfg.num_frames}x{cfg.channels}x{cfg.image_size}x{cfg.image_size}"
    return Row("sample_block", name, f"{method}x{steps}", shape, torch.device(device).type,
               med * scale, p20 * scale, p80 * scale, extra)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default="smmnist", help="mcvd.ModelConfig preset (default: smmnist)")
    ap.add_argument("--batch", type=int, default=1, help="videos per block (default 1: streaming latency)")
    ap.add_argument("--cpu-steps", type=int, default=3, help="steps timed per block on a CPU (then scaled)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--max-time", type=float, default=60.0, help="seconds per row at most (>= 3 samples)")
    ap.add_argument("--csv", help="append rows to this CSV")
    ap.add_argument("--md", help="write a Markdown table here")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.cpu_steps < 1:
        ap.error("--batch and --cpu-steps must be >= 1")
    if not hasattr(mcvd, "MCVD"):
        print("skipped: mcvd.MCVD (the network) is not in this build yet")
        return 0
    device = args.device
    torch.manual_seed(0)
    model = mcvd.MCVD(mcvd.ModelConfig.preset(args.preset)).to(device).eval()
    print(environment(device))
    print(f"model: preset {args.preset!r}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    rows = []
    for method, steps in WORKLOADS:
        timed = steps if device.startswith("cuda") else min(steps, args.cpu_steps)
        for provider in providers(device):
            try:
                row = bench_block(model, method, steps, timed, provider, device, args)
            except RuntimeError as e:  # a backend missing from this build: say so, keep the other rows
                reason = str(e).splitlines()[0].split(". ")[0]
                print(f"{method}x{steps} {provider[0]}: not measured: {reason}")
                continue
            rows.append(row)
            print(f"{row.mode:10s} {row.provider:12s} {row.shape}: median {row.median_ms:10.2f} ms  "
                  f"p20-p80 {row.p20_ms:.2f}-{row.p80_ms:.2f} ms  ({row.extra})")
    write_outputs(rows, device, args.csv, args.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
