"""The sampling loop: draw x_T ~ N(0, I) and run a scheduler down to x_0.

`denoise` is the loop itself (one network call and one scheduler step per
timestep, nothing that reads a device value); `sample` wraps it for any
`eps_model(x_t, t, cond) -> eps` and any shape.
"""
from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from mcvd.nn.devices import parse_device
from mcvd.ops._checks import describe

from .sampler_config import SamplerConfig, resolve_sampler
from mcvd.schedule import Schedule
from .schedulers import Scheduler

# The keyword defaults of `sample`: DDPM over every timestep.
SAMPLE_DEFAULTS = SamplerConfig(method="ddpm", steps=None)


def canonical_device(device: torch.device | str) -> torch.device:
    """The `device` argument with its index ("cuda" -> "cuda:0", the current one), as tensors report it;
    ValueError naming it for a device this machine lacks. The meta device samples shapes without values
    (what shows that a loop reads no device value)."""
    return parse_device(device, kinds=("cpu", "cuda", "meta"))


def denoise(eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scheduler: Scheduler, x_T: torch.Tensor,
            *, generator: torch.Generator | None = None, callback=None, progress: bool = False,
            desc: str = "sampling") -> torch.Tensor:
    """Run every step of `scheduler` (set_timesteps done, on x_T's device) from x_T.

    eps_fn(x_t, t) -> eps with t a LongTensor [B] on the device. The loop
    reads no device value, so on a GPU it never waits for the kernels it queues.
    callback(i, t, x, pred_x0) runs after step i (t an int, x the new sample).
    Returns the final sample, shaped like x_T.
    """
    t_batch = scheduler.batched_timesteps(x_T.shape[0])
    x = x_T
    steps = scheduler.timesteps.tolist()
    for i, t in enumerate(tqdm(steps, desc=desc, leave=False) if progress else steps):
        eps = eps_fn(x, t_batch[i])
        x, x0 = scheduler.step(eps, t, x, generator=generator)
        if callback is not None:
            callback(i, t, x, x0)
    return x


def _check_shape(shape) -> tuple[int, ...]:
    """The samples' shape as a tuple of ints, each >= 1. Only ints: int(2.5)
    would silently sample 2."""
    expected = "shape: expected a sequence of ints [B, ...] (a tuple, list or torch.Size), got "
    is_int = lambda s: isinstance(s, numbers.Integral) and not isinstance(s, bool)  # noqa: E731
    if is_int(shape):
        raise TypeError(f"{expected}{describe(shape)} (for {shape} samples of one number, pass ({shape},))")
    if not isinstance(shape, (tuple, list, torch.Size)):
        raise TypeError(expected + describe(shape))
    if not all(is_int(s) for s in shape):
        raise TypeError(f"{expected}{shape!r}")
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1 or any(s < 1 for s in shape):
        raise ValueError(f"shape: expected [B, ...] with positive sizes, got {list(shape)}")
    return shape


def check_generator(generator, device: torch.device | None) -> None:
    """A sampler's generator: a torch.Generator on `device` (where it samples; None: not known yet), or None."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {describe(generator)}")
    if generator is not None and device is not None and generator.device.type != device.type:
        raise ValueError(f"generator: expected a generator on {device.type} (the sampling device), "
                         f"got one on {generator.device}")


def sample(eps_model: Callable, shape, *, sampler: SamplerConfig | None = None, method: str = "ddpm",
           steps: int | None = None, cond: torch.Tensor | None = None, cond_mask: torch.Tensor | None = None,
           clip_x0: bool = True, eta: float = 0.0, generator: torch.Generator | None = None, progress: bool = False,
           callback=None, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
           x_T: torch.Tensor | None = None, schedule: Schedule | None = None, spacing: str = "trailing",
           backend: str | None = None) -> torch.Tensor:
    """Draw samples x_0 of `shape` by reverse diffusion, without autograd.

    Args:
        eps_model: any callable eps_model(x_t, t, cond) -> eps shaped like x_t,
            t a LongTensor [B] (DDPM convention, larger is noisier); called as
            eps_model(x_t, t, cond, cond_mask=cond_mask) when cond_mask is given.
        shape: [B, ...] of the samples (e.g. [B, k, C, H, W] for MCVD), a
            tuple, list or torch.Size of ints >= 1.
        sampler: the sampler's options as one `mcvd.SamplerConfig` (its
            guidance must be None); or None, and the keywords below build it.
        method, steps, clip_x0, eta, schedule, spacing, backend: the sampler's
            options as keywords (see `mcvd.SamplerConfig`), defaults DDPM over
            every timestep (steps=None) of `default_schedule(eps_model)`; with
            `sampler` given, none may differ from its default.
        cond, cond_mask: handed to eps_model unchanged (cond on the sampling device).
        generator: source of x_T and of the step noise, on the sampling
            device; the same seed gives the same samples.
        progress: show a tqdm bar. callback: callback(i, t, x, pred_x0) after each step.
        device, dtype: of the samples (default: x_T's, else cond's device and float32).
        x_T: the starting noise [shape] instead of a draw from generator.
    Returns:
        x_0, a tensor of `shape` and dtype on the sampling device.
    """
    sampler = resolve_sampler(sampler, SAMPLE_DEFAULTS, method=method, steps=steps, eta=eta, clip_x0=clip_x0,
                              schedule=schedule, spacing=spacing, backend=backend)
    if sampler.guidance is not None:
        raise ValueError(f"sampler: mcvd.sample takes no guidance (its eps_model has no unconditional call), "
                         f"got guidance={sampler.guidance!r}; use mcvd.predict to guide an MCVD model")
    if not callable(eps_model):
        raise TypeError(f"eps_model: expected a callable eps_model(x_t, t, cond) -> eps (an MCVD network), "
                        f"got {describe(eps_model)}")
    shape = _check_shape(shape)
    for name, v in (("x_T", x_T), ("cond", cond), ("cond_mask", cond_mask)):
        if v is not None and not isinstance(v, torch.Tensor):
            raise TypeError(f"{name}: expected a tensor or None, got {describe(v)}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a callable or None, got {describe(callback)}")
    if not isinstance(progress, bool):
        raise TypeError(f"progress: expected a bool, got {describe(progress)}")
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        got = dtype if isinstance(dtype, torch.dtype) else describe(dtype)
        raise TypeError(f"dtype: expected a floating torch.dtype or None, got {got}")
    if x_T is not None:
        if tuple(x_T.shape) != shape:
            raise ValueError(f"x_T: expected shape {list(shape)}, got {list(x_T.shape)}")
        if device is not None and canonical_device(device) != x_T.device:
            raise ValueError(f"device: {device} disagrees with x_T's device {x_T.device}")
        if dtype is not None and dtype != x_T.dtype:
            raise ValueError(f"dtype: {dtype} disagrees with x_T's dtype {x_T.dtype}")
        device, dtype = x_T.device, x_T.dtype
    else:
        device = canonical_device(device if device is not None else cond.device if cond is not None else "cpu")
        dtype = torch.float32 if dtype is None else dtype
    for name, t in (("cond", cond), ("cond_mask", cond_mask)):
        if t is not None and t.device != device:
            raise ValueError(f"{name}: expected device {device} (the sampling device), got {t.device}")
    check_generator(generator, device)

    scheduler = sampler.make_scheduler(eps_model, device=device)

    def eps_fn(x, t):
        return eps_model(x, t, cond) if cond_mask is None else eps_model(x, t, cond, cond_mask=cond_mask)
    with torch.no_grad():
        if x_T is None:
            x_T = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return denoise(eps_fn, scheduler, x_T, generator=generator, callback=callback, progress=progress,
                       desc=sampler.method)
