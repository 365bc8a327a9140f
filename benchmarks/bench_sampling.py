"""Latency of sampling with the SMMNIST-size MCVD model: one step, one predicted block (k frames).

    python benchmarks/bench_sampling.py --device cpu --csv benchmarks/results/cpu_sampling.csv
    python benchmarks/bench_sampling.py --device cpu --conditioning spatin --threads 1 --rows step
    python benchmarks/bench_sampling.py --device cuda --csv benchmarks/results/h100_sampling.csv --md /tmp/s.md

Providers, all measured in the same run on the same weights:
"reference" (every op through its pure-PyTorch reference, the network
recomputing everything at every step: the reference code's way, the
baseline), "fused" (the auto backend: C++ on the CPU, CUDA/Triton on a GPU;
still no cache), "fused+cache" (fused, and what depends only on the condition
frames computed once per block, `MCVD.condition`: what mcvd.predict and the
streaming predictor do) and "fused+cache+graph" (the denoising loop replayed
as a CUDA graph; GPU only); on a GPU also "optimized+cache[+graph]" and
"optimized-bf16+cache[+graph]": `mcvd.optimize(model)` (float32, TF32 tensor
cores) and `mcvd.optimize(model, dtype=torch.bfloat16)`, compiled at their
first call (outside the timing).

Rows:
- step: one sampling step's network call as the sampler makes it (batch
  --batch, past given, future masked), the providers timed round-robin so
  that a shared machine's load falls on all alike; plus "condition", the
  cache's cost, paid once per block.
- block: StreamingPredictor.predict_next() for 100 DDIM steps (the paper's
  fast setting) and 10 DPM-Solver++(2M) steps (low latency): build the
  conditioning, draw x_T, run every step. On a CPU a full block takes
  minutes, so only --cpu-steps steps are timed and the time is scaled to the
  block's steps: condition + (timed - condition) * steps / timed steps (the
  condition term only with the cache, timed in the same rounds); such rows
  say so. Providers and the condition are timed round-robin.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from harness import Row, environment, measure_interleaved, write_outputs  # noqa: E402

import mcvd  # noqa: E402

WORKLOADS = [("ddim", 100), ("dpm++", 10)]


@dataclasses.dataclass(frozen=True)
class Provider:
    name: str
    backend: str | None  # MCVD_BACKEND for its calls (None: auto)
    cache: bool  # condition once per block (MCVD.condition)
    graph: bool = False  # replay the denoising loop as a CUDA graph
    optimize: torch.dtype | None = None  # run mcvd.optimize(model, dtype=optimize) instead of the model

    def network(self, model):
        return model if self.optimize is None else mcvd.optimize(model, dtype=self.optimize)


class Uncached(torch.nn.Module):
    """The network without its `condition` method: the sampler then passes the
    condition frames at every step, and the network recomputes what depends on them."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, x, t, cond=None, cond_mask=None):
        return self.model(x, t, cond, cond_mask)


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


def providers(device: str) -> list[Provider]:
    out = [Provider("reference", "reference", False), Provider("fused", None, False),
           Provider("fused+cache", None, True)]
    if device.startswith("cuda"):
        out += [Provider("fused+cache+graph", None, True, graph=True),
                Provider("optimized+cache", None, True, optimize=torch.float32),
                Provider("optimized+cache+graph", None, True, graph=True, optimize=torch.float32),
                Provider("optimized-bf16+cache", None, True, optimize=torch.bfloat16),
                Provider("optimized-bf16+cache+graph", None, True, graph=True, optimize=torch.bfloat16)]
    return out


def conditioning_inputs(model, batch: int, device: str):
    """Past frames given, future masked (as the streaming predictor conditions)."""
    cfg = model.config
    S, C = cfg.image_size, cfg.channels
    cond = torch.rand(batch, cfg.num_cond_frames, C, S, S, device=device) * 2 - 1
    mask = torch.zeros(batch, 2, dtype=torch.bool, device=device)
    mask[:, 0] = True
    return cond, mask


def shape_of(model, batch: int) -> str:
    cfg = model.config
    return f"B{batch}xk{cfg.num_frames}x{cfg.channels}x{cfg.image_size}x{cfg.image_size}/{cfg.conditioning}"


def bench_steps(model, provs: list[Provider], device: str, args) -> list[Row]:
    """One sampling step's network call per provider, and the cache's build, interleaved."""
    cfg = model.config
    cond, mask = conditioning_inputs(model, args.batch, device)
    x = torch.randn(args.batch, cfg.num_frames, cfg.channels, cfg.image_size, cfg.image_size, device=device)
    t = torch.full((args.batch,), cfg.num_timesteps // 2, device=device)

    def call(p: Provider):
        net = p.network(model)
        cache = net.condition(cond, mask) if p.cache else None

        def run():
            with backend_env(p.backend), torch.no_grad():
                return net(x, t, cache=cache) if p.cache else net(x, t, cond, cond_mask=mask)
        return run

    def condition():
        with torch.no_grad():
            model.condition(cond, mask)

    fns = {p.name: call(p) for p in provs if not p.graph}
    fns["condition"] = condition
    results = measure_interleaved(fns, device=device, warmup=args.warmup, reps=args.reps, max_time_s=args.max_time)
    base = results["fused"][0]
    rows = []
    for name, (med, p20, p80, _) in results.items():
        if name == "condition":
            extra = f"once per block; {med / results['fused+cache'][0]:.2f} cached steps"
            rows.append(Row("condition", "fused+cache", "per_block", shape_of(model, args.batch),
                            torch.device(device).type, med, p20, p80, extra))
        else:
            extra = f"{base / med:.2f}x vs fused without the cache; interleaved"
            rows.append(Row("sampling_step", name, "eps_call", shape_of(model, args.batch),
                            torch.device(device).type, med, p20, p80, extra))
    return rows


def bench_blocks(model, method, steps, timed_steps, provs: list[Provider], device, args) -> list[Row]:
    """One block per provider, interleaved with the cache's build (on a CPU
    only timed_steps of the block's steps, then scaled)."""
    cond, mask = conditioning_inputs(model, args.batch, device)
    past = cond[:, :model.config.num_frames_cond]

    def block(p: Provider):
        net = p.network(model)
        stream = mcvd.StreamingPredictor(net if p.cache else Uncached(net),
                                         mcvd.SamplerConfig(method=method, steps=timed_steps), cuda_graph=p.graph,
                                         generator=torch.Generator(device).manual_seed(0))
        stream.push(past)

        def run():
            with backend_env(p.backend):
                return stream.predict_next()
        return run

    def condition():
        with torch.no_grad():
            model.condition(cond, mask)

    fns = {}
    for p in provs:
        fn = block(p)
        try:
            fn()  # a first call: captures the graph, and finds a backend missing from this build
        except RuntimeError as e:
            print(f"{method}x{steps} {p.name}: not measured: {str(e).splitlines()[0].split('. ')[0]}")
            continue
        fns[p.name] = fn
    fns["condition"] = condition
    results = measure_interleaved(fns, device=device, warmup=max(args.warmup - 1, 0), reps=args.reps,
                                  max_time_s=args.max_time)
    condition_ms = results.pop("condition")[0]
    scale = steps / timed_steps
    rows = []
    for p in provs:
        if p.name not in results:
            continue
        med, p20, p80, _ = results[p.name]
        fixed = condition_ms if p.cache else 0.0

        def scaled(v, fixed=fixed):
            return fixed + (v - fixed) * scale
        extra = f"{(med - fixed) / timed_steps:.2f} ms/step"
        if p.cache:
            extra += f" + condition {fixed:.1f} ms/block"
        extra += "; interleaved"
        if timed_steps != steps:
            extra += f"; timed {timed_steps} of {steps} steps, scaled"
        rows.append(Row("sample_block", p.name, f"{method}x{steps}", shape_of(model, args.batch),
                        torch.device(device).type, scaled(med), scaled(p20), scaled(p80), extra))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default="smmnist", help="mcvd.ModelConfig preset (default: smmnist)")
    ap.add_argument("--conditioning", choices=("preset", "concat", "spatin"), default="preset",
                    help="the preset's conditioning (concat), or override it")
    ap.add_argument("--batch", type=int, default=1, help="videos per block (default 1: streaming latency)")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--rows", choices=("all", "step", "block"), default="all")
    ap.add_argument("--cpu-steps", type=int, default=3, help="steps timed per block on a CPU (then scaled)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--max-time", type=float, default=60.0, help="seconds per row at most (>= 3 samples)")
    ap.add_argument("--csv", help="append rows to this CSV")
    ap.add_argument("--md", help="write a Markdown table here")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.cpu_steps < 1 or (args.threads is not None and args.threads < 1):
        ap.error("--batch, --cpu-steps and --threads must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device
    torch.manual_seed(0)
    cfg = mcvd.ModelConfig.preset(args.preset)
    if args.conditioning != "preset":
        cfg = dataclasses.replace(cfg, conditioning=args.conditioning)
    model = mcvd.MCVD(cfg).to(device).eval()
    print(environment(device))
    print(f"model: preset {args.preset!r}, {cfg.conditioning} conditioning, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    provs = providers(device)
    rows = []

    def show(row):
        rows.append(row)
        print(f"{row.op:14s} {row.mode:10s} {row.provider:18s} {row.shape}: median {row.median_ms:10.2f} ms  "
              f"p20-p80 {row.p20_ms:.2f}-{row.p80_ms:.2f} ms  ({row.extra})", flush=True)

    if args.rows in ("all", "step"):
        for row in bench_steps(model, provs, device, args):
            show(row)
    if args.rows in ("all", "block"):
        for method, steps in WORKLOADS:
            timed = steps if device.startswith("cuda") else min(steps, args.cpu_steps)
            for row in bench_blocks(model, method, steps, timed, provs, device, args):
                show(row)
    write_outputs(rows, device, args.csv, args.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
