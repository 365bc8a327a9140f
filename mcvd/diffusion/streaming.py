"""Streaming prediction for live video: push observed frames, get the next k.

The predictor keeps the newest p observed frames (the past window) between
calls; predictions are not fed back, the next observed frames replace them.
For low latency use few DPM-Solver++ steps and, on a GPU, `cuda_graph=True`:
the denoising loop is captured on the first prediction and replayed after.
"""
from __future__ import annotations

import torch

from mcvd.ops._checks import describe

from .sampler_config import SamplerConfig
from .tasks import BlockSampler, FrameSpec, _model_device, check_finite_block, check_frames, check_generator

# Low latency by default: 10 DPM-Solver++ steps per prediction.
STREAMING_DEFAULT = SamplerConfig(method="dpm++", steps=10)


class StreamingPredictor:
    """Predict the next k frames from the last p observed ones, call after call.

    Example::

        stream = mcvd.StreamingPredictor(model, mcvd.SamplerConfig(method="dpm++", steps=10), cuda_graph=True)
        for frame in camera:            # [B, C, H, W] in [-1, 1]
            nxt = stream(frame)         # [B, k, C, H, W], None until p frames were seen

    Args:
        model: MCVD network with num_frames_cond = p >= 1 (future slots, if
            any, are masked). Pushed frames must hold values in [-1, 1] and,
            for an MCVD network, have its dtype and device (checked at every
            push: on a GPU one read of two numbers per push).
        sampler: the sampler's options (`mcvd.SamplerConfig`; default
            10 DPM-Solver++ steps).
        cuda_graph: capture the denoising loop in a CUDA graph (a model on a
            CUDA device: refused here for a model elsewhere).
        generator: source of the random draws, on the frames' device.
    """

    def __init__(self, model, sampler: SamplerConfig = STREAMING_DEFAULT, *, cuda_graph: bool = False,
                 generator: torch.Generator | None = None):
        self.model = model
        self.spec = FrameSpec.of(model)
        if self.spec.p < 1:
            raise ValueError("model: streaming prediction needs past frames (num_frames_cond >= 1), got 0")
        if not isinstance(sampler, SamplerConfig):
            raise TypeError(f"sampler: expected an mcvd.SamplerConfig, got {type(sampler).__name__}")
        if not isinstance(cuda_graph, bool):
            raise TypeError(f"cuda_graph: expected a bool, got {describe(cuda_graph)}")
        # The model's device, where it has tensors to tell it, is known now; a
        # model without any runs where the frames are (checked at the first prediction).
        model_device = _model_device(model)
        if cuda_graph and model_device is not None and model_device.type != "cuda":
            raise ValueError(f"cuda_graph: needs a model on a CUDA device, got one on {model_device}")
        # Its type now, not at the first prediction of a live stream; its device then, against the frames'.
        check_generator(generator, None)
        self.sampler = sampler
        self._options = dict(generator=generator, cuda_graph=cuda_graph)
        self._block: BlockSampler | None = None
        self._window: torch.Tensor | None = None

    @property
    def window(self) -> torch.Tensor | None:
        """The kept past frames [B, <= p, C, H, W] (None before the first push)."""
        return self._window

    @property
    def ready(self) -> bool:
        """Whether p frames have been pushed, so predict_next can run."""
        return self._window is not None and self._window.shape[1] == self.spec.p

    def reset(self) -> None:
        """Forget the observed frames (a new stream); captured graphs are kept."""
        self._window = None

    def push(self, frames: torch.Tensor) -> None:
        """Append observed frames: [B, C, H, W] (one frame) or [B, n, C, H, W]."""
        C, S = self.spec.channels, self.spec.size  # named in the forms push takes, not the one it makes
        if not isinstance(frames, torch.Tensor) or not frames.is_floating_point():
            raise TypeError(f"frames: expected a float tensor [B, {C}, {S}, {S}] or [B, n, {C}, {S}, {S}] with "
                            f"values in [-1, 1], got "
                            + (f"dtype {frames.dtype}" if isinstance(frames, torch.Tensor) else describe(frames)))
        if frames.dim() not in (4, 5) or tuple(frames.shape[-3:]) != self.spec.frame_shape():
            raise ValueError(f"frames: expected [B, {C}, {S}, {S}] (one frame of each of B streams) or "
                             f"[B, n, {C}, {S}, {S}] (n frames), the model's channels and image_size; got "
                             f"{list(frames.shape)}")
        if frames.dim() == 4:
            frames = frames.unsqueeze(1)
        self.spec.check_video(frames, "frames", 1)
        check_frames(frames, "frames", self.model)
        w = self._window
        if w is not None and (frames.shape[0], frames.device, frames.dtype) != (w.shape[0], w.device, w.dtype):
            raise ValueError(f"frames: expected batch {w.shape[0]}, {w.dtype} on {w.device} (as the frames "
                             f"pushed before; reset() starts a new stream), got batch {frames.shape[0]}, "
                             f"{frames.dtype} on {frames.device}")
        # A copy: a source that reuses one frame buffer must not rewrite the frames kept (cat copies already).
        frames = frames.detach()
        self._window = (frames.clone() if w is None else torch.cat([w, frames], dim=1))[:, -self.spec.p:]

    def predict_next(self) -> torch.Tensor:
        """The next k frames [B, k, C, H, W] after the pushed ones."""
        if not self.ready:
            have = 0 if self._window is None else self._window.shape[1]
            raise RuntimeError(f"push at least p={self.spec.p} frames (num_frames_cond) before predicting; "
                               f"have {have}")
        w = self._window
        if self._block is None or (self._block.device, self._block.dtype) != (w.device, w.dtype):
            self._block = BlockSampler(self.model, self.sampler, device=w.device, dtype=w.dtype, **self._options)
        B = w.shape[0]
        future = torch.zeros((B, self.spec.f, *self.spec.frame_shape()), device=w.device, dtype=w.dtype)
        mask = torch.zeros((B, 2), dtype=torch.bool, device=w.device)
        mask[:, 0] = True
        with torch.no_grad():
            block = self._block(torch.cat([w, future], dim=1), mask, B)
        check_finite_block(block, "the block")
        return block

    def __call__(self, frames: torch.Tensor) -> torch.Tensor | None:
        """push(frames), then predict_next() - or None while fewer than p frames were seen."""
        self.push(frames)
        return self.predict_next() if self.ready else None
