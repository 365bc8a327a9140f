"""Video and frame-folder inputs that were read wrong, or refused without naming what was wrong: an MP4 whose
edit list drops frames, linked folders, images too large to open, negative spans, unusual digits in names;
and the writers' edge cases (frames as one array, bfloat16 arrays, the key 'file', the file mode)."""
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mcvd import fileio
from mcvd.data import VideoFolder
from mcvd.data.video_folder import frame_files
from mcvd.video import (KIND_COLOURS, count_frames, grid_frames, iter_clip, load_clip, read_frame_folder, read_video,
                        task_panels, write_gif, write_mp4, write_npz)

av = pytest.importorskip("av", reason="MP4 files need PyAV (pip install av)")


def frames_of(values) -> list[np.ndarray]:
    return [np.full((32, 32, 3), v, np.uint8) for v in values]


def save_frames(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(folder / f"{i}.png")
    return folder


def test_an_edit_list_that_drops_frames_is_counted_as_decoded(tmp_path):
    """Packets shifted before time 0 get an edit list: the decoder drops their frames, so must the count."""
    write_mp4(tmp_path / "src.mp4", frames_of(range(0, 240, 20)), fps=10)
    with av.open(str(tmp_path / "src.mp4")) as src, av.open(str(tmp_path / "edit.mp4"), "w") as dst:
        stream = src.streams.video[0]
        out = dst.add_stream_from_template(stream)
        shift = 3 * int(1 / (stream.time_base * 10))  # three frames
        for packet in src.demux(stream):
            if packet.dts is None:
                continue
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = out
            dst.mux(packet)
    decoded = len(read_video(tmp_path / "edit.mp4"))
    assert decoded < 12, "the edit list must drop frames for this test to mean anything"
    assert count_frames(tmp_path / "edit.mp4") == decoded
    root = tmp_path / "root"
    root.mkdir()
    os.replace(tmp_path / "edit.mp4", root / "edit.mp4")
    data = VideoFolder(root, 4, 16, strict=True)
    assert len(data) == decoded - 3
    assert data[len(data) - 1].shape == (4, 3, 16, 16)  # the last clip decodes


def test_linked_folders_are_followed_once(tmp_path):
    save_frames(tmp_path / "kept" / "a", 5)
    save_frames(tmp_path / "kept" / "b", 5)
    split = tmp_path / "split"
    split.mkdir()
    (split / "a").symlink_to(tmp_path / "kept" / "a", target_is_directory=True)
    (split / "b").symlink_to(tmp_path / "kept" / "b", target_is_directory=True)
    (split / "loop").symlink_to(split, target_is_directory=True)  # a link above itself must not loop
    assert len(VideoFolder(split, 4, 8)) == 4  # 2 clips from each of the 2 folders


def test_an_image_too_large_to_open_is_a_read_error(tmp_path, monkeypatch):
    folder = save_frames(tmp_path / "v", 4)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 8 x 8 = 64 pixels: over twice the limit, PIL refuses
    with pytest.raises(ValueError, match=r"input: cannot read the frames of .*DecompressionBombError"):
        read_frame_folder(folder)
    with pytest.raises(ValueError, match=r"root: cannot read clip 0 .*DecompressionBombError"):
        VideoFolder(tmp_path, 4, 8, strict=True)[0]


@pytest.mark.parametrize("kw, name, error", [(dict(start=-2), "start", ValueError),
                                             (dict(max_frames=-1), "max_frames", ValueError),
                                             (dict(start=1.5), "start", TypeError),
                                             (dict(max_frames=True), "max_frames", TypeError),
                                             (dict(stride=0), "stride", ValueError),
                                             (dict(stride=2.0), "stride", TypeError)])
def test_negative_spans_are_refused_for_folders_and_videos(tmp_path, kw, name, error):
    folder = save_frames(tmp_path / "v", 4)
    write_mp4(tmp_path / "v.mp4", frames_of([0, 50, 100, 150]), fps=10)
    low = 1 if name == "stride" else 0
    for read, path in ((read_frame_folder, folder), (read_video, tmp_path / "v.mp4"),
                       (lambda p, **kw: iter_clip(p, 8, 1, **kw), folder)):  # at the call, not at the first frame
        with pytest.raises(error, match=rf"^{name}: expected an integer >= {low}"):
            read(path, **kw)


def test_numpy_integers_are_spans(tmp_path):
    folder = save_frames(tmp_path / "v", 4)
    assert len(read_frame_folder(folder, start=np.int64(1), max_frames=np.int32(2))) == 2
    assert len(list(iter_clip(folder, 8, 1, start=np.int64(3)))) == 1
    assert len(read_frame_folder(folder, stride=np.int64(3))) == 2


@pytest.mark.parametrize("start, max_frames, stride", [(0, None, 2), (1, None, 2), (1, 2, 2), (0, 3, 3), (2, 0, 2),
                                                       (3, None, 5), (5, None, 2), (0, 9, 1)])
def test_a_stride_takes_every_stride_th_frame_from_start(tmp_path, start, max_frames, stride):
    """The frames a stride takes from a folder and from a video: the frames' grey levels (20 per frame,
    kept by a lossless PNG; 10 levels apart in a video's luma, a step its coding error stays well inside)."""
    count = 7
    folder = save_frames(tmp_path / "v", count)
    video = tmp_path / "v.mp4"
    write_mp4(video, frames_of([20 * i for i in range(count)]), fps=10)
    want = list(range(count))[start::stride][:max_frames]
    span = dict(start=start, max_frames=max_frames, stride=stride)
    got = [int(round(f.mean() / 20)) for f in read_frame_folder(folder, **span)]
    assert got == want
    assert [int(round(f.mean() / 20)) for f in read_video(video, **span)] == want
    assert [int(round((f.mean().item() + 1) * 127.5 / 20)) for f in iter_clip(folder, 8, 1, **span)] == want
    assert load_clip(video, 8, 1, **span).shape[0] == len(want)


def test_names_with_other_unicode_digits_sort(tmp_path):
    for name in ("10.png", "2.png", "\u00b23.png", "1.png"):  # "²3": a superscript two, then a decimal 3
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / name)
    assert [p.name for p in frame_files(tmp_path)] == ["1.png", "2.png", "10.png", "\u00b23.png"]


def test_frames_as_one_array_are_written(tmp_path):
    frames = np.stack(frames_of([0, 100, 200]))  # [T, H, W, 3]
    with Image.open(write_gif(tmp_path / "a.gif", frames)) as gif:
        assert gif.n_frames == 3
    assert count_frames(write_mp4(tmp_path / "a.mp4", frames)) == 3
    with pytest.raises(ValueError, match="frames: expected a non-empty list"):
        write_gif(tmp_path / "b.gif", np.zeros((0, 8, 8, 3), np.uint8))


def test_write_npz_takes_bfloat16_and_refuses_the_key_file(tmp_path):
    x = torch.tensor([0.5, -1.25], dtype=torch.bfloat16)
    with np.load(write_npz(tmp_path / "a.npz", {"x": x, "h": x.half()})) as got:
        assert got["x"].dtype == np.float32 and got["x"].tolist() == [0.5, -1.25]
        assert got["h"].dtype == np.float16
    for key in ("file", "allow_pickle"):  # np.savez_compressed's own arguments
        with pytest.raises(ValueError, match=f"arrays: '{key}' cannot name an array"):
            write_npz(tmp_path / "b.npz", {key: np.zeros(2), "x": np.ones(2)})
    assert not (tmp_path / "b.npz").exists()


def test_the_time_bar_follows_the_prediction_panel():
    pred, truth = torch.zeros(1, 3, 1, 8, 8), torch.zeros(1, 3, 1, 8, 8)
    panels = task_panels(pred, truth=truth)
    assert [p.title for p in panels] == ["prediction", "truth"]
    bar = grid_frames(panels)[0][-1, 0]
    assert tuple(bar) == KIND_COLOURS[panels[0].kinds[0]] != KIND_COLOURS[panels[1].kinds[0]]


def test_a_new_file_gets_the_umask_without_changing_it(tmp_path, monkeypatch):
    if not Path("/proc/self/status").exists():
        pytest.skip("reads the umask from /proc/self/status")
    old = os.umask(0o027)
    try:
        def no_umask(mask):  # setting the umask, even for an instant, changes it for every thread
            raise AssertionError("os.umask called")
        monkeypatch.setattr(fileio.os, "umask", no_umask)
        fileio.atomic_write(tmp_path / "f.bin", lambda fh: fh.write(b"x"))
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == 0o640


def test_frames_smaller_than_the_model_s_are_upscaled_with_a_warning(tmp_path):
    """8 x 8 frames for 16 x 16 model frames: read (upscaled), with one warning naming the video; a data set
    warns once when it is made (not in each DataLoader worker), counting the other small videos; frames as
    large as the model's, no warning."""
    import warnings

    folder = save_frames(tmp_path / "v", 6)
    message = r"frames of 8 x 8 pixels \(width x height\) are upscaled to the model's 16 x 16 frames"
    with pytest.warns(UserWarning, match=rf"input: .*v: {message}") as got:
        assert load_clip(folder, 16, 1).shape == (6, 1, 16, 16)
    assert len(got) == 1
    with pytest.warns(UserWarning, match=message) as got:
        assert len(list(iter_clip(folder, 16, 1))) == 6
    assert len(got) == 1
    write_mp4(tmp_path / "w.mp4", frames_of([0, 50, 100]), fps=10)  # 32 x 32: 16 x 16 frames need no upscaling
    save_frames(tmp_path / "u", 3)
    with pytest.warns(UserWarning, match=rf"VideoFolder: .*: {message} \(short side 8 < 16\)") as got:
        data = VideoFolder(tmp_path, 2, 16, channels=1)
    assert len(got) == 1 and "(and 1 more of the 3 videos)" in str(got[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [data[i].shape for i in range(len(data))] == [(2, 1, 16, 16)] * len(data)
        load_clip(folder, 8, 1), list(iter_clip(folder, 8, 1)), VideoFolder(tmp_path, 2, 8)[0]
