"""A video streamed through the StreamingPredictor as it plays: what `mcvd stream`
and the demo's streamed clip run, with the timings they report.

Frames arrive one at a time and each is pushed when it arrives. Once the
newest p frames are in, a prediction is made every `every` frames (1 to k,
default k): right after frame t - 1 is pushed, the predictor samples the k
frames t .. t + k - 1 from frames t - p .. t - 1, and frames t .. t + every - 1
are shown from it, so the prediction shown for a time t is always made from
frames before t (p past frames, 1 to `every` frames ahead):

    every = k = 2, p = 2:   frames in   0  1  2  3  4  5  6 ...
                            prediction  -  -  a  a  b  b  c ...   (a made after frame 1, b after 3, ...)

With every = k each sampled frame is shown once, and a prediction has k
frame intervals to finish before the next is due; every = 1 always shows the
freshest prediction (one frame ahead) at k times the cost. As in a live
stream, which does not know its last frame, a prediction due after the last
frame is made and timed too; its frames fall past the video's end.

The latency of a prediction runs from the push of its newest frame to its k
frames on the host (copied there, so a GPU is waited for). The first
prediction also builds the sampler (and on a GPU captures the CUDA graph):
it is reported apart and left out of the rates.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from mcvd.ops._checks import is_int
from mcvd.video import Panel, stream_panels

from .sampler_config import SamplerConfig
from .streaming import STREAMING_DEFAULT, StreamingPredictor
from .tasks import FrameSpec


@dataclass(frozen=True)
class StreamRun:
    """What stream_video saw and did.

    observed: [T, C, H, W] float32 on the CPU, the frames as they arrived.
    predicted: [T, C, H, W] float32 on the CPU, the prediction shown for each time (zeros where none).
    shown: [T] bool, whether a prediction for that time was made (False for the first p frames).
    latencies: seconds of each prediction, in order (the push of its newest frame to its frames on the host).
    seconds: wall time of the whole run, reading the frames included.
    p, k, every: past frames, frames per prediction, frames between predictions.
    source_fps: the source's frame rate, or None when unknown.
    """

    observed: torch.Tensor
    predicted: torch.Tensor
    shown: torch.Tensor
    latencies: tuple[float, ...]
    seconds: float
    p: int
    k: int
    every: int
    source_fps: float | None

    @property
    def frames(self) -> int:
        """Frames in."""
        return self.observed.shape[0]

    @property
    def steady(self) -> tuple[float, ...]:
        """The latencies the rates are taken from: all but the first (which builds the sampler), unless it is alone."""
        return self.latencies[1:] if len(self.latencies) > 1 else self.latencies

    @property
    def fps(self) -> float:
        """Predicted frames per second of prediction time: k frames per steady latency (their mean, so a
        stall counts in full)."""
        return self.k * len(self.steady) / sum(self.steady)

    def latency(self, q: float) -> float:
        """Quantile q (0.5: median, 0.9: p90) of the steady latencies, seconds (linear interpolation)."""
        return float(np.quantile(np.array(self.steady), q))

    @property
    def past_end(self) -> bool:
        """Whether the last prediction falls past the video's end: prediction i is for frames from
        p + i * every on, and one made after the last frame (which a live stream cannot know is its last)
        is timed but not shown."""
        return self.p + (len(self.latencies) - 1) * self.every >= self.frames

    @property
    def budget(self) -> float | None:
        """Seconds between two predictions at the source's rate (every / source_fps), or None."""
        return None if self.source_fps is None else self.every / self.source_fps

    @property
    def keeps_up(self) -> bool | None:
        """Whether 90% of the predictions were ready before the next one was due (p90 latency <= budget);
        None when the source's rate is unknown."""
        return None if self.budget is None else self.latency(0.9) <= self.budget

    def panels(self) -> list[Panel]:
        """The side-by-side video's panels, input | prediction (mcvd.video.stream_panels)."""
        return stream_panels(self.observed, self.predicted, self.shown)

    def summary(self) -> dict:
        """The numbers, JSON-ready: frames in, predictions, frames per second, latencies in seconds."""
        return {"frames_in": self.frames, "predictions": len(self.latencies), "past_frames": self.p,
                "frames_per_prediction": self.k, "every": self.every, "predicted_fps": self.fps,
                "latency_median": self.latency(0.5), "latency_p90": self.latency(0.9), "latency_max": max(self.steady),
                "latency_per_frame": self.latency(0.5) / self.k, "first_latency": self.latencies[0],
                "seconds": self.seconds, "source_fps": self.source_fps, "keeps_up": self.keeps_up}


def stream_video(model, frames: Iterable[torch.Tensor], *, sampler: SamplerConfig = STREAMING_DEFAULT,
                 every: int | None = None, generator: torch.Generator | None = None, cuda_graph: bool = False,
                 source_fps: float | None = None, progress: bool = False, total: int | None = None) -> StreamRun:
    """Run a StreamingPredictor over a video as it plays (see the module docstring).

    Args:
        model: MCVD network with p = num_frames_cond >= 1, on the device to run on.
        frames: the video's frames in order, each [C, H, W] float in [-1, 1] (the
            model's channels and image_size; mcvd.video.iter_clip reads a file so),
            taken one at a time; moved to the model's device and dtype.
        sampler: the sampler's options (default 10 DPM-Solver++ steps).
        every: frames between predictions, 1 to k (default k).
        generator: source of the sampler's random draws, on the model's device.
        cuda_graph: replay the denoising loop as a CUDA graph (a model on a CUDA device).
        source_fps: the source's frame rate, for StreamRun.keeps_up; None if unknown.
        progress: a progress bar over the frames (`total` frames, if known).
    Raises ValueError when fewer than p + 1 frames arrive: no prediction to show.
    """
    spec = FrameSpec.of(model)
    every = spec.k if every is None else every
    if not is_int(every) or not 1 <= every <= spec.k:
        raise ValueError(f"every: expected an int from 1 to k={spec.k} (num_frames), got {every!r}")
    every = int(every)
    if source_fps is not None and not (isinstance(source_fps, (int, float)) and not isinstance(source_fps, bool)
                                       and math.isfinite(source_fps) and source_fps > 0):
        raise ValueError(f"source_fps: expected a finite number > 0 or None, got {source_fps!r}")
    if not isinstance(progress, bool):  # "no" would read as True
        raise TypeError(f"progress: expected a bool, got {type(progress).__name__} {progress!r}")
    if total is not None and not (is_int(total) and total >= 0):
        raise ValueError(f"total: expected the number of frames (an int >= 0) or None, got {total!r}")
    stream = StreamingPredictor(model, sampler, cuda_graph=cuda_graph, generator=generator)
    param = next(iter(model.parameters()), None)
    device, dtype = (param.device, param.dtype) if param is not None else (torch.device("cpu"), torch.float32)
    p = spec.p
    observed, predicted, shown, latencies = [], [], [], []
    newest, newest_at = None, 0  # the newest prediction [k, C, H, W] and the time of its first frame
    bar = tqdm(total=total, desc="stream", unit="frame", disable=not progress)
    start = time.perf_counter()
    try:
        for t, frame in enumerate(frames):
            if (not isinstance(frame, torch.Tensor) or not frame.is_floating_point()
                    or tuple(frame.shape) != spec.frame_shape()):
                got = (f"{frame.dtype} of shape {list(frame.shape)}" if isinstance(frame, torch.Tensor)
                       else type(frame).__name__)
                raise ValueError(f"frames: expected float tensors {list(spec.frame_shape())} [C, H, W], one frame "
                                 f"each (mcvd.video.iter_clip reads a file so); frame {t} is {got}")
            observed.append(frame.detach().to("cpu", torch.float32, copy=True))  # the source may reuse its buffer
            if newest is not None and t - newest_at < every:
                predicted.append(newest[t - newest_at])
                shown.append(True)
            else:
                predicted.append(torch.zeros_like(observed[-1]))
                shown.append(False)
            due = t + 1 >= p and (t + 1 - p) % every == 0  # frames t + 1 ... are predicted now
            arrived = time.perf_counter()
            stream.push(frame.to(device, dtype)[None])
            if due:
                newest = stream.predict_next()[0].to("cpu", torch.float32)  # waits for the device
                newest_at = t + 1
                latencies.append(time.perf_counter() - arrived)
                bar.set_postfix(latency=f"{latencies[-1] * 1000:.0f} ms", refresh=False)
            bar.update(1)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    if len(observed) < p + 1:
        raise ValueError(f"frames: {len(observed)} arrived; streaming needs at least p + 1 = {p + 1} (p = {p} "
                         f"past frames to predict from, one predicted frame to show)")
    return StreamRun(torch.stack(observed), torch.stack(predicted), torch.tensor(shown), tuple(latencies), seconds,
                     p, spec.k, every, None if source_fps is None else float(source_fps))
