"""Where a training step and a sampling block of the SMMNIST preset spend their time on a GPU.

    python benchmarks/profile_gpu.py            # on a CUDA machine
    python benchmarks/profile_gpu.py cpu        # a small network on the CPU: checks that the script runs

Rows: a training step at batch 8 and 32, float32 and bfloat16 autocast (the
trainer's loss, Adam, clipping and EMA; split into forward + backward and
clipping + Adam + EMA), and one block of 10 DPM-Solver++ steps with the
condition cache, eager and replayed as a CUDA graph. Columns: wall time per
call (synchronised, median of 10); host time to enqueue one call while the
GPU is kept busy (a call that waits on the GPU shows here as more than its
wall time); the GPU kernels one call launches and the sum of their times
(torch.profiler), and the kernels that take most of it. A call whose wall
time is far above its kernel time is bound by the host: Python, dispatch
and launches. Last, on a GPU: each call of a float32 training step (and of
its forward + backward) that makes the host wait on the GPU
(torch.cuda.set_sync_debug_mode), with the line of Python that made it.
"""
import argparse
import os
import statistics
import sys
import time

import torch

import mcvd
from mcvd.diffusion import Schedule
from mcvd.train import EMA, TrainConfig, draw_step_randomness, make_optimizer, mcvd_loss

sys.path.insert(0, os.path.dirname(__file__))
from steps import gpu_kernels, synchronising_calls  # noqa: E402

_parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
_parser.add_argument("device", nargs="?", default="cuda", choices=("cuda", "cpu"),
                     help="cuda (default), or cpu: a small network, to check that the script runs")
dev = _parser.parse_args().device
# Sums of "kernel" time count every GPU-side event the profiler records: the optimizer's
# step range (about 0.8 ms of the clipping + Adam + EMA rows) is one such, not a kernel.
cfg = mcvd.ModelConfig.preset("smmnist")
if dev == "cpu":
    import dataclasses
    cfg = dataclasses.replace(cfg, image_size=16, ngf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                              n_head_channels=16)
S = cfg.image_size


def sync():
    if dev == "cuda":
        torch.cuda.synchronize()


def timed(fn, n=10):
    for _ in range(2):
        fn()
    sync()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def host(fn, n=10):
    """Host time to enqueue, the GPU kept busy first (a long matmul queue) so that no call waits on it."""
    if dev != "cuda":
        return float("nan")
    a = torch.randn(8192, 8192, device=dev)
    sync()
    for _ in range(40):
        a @ a
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    ms = (time.perf_counter() - t0) * 1e3 / n
    sync()
    return ms


def train_parts(B, amp_dtype):
    torch.manual_seed(0)
    model = mcvd.MCVD(cfg).to(dev).train()
    opt = make_optimizer(model.parameters(), TrainConfig(lr=2e-4))
    ema = EMA(model, 0.999)
    clips = torch.rand(B, cfg.num_frames_cond + cfg.num_frames, cfg.channels, S, S, device=dev) * 2 - 1
    rnd = draw_step_randomness(cfg, B, prob_mask_cond=0.0, prob_mask_future=0.0, prob_mask_sync=False,
                               random_flip=False, generator=torch.Generator(dev).manual_seed(0), device=dev)
    sched = Schedule.linear(cfg.num_timesteps)
    amp = torch.autocast(dev, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)

    def fwd_bwd():
        opt.zero_grad(set_to_none=True)
        with amp:
            loss = mcvd_loss(model, clips, rnd, sched).mean()
        loss.backward()

    def rest():
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)

    def step():
        fwd_bwd()
        rest()
    return step, fwd_bwd, rest


print(f"{'what':34s} {'wall ms':>8s} {'host ms':>8s} {'kernels':>8s} {'kernel ms':>9s}  top kernels (ms)", flush=True)
for B in (8, 32):
    for amp_dtype in (None, torch.bfloat16):
        step, fwd_bwd, rest = train_parts(B, amp_dtype)
        name = f"train B{B} {'bf16' if amp_dtype else 'fp32'}"
        for label, fn in ((name, step), (name + " fwd+bwd", fwd_bwd), (name + " clip+adam+ema", rest)):
            n, k_ms, top = gpu_kernels(fn, dev)
            print(f"{label:34s} {timed(fn):8.1f} {host(fn):8.1f} {n:8d} {k_ms:9.1f}  "
                  + "; ".join(f"{a} {b:.1f}" for a, b in top[:4]), flush=True)

# One graph-replayed sampling block (10 DPM-Solver++ steps), eager fused network with its condition cache.
model = mcvd.MCVD(cfg).to(dev).eval()
past = torch.rand(1, cfg.num_frames_cond, cfg.channels, S, S, device=dev) * 2 - 1
for graph in ((False, True) if dev == "cuda" else (False,)):
    stream = mcvd.StreamingPredictor(model, mcvd.SamplerConfig(method="dpm++", steps=10), cuda_graph=graph,
                                     generator=torch.Generator(dev).manual_seed(0))
    stream.push(past)
    fn = stream.predict_next
    n, k_ms, top = gpu_kernels(fn, dev)
    print(f"{'dpm++x10 block' + (' graph' if graph else ''):34s} {timed(fn):8.1f} {host(fn):8.1f} {n:8d} {k_ms:9.1f}  "
          + "; ".join(f"{a} {b:.1f}" for a, b in top[:6]), flush=True)

# Where a training step makes the host wait on the GPU: each synchronising call of one eager float32 step
# and of one forward + backward, with the line of Python that made it (torch's sync debug mode).
if dev == "cuda":
    for label, fn in zip(("train B8 fp32 step", "train B8 fp32 fwd+bwd"), train_parts(8, None)[:2]):
        syncs = synchronising_calls(fn)
        print(f"{label}: {len(syncs)} synchronising call(s)", flush=True)
        for line in syncs:
            print(f"  {line}", flush=True)
