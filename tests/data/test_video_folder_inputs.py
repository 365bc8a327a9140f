"""VideoFolder on frames that used to be read wrong without a word: 16-bit
greyscale, transparency, other PIL modes, frames of different sizes."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mcvd.data import VideoFolder
from mcvd.data import video_folder as vf

W, H = 16, 8  # short side 8: VideoFolder(..., 8) keeps the frames' size and crops columns 4..11


def gradient16(shift: int = 0) -> np.ndarray:
    """uint16 [H, W]: a ramp over the whole 16-bit range along the columns (0, 4369, ..., 65535)."""
    ramp = (np.arange(W, dtype=np.int64) * 65535 // (W - 1) + shift).clip(0, 65535).astype(np.uint16)
    return np.broadcast_to(ramp, (H, W)).copy()


def save_clip(folder: Path, frames, mode=None) -> Path:
    folder.mkdir(parents=True)
    for i, a in enumerate(frames):
        (Image.fromarray(a) if mode is None else Image.fromarray(a, mode)).save(folder / f"{i}.png")
    return folder


def centre(a: np.ndarray) -> np.ndarray:
    return a[:, W // 2 - H // 2: W // 2 + H // 2]


@pytest.mark.parametrize("channels", [3, 1])
def test_16bit_greyscale_frames_use_the_16bit_range(tmp_path, channels):
    frames = [gradient16(shift) for shift in (0, 30000, -30000)]  # the shifted ramps saturate in the crop
    save_clip(tmp_path / "v", frames)
    with Image.open(tmp_path / "v" / "0.png") as img:
        assert img.mode == "I;16"  # a real 16-bit PNG, as PIL reads it
    clip = VideoFolder(tmp_path, 3, H, channels=channels)[0]
    assert clip.shape == (3, channels, H, H)
    want = torch.from_numpy(np.stack([centre(f) for f in frames]).astype(np.float64) / 65535 * 2 - 1)
    # float32 arithmetic on exact 16-bit levels; the luma weights sum to 1 up to float32 rounding.
    torch.testing.assert_close(clip.double(), want[:, None].expand_as(clip), rtol=0, atol=1e-6)
    assert clip.min() == -1 and clip.max() == 1  # levels 0 and 65535


def test_16bit_and_8bit_frames_of_one_picture_agree(tmp_path):
    g16 = gradient16()
    g8 = (g16 // 257).astype(np.uint8)  # 65535 / 255 = 257: the same picture, 8-bit levels
    save_clip(tmp_path / "a" / "v16", [g16] * 2)
    save_clip(tmp_path / "b" / "v8", [g8] * 2)
    c16, c8 = VideoFolder(tmp_path / "a", 2, H)[0], VideoFolder(tmp_path / "b", 2, H)[0]
    torch.testing.assert_close(c16, c8, rtol=0, atol=2 / 255)  # within one 8-bit level (of [-1, 1]'s 2/255)


def test_big_endian_16bit_frames(tmp_path):
    g = gradient16()
    img = Image.frombytes("I;16B", (W, H), g.astype(">u2").tobytes())
    np.testing.assert_array_equal(vf.frame_array(img, "big.png")[..., 0], g)


def test_32bit_integer_frames_are_read_as_16bit_levels_or_refused():
    # Older Pillow reads 16-bit greyscale PNGs as mode "I" (int32) holding 0..65535.
    g = gradient16().astype(np.int32)
    np.testing.assert_array_equal(vf.frame_array(Image.fromarray(g, "I"), "i.png"), np.repeat(g[..., None], 3, -1))
    with pytest.raises(ValueError, match=r"big\.png: a 32-bit integer frame \(mode I\) with values 0\.\.70000, "
                                         r"expected 16-bit levels 0\.\.65535"):
        vf.frame_array(Image.fromarray(np.array([[0, 70000]], np.int32), "I"), "big.png")


def test_float_frames_are_refused_naming_the_mode():
    with pytest.raises(ValueError, match=r"f\.tif: frames of mode F are not read \(expected 8-bit"):
        vf.frame_array(Image.fromarray(np.zeros((2, 2), np.float32), "F"), "f.tif")


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_opaque_alpha_is_dropped_and_transparency_refused(tmp_path, mode):
    bands = 4 if mode == "RGBA" else 2
    a = np.full((H, W, bands), 200, np.uint8)
    a[..., -1] = 255
    save_clip(tmp_path / "ok" / "v", [a, a])
    clip = VideoFolder(tmp_path / "ok", 2, H)[0]
    torch.testing.assert_close(clip, torch.full_like(clip, 200 / 255 * 2 - 1))

    a[0, 0, -1] = 0  # one transparent pixel: its colour is whatever the file stored
    save_clip(tmp_path / "bad" / "v", [a, a])
    ds = VideoFolder(tmp_path / "bad", 2, H)
    with pytest.raises(ValueError, match=rf"0\.png: a frame with transparent pixels \(1 of {H * W}, mode {mode}\); "
                                         r"expected opaque frames"):
        ds._load(0, 0)
    with pytest.warns(UserWarning, match=r"0\.png: a frame with transparent pixels"), \
            pytest.raises(ValueError, match="root: no readable video left"):
        ds[0]


def test_palette_frames_with_a_transparent_index_are_refused(tmp_path):
    img = Image.fromarray(np.zeros((H, W), np.uint8), "P")
    img.putpalette([10, 20, 30] * 256)
    folder = tmp_path / "v"
    folder.mkdir()
    for i in range(2):
        img.save(folder / f"{i}.png", transparency=0)
    with pytest.raises(ValueError, match=r"a frame with transparent pixels \(128 of 128, mode P\)"):
        VideoFolder(tmp_path, 2, H)._load(0, 0)
    img.save(folder / "0.png")  # the same palette, no transparency: read as its colours
    img.save(folder / "1.png")
    clip = VideoFolder(tmp_path, 2, H)[0]
    want = torch.tensor([10, 20, 30]) / 255 * 2 - 1
    torch.testing.assert_close(clip, want.view(1, 3, 1, 1).expand_as(clip))


def test_bilevel_frames(tmp_path):
    a = np.zeros((H, W), bool)
    a[:, W // 2:] = True
    save_clip(tmp_path / "v", [a, a])
    clip = VideoFolder(tmp_path, 2, H, channels=1)[0]
    assert clip[0, 0, 0].tolist() == [-1.0] * 4 + [1.0] * 4


def test_a_frame_of_another_size_in_an_input_folder_is_named_by_the_argument(tmp_path):
    from mcvd.video import iter_clip, read_frame_folder

    frame, odd = np.zeros((H, W, 3), np.uint8), np.zeros((H + 1, W, 3), np.uint8)
    save_clip(tmp_path / "v", [frame, frame, odd])
    msg = r"^input: .*2\.png: a frame of 16x9 pixels, expected 16x8 as the folder's first frame 0\.png"
    with pytest.raises(ValueError, match=msg):
        read_frame_folder(tmp_path / "v")
    with pytest.raises(ValueError, match=msg):
        list(iter_clip(tmp_path / "v", H, 3))


def test_the_clip_readers_name_a_bad_size_or_channel_count_at_the_call(tmp_path):
    from mcvd.video import iter_clip, load_clip

    frame = np.zeros((H, W, 3), np.uint8)
    save_clip(tmp_path / "v", [frame, frame])
    for reader in (load_clip, iter_clip):
        with pytest.raises(ValueError, match=r"channels: expected 1 or 3, got 2"):
            reader(tmp_path / "v", H, 2)
        with pytest.raises(ValueError, match=r"image_size: expected an int >= 1, got 0"):
            reader(tmp_path / "v", 0, 3)
        with pytest.raises(ValueError, match=r"image_size: expected an int >= 1, got 8.0"):
            reader(tmp_path / "v", 8.0, 3)
    assert load_clip(tmp_path / "v", H, 1).shape == (2, 1, H, H)


def test_a_frame_of_another_size_is_named_with_both_sizes(tmp_path):
    frame, odd = np.zeros((H, W, 3), np.uint8), np.zeros((H + 1, W, 3), np.uint8)
    frames = [frame] * 3 + [odd] + [frame] * 2
    save_clip(tmp_path / "v", frames)
    ds = VideoFolder(tmp_path, 2, H)
    msg = r"3\.png: a frame of 16x9 pixels, expected 16x8 as the folder's first frame 0\.png"
    for start in (2, 3):  # the odd frame is named whether or not the clip starts on it
        with pytest.raises(ValueError, match=msg):
            ds._load(0, start)
    with pytest.warns(UserWarning, match=r"skipping .*v from now on: .*" + msg):
        with pytest.raises(ValueError, match="root: no readable video left"):
            ds[3]
    save_clip(tmp_path / "w", [frame] * 6)  # a good video beside: the default takes the clip from it instead
    with pytest.warns(UserWarning, match="skipping"):
        assert VideoFolder(tmp_path, 2, H)[3].shape == (2, 3, H, H)
    strict = VideoFolder(tmp_path, 2, H, strict=True)  # what an evaluation reads: the clip's error, named
    with pytest.raises(ValueError, match=r"root: cannot read clip 3 from .*v \(ValueError: .*" + msg):
        strict[3]
    assert strict[8].shape == (2, 3, H, H)  # the good video's clips still read


def test_frames_to_clip_takes_8_and_16_bit_frames_only():
    frames = [np.full((4, 4, 3), 65535, np.uint16), np.full((4, 4, 3), 255, np.uint8)]
    torch.testing.assert_close(vf.frames_to_clip(frames, 4, 3), torch.ones(2, 3, 4, 4))
    with pytest.raises(TypeError, match=r"frames: expected uint8 or uint16 RGB frames \[H, W, 3\], got float32"):
        vf.frames_to_clip([np.ones((4, 4, 3), np.float32)], 4, 3)


def test_an_empty_folder_tree_is_refused(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "notes.txt").write_text("no frames here")
    with pytest.raises(ValueError, match=r"root: no readable video with at least 2 frames under"):
        VideoFolder(tmp_path, 2, H)


def test_16bit_frames_with_a_transparent_level_are_refused_where_it_occurs(tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    g = gradient16()
    Image.fromarray(g).save(folder / "0.png", transparency=int(g[0, 3]))  # the level of one column
    Image.fromarray(g).save(folder / "1.png", transparency=1)  # a level no pixel has: all opaque
    with Image.open(folder / "0.png") as img:
        assert img.mode == "I;16" and "transparency" in img.info
        with pytest.raises(ValueError, match=rf"0\.png: a frame with transparent pixels \({H} of {H * W}, mode I;16\)"):
            vf.frame_array(img, folder / "0.png")
    with Image.open(folder / "1.png") as img:
        np.testing.assert_array_equal(vf.frame_array(img, "1.png")[..., 1], g)


def test_frames_stored_sideways_with_an_exif_orientation_are_read_upright(tmp_path):
    """Phone cameras store a portrait JPEG's pixels sideways and say so in EXIF (Orientation 6: turn 90 degrees
    clockwise to view); the frames are read as every viewer shows them, for the training data and for
    load_clip/iter_clip alike."""
    from mcvd.video import iter_clip, load_clip

    upright_frames = []
    for t in range(3):
        a = np.zeros((32, 24, 3), np.uint8)  # upright: 32 high, 24 wide, a bright bar at the top, moving right
        a[:8, 4 * t:4 * t + 8] = 255
        upright_frames.append(a)
        stored = Image.fromarray(a).transpose(Image.Transpose.ROTATE_90)  # as the camera stores it: 24 x 32
        exif = Image.Exif()
        exif[0x0112] = 6
        (tmp_path / "v").mkdir(exist_ok=True)
        stored.save(tmp_path / "v" / f"{t}.jpg", quality=100, exif=exif)
    read = vf.read_frames(sorted((tmp_path / "v").iterdir()), tmp_path / "v" / "0.jpg")
    assert [f.shape for f in read] == [(32, 24, 3)] * 3
    for got, want in zip(read, upright_frames):
        assert np.abs(got.astype(int) - want).mean() < 4  # JPEG's rounding, not another orientation (~60)
    clip = load_clip(tmp_path / "v", 24, 3)  # short side 24: the centre 24 x 24 of the upright frames
    want = torch.from_numpy(np.stack(upright_frames)[:, 4:28]).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert (clip - want).abs().mean() < 0.05
    assert torch.equal(torch.stack(list(iter_clip(tmp_path / "v", 24, 3))), clip)


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_a_video_recorded_with_a_display_rotation_is_read_upright(tmp_path, degrees):
    """Phones record portrait video as landscape frames with a rotation in the stream's display matrix; the
    frames are read as players show them."""
    av = pytest.importorskip("av")
    if not hasattr(av.video.stream.VideoStream, "set_display_rotation"):
        pytest.skip("this PyAV cannot write a display rotation")
    from mcvd.video import load_clip

    stored = np.zeros((32, 48, 3), np.uint8)  # landscape, a bright block at the top left
    stored[:8, :16] = 255
    path = tmp_path / "portrait.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt, stream.options = 48, 32, "yuv420p", {"crf": "0"}
        stream.set_display_rotation(degrees)
        for _ in range(2):
            for packet in stream.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    shown = np.rot90(stored, degrees // 90)  # counterclockwise, as the display matrix says
    frames = list(vf.decode_video(path, 0, None, 1))
    assert [f.shape for f in frames] == [shown.shape] * 2
    assert np.abs(frames[0].astype(int) - shown).mean() < 4  # (another orientation: ~60)
    clip = load_clip(path, 32, 3)  # the short side 32: the centre crop of the upright frames
    h, w = shown.shape[:2]
    top, left = (h - 32) // 2, (w - 32) // 2
    want = torch.from_numpy(shown[top:top + 32, left:left + 32].copy()).permute(2, 0, 1).float() / 127.5 - 1
    assert (clip[0] - want).abs().mean() < 0.05
