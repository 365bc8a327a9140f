"""Pieces the benchmarks share: the trainer's optimisation step as a
callable, the GPU kernels a call launches, and the calls of a function that
make the host wait on the GPU."""
from __future__ import annotations

import contextlib
import warnings

import torch

from mcvd.train import EMA, TrainConfig, make_optimizer, mcvd_loss


def optimisation_step(model, clips, rnd, schedule, *, amp_dtype=None, cuda_graphs: bool = False,
                      loss_fn=mcvd_loss):
    """A callable taking one step as the trainer does (the loss, backward,
    clipping at 1.0, its fused Adam, the EMA update) and returning the loss;
    amp_dtype: autocast to it; cuda_graphs: mark the step's start for
    inductor's CUDA graphs (a model compiled with them); loss_fn: mcvd_loss
    or a compiled version of it."""
    opt = make_optimizer(model.parameters(), TrainConfig(lr=2e-4))
    ema = EMA(model, 0.999)
    device = next(model.parameters()).device.type
    amp = torch.autocast(device, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()

    def step():
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        opt.zero_grad(set_to_none=True)
        with amp:
            loss = loss_fn(model, clips, rnd, schedule).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        return loss
    return step


def synchronising_calls(fn) -> list[str]:
    """'file:line: message' for each call in fn() that torch's sync debug mode
    reports as making the host wait on the GPU (after a first, unwatched call)."""
    fn()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # The mode's own notice that it is a prototype is no synchronisation.
    return [f"{w.filename}:{w.lineno}: {str(w.message).splitlines()[0][:120]}" for w in caught
            if "synchroniz" in str(w.message) and "prototype" not in str(w.message)]


def gpu_kernels(fn, device: str, top: int = 6):
    """(count, total ms, [(name, ms)] of the `top` largest) of the GPU kernels one
    call of fn() launches, replayed CUDA graphs included (torch.profiler, after
    a first, unwatched call); (0, 0.0, []) off a GPU."""
    from torch.profiler import ProfilerActivity, profile

    if not device.startswith("cuda"):
        return 0, 0.0, []
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    evs = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    by: dict[str, float] = {}
    for e in evs:
        name = e.name.split("<")[0][:60]
        by[name] = by.get(name, 0.0) + e.device_time / 1e3
    return len(evs), sum(by.values()), sorted(by.items(), key=lambda kv: -kv[1])[:top]
