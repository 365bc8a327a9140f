"""Clips from a folder of videos: video files (decoded with PyAV) or folders of frames.

Layout: `root` is searched recursively. Each video file (extension in
VIDEO_EXTENSIONS) is one video; each folder that directly holds image files
(IMAGE_EXTENSIONS, frames in natural name order: 2.png before 10.png) is one
video. Every start frame (every `clip_step`-th) of every video is one item,
so a `DataLoader(shuffle=True)` draws clips uniformly over the data set.

Frames are resized so that their short side equals `image_size` (bilinear,
antialiased; frames smaller than that are upscaled, with one warning when the
data set is made, naming a video and counting the others, since the model
then sees blur), centre-cropped to `image_size` x `image_size`, converted to
`channels` (3: RGB; 1: luma Y = 0.299 R + 0.587 G + 0.114 B, as PIL's "L")
and scaled to [-1, 1] from their own format's range: 0..255 for 8-bit
frames (video files, and images of PIL modes 1, L, P, RGB, RGBA, LA, CMYK,
YCbCr), 0..65535 for 16-bit greyscale images (modes I;16, I;16B, and I,
which older Pillow gives 16-bit PNGs). Images with an alpha channel or a
transparent colour are read when every pixel is opaque; transparent pixels
have no colour to read, and other modes (32-bit float F, ...) no known range,
so such frames are refused (below). All frames of a frame folder must have
the size of its first frame.

Unreadable videos never stop an epoch: a file that PyAV cannot open, or a
video shorter than one clip, is left out at construction with a warning
naming it; a video that fails while being read (truncated or corrupt data;
in a frame folder, a frame of another size, with transparent pixels or of
a refused mode) is reported with a warning naming the file and the problem,
left out from then on, and its item is served by the next readable video.

Recipes for the paper's data sets (p + k + f frames per clip):

- KTH (`kth`, 64 x 64, 1 channel): the action videos as distributed,
  `root/{boxing,handclapping,handwaving,jogging,running,walking}/person01_boxing_d1_uncomp.avi`;
  `VideoFolder(root, p + k + f, 64, channels=1)`. The paper trains on persons
  1-16 and tests on 17-25: make two roots of symbolic links.
- BAIR robot pushing (`bair`, 64 x 64, 3 channels): the TFRecords converted
  to frame folders, `root/{train,test}/<trajectory>/{0..29}.png`;
  `VideoFolder(root / "train", p + k + f, 64)`.
- Cityscapes (`cityscapes`, 128 x 128, 3 channels): the
  `leftImg8bit_sequence` archive, one folder of 30 frames per sequence
  (`root/{train,val}/<city>/<city>_<seq>_*.png` - move each 30-frame run
  into its own folder), short side resized to 128 and centre-cropped;
  `VideoFolder(root / "train", p + k + f, 128)`.
- UCF-101 (`ucf101`, 64 x 64, 3 channels): `root/<Action>/v_<Action>_gXX_cYY.avi`
  with the official split lists turned into two roots of links;
  `VideoFolder(root, p + k + f, 64)`.
"""
from __future__ import annotations

import bisect
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .pillow import pil_image

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".gif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's RGB -> "L"


def _natural_key(path: Path):
    # The name itself breaks ties ("01.png" and "1.png"), so that the order never depends on the directory's.
    # The odd parts of the split are the runs of decimal digits (isdigit would also take "²", which int refuses).
    return [int(s) if i % 2 else s for i, s in enumerate(re.split(r"(\d+)", path.name))], path.name


def frame_files(folder: str | os.PathLike) -> list[Path]:
    """The frames of a frame folder: its image files (IMAGE_EXTENSIONS, not those of
    subfolders) in natural name order."""
    folder = Path(folder)
    return sorted((p for p in folder.iterdir() if p.name.lower().endswith(IMAGE_EXTENSIONS) and p.is_file()),
                  key=_natural_key)


def _find_videos(root: Path) -> list[tuple[Path, list[Path] | None]]:
    """(path, frame files) per video: frame files None for a video file."""
    found, seen = [], set()
    # Linked folders are followed (a split is often a folder of links to videos kept elsewhere), each real
    # folder once, so that a link to a folder above it cannot loop.
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        dirs.sort()
        here = Path(folder)
        files = sorted(files)
        frames = [here / f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
        if frames:
            found.append((here, sorted(frames, key=_natural_key)))
        found.extend((here / f, None) for f in files if f.lower().endswith(VIDEO_EXTENSIONS))
    return found


def _av():
    try:
        import av
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError("decoding video files needs PyAV: pip install av") from err
    return av


def is_image_read_error(err: Exception) -> bool:
    """PIL's errors of a file that is no image, or a truncated one (OSError), or an image too large to
    open safely (DecompressionBombError, an Exception of its own)."""
    return isinstance(err, OSError) or type(err).__name__ == "DecompressionBombError"


def _is_read_error(err: Exception) -> bool:
    """Errors of a bad file (PyAV, PIL, I/O, too few frames), as opposed to errors of this code."""
    return (isinstance(err, ValueError) or is_image_read_error(err)
            or type(err).__module__.split(".")[0] == "av")


def count_video_frames(path: Path) -> int:
    """Frames of the first video stream, by demuxing (no decoding)."""
    with _av().open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        # Packets an edit list marks to discard are decoded but never output as frames.
        return sum(1 for packet in container.demux(stream)
                   if packet.size > 0 and not getattr(packet, "is_discard", False))


def upright_video_frame(frame) -> np.ndarray:
    """A decoded PyAV frame as RGB uint8 [H, W, 3] as players show it: turned by the rotation its stream's
    display matrix records (phones record portrait video as landscape frames with a rotation of 90 or -90
    degrees, counterclockwise), to the nearest quarter turn. An older PyAV, without VideoFrame.rotation, reads
    none."""
    rgb = frame.to_ndarray(format="rgb24")
    turns = round(getattr(frame, "rotation", 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def decode_video(path: Path, start: int, stop: int | None, stride: int) -> Iterator[np.ndarray]:
    """RGB frames uint8 [H, W, 3] of the first video stream at start, start + stride, ... before `stop`
    (None: to the end), each decoded when asked for, upright (upright_video_frame). The frames the stride
    skips are decoded too: a compressed video's frames depend on the ones before them. ValueError for a file
    without a video stream."""
    with _av().open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        if stop is not None and stop <= start:
            return
        for i, frame in enumerate(container.decode(video=0)):
            if i >= start and (i - start) % stride == 0:
                yield upright_video_frame(frame)
            if stop is not None and i + 1 >= stop:  # not one frame more: each costs a decode
                break


# PIL modes read through PIL's conversion to 8-bit RGB (exact for these), and
# the 16-bit greyscale modes read as they are.
MODES_8BIT = ("1", "L", "P", "RGB", "RGBA", "RGBX", "RGBa", "LA", "La", "PA", "CMYK", "YCbCr")
MODES_16BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def frame_array(img, path: str | os.PathLike) -> np.ndarray:
    """One image as RGB [H, W, 3]: uint8 for the 8-bit modes, uint16 for the 16-bit
    greyscale ones, so that each keeps its own range. Raises ValueError naming
    `path` for a mode of no known range, transparent pixels, or 32-bit integer
    levels outside 0..65535."""
    mode = img.mode

    def refuse_transparent(clear: int) -> None:
        if clear:
            raise ValueError(f"{path}: a frame with transparent pixels ({clear} of {img.width * img.height}, "
                             f"mode {mode}); expected opaque frames (flatten them onto a background first)")

    if mode in MODES_16BIT:
        a = np.asarray(img)
        if mode == "I":  # int32: how older Pillow reads 16-bit greyscale PNGs, levels 0..65535
            lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
            if lo < 0 or hi > 65535:
                raise ValueError(f"{path}: a 32-bit integer frame (mode I) with values {lo}..{hi}, "
                                 "expected 16-bit levels 0..65535")
        if isinstance(img.info.get("transparency"), int):  # a PNG tRNS level: the pixels of that level are clear
            refuse_transparent(int(np.count_nonzero(a == img.info["transparency"])))
        return np.repeat(a.astype(np.uint16)[..., None], 3, axis=-1)
    if mode not in MODES_8BIT:
        raise ValueError(f"{path}: frames of mode {mode} are not read (expected 8-bit modes {', '.join(MODES_8BIT)} "
                         f"or 16-bit greyscale {', '.join(MODES_16BIT)})")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        refuse_transparent(int(np.count_nonzero(np.asarray(rgba.getchannel("A")) < 255)))
        return np.asarray(rgba.convert("RGB"))
    return np.asarray(img.convert("RGB"))


# EXIF's Orientation tag: 1 is upright; cameras store other views with the tag saying how to turn them.
EXIF_ORIENTATION = 0x0112


def upright(img):
    """`img` as a viewer shows it: turned by its EXIF Orientation tag (phone cameras store JPEGs sideways with
    the tag), or itself when it has none."""
    if img.getexif().get(EXIF_ORIENTATION, 1) == 1:
        return img
    from PIL import ImageOps

    return ImageOps.exif_transpose(img)


def read_frames(files: list[Path], first: Path) -> list[np.ndarray]:
    """RGB frames (frame_array) of `files`, upright (EXIF orientation applied), each checked to have the size
    of `first`, the first frame of their folder."""
    image = pil_image()
    with image.open(first) as img:
        size = upright(img).size
    out = []
    for f in files:
        with image.open(f) as img:
            img = upright(img)
            if img.size != size:
                raise ValueError(f"{f}: a frame of {img.width}x{img.height} pixels, expected "
                                 f"{size[0]}x{size[1]} as the folder's first frame {first.name}")
            out.append(frame_array(img, f))
    return out


def warn_if_upscaled(size: tuple[int, int], image_size: int, source: str, stacklevel: int = 3) -> None:
    """Warn when frames of `size` (height, width) have a short side below image_size: frames_to_clip then
    upscales them, and the model sees blurred frames with no more detail in them. `source` names the video."""
    h, w = size
    if min(h, w) < image_size:
        warnings.warn(f"{source}: frames of {w} x {h} pixels (width x height) are upscaled to the model's "
                      f"{image_size} x {image_size} frames (short side {min(h, w)} < {image_size}): blurred, with "
                      f"no more detail than the source", stacklevel=stacklevel)


def _frame_size(path: Path, frames: list[Path] | None) -> tuple[int, int] | None:
    """(height, width) of a video's frames, from its first frame's or its stream's header; None if unread."""
    try:
        if frames is not None:
            with pil_image().open(frames[0]) as img:
                size = img.height, img.width
        else:
            with _av().open(str(path)) as container:
                stream = container.streams.video[0]
                size = stream.codec_context.height, stream.codec_context.width
        return size if min(size) > 0 else None  # a header without a size
    except Exception as err:
        if not _is_read_error(err):
            raise
        return None


def _check_count(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")


def check_clip_size(image_size, channels) -> None:
    """The frames a clip is converted to (frames_to_clip): image_size an int >= 1, channels 1 or 3."""
    _check_count("image_size", image_size)
    if isinstance(channels, bool) or channels not in (1, 3):
        raise ValueError(f"channels: expected 1 or 3, got {channels!r}")


def frames_to_clip(frames: list[np.ndarray], image_size: int, channels: int) -> torch.Tensor:
    """RGB frames [H, W, 3], uint8 (levels 0..255) or uint16 (0..65535), each scaled
    by its own dtype's range -> float32 [T, channels, image_size, image_size] in
    [-1, 1]: short side resized to image_size, centre crop."""
    for f in frames:
        if f.dtype not in (np.uint8, np.uint16) or f.ndim != 3 or f.shape[-1] != 3:
            raise TypeError(f"frames: expected uint8 or uint16 RGB frames [H, W, 3], got {f.dtype} {list(f.shape)}")
    # Divided in float32 by the top level (255 or 65535): 8-bit frames give the values they always gave.
    clip = torch.from_numpy(np.stack([f.astype(np.float32) / np.iinfo(f.dtype).max for f in frames]))
    clip = clip.permute(0, 3, 1, 2)
    h, w = clip.shape[-2:]
    scale = image_size / min(h, w)
    size = (max(image_size, round(h * scale)), max(image_size, round(w * scale)))
    if size != (h, w):
        clip = F.interpolate(clip, size=size, mode="bilinear", align_corners=False, antialias=True)
    top, left = (size[0] - image_size) // 2, (size[1] - image_size) // 2
    clip = clip[:, :, top:top + image_size, left:left + image_size]
    if channels == 1:
        clip = torch.einsum("tchw,c->thw", clip, torch.tensor(LUMA)).unsqueeze(1)
    return clip.clamp_(0.0, 1.0).mul_(2).sub_(1)


# What a strict VideoFolder's reader can do about a video it cannot read.
STRICT_HINT = ("; every clip is read, none replaced by another (strict): move that video (a file or a folder of "
               "frames) out of the folder to read the others")


class VideoFolder(Dataset):
    """Clips of `num_frames` frames from the videos under `root` (see the module docstring).

    Args:
        root: folder searched recursively for video files and frame folders.
        num_frames: T, frames per clip (p + k + f for training).
        image_size: side of the square output frames.
        channels: 3 (RGB) or 1 (luma).
        frame_stride: take every frame_stride-th frame (a clip spans (T - 1) * frame_stride + 1 frames).
        clip_step: frames between the starts of consecutive clips of one video.
        strict: a video that cannot be read, here or when a clip of it is decoded, raises ValueError naming
            its file (what an evaluation needs: every clip scored once), instead of the default for training:
            a warning, the video skipped from then on and the clip taken from the next readable video.

    Items are float32 tensors [T, channels, image_size, image_size] in [-1, 1].
    """

    def __init__(self, root: str | os.PathLike, num_frames: int, image_size: int, *, channels: int = 3,
                 frame_stride: int = 1, clip_step: int = 1, strict: bool = False):
        for name, value in (("num_frames", num_frames), ("frame_stride", frame_stride), ("clip_step", clip_step)):
            _check_count(name, value)
        check_clip_size(image_size, channels)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"root: no such folder: {self.root}" if not self.root.exists() else
                                    f"root: {self.root} is a file; expected a folder of videos and/or frame "
                                    f"folders")
        self.num_frames, self.image_size, self.channels = num_frames, image_size, channels
        self.frame_stride, self.clip_step, self.strict = frame_stride, clip_step, strict
        self.span = (num_frames - 1) * frame_stride + 1

        self.videos: list[tuple[Path, list[Path] | None]] = []
        ends = []  # cumulative clip counts
        for path, frames in _find_videos(self.root):
            try:
                count = len(frames) if frames is not None else count_video_frames(path)
            except Exception as err:
                if not _is_read_error(err):
                    raise
                if strict:
                    raise ValueError(f"root: cannot read {path} ({type(err).__name__}: {err}){STRICT_HINT}") from err
                warnings.warn(f"VideoFolder: skipping {path}: cannot read it ({type(err).__name__}: {err})",
                              stacklevel=2)
                continue
            if count < self.span:
                strided = f" ({num_frames} frames, {frame_stride} apart)" if frame_stride > 1 else ""
                warnings.warn(f"VideoFolder: skipping {path}: {count} frames, a clip needs {self.span}{strided}",
                              stacklevel=2)
                continue
            self.videos.append((path, frames))
            ends.append((ends[-1] if ends else 0) + (count - self.span) // clip_step + 1)
        if not self.videos:
            strided = f" (clips of {num_frames} frames, {frame_stride} apart)" if frame_stride > 1 else ""
            raise ValueError(f"root: no readable video with at least {self.span} frames{strided} under {self.root} "
                             f"(video files {VIDEO_EXTENSIONS} or folders of {IMAGE_EXTENSIONS} frames)")
        self._ends = ends
        self._bad: set[int] = set()
        # Once, here (not in the DataLoader workers, which would each warn): how many videos are upscaled.
        small = [(path, size) for path, frames in self.videos
                 if (size := _frame_size(path, frames)) is not None and min(size) < image_size]
        if small:
            more = f" (and {len(small) - 1} more of the {len(self.videos)} videos)" if len(small) > 1 else ""
            warn_if_upscaled(small[0][1], image_size, f"VideoFolder: {small[0][0]}{more}")

    def __len__(self) -> int:
        return self._ends[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """(video number in self.videos, first frame) of item `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"index: expected 0 <= index < {len(self)}, got {index}")
        video = bisect.bisect_right(self._ends, index)
        return video, (index - (self._ends[video - 1] if video else 0)) * self.clip_step

    def _load(self, video: int, start: int) -> torch.Tensor:
        path, frames = self.videos[video]
        indices = list(range(start, start + self.span, self.frame_stride))
        if frames is None:
            rgb = list(decode_video(path, start, start + self.span, self.frame_stride))
            if len(rgb) != len(indices):
                raise ValueError(f"decoded {len(rgb)} of the {len(indices)} frames wanted (last index "
                                 f"{indices[-1]})")
        else:
            rgb = read_frames([frames[i] for i in indices], frames[0])
        return frames_to_clip(rgb, self.image_size, self.channels)

    def __getitem__(self, index: int) -> torch.Tensor:
        video, start = self.locate(index)
        for attempt in range(len(self.videos)):
            v = (video + attempt) % len(self.videos)
            if v in self._bad:
                continue
            try:
                return self._load(v, start if attempt == 0 else 0)
            except Exception as err:
                if not _is_read_error(err):
                    raise
                if self.strict:
                    raise ValueError(f"root: cannot read clip {index} from {self.videos[v][0]} "
                                     f"({type(err).__name__}: {err}){STRICT_HINT}") from None
                self._bad.add(v)
                warnings.warn(f"VideoFolder: skipping {self.videos[v][0]} from now on: decoding failed "
                              f"({type(err).__name__}: {err})", stacklevel=2)
        raise ValueError(f"root: no readable video left under {self.root}: every one failed to decode (the "
                         f"warnings above name them)")
