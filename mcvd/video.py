"""Video files in and out: grids of condition | prediction | truth as GIF and
MP4, raw frames as .npz, and input clips decoded with PyAV.

A grid shows one row per video and one panel (column) per `Panel`; each
frame of a panel has a coloured border saying what it is (`KIND_COLOURS`):

    given    a frame the model was given (past or future condition)
    sampled  a frame the model sampled
    real     a true frame the model did not see (the target)
    held     the last given frame, held while the model predicts: what the
             copy-last-frame baseline predicts
    blank    no frame yet (a streamed video's prediction before p frames arrived)

A bar under the grid grows with time, in the colour of the prediction
panel's frame. Input clips come from a video file or a folder of frames,
whole (load_clip) or one frame at a time as they play (iter_clip).
Every file is written to a temporary file beside its target and renamed
(mcvd.fileio.atomic_write), so a reader never sees a partial file and an
interrupted run leaves no broken one.
"""
from __future__ import annotations

import inspect
import math
import numbers
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from mcvd.data.video_folder import (IMAGE_EXTENSIONS, check_clip_size, count_video_frames, decode_video,
                                    frame_files, frames_to_clip, is_image_read_error, read_frames, warn_if_upscaled)
from mcvd.fileio import atomic_write

KIND_COLOURS = {
    "given": (46, 160, 67),
    "sampled": (214, 39, 40),
    "real": (31, 119, 180),
    "held": (127, 127, 127),
    "blank": (64, 64, 64),
}
BACKGROUND = (24, 24, 24)
TEXT = (230, 230, 230)
MIN_CELL = 64     # frames are upscaled (nearest) to at least this many pixels a side
BORDER, GAP, HEADER, BAR = 2, 4, 14, 4


@dataclass(frozen=True)
class Panel:
    """One column of a grid.

    title: shown above the column.
    frames: [rows, T, C, H, W] float in [-1, 1] (C = 1 or 3).
    kinds: T entries of KIND_COLOURS's keys, what each frame is.
    """

    title: str
    frames: torch.Tensor
    kinds: tuple[str, ...]

    def __post_init__(self):
        f = self.frames
        if not isinstance(f, torch.Tensor) or f.dim() != 5 or f.shape[2] not in (1, 3):
            raise ValueError(f"frames: expected a tensor [rows, T, C, H, W] with C 1 or 3, got "
                             f"{list(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__}")
        if len(self.kinds) != f.shape[1] or any(k not in KIND_COLOURS for k in self.kinds):
            raise ValueError(f"kinds: expected {f.shape[1]} entries from {tuple(KIND_COLOURS)}, got {self.kinds}")


def task_panels(prediction: torch.Tensor, *, past: torch.Tensor | None = None, truth: torch.Tensor | None = None,
                future: torch.Tensor | None = None) -> list[Panel]:
    """The panels condition | prediction | truth of a video task, over the timeline past, target, future.

    Args:
        prediction: [R, n, C, H, W], the sampled frames (R rows).
        past: [R, p, C, H, W] given frames before them, or None.
        truth: [R, n, C, H, W] the true frames in their place, or None (no truth panel).
        future: [R, f, C, H, W] given frames after them, or None.
    The condition panel (present when past or future is given) holds the last
    past frame (else the first future frame) through the n target frames.
    """
    R, n = prediction.shape[:2]
    for name, x in (("past", past), ("truth", truth), ("future", future)):
        if x is not None and (x.dim() != 5 or x.shape[0] != R or x.shape[2:] != prediction.shape[2:]):
            raise ValueError(f"{name}: expected [{R}, T, {', '.join(map(str, prediction.shape[2:]))}] "
                             f"(rows and frame shape of prediction), got {list(x.shape)}")
    if truth is not None and truth.shape[1] != n:
        raise ValueError(f"truth: expected {n} frames (as prediction), got {truth.shape[1]}")
    before = [] if past is None else [past]
    after = [] if future is None else [future]
    p, f = sum(x.shape[1] for x in before), sum(x.shape[1] for x in after)

    def panel(title, middle, kind):
        frames = torch.cat([*before, middle, *after], dim=1)
        return Panel(title, frames, ("given",) * p + (kind,) * n + ("given",) * f)

    panels = []
    if p or f:
        held = past[:, -1:] if p else future[:, :1]
        panels.append(panel("condition", held.expand(-1, n, -1, -1, -1), "held"))
    panels.append(panel("prediction", prediction, "sampled"))
    if truth is not None:
        panels.append(panel("truth", truth, "real"))
    return panels


def stream_panels(observed: torch.Tensor, predicted: torch.Tensor, shown: torch.Tensor) -> list[Panel]:
    """The panels input | prediction of a streamed video (mcvd.diffusion.stream_video): at each
    time t the observed frame t beside the prediction for t, made from the frames before t.

    Args:
        observed: [T, C, H, W], the frames as they arrived.
        predicted: [T, C, H, W], the prediction for each time (read where `shown`).
        shown: [T] bool, whether a prediction for t was made (False while the first p
            frames arrive: a blank frame).
    Input frames are "given" while no prediction is shown, then "real" (the
    truth of the prediction beside them, which the model has not seen yet).
    """
    T = observed.shape[0]
    if observed.dim() != 4 or predicted.shape != observed.shape or tuple(shown.shape) != (T,):
        raise ValueError(f"observed, predicted, shown: expected [T, C, H, W], [T, C, H, W] and [T], got "
                         f"{list(observed.shape)}, {list(predicted.shape)} and {list(shown.shape)}")
    shown = shown.to(torch.bool).cpu()
    blank = torch.full_like(predicted, -1.0)
    prediction = torch.where(shown.view(T, 1, 1, 1).to(predicted.device), predicted, blank)
    flags = shown.tolist()
    return [Panel("input", observed[None], tuple("real" if s else "given" for s in flags)),
            Panel("prediction", prediction[None], tuple("sampled" if s else "blank" for s in flags))]


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """[..., C, H, W] in [-1, 1] -> uint8 [..., H, W, 3] (greyscale repeated to RGB)."""
    x = ((frames.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    if x.shape[-3] == 1:
        x = x.expand(*x.shape[:-3], 3, *x.shape[-2:])
    return x.movedim(-3, -1).numpy()


def grid_frames(panels: Sequence[Panel], *, scale: int | None = None) -> list[np.ndarray]:
    """The frames of a grid video: one uint8 RGB image [H, W, 3] per time step.

    panels: columns with the same rows, T and frame size. scale: integer
    upscaling of each frame (default: the least giving MIN_CELL pixels).
    """
    from PIL import Image, ImageDraw

    if not panels:
        raise ValueError("panels: expected at least one panel")
    shape = panels[0].frames.shape
    for pn in panels:
        if pn.frames.shape[:2] != shape[:2] or pn.frames.shape[3:] != shape[3:]:
            raise ValueError(f"panels: panel {pn.title!r} has frames {list(pn.frames.shape)}, expected rows, T "
                             f"and frame size as {list(shape)}")
    rows, T, _, H, W = shape
    scale = scale or max(1, math.ceil(MIN_CELL / min(H, W)))
    ch, cw = H * scale + 2 * BORDER, W * scale + 2 * BORDER
    width = len(panels) * cw + (len(panels) + 1) * GAP
    height = HEADER + rows * ch + (rows + 1) * GAP + BAR

    base = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(base)
    for j, pn in enumerate(panels):
        draw.text((GAP + j * (cw + GAP) + 1, 1), pn.title, fill=TEXT)
    base = np.asarray(base).copy()
    pixels = [np.repeat(np.repeat(to_uint8(pn.frames), scale, axis=2), scale, axis=3) for pn in panels]
    # The bar follows the panel titled "prediction", else the second (the first is the condition's).
    timeline = next((pn.kinds for pn in panels if pn.title == "prediction"),
                    panels[1].kinds if len(panels) > 1 else panels[0].kinds)

    out = []
    for t in range(T):
        img = base.copy()
        for j, pn in enumerate(panels):
            x0 = GAP + j * (cw + GAP)
            for r in range(rows):
                y0 = HEADER + GAP + r * (ch + GAP)
                img[y0:y0 + ch, x0:x0 + cw] = KIND_COLOURS[pn.kinds[t]]
                img[y0 + BORDER:y0 + ch - BORDER, x0 + BORDER:x0 + cw - BORDER] = pixels[j][r, t]
        # The bar also makes consecutive images differ, so GIF writers never merge frames.
        img[height - BAR:, :round(width * (t + 1) / T)] = KIND_COLOURS[timeline[t]]
        out.append(img)
    return out


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"path: {path} exists; pass overwrite=True (--force) to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"path: no such folder: {path.parent}")


# GIF frame delays are whole centiseconds, at most 65535, and players show delays under 2 cs as 10 cs: a GIF
# plays at the rate asked only from 0.01 to 50 frames per second. MP4 takes any rate in that range and more.
FPS_RANGE = {"GIF": (0.01, 50.0), "MP4": (0.01, 1000.0)}


def _check_fps(fps, kind: str) -> None:
    low, high = FPS_RANGE[kind]
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not low <= fps <= high:
        raise ValueError(f"fps: expected {low:g} to {high:g} frames per second for {kind}, got {fps!r}")


def _check_images(frames: Sequence[np.ndarray]) -> None:
    if len(frames) == 0 or any(f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3 or f.shape != frames[0].shape
                         for f in frames):
        raise ValueError("frames: expected a non-empty list of uint8 RGB images [H, W, 3] of one size")


def gif_centiseconds(fps: float) -> int:
    """A GIF frame's delay for `fps`: GIF stores whole centiseconds, so the nearest (Pillow would truncate a
    delay given in milliseconds: 67 ms for 15 fps becomes 6 cs, 16.7 fps). The GIF plays at 100 / this."""
    return max(1, round(100 / fps))


def write_gif(path: str | os.PathLike, frames: Sequence[np.ndarray], *, fps: float = 4.0,
              overwrite: bool = False) -> Path:
    """Write uint8 RGB images [H, W, 3] as a looping GIF (Pillow), atomically; fps
    from 0.01 to 50 (FPS_RANGE: GIF frame delays are whole centiseconds, the nearest taken:
    gif_centiseconds)."""
    from PIL import Image

    path = Path(path)
    _check_fps(fps, "GIF")
    _check_target(path, overwrite)
    _check_images(frames)
    images = [Image.fromarray(f) for f in frames]

    def write(fh):
        images[0].save(fh, format="GIF", save_all=True, append_images=images[1:],
                       duration=10 * gif_centiseconds(fps),
                       loop=0)
    atomic_write(path, write)
    return path


def _av():
    try:
        import av
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError("MP4 files and video input need PyAV: pip install av") from err
    return av


def write_mp4(path: str | os.PathLike, frames: Sequence[np.ndarray], *, fps: float = 4.0,
              overwrite: bool = False) -> Path:
    """Write uint8 RGB images [H, W, 3] as an H.264 MP4 (PyAV; MPEG-4 Part 2 if
    this FFmpeg lacks libx264), atomically. Odd sizes are padded by one pixel
    (4:2:0 chroma needs even sizes)."""
    av = _av()
    path = Path(path)
    _check_fps(fps, "MP4")
    _check_target(path, overwrite)
    _check_images(frames)
    h, w = frames[0].shape[:2]
    pad = ((0, h % 2), (0, w % 2), (0, 0))
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"

    def write(fh):
        with av.open(fh, mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height, stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": "18"}  # near-lossless: the frames are small
            for f in frames:
                frame = av.VideoFrame.from_ndarray(np.pad(f, pad), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
    atomic_write(path, write)
    return path


# The named parameters of np.savez_compressed ("file", "allow_pickle" in NumPy 2): an array given one of
# these names would be taken as that argument.
_SAVEZ_ARGS = frozenset(name for name, p in inspect.signature(np.savez_compressed).parameters.items()
                        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray | torch.Tensor], *,
              overwrite: bool = False) -> Path:
    """Write arrays (tensors as their dtype in NumPy; bfloat16, which NumPy lacks, as float32) to a compressed
    .npz, atomically."""
    if not isinstance(arrays, dict):
        raise TypeError(f"arrays: expected a dict of name -> array or tensor, got {type(arrays).__name__}")
    path = Path(path)
    _check_target(path, overwrite)
    taken = sorted(_SAVEZ_ARGS & set(arrays))
    if taken:  # np.savez_compressed would take them as its own arguments, not write them
        raise ValueError(f"arrays: {', '.join(map(repr, taken))} cannot name an array (np.savez_compressed's own "
                         f"argument); choose another key")

    def as_numpy(v):
        if not isinstance(v, torch.Tensor):
            return np.asarray(v)
        v = v.detach().cpu()
        return (v.float() if v.dtype == torch.bfloat16 else v).numpy()  # NumPy has no bfloat16
    plain = {k: as_numpy(v) for k, v in arrays.items()}
    atomic_write(path, lambda fh: np.savez_compressed(fh, **plain))
    return path


def read_video(path: str | os.PathLike, *, start: int = 0, max_frames: int | None = None,
               stride: int = 1) -> list[np.ndarray]:
    """Decode frames start, start + stride, start + 2 stride, ... (at most max_frames)
    of a video file's first video stream (PyAV): uint8 RGB images [H, W, 3]. Raises
    ValueError naming the file if it is not a readable video."""
    start, max_frames, stride = _check_span(start, max_frames, stride)
    return list(_decode_video(Path(path), start, max_frames, stride))


def _stop(start: int, max_frames: int | None, stride: int) -> int | None:
    """The index after the last frame a span takes (None: to the end)."""
    if max_frames is None:
        return None
    return start + (max_frames - 1) * stride + 1 if max_frames else start


def _decode_video(path: Path, start: int, max_frames: int | None, stride: int = 1) -> Iterator[np.ndarray]:
    """read_video's frames, each decoded when asked for (mcvd.data.video_folder.decode_video), with errors
    that name the input."""
    av = _av()
    if not path.is_file():
        raise FileNotFoundError(f"input: no such file: {path}")
    try:
        yield from decode_video(path, start, _stop(start, max_frames, stride), stride)
    except av.FFmpegError as err:
        raise ValueError(f"input: cannot decode {path} as a video ({type(err).__name__}: {err})") from err
    except ValueError as err:  # no video stream
        raise ValueError(f"input: {err}") from None


def read_frame_folder(path: str | os.PathLike, *, start: int = 0, max_frames: int | None = None,
                      stride: int = 1) -> list[np.ndarray]:
    """Frames start, start + stride, start + 2 stride, ... (at most max_frames) of a
    folder of frames (its image files in natural name order, as mcvd.data.VideoFolder
    reads a frame folder): RGB images [H, W, 3], uint8, or uint16 for 16-bit
    greyscale. Raises ValueError naming the folder if it holds no frames or a frame
    cannot be read."""
    start, max_frames, stride = _check_span(start, max_frames, stride)
    path = Path(path)
    files = _folder_frames(path)
    chosen = files[start:_stop(start, max_frames, stride):stride]
    try:
        return read_frames(chosen, files[0]) if chosen else []
    except Exception as err:
        if (problem := _frame_error(path, err)) is None:
            raise
        raise problem from err


def _check_span(start, max_frames, stride=1) -> tuple[int, int | None, int]:
    """start, max_frames and stride of the readers, as ints (NumPy integers accepted): a negative start would
    count from the end in a folder and mean nothing in a video."""
    def count(value, name, expected, low=0):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name}: expected {expected}, got {type(value).__name__} {value!r}")
        if value < low:
            raise ValueError(f"{name}: expected {expected}, got {value!r}")
        return int(value)
    return (count(start, "start", "an integer >= 0"),
            None if max_frames is None else count(max_frames, "max_frames", "an integer >= 0 or None"),
            count(stride, "stride", "an integer >= 1", 1))


def _folder_frames(path: Path) -> list[Path]:
    files = frame_files(path)
    if not files:
        raise ValueError(f"input: {path} holds no frames (files {', '.join(IMAGE_EXTENSIONS)}); expected a video "
                         f"file or a folder of frames")
    return files


def _read_folder(path: Path, start: int, max_frames: int | None, stride: int = 1) -> Iterator[np.ndarray]:
    """read_frame_folder's frames, each read when asked for."""
    files = _folder_frames(path)
    for f in files[start:_stop(start, max_frames, stride):stride]:
        try:
            yield read_frames([f], files[0])[0]
        except Exception as err:
            if (problem := _frame_error(path, err)) is None:
                raise
            raise problem from err


def _frame_error(path: Path, err: Exception) -> ValueError | None:
    """What to raise for `err`, raised reading a frame of the folder `path`: an unreadable image or a frame of
    another size as a ValueError that names the argument (input); None for anything else (raised as it was)."""
    if is_image_read_error(err):
        return ValueError(f"input: cannot read the frames of {path} ({type(err).__name__}: {err})")
    if isinstance(err, ValueError) and not str(err).startswith("input:"):  # a frame of another size
        return ValueError(f"input: {err}")
    return None


def load_clip(path: str | os.PathLike, image_size: int, channels: int, *, start: int = 0,
              max_frames: int | None = None, stride: int = 1) -> torch.Tensor:
    """A video file or a folder of frames as a clip float32 [T, channels, image_size,
    image_size] in [-1, 1] (short side resized, centre crop, as mcvd.data.VideoFolder);
    every stride-th frame from start, at most max_frames of them (a model trained on a
    video folder with data.frame_stride s reads its input so); T may be 0."""
    check_clip_size(image_size, channels)
    if Path(path).is_dir():
        frames = read_frame_folder(path, start=start, max_frames=max_frames, stride=stride)
    else:
        frames = read_video(path, start=start, max_frames=max_frames, stride=stride)
    if not frames:
        return torch.zeros((0, channels, image_size, image_size))
    warn_if_upscaled(frames[0].shape[:2], image_size, f"input: {path}")
    return frames_to_clip(frames, image_size, channels)


def iter_clip(path: str | os.PathLike, image_size: int, channels: int, *, start: int = 0,
              max_frames: int | None = None, stride: int = 1) -> Iterator[torch.Tensor]:
    """The frames of a video file or a folder of frames one at a time (every stride-th
    from start, at most max_frames), each decoded when asked for, as a live source
    delivers them: float32 [channels, image_size, image_size] in [-1, 1], converted as
    load_clip converts them. Errors as read_video and read_frame_folder, raised when
    the frame is reached; a wrong start, max_frames, stride, image_size or channels raises at the call."""
    start, max_frames, stride = _check_span(start, max_frames, stride)
    check_clip_size(image_size, channels)
    path = Path(path)
    rgb = (_read_folder if path.is_dir() else _decode_video)(path, start, max_frames, stride)
    return _converted(rgb, image_size, channels, path)


def _converted(rgb: Iterator[np.ndarray], image_size: int, channels: int, path: Path) -> Iterator[torch.Tensor]:
    for t, frame in enumerate(rgb):
        if t == 0:
            warn_if_upscaled(frame.shape[:2], image_size, f"input: {path}", stacklevel=2)
        yield frames_to_clip([frame], image_size, channels)[0]


def count_frames(path: str | os.PathLike) -> int:
    """Frames of a folder of frames, or of a video file's first video stream (counted
    by demuxing, without decoding). FileNotFoundError or ValueError naming the input
    when it is missing, a folder without frames or not a readable video."""
    path = Path(path)
    if path.is_dir():
        return len(_folder_frames(path))
    if not path.is_file():
        raise FileNotFoundError(f"input: no such file or folder: {path}")
    av = _av()
    try:
        return count_video_frames(path)
    except (av.FFmpegError, ValueError) as err:
        raise ValueError(f"input: cannot read {path} as a video ({type(err).__name__}: {err})") from err


def frame_rate(path: str | os.PathLike) -> float | None:
    """Frames per second of a video file's first video stream (its average rate), or
    None: a folder of frames, or a file that does not say."""
    path = Path(path)
    if path.is_dir():
        return None
    av = _av()
    try:
        with av.open(str(path)) as container:
            rate = container.streams.video[0].average_rate if container.streams.video else None
    except av.FFmpegError as err:
        raise ValueError(f"input: cannot read {path} as a video ({type(err).__name__}: {err})") from err
    return float(rate) if rate else None
