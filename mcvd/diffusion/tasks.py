"""The video tasks of one MCVD model: prediction, generation, interpolation.

MCVD denoises k current frames given p past and f future frames, either of
which may be masked (zeros, cond_mask False). So one model does

- prediction      past given, future masked;
- generation      past and future masked;
- interpolation   past and future given;

and longer videos come from block-autoregressive rollout: sample k frames,
slide them into the past window (the newest p frames), sample the next k.

| code        | symbol / meaning                                         |
|-------------|----------------------------------------------------------|
| k           | model.config.num_frames, frames sampled per block       |
| p           | model.config.num_frames_cond, past frames                |
| f           | model.config.num_frames_future, future frames            |
| cond        | [B, p + f, C, H, W]: past window then future frames      |
| cond_mask   | [B, 2] bool: (past given, future given)                  |
| guidance w  | eps = eps_uncond + w (eps_cond - eps_uncond)             |
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from mcvd.nn import MCVD
from mcvd.nn.blocks import Dropout
from mcvd.nn.data_range import check_data_range
from mcvd.ops._checks import describe, is_int

from .cuda_graph import CUDAGraphRunner
from .sampler_config import SamplerConfig, resolve_sampler
from .sampling import canonical_device, check_generator, denoise
from mcvd.schedule import Schedule


@dataclass(frozen=True)
class FrameSpec:
    """The frame layout an MCVD model expects (read from model.config)."""

    k: int
    p: int
    f: int
    channels: int
    size: int

    @classmethod
    def of(cls, model) -> FrameSpec:
        cfg = getattr(model, "config", None)
        names = ("num_frames", "num_frames_cond", "num_frames_future", "channels", "image_size")
        if cfg is None or any(not hasattr(cfg, n) for n in names):
            raise TypeError(f"model: expected an MCVD network whose .config (mcvd.ModelConfig) gives "
                            f"{', '.join(names)}; got {type(model).__name__}")
        return cls(cfg.num_frames, cfg.num_frames_cond, cfg.num_frames_future, cfg.channels, cfg.image_size)

    def frame_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    def check_video(self, x, name: str, min_frames: int) -> None:
        """x must be a float [B, T, C, H, W] video with T >= min_frames."""
        C, S = self.channels, self.size
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{name}: expected a float tensor [B, T, {C}, {S}, {S}], got "
                            + (f"dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__))
        if x.dim() != 5 or tuple(x.shape[2:]) != self.frame_shape():
            raise ValueError(f"{name}: expected shape [B, T, {C}, {S}, {S}] (channels and image_size of "
                             f"model.config), got {list(x.shape)}")
        if x.shape[0] < 1:
            raise ValueError(f"{name}: expected at least one video (B >= 1), got shape {list(x.shape)}")
        if x.shape[1] < min_frames:
            raise ValueError(f"{name}: expected at least {min_frames} frames, got {x.shape[1]}")


class BlockSampler:
    """Samples one block of k frames given the conditioning, eagerly or by
    replaying a CUDA graph of the whole denoising loop.

    Args:
        model: the MCVD network, model(x_t, t, cond, cond_mask=...) -> eps.
            A model with a `condition` method (mcvd.MCVD) is conditioned once
            per block, `cache = model.condition(cond, cond_mask)`, and called
            as model(x_t, t, cache=cache) at every step: the same eps without
            recomputing what depends only on the condition frames.
        sampler: the sampler's options (`mcvd.SamplerConfig`); with a
            guidance weight w, the unconditional eps is the model's with
            everything masked.
        generator: source of x_T and step noise, on `device`.
        cuda_graph: capture the loop once per batch shape and replay it.
        device, dtype: of the frames.
        bar: a progress bar (tqdm) that every denoising step advances by one,
            or None; one bar over all the blocks of a video.
    """

    def __init__(self, model, sampler: SamplerConfig, *, generator: torch.Generator | None = None,
                 cuda_graph: bool = False, device: torch.device, dtype: torch.dtype, bar=None):
        self.model = model
        self.spec = FrameSpec.of(model)
        if not isinstance(sampler, SamplerConfig):
            raise TypeError(f"sampler: expected an mcvd.SamplerConfig, got {type(sampler).__name__}")
        if cuda_graph and device.type != "cuda":
            raise ValueError(f"cuda_graph: needs a CUDA device, got {device}")
        check_generator(generator, device)
        self.sampler, self.guidance = sampler, sampler.guidance
        self.generator, self.cuda_graph, self.device, self.dtype = generator, cuda_graph, device, dtype
        self.bar = bar
        self.scheduler = sampler.make_scheduler(model, device=device)
        # Which steps are guided, in the order `denoise` calls eps_fn (once per step): from the
        # scheduler's host copy of the timesteps, so that no step, nor a CUDA graph capture, reads a device value.
        self._guided_steps = sampler.guided_steps(self.scheduler.timesteps.tolist())
        self._cached = callable(getattr(model, "condition", None))
        self._graphs: dict = {}

    def __call__(self, cond: torch.Tensor | None, cond_mask: torch.Tensor | None, batch: int) -> torch.Tensor:
        """A new block [batch, k, C, H, W] given cond [batch, p + f, C, H, W]
        and cond_mask [batch, 2] (both None for a model without conditioning)."""
        check_sampling_mode(self.model)
        x_T = torch.randn((batch, self.spec.k, *self.spec.frame_shape()), generator=self.generator,
                          device=self.device, dtype=self.dtype)
        if not self.cuda_graph:
            return self._denoise(x_T, cond, cond_mask, self.bar)
        key = (batch, None if cond is None else tuple(cond.shape))
        if key not in self._graphs:
            gen = self.generator if self.scheduler.draws_noise else None
            self._graphs[key] = CUDAGraphRunner(self._denoise_quiet, x_T, cond, cond_mask, generator=gen)
        out = self._graphs[key](x_T, cond, cond_mask).clone()
        if self.bar is not None:  # a replay runs every step at once
            self.bar.update(self.scheduler.num_inference_steps)
        return out

    def _denoise_quiet(self, x_T, cond, cond_mask):
        return self._denoise(x_T, cond, cond_mask, None)

    def _denoise(self, x_T, cond, cond_mask, bar):
        model, w = self.model, self.guidance
        plan = self._guided_steps if cond is not None else [False] * len(self._guided_steps)
        if any(plan):
            # A guided step is one batched call: the conditional half, then the fully masked half.
            both = (torch.cat([cond, cond]), torch.cat([cond_mask, torch.zeros_like(cond_mask)]))
        # What depends only on the condition frames, once per block. Under
        # cuda_graph this runs inside the captured region: every replay
        # recomputes it from the static cond buffer it was captured with, and
        # the steps read it at fixed addresses (a cache built outside the
        # graph would be a stale copy the replay never reads).
        cached = cond is not None and self._cached
        cache_both = model.condition(*both) if cached and any(plan) else None
        cache = model.condition(cond, cond_mask) if cached and not all(plan) else None
        guided_steps = iter(plan)

        def eps_fn(x, t):
            if not next(guided_steps):
                if cache is not None:
                    return model(x, t, cache=cache)
                return model(x, t, cond) if cond is None else model(x, t, cond, cond_mask=cond_mask)
            x, t = torch.cat([x, x]), torch.cat([t, t])
            eps = model(x, t, cache=cache_both) if cache_both is not None else model(x, t, both[0], cond_mask=both[1])
            eps_c, eps_u = eps.chunk(2)
            return torch.lerp(eps_u, eps_c, w)
        step = None if bar is None else (lambda *_: bar.update(1))
        return denoise(eps_fn, self.scheduler, x_T, generator=self.generator, callback=step)


def check_sampling_mode(model) -> None:
    """Refuse a model whose dropout is on (training mode): every call would draw new masks, so samples would
    be noisier and no seed would repeat them. Checked at every block, since a model can be switched between
    blocks of a stream."""
    if not isinstance(model, torch.nn.Module) or not model.training:
        return
    for m in model.modules():
        if isinstance(m, (Dropout, torch.nn.modules.dropout._DropoutNd)) and m.training and m.p > 0:
            raise ValueError("model: in training mode, with dropout on (new masks at every call): call "
                             "model.eval() before sampling")


def check_finite_block(block: torch.Tensor, which: str) -> None:
    """A sampled block must be finite: NaN or Inf there is the model's own doing (its weights, or a diverged
    run), and would otherwise be handed on as the next block's condition frames."""
    if block.device.type == "meta":  # shapes without values
        return
    bad = block.numel() - int(torch.isfinite(block).sum())
    if bad:
        raise ValueError(f"model: {which} it sampled holds {bad} NaN or infinite values (the given frames were "
                         f"finite): its weights hold NaN or Inf, or its training diverged")


def _model_device(model) -> torch.device | None:
    """Where the model's parameters (or buffers) live; None if it has none."""
    tensors = itertools.chain(model.parameters(), model.buffers()) if isinstance(model, torch.nn.Module) else ()
    first = next(iter(tensors), None)
    return None if first is None else first.device


def _network_placement(model) -> tuple[torch.device | None, torch.dtype | None]:
    """The device and dtype an MCVD network takes its inputs in (its
    weights'); (None, None) for another model, which may convert its
    inputs (a wrapper, a toy) and so tells neither. torch.compile's wrapper
    is seen through: it runs the network as it is."""
    model = getattr(model, "_orig_mod", model)
    if not isinstance(model, MCVD):
        return None, None
    weight = model.conv_in.weight
    return weight.device, weight.dtype


def check_frames(x: torch.Tensor, name: str, model) -> None:
    """Frames a caller hands to `model`: an MCVD network's dtype and device,
    values in [-1, 1] (mcvd.nn.data_range). The range check reads two
    numbers back: on a GPU one wait for the queued work per call of the
    caller, never one per denoising step."""
    device, dtype = _network_placement(model)
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the model's), got {x.dtype}")
    if device is not None and x.device != device:
        raise ValueError(f"{name}: expected device {device} (the model's), got {x.device}")
    check_data_range(x, name)


def predict(model, past: torch.Tensor | None, num_frames: int, *, future: torch.Tensor | None = None,
            sampler: SamplerConfig | None = None, method: str = "ddim", steps: int | None = 100, samples: int = 1,
            guidance: float | None = None, guidance_interval: tuple[int, int] | None = None, eta: float = 0.0,
            clip_x0: bool = True, generator: torch.Generator | None = None, progress: bool = False,
            batch_size: int | None = None, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
            cuda_graph: bool = False, return_context: bool = False, schedule: Schedule | None = None,
            spacing: str = "trailing", backend: str | None = None) -> torch.Tensor:
    """Sample `num_frames` frames with an MCVD model, without autograd.

    The task follows from what is given:
        past only      prediction of the frames after `past`;
        neither        unconditional generation (`batch_size` videos, default one);
        past + future  interpolation of the k frames between them;
        future only    the k frames before `future`.
    More than k frames come from block-autoregressive rollout (prediction and
    generation only): each block of k frames conditions the next through the
    past window, which holds the newest p frames, clamped to [-1, 1] (the
    data range the model conditions on; already so with clip_x0). In
    generation the first block is unconditional and the later ones are
    predictions; as in the reference code the window counts as given from
    the second block on, even when k < p leaves some of it zeros. With future
    frames the model fills exactly one block, so num_frames must equal k.
    The model must be in eval mode where it has dropout (else ValueError). A
    block with NaN or infinite frames raises ValueError naming the model.

    The frames used are checked once per call: an MCVD network's dtype and
    device, values in [-1, 1] up to a rounding margin (frames in [0, 255] or scaled
    otherwise are refused; [0, 1] frames cannot be told apart). On a GPU that
    reads two numbers back per call, never per step.

    Args:
        model: MCVD network (its .config gives k, p, f, channels, image_size).
        past: [B, T, C, H, W] frames in [-1, 1], T >= p (the last p frames are
            used), or None.
        num_frames: frames to sample, >= 1.
        future: [B, T, C, H, W] frames in [-1, 1], T >= f (the first f frames
            are used), or None.
        A block whose past or future is None samples with it masked: what the
        model learnt only if its training masked it at times (mcvd.train's
        prob_mask_cond, prob_mask_future; `mcvd sample` and `mcvd eval` warn
        otherwise).
        sampler: the sampler's options as one `mcvd.SamplerConfig`; or None,
            and the keywords below build it.
        method, steps, guidance, guidance_interval, eta, clip_x0, schedule, spacing, backend: the
            sampler's options as keywords (see `mcvd.SamplerConfig`; default:
            100 DDIM steps, no guidance; "dpm++" with ~10 steps for low
            latency); with `sampler` given, none may differ from its default.
            guidance is the classifier-free guidance weight w (None: plain conditional);
            guidance_interval (lo, hi) guides only the steps with lo <= t <= hi.
        samples: independent samples per input video.
        generator: source of every random draw, on the frames' device. The
            noise is drawn for the whole batch at once: the same seed gives the
            same samples for the same batch, while a video's sample changes
            with the videos beside it.
        progress: one tqdm bar over the denoising steps of every block.
        batch_size: number of videos when past and future are both None
            (None: one); with frames given, None or their batch.
        device, dtype: of the videos when past and future are None
            (default: an MCVD network's device and dtype; for another model
            the device of its tensors, else the CPU, and float32).
        cuda_graph: replay each block's denoising loop as a CUDA graph (CUDA only).
        return_context: return the whole clip along time, the given past
            frames (all T of them), the sampled frames, then the given future
            frames, as `mcvd sample` writes it; the sampled frames are at
            [..., T_past:T_past + num_frames, :, :, :].
    Returns:
        [B, num_frames, C, H, W] if samples == 1, else [samples, B, num_frames, C, H, W]
        (num_frames plus the given frames' count with return_context); the
        dtype and device of past / future.
    """
    sampler = resolve_sampler(sampler, SamplerConfig(), method=method, steps=steps, eta=eta, clip_x0=clip_x0,
                              schedule=schedule, spacing=spacing, backend=backend, guidance=guidance,
                              guidance_interval=guidance_interval)
    spec = FrameSpec.of(model)
    for name, v, low in (("num_frames", num_frames, 1), ("samples", samples, 1)):
        if not is_int(v) or v < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {v!r}")
    if batch_size is not None and (not is_int(batch_size) or batch_size < 1):
        raise ValueError(f"batch_size: expected an int >= 1 or None (generation: one video; else the batch of "
                         f"the given frames), got {batch_size!r}")
    num_frames, samples = int(num_frames), int(samples)
    batch_size = None if batch_size is None else int(batch_size)
    for name, v in (("progress", progress), ("cuda_graph", cuda_graph), ("return_context", return_context)):
        if not isinstance(v, bool):
            raise TypeError(f"{name}: expected a bool, got {describe(v)}")
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype: expected a torch.dtype or None, got {describe(dtype)}")
    context = (past, future)
    if past is not None:
        if spec.p == 0:
            raise ValueError("past: the model takes no past frames (num_frames_cond=0); pass past=None")
        spec.check_video(past, "past", spec.p)
        past = past[:, past.shape[1] - spec.p:]
        check_frames(past, "past", model)
    if future is not None:
        if spec.f == 0:
            raise ValueError("future: the model takes no future frames (num_frames_future=0); pass future=None")
        spec.check_video(future, "future", spec.f)
        future = future[:, :spec.f]
        check_frames(future, "future", model)
        if num_frames != spec.k:
            raise ValueError(f"num_frames: with future frames the model fills exactly k={spec.k} frames "
                             f"(num_frames of model.config), got {num_frames}")
    if num_frames > spec.k and spec.p == 0:
        raise ValueError(f"num_frames: a model without past frames (num_frames_cond=0) samples at most "
                         f"k={spec.k} frames, got {num_frames}")
    given = [x for x in (past, future) if x is not None]
    if given:
        ref = given[0]
        if len(given) == 2 and (future.shape[0] != past.shape[0] or future.device != past.device
                                or future.dtype != past.dtype):
            raise ValueError(f"future: expected batch {past.shape[0]}, {past.dtype} on {past.device} (as past), "
                             f"got batch {future.shape[0]}, {future.dtype} on {future.device}")
        if batch_size is not None and batch_size != ref.shape[0]:
            raise ValueError(f"batch_size: {batch_size} disagrees with the batch of the given frames ({ref.shape[0]})")
        if device is not None and canonical_device(device) != ref.device:
            raise ValueError(f"device: {device} disagrees with the given frames' device {ref.device}")
        if dtype is not None and dtype != ref.dtype:
            raise ValueError(f"dtype: {dtype} disagrees with the given frames' dtype {ref.dtype}")
        B, device, dtype = ref.shape[0], ref.device, ref.dtype
    else:
        if sampler.guidance is not None:
            raise ValueError("guidance: needs past or future frames to guide on; got neither")
        B = 1 if batch_size is None else batch_size
        net_device, net_dtype = _network_placement(model)
        device = canonical_device(device) if device is not None else _model_device(model) or torch.device("cpu")
        if net_device is not None and device != net_device:
            raise ValueError(f"device: expected {net_device} (the model's), got {device}")
        if dtype is not None and net_dtype is not None and dtype != net_dtype:
            raise TypeError(f"dtype: expected {net_dtype} (the model's), got {dtype}")
        dtype = dtype or net_dtype or torch.float32
        if not dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating dtype, got {dtype}")

    block = BlockSampler(model, sampler, generator=generator, cuda_graph=cuda_graph, device=device, dtype=dtype)
    n = samples * B

    def frames(x, count):  # given frames repeated per sample (sample-major), or zeros
        if x is None:
            return torch.zeros((n, count, *spec.frame_shape()), device=device, dtype=dtype)
        return x.detach().repeat(samples, 1, 1, 1, 1)

    conditioned = spec.p + spec.f > 0
    window, fut = frames(past, spec.p), frames(future, spec.f)
    mask = torch.tensor([[past is not None, future is not None]], device=device).repeat(n, 1)
    rolled_mask = torch.tensor([[True, future is not None]], device=device).repeat(n, 1)
    num_blocks = math.ceil(num_frames / spec.k)
    if progress:  # one bar over every block's steps
        block.bar = tqdm(total=num_blocks * block.scheduler.num_inference_steps, desc=sampler.method, leave=False)
    blocks = []
    try:
        with torch.no_grad():
            for j in range(num_blocks):
                new = block(torch.cat([window, fut], dim=1) if conditioned else None, mask if conditioned else None,
                            n)
                check_finite_block(new, f"block {j + 1} of {num_blocks}")
                blocks.append(new)
                if j + 1 < num_blocks:  # slide the newest frames into the past window
                    window, mask = torch.cat([window, new.clamp(-1, 1)], dim=1)[:, -spec.p:], rolled_mask
    finally:
        if block.bar is not None:
            block.bar.close()
    video = torch.cat(blocks, dim=1)[:, :num_frames]
    if return_context:
        before, after = ([] if x is None else [x.detach().repeat(samples, 1, 1, 1, 1)] for x in context)
        video = torch.cat([*before, video, *after], dim=1)
    return video if samples == 1 else video.reshape(samples, B, *video.shape[1:])
