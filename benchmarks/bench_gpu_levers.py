"""What each GPU lever gives to the SMMNIST preset (concat, 27.9M parameters), end to end.

    python benchmarks/bench_gpu_levers.py --part sampling --md OUT.md   # on a CUDA machine
    python benchmarks/bench_gpu_levers.py --part training --md OUT.md
    python benchmarks/bench_gpu_levers.py --part training --device cpu --small   # checks that it runs

sampling: one block of 100 DDIM steps at batch 1, the condition cache on
and the loop replayed as one CUDA graph (what `mcvd.predict` and
`mcvd stream` run on a GPU), for the eager network and for `mcvd.optimize`
in float32 (TF32) and bfloat16 with the ops on each backend inside the
compiled network: the fused CUDA kernels (opaque to inductor) or their
PyTorch reference (which inductor compiles and fuses with its
neighbours). Each row also gives the kernels one step launches and eps's
relative error against the network in full float32.

training: one optimisation step at batch 8 (the trainer's loss, fused Adam,
clipping and EMA): the eager float32 step on the reference ops (the
baseline of the issue's target), the eager fused step, and bfloat16
autocast compiled without and with CUDA graphs (`training.compile`), with
the fused ops and with the reference ops. Last, which calls of an eager
forward + backward make the host wait on the GPU.

Each part compiles all its variants first, then times them interleaved
(medians); --lock FILE takes an exclusive lock on FILE around the timing,
so that parts that compile side by side time one at a time.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import fcntl
import functools
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from harness import environment, measure_interleaved  # noqa: E402

import mcvd  # noqa: E402
from mcvd.diffusion import Schedule  # noqa: E402
from mcvd.nn.optimize import OptimizedMCVD, _tf32  # noqa: E402
from mcvd.train import draw_step_randomness, mcvd_loss  # noqa: E402
from mcvd.train.trainer import compile_for_training  # noqa: E402
from steps import gpu_kernels, optimisation_step, synchronising_calls  # noqa: E402


def preset(small: bool) -> mcvd.ModelConfig:
    cfg = mcvd.ModelConfig.preset("smmnist")
    if small:
        cfg = dataclasses.replace(cfg, image_size=16, ngf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                                  n_head_channels=16)
    return cfg


@contextlib.contextmanager
def locked(path: str | None):
    if path is None:
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Autotuned(OptimizedMCVD):
    """mcvd.optimize's module compiled in another inductor mode."""

    def __init__(self, mode: str, *args):
        self.__dict__["_mode"] = mode
        super().__init__(*args)

    def _compile(self):
        network = self.network

        def run(x_t, t, cond, cond_mask, cache):
            return network(x_t, t, cond, cond_mask, cache=cache)
        return torch.compile(run, mode=self._mode)


def barrier(args) -> None:
    """With --barrier DIR --parties N: mark this process ready, then wait (at most --barrier-timeout s) until N
    are, so that no variant is timed while another still compiles on the host's CPUs."""
    if not args.barrier:
        return
    os.makedirs(args.barrier, exist_ok=True)
    open(os.path.join(args.barrier, str(os.getpid())), "w").close()
    end = time.monotonic() + args.barrier_timeout
    while len(os.listdir(args.barrier)) < args.parties and time.monotonic() < end:
        time.sleep(0.5)


def sampling(args) -> list[str]:
    dev, cfg = args.device, preset(args.small)
    torch.manual_seed(0)
    model = mcvd.MCVD(cfg)
    with torch.no_grad():  # weights off their initialisation (the last layer of each branch starts near zero)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model = model.to(dev).eval()
    S, C = cfg.image_size, cfg.channels
    g = torch.Generator().manual_seed(1)
    cond = (torch.rand(1, cfg.num_cond_frames, C, S, S, generator=g) * 2 - 1).to(dev)
    mask = torch.tensor([[True, False]], device=dev)
    x = torch.randn(1, cfg.num_frames, C, S, S, generator=g).to(dev)
    t = torch.full((1,), cfg.num_timesteps // 2, device=dev)
    with torch.no_grad():
        flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        exact = model(x, t, cond, cond_mask=mask)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags

    def optimized(dtype, ops, mode=None):
        net = copy.deepcopy(model).to(dtype=dtype).eval().set_backend(ops)
        cls = OptimizedMCVD if mode is None else functools.partial(Autotuned, mode)
        return cls(model, net, torch.device(dev, 0) if dev == "cuda" else torch.device(dev), dtype)

    variants = {"eager": ("eager (fused ops)", lambda: model)}
    for dtype in (torch.float32, torch.bfloat16):
        name = "float32" if dtype == torch.float32 else "bfloat16"
        for ops in ("fused", "reference"):
            variants[f"opt-{name[:4]}-{ops[:3]}"] = (f"optimized {name}, {ops} ops", functools.partial(
                optimized, dtype, None if ops == "fused" else "reference"))
    # Not run by default (minutes of compiling): inductor's template search for the convolutions and
    # matmuls, whose epilogues can take the bias and the residual add.
    variants["opt-bflo-ref-autotune"] = ("optimized bfloat16, reference ops, max-autotune", functools.partial(
        optimized, torch.bfloat16, "reference", "max-autotune-no-cudagraphs"))
    steps = args.steps
    fns, notes = {}, {}
    for key, (name, make) in variants.items():
        if (args.variant and key not in args.variant) or (not args.variant and key.endswith("autotune")):
            continue
        net = make()
        t0 = time.perf_counter()
        with torch.no_grad(), (_tf32() if dev == "cuda" else contextlib.nullcontext()):
            err = ((net(x, t, cache=net.condition(cond, mask)).float() - exact).norm() / exact.norm()).item()
        stream = mcvd.StreamingPredictor(net, mcvd.SamplerConfig(method="ddim", steps=steps),
                                         cuda_graph=dev == "cuda", generator=torch.Generator(dev).manual_seed(0))
        stream.push(cond[:, :cfg.num_frames_cond])
        stream.predict_next()  # compiles (optimized) and captures the graph
        print(f"  {name}: ready in {time.perf_counter() - t0:.0f} s, eps relative error {err:.1e}", flush=True)
        fns[name] = stream.predict_next
        notes[name] = err
    barrier(args)
    with locked(args.lock):
        kernels = {name: gpu_kernels(fn, dev)[0] / steps for name, fn in fns.items()}
        res = measure_interleaved(fns, device=dev, warmup=2, reps=args.reps, max_time_s=60)
    return [dict(part="sampling", name=name, median=med, p20=p20, p80=p80, per_step=med / steps,
                 kernels_per_step=kernels[name], eps_rel_error=notes[name], steps=steps)
            for name, (med, p20, p80, _) in res.items()]


def training(args) -> list[str]:
    dev, cfg, B = args.device, preset(args.small), args.batch
    S = cfg.image_size
    clips = torch.rand(B, cfg.num_frames_cond + cfg.num_frames, cfg.channels, S, S,
                       generator=torch.Generator().manual_seed(0)).to(dev) * 2 - 1
    rnd = draw_step_randomness(cfg, B, prob_mask_cond=0.0, prob_mask_future=0.0, prob_mask_sync=False,
                               random_flip=False, generator=torch.Generator(dev).manual_seed(0), device=dev)
    sched = Schedule.linear(cfg.num_timesteps)
    variants = {  # key: name, ops backend, autocast dtype, compiled, CUDA graphs
        "eager-fp32-ref": ("eager float32, reference ops", "reference", None, False, False),
        "eager-fp32-fused": ("eager float32, fused ops", None, None, False, False),
        "eager-bf16-fused": ("eager bf16, fused ops", None, torch.bfloat16, False, False),
        "compiled-bf16-fused": ("compiled bf16, fused ops", None, torch.bfloat16, True, False),
        "graphs-bf16-fused": ("compiled bf16 + CUDA graphs, fused ops", None, torch.bfloat16, True, True),
        "graphs-bf16-ref": ("compiled bf16 + CUDA graphs, reference ops", "reference", torch.bfloat16, True, True),
    }
    fns = {}
    for key, (name, ops, amp_dtype, compiled, graphs) in variants.items():
        if (args.variant and key not in args.variant) or (dev != "cuda" and (graphs or amp_dtype)):
            continue
        torch.manual_seed(0)
        model = mcvd.MCVD(cfg).to(dev).set_backend(ops).train()
        if compiled:
            compile_for_training(model, cuda_graphs=graphs)
        step = optimisation_step(model, clips, rnd, sched, amp_dtype=amp_dtype, cuda_graphs=graphs)
        t0 = time.perf_counter()
        losses = [step().item() for _ in range(3)]  # compiles, then records the graphs
        print(f"  {name}: ready in {time.perf_counter() - t0:.0f} s, losses {losses}", flush=True)
        fns[name] = step
    barrier(args)
    with locked(args.lock):
        kernels = {name: gpu_kernels(fn, dev)[0] for name, fn in fns.items()}
        res = measure_interleaved(fns, device=dev, warmup=1, reps=args.reps, max_time_s=90)
    rows = [dict(part="training", name=name, median=med, p20=p20, p80=p80, kernels=kernels[name], batch=B)
            for name, (med, p20, p80, _) in res.items()]
    if dev == "cuda" and (not args.variant or "syncs" in args.variant):
        rows.append(dict(part="syncs", lines=sync_report(cfg, clips, rnd, sched)))
    return rows


def markdown(rows: list[dict]) -> list[str]:
    """The tables of rows from one or more runs (each variant may have run in its own process)."""
    lines = []
    samp = [r for r in rows if r["part"] == "sampling"]
    if samp:
        base = next((r["median"] for r in samp if r["name"].startswith("eager")), None)
        lines += [f"### Sampling: {samp[0]['steps']} DDIM steps, batch 1, condition cache, CUDA graph (on a GPU)", "",
                  "| network | block ms (median) | p20-p80 | per step | kernels per step | vs eager | "
                  "eps rel. error |", "|---|---:|---:|---:|---:|---:|---:|"]
        for r in samp:
            ratio = f"{base / r['median']:.2f}x" if base else "-"
            lines.append(f"| {r['name']} | {r['median']:.1f} | {r['p20']:.1f}-{r['p80']:.1f} | {r['per_step']:.2f} | "
                         f"{r['kernels_per_step']:.0f} | {ratio} | {r['eps_rel_error']:.1e} |")
        lines.append("")
    train = [r for r in rows if r["part"] == "training"]
    if train:
        base = next((r["median"] for r in train if r["name"] == "eager float32, reference ops"), None)
        lines += [f"### Training step, batch {train[0]['batch']}, concat (loss, backward, clipping, fused Adam, EMA)",
                  "", "| step | median ms | p20-p80 | kernels | vs eager float32 reference ops |",
                  "|---|---:|---:|---:|---:|"]
        for r in train:
            ratio = f"{base / r['median']:.2f}x" if base else "-"
            lines.append(f"| {r['name']} | {r['median']:.1f} | {r['p20']:.1f}-{r['p80']:.1f} | {r['kernels']} | "
                         f"{ratio} |")
        lines.append("")
    for r in rows:
        if r["part"] == "syncs":
            lines += [*r["lines"], ""]
    return lines


def sync_report(cfg, clips, rnd, sched) -> list[str]:
    """Each call of an eager float32 forward + backward that makes the host wait on the GPU."""
    torch.manual_seed(0)
    model = mcvd.MCVD(cfg).cuda().train()
    syncs = synchronising_calls(lambda: mcvd_loss(model, clips, rnd, sched).mean().backward())
    return [f"Synchronising calls in one eager float32 forward + backward: {len(syncs)}", *(f"- {s}" for s in syncs)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("sampling", "training"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="a small network (a check that the script runs)")
    ap.add_argument("--steps", type=int, default=100, help="DDIM steps of the sampling block")
    ap.add_argument("--batch", type=int, default=8, help="training batch")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--variant", nargs="+", help=(
        "only these variants (keys: eager, opt-{floa,bflo}-{fus,ref}, opt-bflo-ref-autotune (only when named); "
        "eager-fp32-ref, eager-fp32-fused, eager-bf16-fused, compiled-bf16-fused, graphs-bf16-{fused,ref}, syncs)"))
    ap.add_argument("--lock", help="a file to lock around the timing")
    ap.add_argument("--barrier", metavar="DIR", help="wait for --parties processes to be ready before timing")
    ap.add_argument("--parties", type=int, default=1)
    ap.add_argument("--barrier-timeout", type=float, default=300.0)
    ap.add_argument("--json", help="append the rows here, one JSON object a line")
    ap.add_argument("--md", help="write the table here")
    ap.add_argument("--collect", nargs="+", metavar="JSON", help="only print (and --md) the tables of these rows")
    args = ap.parse_args(argv)
    if args.collect:
        rows = [json.loads(line) for path in args.collect for line in open(path) if line.strip()]
        env = ""
    else:
        try:
            rows = sampling(args) if args.part == "sampling" else training(args)
        except BaseException:
            args.parties = 0
            barrier(args)  # one fewer to wait for
            raise
        env = environment(args.device)
        if args.json:
            with locked(args.json), open(args.json, "a") as fh:
                fh.writelines(json.dumps({**r, "env": env}) + "\n" for r in rows)
    env = env or next((r["env"] for r in rows if "env" in r), "")
    text = "\n".join([env, "", *markdown(rows)])
    print(text, flush=True)
    if args.md:
        with open(args.md, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
