"""End to end: forward pass and training step of the SMMNIST-size MCVD network.

    python benchmarks/bench_e2e.py --device cpu --threads 1 --csv benchmarks/results/cpu_e2e.csv --md /tmp/e2e.md
    python benchmarks/bench_e2e.py --device cuda --batch 1 8 32

Model: ModelConfig.preset("smmnist") (64 x 64, 5 past + 5 current frames,
ngf 64, ch_mult 1-2-3-4, 2 res blocks, attention at 8, 16, 32), with concat
and with SPATIN conditioning. Providers, measured in the same run on the same
weights and inputs: "reference" (every spatin_norm and attention through its
pure-PyTorch reference, the baseline) and "fused" (the auto backend: C++ on
the CPU, CUDA/Triton on a GPU).

Modes: "forward" (eval, no grad) and "train_step" (one step of the trainer:
the masked epsilon loss, backward, gradient clipping, Adam, EMA update).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from harness import Row, environment, measure, write_outputs  # noqa: E402

import mcvd  # noqa: E402
from mcvd.diffusion import Schedule  # noqa: E402
from mcvd.train import EMA, draw_step_randomness, mcvd_loss  # noqa: E402

PROVIDERS = (("reference", "reference"), ("fused", None))  # (name, backend for MCVD.set_backend)
TARGETS = {"forward": 1.5, "train_step": 1.3}  # speed-up of fused over reference asked for on the CPU


def make_forward(model, clips, rnd, schedule):
    x0 = clips[:, model.config.num_frames_cond:]
    x_t = schedule.q_sample(x0, rnd.t, rnd.noise)
    cond = clips[:, :model.config.num_frames_cond]

    def forward():
        with torch.no_grad():
            model(x_t, rnd.t, cond)
    return forward


def make_train_step(model, clips, rnd, schedule):
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    ema = EMA(model, 0.999)

    def train_step():
        opt.zero_grad(set_to_none=True)
        mcvd_loss(model, clips, rnd, schedule).mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
    return train_step


def setup(cfg, batch, mode, backend, device):
    """The timed callable: a fresh model (same seed, so same weights for every provider) and inputs."""
    torch.manual_seed(0)
    model = mcvd.MCVD(cfg).to(device).set_backend(backend)
    model.train(mode == "train_step")
    frames = cfg.num_frames_cond + cfg.num_frames
    clips = torch.rand(batch, frames, cfg.channels, cfg.image_size, cfg.image_size, device=device) * 2 - 1
    rnd = draw_step_randomness(cfg, batch, prob_mask_cond=0.0, prob_mask_future=0.0, prob_mask_sync=False,
                               random_flip=False, generator=torch.Generator(device).manual_seed(0), device=device)
    schedule = Schedule.linear(cfg.num_timesteps)
    return (make_forward if mode == "forward" else make_train_step)(model, clips, rnd, schedule)


def bench(cfg, batch, mode, device, args) -> list[Row]:
    """One row per provider. Calls alternate between providers, so that on a shared machine both see
    the same load; stops after --reps rounds or --max-time seconds (at least 3 rounds)."""
    fns = {}
    for name, backend in PROVIDERS:
        try:
            fns[name] = setup(cfg, batch, mode, backend, device)
            measure(fns[name], device=device, warmup=args.warmup, reps=1)
        except (RuntimeError, NotImplementedError) as e:  # a backend missing from this build
            print(f"{cfg.conditioning} {mode} B{batch} {name}: not measured: {str(e).splitlines()[0][:160]}")
            fns.pop(name)
    samples = {name: [] for name in fns}
    start = time.perf_counter()
    for r in range(args.reps):
        for name, fn in fns.items():
            samples[name].append(measure(fn, device=device, warmup=0, reps=1)[0])
        if r >= 2 and time.perf_counter() - start > args.max_time:
            break
    shape = f"B{batch}x(p{cfg.num_frames_cond}+k{cfg.num_frames})x{cfg.channels}x{cfg.image_size}x{cfg.image_size}"
    rows = []
    for name, xs in samples.items():
        q20, _, _, q80 = statistics.quantiles(xs, n=5, method="inclusive")[:4] if len(xs) > 1 else (xs[0],) * 4
        rows.append(Row(f"mcvd_{cfg.conditioning}", name, mode, shape, torch.device(device).type,
                        statistics.median(xs), q20, q80, f"{len(xs)} samples, interleaved"))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default="smmnist", help="mcvd.ModelConfig preset (default: smmnist)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--conditioning", nargs="+", default=["concat", "spatin"], choices=["concat", "spatin"])
    ap.add_argument("--modes", nargs="+", default=["forward", "train_step"], choices=["forward", "train_step"])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--max-time", type=float, default=120.0,
                    help="seconds per shape and mode at most, all providers together (>= 3 rounds)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's); on a shared machine 1 "
                    "avoids the stalls of threads that wait for each other")
    ap.add_argument("--csv", help="append rows to this CSV")
    ap.add_argument("--md", help="write a Markdown table here")
    args = ap.parse_args(argv)
    if min(args.batch) < 1:
        ap.error("--batch: expected sizes >= 1")
    if args.threads is not None:
        if args.threads < 1:
            ap.error("--threads: expected >= 1")
        torch.set_num_threads(args.threads)
    if os.environ.pop("MCVD_BACKEND", None) is not None:
        print("note: MCVD_BACKEND ignored; the providers set the backend themselves")
    device = args.device
    base = mcvd.ModelConfig.preset(args.preset)
    print(environment(device))
    print(f"model: preset {args.preset!r}, {sum(p.numel() for p in mcvd.MCVD(base).parameters()) / 1e6:.2f}M "
          f"parameters (concat)")
    rows = []
    for conditioning in args.conditioning:
        cfg = dataclasses.replace(base, conditioning=conditioning)
        for mode in args.modes:
            for batch in args.batch:
                for row in bench(cfg, batch, mode, device, args):
                    rows.append(row)
                    print(f"{row.op:12s} {row.mode:10s} {row.provider:9s} {row.shape}: median {row.median_ms:9.1f} ms"
                          f"  p20-p80 {row.p20_ms:.1f}-{row.p80_ms:.1f} ms  ({row.extra})", flush=True)
    base_ms = {(r.op, r.mode, r.shape): r.median_ms for r in rows if r.provider == "reference"}
    for r in rows:
        if r.provider == "fused" and (r.op, r.mode, r.shape) in base_ms:
            speedup = base_ms[r.op, r.mode, r.shape] / r.median_ms
            target = f" (CPU target {TARGETS[r.mode]}x)" if device == "cpu" else ""
            print(f"speed-up {r.op} {r.mode} {r.shape}: {speedup:.2f}x{target}")
    write_outputs(rows, device, args.csv, args.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
