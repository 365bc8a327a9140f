"""Benchmark the fused ops against the eager reference measured in the same run.

    python benchmarks/bench_ops.py --device cpu --csv benchmarks/results/cpu.csv --md /tmp/cpu.md
    python benchmarks/bench_ops.py --device cuda --dtype float32 bfloat16 --large ...

Providers: "reference" (eager `<op>_ref`, the baseline), every compiled mcvd
backend for the device, "compiled-ref" (torch.compile of the reference, CUDA
only), and "sdpa" for attention (PyTorch's scaled_dot_product_attention;
on CUDA with bf16/fp16 forced to its flash backend, else its own choice). Throughput is reported against the
physical limit: for the memory-bound ops, the fewest bytes that must move (each
input read once, each output written once) over the time, against a measured
device copy; for attention, FLOPs over time (forward 4 B H N^2 D, backward 2.5x).

On a GPU each time is the device time of a call with a cold L2 (harness.
measure_device: the host's Python, dispatch and launch cost is hidden behind a
spin kernel and reported apart, as "host us/call"). A call slower on the host
than on the GPU runs at the host's pace in an eager loop; inside a CUDA graph
(the sampler's) at the device time.
"""
from __future__ import annotations

import argparse
import sys
from functools import partial

import torch
import torch.nn.functional as F

sys.path.insert(0, __import__("os").path.dirname(__file__))
from harness import (  # noqa: E402
    Row,
    copy_bandwidth_gbs,
    environment,
    markdown_table,
    measure,
    measure_device,
    write_csv,
    write_outputs,
)

import mcvd  # noqa: E402
from mcvd.ops import (  # noqa: E402
    attention,
    attention_ref,
    dropout,
    dropout_ref,
    reverse_step,
    spatin_norm,
    spatin_norm_ref,
)

SPATIN_SHAPES = [(8, 128, 32, 32), (1, 64, 64, 64), (4, 256, 8, 8)]
ATTN_SHAPES = [(1, 2, 1024, 64), (8, 2, 1024, 64), (8, 4, 256, 64)]
STEP_SHAPES = [(8, 5, 64, 64)]
DROPOUT_SHAPES = [(8, 64, 64, 64), (8, 128, 32, 32)]  # the SMMNIST preset's first two levels at batch 8
LARGE = {"spatin_norm": [(64, 128, 32, 32)], "attention": [(64, 2, 1024, 64)], "reverse_step": [(64, 5, 64, 64)],
         "dropout": [(64, 64, 64, 64)]}


def shape_str(shape) -> str:
    return "x".join(map(str, shape))


def shape_arg(text: str) -> tuple[int, ...]:
    """--shape: positive sizes joined by "x"."""
    try:
        shape = tuple(int(n) for n in text.split("x"))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes joined by 'x' (e.g. 8x128x32x32), got {text!r}")
    return shape


def providers(op: str, device: str, dtype: torch.dtype, compile_ref: bool) -> list[str]:
    out = ["reference"]
    avail = mcvd.ops.available_backends(device)
    out += [b for b in ("cpu", "cuda", "triton") if b in avail]
    if device == "cuda" and compile_ref:
        out.append("compiled-ref")
    if op == "attention":
        out.append("sdpa")
    return out


def _timed(fn, device, args):
    """(median, p20, p80, host) ms: on a GPU the device time of a call
    (measure_device) and its host cost; on a CPU the wall time, host None."""
    if device == "cuda":
        med, p20, p80, _s, host = measure_device(fn, warmup=args.warmup, reps=args.reps, max_time_s=args.max_time)
        return med, p20, p80, host
    med, p20, p80, _s = measure(fn, device=device, warmup=args.warmup, reps=args.reps, max_time_s=args.max_time)
    return med, p20, p80, None


def bench_spatin(shape, provider, mode, device, dtype, args, spatial: bool):
    B, C, H, W = shape
    mk = partial(torch.randn, device=device, dtype=dtype)
    need = mode == "fwd+bwd"
    x = mk(shape).requires_grad_(need)
    kw = {}
    if spatial:
        kw = dict(gamma=(0.1 * mk(shape)).requires_grad_(need), beta=(0.1 * mk(shape)).requires_grad_(need),
                  scale=(0.1 * mk(B, C)).requires_grad_(need), shift=(0.1 * mk(B, C)).requires_grad_(need))
    if provider == "reference":
        f = partial(spatin_norm_ref, x, 32, silu=True, **kw)
    elif provider == "compiled-ref":
        cf = torch.compile(spatin_norm_ref)
        f = partial(cf, x, 32, silu=True, **kw)
    else:
        f = partial(spatin_norm, x, 32, silu=True, backend=provider, **kw)
    g = torch.randn_like(x)
    run = f if not need else (lambda: f().backward(g))
    med, p20, p80, host = _timed(run, device, args)
    elt = x.element_size()
    n = x.numel()
    # fewest bytes: x (+ gamma, beta) read, y written; backward also reads dy and writes dx (+ dgamma, dbeta)
    fwd_bytes = n * elt * (2 + (2 if spatial else 0))
    nbytes = fwd_bytes if not need else fwd_bytes + n * elt * (3 + (2 if spatial else 0))
    return med, p20, p80, host, nbytes / (med * 1e-3) / 1e9


def bench_attention(shape, provider, mode, device, dtype, args):
    need = mode == "fwd+bwd"
    q, k, v = (torch.randn(shape, device=device, dtype=dtype).requires_grad_(need) for _ in range(3))
    if provider == "reference":
        f = partial(attention_ref, q, k, v)
    elif provider == "compiled-ref":
        f = partial(torch.compile(attention_ref), q, k, v)
    elif provider == "sdpa" and device == "cuda" and dtype in (torch.float16, torch.bfloat16):
        # the flash backend itself (PyTorch may otherwise pick cuDNN's attention)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def f():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v)
    elif provider == "sdpa":
        f = partial(F.scaled_dot_product_attention, q, k, v)
    else:
        f = partial(attention, q, k, v, backend=provider)
    g = torch.randn_like(q)
    run = f if not need else (lambda: f().backward(g))
    med, p20, p80, host = _timed(run, device, args)
    B, Hh, N, D = shape
    flops = 4 * B * Hh * N * N * D * (3.5 if need else 1.0)
    return med, p20, p80, host, flops / (med * 1e-3) / 1e12


def bench_step(shape, provider, mode, device, dtype, args):
    x, e, z = (torch.randn(shape, device=device, dtype=dtype) for _ in range(3))
    B = shape[0]
    coefs = {k: torch.rand(B, device=device) + 0.5 for k in ("a", "b", "c_x0", "c_xt", "sigma")}
    if provider == "reference":
        # the eager composition a user would write
        def f():
            sh = (-1,) + (1,) * (x.dim() - 1)
            a, b, c0, c1, s = (coefs[k].view(sh).to(dtype) for k in ("a", "b", "c_x0", "c_xt", "sigma"))
            x0 = ((x - a * e) / b).clamp(-1, 1)
            return c0 * x0 + c1 * x + s * z, x0
    elif provider == "compiled-ref":
        def g(x, e, z, a, b, c0, c1, s):
            sh = (-1,) + (1,) * (x.dim() - 1)
            a, b, c0, c1, s = (t.view(sh).to(x.dtype) for t in (a, b, c0, c1, s))
            x0 = ((x - a * e) / b).clamp(-1, 1)
            return c0 * x0 + c1 * x + s * z, x0
        cg = torch.compile(g)
        f = partial(cg, x, e, z, *(coefs[k] for k in ("a", "b", "c_x0", "c_xt", "sigma")))
    else:
        f = partial(reverse_step, x, e, z, clip=(-1.0, 1.0), backend=provider, **coefs)
    med, p20, p80, host = _timed(f, device, args)
    nbytes = 5 * x.numel() * x.element_size()
    return med, p20, p80, host, nbytes / (med * 1e-3) / 1e9


def bench_dropout(shape, provider, mode, device, dtype, args):
    """p = 0.1, the presets'; the reference is PyTorch's dropout."""
    need = mode == "fwd+bwd"
    x = torch.randn(shape, device=device, dtype=dtype).requires_grad_(need)
    if provider == "reference":
        f = partial(dropout_ref, x, 0.1)
    elif provider == "compiled-ref":
        f = partial(torch.compile(dropout_ref), x, 0.1)
    else:
        f = partial(dropout, x, 0.1, backend=provider)
    g = torch.randn_like(x)
    run = f if not need else (lambda: f().backward(g))
    med, p20, p80, host = _timed(run, device, args)
    # fewest bytes: x read, y written (the mask drawn, not stored); backward dy read, dx written
    nbytes = x.numel() * x.element_size() * (4 if need else 2)
    return med, p20, p80, host, nbytes / (med * 1e-3) / 1e9


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16", "float16"])
    p.add_argument("--ops", nargs="+", default=["spatin_norm", "attention", "reverse_step", "dropout"])
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"])
    p.add_argument("--large", action="store_true", help="add the batch-64 shapes")
    p.add_argument("--compile-all", action="store_true",
                   help="time torch.compile of the reference at every shape (default: the batch-64 shapes only, "
                        "since each shape and mode costs a compilation)")
    p.add_argument("--shape", type=shape_arg, default=None,
                   help="one shape for every op instead of the built-in ones, e.g. 64x128x64x64")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--max-time", type=float, default=10.0, help="seconds per measurement at most")
    p.add_argument("--providers", nargs="+", default=None, help="only these providers (and the reference)")
    p.add_argument("--csv", default=None)
    p.add_argument("--md", default=None, help="write the Markdown table here")
    args = p.parse_args(argv)
    dev = args.device
    rows: list[Row] = []
    bw = copy_bandwidth_gbs(dev) if dev == "cuda" else None
    for dname in args.dtype:
        dtype = getattr(torch, dname)
        for op in args.ops:
            shapes = {"spatin_norm": SPATIN_SHAPES, "attention": ATTN_SHAPES, "reverse_step": STEP_SHAPES,
                      "dropout": DROPOUT_SHAPES}[op]
            if args.large:
                shapes = shapes + LARGE[op]
            if args.shape:
                shapes = [args.shape]
            variants = [("spatin", True), ("groupnorm", False)] if op == "spatin_norm" else [("", None)]
            modes = ["fwd"] if op == "reverse_step" else args.modes
            for shape in shapes:
                for vname, spatial in variants:
                    for mode in modes:
                        compile_ref = args.compile_all or shape in LARGE[op] or args.shape is not None
                        for prov in providers(op, dev, dtype, compile_ref):
                            if args.providers and prov not in args.providers and prov != "reference":
                                continue
                            if op == "attention" and prov == "sdpa" and dev == "cpu" and dtype != torch.float32:
                                continue
                            bench = {"spatin_norm": partial(bench_spatin, spatial=spatial),
                                     "attention": bench_attention, "reverse_step": bench_step,
                                     "dropout": bench_dropout}[op]
                            try:
                                med, p20, p80, host, thr = bench(shape, prov, mode, dev, dtype, args)
                            except Exception as exc:  # report and go on: one failing provider must not hide the rest
                                print(f"FAILED {op} {prov} {mode} {shape} {dname}: {exc!r}", flush=True)
                                continue
                            unit = "TFLOP/s" if op == "attention" else "GB/s"
                            extra = f"{thr:.2f} {unit}"
                            if bw and unit == "GB/s":
                                extra += f" ({100 * thr / bw:.0f}% of copy)"
                            if host is not None:
                                extra += f"; host {1e3 * host:.0f} us/call"
                            label = f"{op}[{vname}]" if vname else op
                            r = Row(label, prov, mode, f"{shape_str(shape)} {dname}", dev, med, p20, p80, extra)
                            rows.append(r)
                            if args.csv:  # row by row: a run cut short keeps what it measured
                                write_csv([r], args.csv)
                            print(f"{label:24s} {mode:8s} {r.shape:22s} {prov:13s} {med:10.3f} ms  {extra}",
                                  flush=True)
    note = f"; measured device copy: {bw:.0f} GB/s" if bw else ""
    print(environment(dev) + note)
    print(markdown_table(rows, "reference"))
    write_outputs(rows, dev, None, args.md, note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
