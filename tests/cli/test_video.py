"""mcvd.video: grid layout, GIF / MP4 / .npz writers, video input."""
import itertools
import re

import numpy as np
import pytest
import torch
from cli_helpers import encode_video, moving_square
from PIL import Image

from mcvd.video import (
    BORDER,
    GAP,
    HEADER,
    KIND_COLOURS,
    Panel,
    count_frames,
    frame_rate,
    grid_frames,
    iter_clip,
    load_clip,
    read_video,
    task_panels,
    to_uint8,
    write_gif,
    write_mp4,
    write_npz,
)


def constant_frames(values, rows=1, size=5):
    """[rows, T, 1, size, size] whose frame t is the constant values[t]."""
    v = torch.tensor(values, dtype=torch.float32)
    return v.view(1, -1, 1, 1, 1).expand(rows, -1, 1, size, size).clone()


def test_to_uint8_maps_minus_one_one_to_0_255_and_greyscale_to_rgb():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0, -3.0]).view(5, 1, 1, 1)
    out = to_uint8(x)
    assert out.shape == (5, 1, 1, 3) and out.dtype == np.uint8
    # 127.5 rounds half to even: 128; out-of-range values clip.
    assert out[:, 0, 0, 0].tolist() == [0, 128, 255, 255, 0]
    assert (out[..., 0] == out[..., 2]).all()


def test_task_panels_condition_holds_the_last_past_frame():
    past, pred = constant_frames([-1.0, -0.5], rows=2), constant_frames([0.0, 0.25, 0.5], rows=2)
    truth, future = constant_frames([0.1, 0.2, 0.3], rows=2), constant_frames([1.0], rows=2)
    cond, prediction, true = task_panels(pred, past=past, truth=truth, future=future)
    assert [p.title for p in (cond, prediction, true)] == ["condition", "prediction", "truth"]

    def timeline(panel):
        return panel.frames[0, :, 0, 0, 0].tolist()
    assert timeline(cond) == [-1.0, -0.5, -0.5, -0.5, -0.5, 1.0]
    assert timeline(prediction) == [-1.0, -0.5, 0.0, 0.25, 0.5, 1.0]
    assert timeline(true) == pytest.approx([-1.0, -0.5, 0.1, 0.2, 0.3, 1.0])
    assert cond.kinds == ("given", "given", "held", "held", "held", "given")
    assert prediction.kinds == ("given", "given", "sampled", "sampled", "sampled", "given")
    assert true.kinds == ("given", "given", "real", "real", "real", "given")


def test_task_panels_generation_has_only_the_prediction():
    (only,) = task_panels(constant_frames([0.0, 0.5]))
    assert only.title == "prediction" and only.kinds == ("sampled", "sampled")


def test_task_panels_and_panel_errors():
    pred = constant_frames([0.0, 0.5], rows=2)
    with pytest.raises(ValueError, match=r"past: expected \[2, T, 1, 5, 5\]"):
        task_panels(pred, past=constant_frames([0.0], rows=3))
    with pytest.raises(ValueError, match="truth: expected 2 frames"):
        task_panels(pred, truth=constant_frames([0.0, 0.1, 0.2], rows=2))
    with pytest.raises(ValueError, match="kinds: expected 2 entries"):
        Panel("x", pred, ("given", "bogus"))
    with pytest.raises(ValueError, match=r"frames: expected a tensor \[rows, T, C, H, W\]"):
        Panel("x", pred[0], ("given", "given"))


def test_grid_frames_layout_pixels_and_borders():
    # 2 rows, 3 time steps, frames 16 x 16 -> upscaled 4x to 64 x 64 cells.
    past = constant_frames([-1.0], rows=2, size=16)
    pred = constant_frames([0.0, 1.0], rows=2, size=16)
    pred[1] = -pred[1]  # second row differs
    panels = task_panels(pred, past=past)
    frames = grid_frames(panels)
    cell = 16 * 4 + 2 * BORDER
    assert len(frames) == 3
    H, W, _ = frames[0].shape
    assert W == 2 * cell + 3 * GAP
    for f in frames:
        assert f.shape == (H, W, 3) and f.dtype == np.uint8
    # Time step 1, row 1, prediction panel: the sampled frame 0.0 -> grey 128, with a red border.
    y0, x0 = HEADER + GAP + (cell + GAP), GAP + (cell + GAP)
    inner = frames[1][y0 + BORDER:y0 + cell - BORDER, x0 + BORDER:x0 + cell - BORDER]
    assert inner.shape == (64, 64, 3) and (inner == 128).all()
    assert tuple(frames[1][y0, x0 + cell // 2]) == KIND_COLOURS["sampled"]
    # Time step 2, row 1: -1.0 -> black; the condition panel holds the past frame with a grey border.
    assert (frames[2][y0 + BORDER:y0 + cell - BORDER, x0 + BORDER:x0 + cell - BORDER] == 0).all()
    assert tuple(frames[2][y0, GAP + cell // 2]) == KIND_COLOURS["held"]
    assert tuple(frames[0][y0, GAP + cell // 2]) == KIND_COLOURS["given"]
    # The time bar makes every image differ from the previous one.
    assert all((a != b).any() for a, b in itertools.pairwise(frames))


def test_grid_frames_rejects_mismatched_panels():
    a = Panel("a", constant_frames([0.0, 0.0]), ("sampled", "sampled"))
    b = Panel("b", constant_frames([0.0, 0.0, 0.0]), ("sampled",) * 3)
    with pytest.raises(ValueError, match="panel 'b' has frames"):
        grid_frames([a, b])
    with pytest.raises(ValueError, match="at least one panel"):
        grid_frames([])


@pytest.fixture
def images():
    """4 RGB images 20 x 30 (odd-free) with distinct grey levels and a coloured square."""
    out = []
    for t in range(4):
        img = np.full((20, 30, 3), 40 * t + 20, np.uint8)
        img[2:6, 2:6] = KIND_COLOURS["sampled"]
        out.append(img)
    return out


def test_write_gif_frames_readable_by_pillow(tmp_path, images):
    path = write_gif(tmp_path / "a.gif", images, fps=5)
    with Image.open(path) as gif:
        assert gif.n_frames == 4 and gif.size == (30, 20)
        for t in range(4):
            gif.seek(t)
            rgb = np.asarray(gif.convert("RGB"))
            # Few colours: the palette is exact.
            assert (rgb == images[t]).all()
            assert gif.info["duration"] == 200


@pytest.mark.parametrize("fps, centiseconds", [(15, 7), (7.5, 13), (12, 8), (3, 33), (50, 2), (0.01, 10000)])
def test_a_gif_frame_lasts_the_nearest_whole_centiseconds(tmp_path, images, fps, centiseconds):
    """GIF stores delays in centiseconds: 15 fps is 6.67 cs a frame, nearest 7 (14.3 fps), not the 6 (16.7 fps)
    that truncating 67 ms gives."""
    with Image.open(write_gif(tmp_path / "a.gif", images, fps=fps)) as gif:
        assert gif.info["duration"] == 10 * centiseconds


def test_write_mp4_decodes_to_the_frames(tmp_path, images):
    odd = [np.pad(f, ((0, 1), (0, 1), (0, 0))) for f in images]  # 21 x 31: padded to 22 x 32
    path = write_mp4(tmp_path / "a.mp4", odd, fps=4)
    decoded = read_video(path)
    assert len(decoded) == 4 and decoded[0].shape == (22, 32, 3)
    for d, f in zip(decoded, odd):
        # Lossy 4:2:0 coding: compare the flat grey part, where chroma subsampling does not blur edges.
        assert np.abs(d[10:20, 10:30].astype(int) - f[10:20, 10:30]).max() <= 3


def test_write_npz_round_trip(tmp_path):
    x = torch.randn(2, 3, 1, 4, 4)
    path = write_npz(tmp_path / "f.npz", {"prediction": x, "task": np.array("predict")})
    with np.load(path) as z:
        assert np.array_equal(z["prediction"], x.numpy()) and str(z["task"]) == "predict"
    with pytest.raises(TypeError, match=r"arrays: expected a dict of name -> array or tensor, got list"):
        write_npz(tmp_path / "g.npz", [x])
    assert not (tmp_path / "g.npz").exists()


@pytest.mark.parametrize("writer, args", [(write_gif, None), (write_mp4, None), (write_npz, {"a": np.zeros(2)})])
def test_writers_never_overwrite_without_the_flag(tmp_path, images, writer, args):
    path = tmp_path / "out.bin"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="out.bin exists; pass overwrite=True"):
        writer(path, images if args is None else args)
    assert path.read_bytes() == b"keep me"
    writer(path, images if args is None else args, overwrite=True)
    assert path.read_bytes() != b"keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # no temporary file left behind


def test_writers_reject_bad_images_and_missing_folders(tmp_path, images):
    with pytest.raises(ValueError, match="frames: expected a non-empty list of uint8 RGB images"):
        write_gif(tmp_path / "a.gif", [images[0], images[1][:10]])
    with pytest.raises(ValueError, match="frames: expected a non-empty list"):
        write_mp4(tmp_path / "a.mp4", [])
    with pytest.raises(FileNotFoundError, match="no such folder"):
        write_gif(tmp_path / "missing" / "a.gif", images)


@pytest.mark.parametrize("writer, fps, message", [
    (write_gif, 60, "fps: expected 0.01 to 50 frames per second for GIF, got 60"),  # delays under 2 cs play slower
    (write_gif, float("nan"), "fps: expected 0.01 to 50 frames per second for GIF, got nan"),
    (write_mp4, 0.0001, "fps: expected 0.01 to 1000 frames per second for MP4, got 0.0001"),
    (write_mp4, True, "fps: expected 0.01 to 1000 frames per second for MP4, got True"),
])
def test_writers_refuse_a_rate_the_format_cannot_play(tmp_path, images, writer, fps, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        writer(tmp_path / "a.bin", images, fps=fps)
    assert list(tmp_path.iterdir()) == []


def test_read_video_start_and_max_frames(tmp_path):
    path = tmp_path / "square.mp4"
    encode_video(path, moving_square(6))
    frames = read_video(path, start=2, max_frames=3)
    assert len(frames) == 3 and frames[0].shape == (32, 32, 3)
    # Frame 2 has the square at columns 4..11, frame 4 at 8..15 (decoded within coding error).
    assert frames[0][16, 6, 0] > 200 and frames[0][16, 14, 0] < 50
    assert frames[2][16, 14, 0] > 200 and frames[2][16, 6, 0] < 50
    assert len(read_video(path, start=5)) == 1 and read_video(path, start=9) == []


def test_load_clip_resizes_to_the_model_frames(tmp_path):
    path = tmp_path / "square.mp4"
    encode_video(path, moving_square(4))
    clip = load_clip(path, 16, 1, max_frames=3)
    assert clip.shape == (3, 1, 16, 16) and clip.dtype == torch.float32
    assert clip.min() >= -1 and clip.max() <= 1
    # 32 -> 16: the square (rows 12..19, columns 0..7 in frame 0) covers rows 6..9, columns 0..3.
    assert clip[0, 0, 7, 1] > 0.8 and clip[0, 0, 7, 12] < -0.8
    assert load_clip(path, 16, 3, start=10).shape == (0, 3, 16, 16)


def test_read_video_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="input: no such file"):
        read_video(tmp_path / "none.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    with pytest.raises(ValueError, match="input: cannot decode .*bad.mp4 as a video"):
        read_video(bad)
    import av

    sound = tmp_path / "sound.mp4"  # a container with an audio stream and no video
    with av.open(str(sound), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    with pytest.raises(ValueError, match=r"^input: .*sound.mp4 has no video stream$"):
        read_video(sound)


def test_iter_clip_reads_the_frames_of_load_clip_one_at_a_time(tmp_path):
    video = tmp_path / "square.mp4"
    encode_video(video, moving_square(6), fps=7)
    folder = tmp_path / "frames"
    folder.mkdir()
    for t, f in enumerate(moving_square(5)):
        Image.fromarray(f).save(folder / f"{t}.png")
    for path, T, fps in ((video, 6, 7.0), (folder, 5, None)):
        assert count_frames(path) == T and frame_rate(path) == fps
        for channels in (1, 3):
            frames = iter_clip(path, 16, channels, start=1, max_frames=3)
            first = next(frames)  # decoded when asked for
            assert first.shape == (channels, 16, 16)
            # Converted frame by frame: the luma sum may differ from the whole clip's in the last bit.
            torch.testing.assert_close(torch.stack([first, *frames]), load_clip(path, 16, channels, start=1,
                                                                                max_frames=3), rtol=0, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="input: no such file or folder"):
        count_frames(tmp_path / "none.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    with pytest.raises(ValueError, match="input: cannot read .*bad.mp4 as a video"):
        count_frames(bad)
    with pytest.raises(ValueError, match="input: cannot decode .*bad.mp4 as a video"):
        next(iter_clip(bad, 16, 1))
