"""Shared benchmark harness: timing, CSV rows and Markdown tables.

Rows are (op, provider, mode, shape, device, median_ms, p20_ms, p80_ms, extra);
CUDA work is timed with CUDA events, CPU work with perf_counter. Every
benchmark compares against a baseline measured in the same run. `measure`
times whole calls as a caller sees them (latency, host cost included);
`measure_device` times the GPU work of a call alone, with a cold L2, and its
host cost separately (what kernel benchmarks and bandwidth figures need).
"""
from __future__ import annotations

import csv
import functools
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field

import torch

FIELDS = ("op", "provider", "mode", "shape", "device", "median_ms", "p20_ms", "p80_ms", "extra")


@dataclass
class Row:
    op: str
    provider: str
    mode: str
    shape: str
    device: str
    median_ms: float
    p20_ms: float
    p80_ms: float
    extra: str = ""
    samples: list[float] = field(default_factory=list, repr=False)


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    i = q * (len(xs) - 1)
    lo, hi = int(i), min(int(i) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (i - lo)


def measure(fn, *, device: str, warmup: int = 3, reps: int = 20, min_time_s: float = 0.0, max_time_s: float = 20.0):
    """Milliseconds per call of `fn()`: (median, p20, p80, samples).

    Stops early once max_time_s is spent (at least 3 samples), so slow
    baselines on a small CPU stay bounded.
    """
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    cuda = device.startswith("cuda")
    while len(samples) < reps or time.perf_counter() - start < min_time_s:
        if cuda:
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            fn()
            e1.record()
            e1.synchronize()
            samples.append(e0.elapsed_time(e1))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        if len(samples) >= 3 and time.perf_counter() - start > max_time_s:
            break
    return statistics.median(samples), _quantile(samples, 0.2), _quantile(samples, 0.8), samples


# Bytes zeroed before each timed GPU call: more than the L2 of an H100 / H200
# (50 MB), so every call reads its inputs from DRAM as it would in a network.
L2_FLUSH_BYTES = 256 << 20


@functools.cache
def _sleep_cycles_per_ms() -> float:
    """Clock cycles of torch.cuda._sleep (a GPU spin kernel) per millisecond."""
    cycles = 10_000_000
    torch.cuda._sleep(cycles // 10)  # load the kernel
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    torch.cuda._sleep(cycles)
    e1.record()
    e1.synchronize()
    return cycles / e0.elapsed_time(e1)


def measure_device(fn, *, device: str = "cuda", warmup: int = 3, reps: int = 20, max_time_s: float = 20.0):
    """GPU milliseconds of one call of `fn()`: (median, p20, p80, samples, host_ms).

    The events of each rep bracket only the call's kernels: a spin kernel
    (torch.cuda._sleep), sized to twice the call's host time, keeps the GPU
    busy while the host enqueues an L2 flush, the start event, the call and
    the end event, so the call's kernels then run back to back and the Python,
    dispatch and launch cost of the call is not in the sample. That cost is
    measured on its own as host_ms (median wall time of the call's enqueue).
    A rep whose start event had already passed when the host finished
    enqueuing (the spin too short: the GPU waited for the host) is measured
    again with twice the spin. This is the time a call takes inside a CUDA
    graph or behind a busy queue; `measure` gives the latency of one isolated
    call instead.
    """
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device)
    for _ in range(max(warmup, 1)):  # the first call may compile or autotune
        fn()
    torch.cuda.synchronize()
    hosts = []
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        hosts.append((time.perf_counter() - t0) * 1e3)
        torch.cuda.synchronize()
    host_ms = statistics.median(hosts)
    sleep = int(_sleep_cycles_per_ms() * max(0.05, 2 * host_ms + 0.05))
    samples: list[float] = []
    start = time.perf_counter()
    retries = 0
    while len(samples) < reps:
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(sleep)
        flush.zero_()
        e0.record()
        fn()
        waited = e0.query()  # the GPU reached the start before the host was done
        e1.record()
        e1.synchronize()
        if waited and retries < 5:
            sleep, retries = 2 * sleep, retries + 1
            continue
        samples.append(e0.elapsed_time(e1))
        if len(samples) >= 3 and time.perf_counter() - start > max_time_s:
            break
    return statistics.median(samples), _quantile(samples, 0.2), _quantile(samples, 0.8), samples, host_ms


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def environment(device: str) -> str:
    parts = [f"device: {device_name(device)}", f"torch {torch.__version__}", f"python {platform.python_version()}"]
    try:
        import triton

        parts.append(f"triton {triton.__version__}")
    except ImportError:
        pass
    if device.startswith("cuda"):
        parts.append(f"CUDA {torch.version.cuda}")
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10).stdout.strip()
            parts.append(f"driver {smi}")
        except (OSError, subprocess.TimeoutExpired):
            pass
    return ", ".join(parts)


def copy_bandwidth_gbs(device: str, nbytes: int = 2 << 30) -> float:
    """Measured device-to-device copy bandwidth, GB/s counting bytes read plus written."""
    n = nbytes // 4
    a = torch.empty(n, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    med, *_ = measure_device(lambda: b.copy_(a), device=device, reps=10)
    return 2 * a.numel() * 4 / (med * 1e-3) / 1e9


def write_csv(rows: list[Row], path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        for r in rows:
            d = asdict(r)
            d.pop("samples")
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in d.items()})


def markdown_table(rows: list[Row], baseline: str) -> str:
    """One line per (op, mode, shape, provider) with the ratio to `baseline`'s median."""
    base = {(r.op, r.mode, r.shape): r.median_ms for r in rows if r.provider == baseline}
    out = ["| op | mode | shape | provider | median ms | p20-p80 ms | speed-up vs " + baseline + " | notes |",
           "|---|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        b = base.get((r.op, r.mode, r.shape))
        ratio = f"{b / r.median_ms:.2f}x" if b else "-"
        out.append(f"| {r.op} | {r.mode} | {r.shape} | {r.provider} | {r.median_ms:.3f} | "
                   f"{r.p20_ms:.3f}-{r.p80_ms:.3f} | {ratio} | {r.extra} |")
    return "\n".join(out)


def write_outputs(rows: list[Row], device: str, csv_path: str | None, md_path: str | None, note: str = "") -> None:
    """The CSV rows and the Markdown table (headed by the environment) every benchmark writes."""
    if csv_path:
        write_csv(rows, csv_path)
    if md_path:
        with open(md_path, "w") as f:
            f.write(f"{environment(device)}{note}\n\n{markdown_table(rows, 'reference')}\n")


def measure_interleaved(fns: dict, *, device: str, warmup: int = 1, reps: int = 10, max_time_s: float = 60.0):
    """Milliseconds per call of each `fns[name]()`, measured round-robin (one
    call of each per round) so that load that comes and goes on a shared
    machine lands on every provider alike: {name: (median, p20, p80, samples)}.
    Stops after max_time_s once every provider has 3 samples."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict = {name: [] for name in fns}
    start = time.perf_counter()
    for i in range(reps):
        for name, fn in fns.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            samples[name].append((time.perf_counter() - t0) * 1e3)
        if i + 1 >= 3 and time.perf_counter() - start > max_time_s:
            break
    return {name: (statistics.median(s), _quantile(s, 0.2), _quantile(s, 0.8), s) for name, s in samples.items()}
