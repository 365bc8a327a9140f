"""One training step, eager against torch.compile, with and without channels_last.

    python benchmarks/bench_train_step.py --size cpu --threads 1 2 --md benchmarks/results/cpu_train_step.md
    python benchmarks/bench_train_step.py --size smmnist --batch 8 --threads 1 --reps 10

Sizes: "cpu", the demo's cpu size (mcvd.cli.demo_config.SIZES["cpu"]: 32 x 32,
ngf 16, batch 16), and "smmnist", ModelConfig.preset("smmnist") (batch 8 by
default). A step is the trainer's (mcvd.train.trainer): the masked epsilon
loss (mcvd_loss, q_sample included), backward, gradient clipping at 1, Adam,
EMA update. Providers, each on its own copy of the same initial weights and
the same batch:

    eager            the network as it is
    compile          model.compile() (inductor, dynamic=False): what training.compile does
    compile_loss     torch.compile of mcvd_loss with the network inlined (flip, q_sample and the
                     squared error fused into the graph)
    <p>+cl           the same with the network's weights in channels_last (its activations follow)

The first step of a compiled provider traces and compiles the forward and the
backward: it is reported as the compile time (the step's time minus a median
step), with inductor's caches in a fresh folder (cold) unless --warm-cache.
Steps are then timed round-robin (one step of each provider per round), so
that load that comes and goes on a shared machine lands on each alike.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from harness import Row, environment, measure_interleaved, write_csv  # noqa: E402

import mcvd  # noqa: E402
from mcvd.diffusion import Schedule  # noqa: E402
from mcvd.train import draw_step_randomness, mcvd_loss  # noqa: E402
from steps import optimisation_step  # noqa: E402

PROVIDERS = ("eager", "compile", "compile_loss", "eager+cl", "compile+cl", "compile_loss+cl")


def size_config(size: str) -> tuple[mcvd.ModelConfig, int]:
    """(ModelConfig, default batch) of a --size."""
    if size == "cpu":
        from mcvd.cli.demo_config import SIZES

        demo = SIZES["cpu"]
        return mcvd.ModelConfig(**demo.model), demo.batch_size
    return mcvd.ModelConfig.preset(size), 8


def make_step(provider: str, cfg: mcvd.ModelConfig, batch: int):
    """The step callable of `provider` (fresh network with the seed-0 weights, its optimizer and EMA)."""
    kind, _, layout = provider.partition("+")
    torch.manual_seed(0)
    model = mcvd.MCVD(cfg).train()
    if layout == "cl":
        model = model.to(memory_format=torch.channels_last)
    frames = cfg.num_frames_cond + cfg.num_frames + cfg.num_frames_future
    gen = torch.Generator().manual_seed(0)
    clips = torch.rand(batch, frames, cfg.channels, cfg.image_size, cfg.image_size, generator=gen) * 2 - 1
    rnd = draw_step_randomness(cfg, batch, prob_mask_cond=0.5, prob_mask_future=0.0, prob_mask_sync=False,
                               random_flip=True, generator=gen, device=torch.device("cpu"))
    schedule = Schedule.linear(cfg.num_timesteps)
    loss_fn = mcvd_loss
    if kind == "compile":
        model.compile(dynamic=False)
    elif kind == "compile_loss":
        loss_fn = torch.compile(mcvd_loss, dynamic=False)
    train_step = optimisation_step(model, clips, rnd, schedule, loss_fn=loss_fn)  # the trainer's Adam, EMA
    losses = []

    def step():
        losses.append(train_step().item())
    return step, losses


def bench(cfg, batch: int, threads: int, providers: list[str], args) -> list[Row]:
    torch.set_num_threads(threads)
    steps, first_ms, losses = {}, {}, {}
    for p in providers:
        steps[p], losses[p] = make_step(p, cfg, batch)
        t0 = time.perf_counter()
        steps[p]()  # a compiled provider compiles here
        first_ms[p] = (time.perf_counter() - t0) * 1e3
        print(f"  {p}: first step {first_ms[p] / 1e3:.1f} s", flush=True)
    res = measure_interleaved(steps, device="cpu", warmup=args.warmup, reps=args.reps, max_time_s=args.max_time)
    shape = f"B{batch}x(p{cfg.num_frames_cond}+k{cfg.num_frames})x{cfg.channels}x{cfg.image_size}"
    base = res["eager"][0] if "eager" in res else None
    rows = []
    for p, (med, p20, p80, samples) in res.items():
        compile_s = (first_ms[p] - med) / 1e3
        extra = (f"{threads} thr; {1e3 / med:.2f} steps/s; {len(samples)} steps; "
                 + (f"compile {compile_s:.1f} s; " if p.startswith("compile") else "")
                 + (f"{base / med:.2f}x eager; " if base else "")
                 + f"loss after {len(losses[p])} steps {losses[p][-1]:.6g}")
        rows.append(Row("train_step", p, f"{threads}thr", shape, "cpu", med, p20, p80, extra, samples))
        print(f"  {p:16s} {threads} thr: median {med:8.1f} ms  p20-p80 {p20:.1f}-{p80:.1f}  ({extra})", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="cpu", help="'cpu' (the demo's cpu size) or a ModelConfig preset name")
    ap.add_argument("--batch", type=int, help="default: the demo's batch for 'cpu', 8 for a preset")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--providers", nargs="+", default=list(PROVIDERS), choices=PROVIDERS)
    ap.add_argument("--conditioning", choices=["concat", "spatin"], help="default: the size's")
    ap.add_argument("--warmup", type=int, default=2, help="steps after the first, untimed")
    ap.add_argument("--reps", type=int, default=20, help="timed steps per provider (round-robin)")
    ap.add_argument("--max-time", type=float, default=600.0, help="seconds of timed rounds at most (>= 3 rounds)")
    ap.add_argument("--warm-cache", action="store_true", help="keep inductor's cache folder (compile time warm)")
    ap.add_argument("--csv", help="append rows to this CSV")
    ap.add_argument("--md", help="write a Markdown table here")
    args = ap.parse_args(argv)
    if not args.warm_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")
    cfg, batch = size_config(args.size)
    if args.conditioning:
        cfg = dataclasses.replace(cfg, conditioning=args.conditioning)
    batch = args.batch or batch
    print(environment("cpu"))
    print(f"size {args.size!r}: {sum(p.numel() for p in mcvd.MCVD(cfg).parameters()) / 1e6:.2f}M parameters, "
          f"{cfg.conditioning}, batch {batch}")
    rows = []
    for threads in args.threads:
        rows += bench(cfg, batch, threads, args.providers, args)
    if args.csv:
        write_csv(rows, args.csv)
    if args.md:
        with open(args.md, "w") as f:
            f.write(f"{environment('cpu')}\n\n| provider | threads | shape | median ms | p20-p80 ms | notes |\n"
                    "|---|---|---|---:|---:|---|\n")
            for r in rows:
                f.write(f"| {r.provider} | {r.mode} | {r.shape} | {r.median_ms:.1f} | {r.p20_ms:.1f}-{r.p80_ms:.1f} "
                        f"| {r.extra} |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
