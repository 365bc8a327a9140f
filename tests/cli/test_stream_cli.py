"""`mcvd stream`: a video file and a frame folder streamed through a tiny model, the side-by-side output, the
printed rates, errors."""
import re

import numpy as np
import pytest
import torch
from cli_helpers import SIZE, K, P, encode_video, moving_square
from PIL import Image

from mcvd.cli import main
from mcvd.video import BAR, BORDER, GAP, HEADER, load_clip, read_video

FAST = ["--steps", "2", "--threads", "1", "--no-progress"]
CELL = SIZE * 4 + 2 * BORDER  # 16 x 16 frames are shown 4x
SIDE_BY_SIDE = (2 * CELL + 3 * GAP, HEADER + CELL + 2 * GAP + BAR)  # input | prediction, one row


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("input") / "square.mp4"
    encode_video(path, moving_square(9), fps=5)
    return path


def stream(checkpoint, *args):
    return main(["stream", "--checkpoint", str(checkpoint), *FAST, *args])


def test_a_video_file(checkpoint, video, tmp_path, capsys):
    out = tmp_path / "side.mp4"
    assert stream(checkpoint, "--input", str(video), "--out", str(out)) == 0
    text = capsys.readouterr().out
    # One prediction of K frames after frame P - 1, then one every K frames: after frames 1, 3, 5, 7.
    assert f"9 frames in at 5 fps (the video's); 4 predictions of k={K} frames, one every {K} frames from frame {P};" \
        in text  # the last, after frame 7, shows frame 8
    assert re.search(rf"\d+\.\d\d predicted frames per second \({K} per prediction\); latency per prediction median "
                     r"\d+ ms, p90 \d+ ms, max \d+ ms", text)
    assert re.search(r"keeps up with the source's 5 fps: a prediction is due every 2 frames, 400 ms", text)
    frames = read_video(out)
    assert len(frames) == 9 and frames[0].shape[:2] == SIDE_BY_SIDE[::-1]


def test_a_frame_folder_to_gif_every_frame(checkpoint, tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    for t, f in enumerate(moving_square(6)):
        Image.fromarray(f).save(folder / f"{t}.png")
    out = tmp_path / "side.gif"
    assert stream(checkpoint, "--input", str(folder), "--out", str(out), "--every", "1", "--max-frames", "5") == 0
    text = capsys.readouterr().out
    assert ("5 frames in at 10 fps (assumed); 4 predictions of k=2 frames, one every frame from frame 2 (the last "
            "past the video's end: timed, not shown)") in text
    with Image.open(out) as gif:
        assert (gif.n_frames, gif.size) == (5, SIDE_BY_SIDE)


def test_a_shipped_model_by_name(video, tmp_path, capsys):
    """The shipped model (1 channel, 32 x 32) named instead of a file: the video is read as its luma frames."""
    out = tmp_path / "side.gif"
    assert stream("smmnist-demo-cpu", "--input", str(video), "--out", str(out), "--max-frames", "4",
                  "--no-optimize") == 0
    assert ("4 frames in at 5 fps (the video's); 2 predictions of k=2 frames, one every 2 frames from frame 2 (the "
            "last past the video's end: timed, not shown);") in capsys.readouterr().out
    with Image.open(out) as gif:
        assert gif.n_frames == 4 and gif.size[0] == 2 * (32 * 2 + 2 * BORDER) + 3 * GAP


def test_the_current_folder_as_input_names_the_output_after_it(checkpoint, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "clip"
    folder.mkdir()
    for t, f in enumerate(moving_square(4)):
        Image.fromarray(f).save(folder / f"{t}.png")
    monkeypatch.chdir(folder)
    assert stream(checkpoint, "--input", ".") == 0
    assert len(read_video(folder / "stream_out" / "clip.mp4")) == 4


def test_a_source_faster_than_mp4_can_show_is_written_at_its_limit(checkpoint, tmp_path, capsys):
    """A video's frame rate above what an MP4 file records (1000 fps): the side-by-side video plays at that
    limit, rather than the run failing after the streaming."""
    from mcvd.video import FPS_RANGE, frame_rate

    fast = tmp_path / "fast.mp4"
    encode_video(fast, moving_square(4), fps=2000)
    assert stream(checkpoint, "--input", str(fast), "--out", str(tmp_path / "side.mp4")) == 0
    assert "4 frames in at 2000 fps (the video's)" in capsys.readouterr().out
    assert frame_rate(tmp_path / "side.mp4") == FPS_RANGE["MP4"][1]


def test_default_output_and_force(checkpoint, video, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert stream(checkpoint, "--input", str(video), "--max-frames", "3") == 0
    assert "(a single prediction, which also built the sampler)" in capsys.readouterr().out
    out = tmp_path / "stream_out" / "square.mp4"
    assert len(read_video(out)) == 3
    before = out.read_bytes()
    assert stream(checkpoint, "--input", str(video)) == 2
    assert f"mcvd stream: error: --out: {out.relative_to(tmp_path)} exists; choose another file or pass --force" \
        in capsys.readouterr().err
    assert out.read_bytes() == before
    assert stream(checkpoint, "--input", str(video), "--force") == 0
    assert len(read_video(out)) == 9


def test_the_input_video_is_never_its_own_output(checkpoint, video, tmp_path, capsys):
    source = tmp_path / "clip.mp4"
    source.write_bytes(video.read_bytes())
    (tmp_path / "link.mp4").symlink_to(source)
    for out in (source, tmp_path / "link.mp4"):
        assert stream(checkpoint, "--input", str(source), "--out", str(out), "--force") == 2
        assert f"--out: {out} is the --input video; choose another file" in capsys.readouterr().err
    assert source.read_bytes() == video.read_bytes()


@pytest.mark.parametrize("args, message", [
    (["--input", "{tmp}/none.mp4"], "--input: no such file or folder: .*none.mp4"),
    (["--input", "{short}"], rf"--input: .*short.mp4: {P} frames; streaming needs at least p \+ 1 = {P + 1}"),
    (["--input", "{video}", "--max-frames", "1"],
     r"--input: .*square.mp4: 1 frames of its 9 \(--max-frames\); streaming needs at least"),
    (["--input", "{video}", "--out", "{tmp}/x.avi"], "--out: expected a file ending in .mp4 or .gif"),
    (["--input", "{video}", "--every", "3"], f"--every: expected 1 to the model's k={K}"),
    (["--input", "{video}", "--steps", "0"], "--steps: expected >= 1, got 0"),
    (["--input", "{video}", "--device", "cpu", "--cuda-graph"], "--cuda-graph: needs a CUDA device, got cpu"),
    (["--input", "{video}", "--precision", "bf16", "--no-optimize"],
     "--precision bf16: runs in mcvd.optimize's network; drop --no-optimize"),
    (["--input", "{video}", "--device", "cpu", "--precision", "fp16"], "--precision fp16: needs a CUDA device"),
    (["--input", "{tmp}"], "--input: .* holds no frames"),
    (["--input", "{tmp}/notes.mp4"], "--input: cannot read .*notes.mp4 as a video"),
    (["--input", "{video}", "--device", "xpu"], "--device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 'xpu'"),
])
def test_bad_input_fails_with_a_message(checkpoint, video, tmp_path, capsys, args, message):
    short = tmp_path / "short.mp4"
    encode_video(short, moving_square(P))
    (tmp_path / "notes.mp4").write_text("not a video")
    args = [a.format(tmp=tmp_path, short=short, video=video) for a in args]
    out = tmp_path / "out" / "side.mp4"
    assert stream(checkpoint, *args, *(["--out", str(out)] if "--out" not in args else [])) == 2
    assert re.search(f"mcvd stream: error: (argument )?{message}", capsys.readouterr().err)
    assert not out.parent.exists()


def test_the_streamed_frames_are_the_video_s(checkpoint, video, tmp_path):
    # The input column holds the video's frames as load_clip reads them (VideoFolder's conversion).
    out = tmp_path / "side.gif"
    assert stream(checkpoint, "--input", str(video), "--out", str(out), "--max-frames", "4") == 0
    clip = load_clip(video, SIZE, 1, max_frames=4)
    with Image.open(out) as gif:
        gif.seek(3)
        img = torch.from_numpy(np.array(gif.convert("RGB"))).float()
    y0, x0 = HEADER + GAP + BORDER, GAP + BORDER
    shown = img[y0:y0 + SIZE * 4:4, x0:x0 + SIZE * 4:4, 0]  # one pixel per upscaled frame pixel
    expected = ((clip[3, 0] + 1) * 127.5).round()
    assert (shown - expected).abs().max() <= 2  # GIF palette quantisation


def test_a_video_is_read_with_the_models_training_frame_stride(checkpoint, video, tmp_path, capsys):
    """A model trained on a video folder's frames 2 apart is streamed one frame in 2, at half the source's rate
    (the output lasts as long as the source); --frame-stride sets another stride."""
    state = torch.load(checkpoint, weights_only=True)
    state["run_config"]["data"].update(dataset="video_folder", root="videos", frame_stride=2)
    strided = tmp_path / "strided.pt"
    torch.save(state, strided)
    out = tmp_path / "side.gif"
    assert stream(strided, "--input", str(video), "--out", str(out)) == 0
    text = capsys.readouterr().out
    assert (f"5 frames in at 5 fps (the video's), one in 2 (the model's training stride): 2.5 fps; 2 predictions "
            f"of k={K} frames") in text
    assert re.search(r"(does not keep|keeps) up with the 2.5 fps of the frames read: a prediction is due every 2 "
                     r"frames, 800 ms", text)
    clip = load_clip(video, SIZE, 1, stride=2)
    with Image.open(out) as gif:
        assert gif.n_frames == 5 and gif.info["duration"] == 400  # 2.5 fps
        gif.seek(4)
        img = torch.from_numpy(np.array(gif.convert("RGB"))).float()
    y0, x0 = HEADER + GAP + BORDER, GAP + BORDER
    shown = img[y0:y0 + SIZE * 4:4, x0:x0 + SIZE * 4:4, 0]
    assert (shown - ((clip[4, 0] + 1) * 127.5).round()).abs().max() <= 2  # source frame 8
    assert stream(strided, "--input", str(video), "--out", str(out), "--force", "--frame-stride", "3") == 0
    assert "3 frames in at 5 fps (the video's), one in 3 (--frame-stride)" in capsys.readouterr().out
    assert stream(strided, "--input", str(video), "--out", str(out), "--force", "--frame-stride", "5") == 2
    assert (f"--input: {video}: 2 frames, one in 5 of its 9 (--frame-stride); streaming needs at least p + 1 = "
            f"{P + 1}") in capsys.readouterr().err


def test_optimize_compiles_the_network_and_predicts_as_the_eager_one(checkpoint, video, tmp_path, capsys):
    """--optimize streams through mcvd.optimize's compiled network (eager is the
    CPU's default): the same side-by-side frames as the eager run, to the
    video's 8-bit rounding, and the summary says so."""
    eager, fast = tmp_path / "eager.gif", tmp_path / "fast.gif"
    assert stream(checkpoint, "--input", str(video), "--out", str(eager), "--max-frames", "5") == 0
    out, err = capsys.readouterr()
    assert "optimized" not in out and "mcvd.optimize" not in err
    assert stream(checkpoint, "--input", str(video), "--out", str(fast), "--max-frames", "5", "--optimize") == 0
    out, err = capsys.readouterr()
    assert ", optimized" in out and "mcvd.optimize: compiling the network for cpu float32" in err
    a, b = (np.stack(read_video(p)).astype(int) for p in (eager, fast))
    assert a.shape == b.shape and np.abs(a - b).max() <= 2


def test_bf16_implies_optimize_and_says_so(checkpoint, video, tmp_path, capsys):
    """--precision bf16 streams through mcvd.optimize's network compiled in bfloat16 (no --optimize needed)."""
    assert stream(checkpoint, "--input", str(video), "--out", str(tmp_path / "bf16.gif"), "--max-frames", "5",
                  "--precision", "bf16") == 0
    out, err = capsys.readouterr()
    assert ", optimized" in out and "mcvd.optimize: compiling the network for cpu bfloat16" in err
    assert len(read_video(tmp_path / "bf16.gif")) == 5


def test_the_default_channels_last_network_predicts_as_the_model_itself(checkpoint, video, tmp_path):
    """On the CPU the default eager network has its weights in channels_last; --no-optimize keeps the model as
    it is: the same side-by-side frames, to the video's 8-bit rounding."""
    default, plain = tmp_path / "default.gif", tmp_path / "plain.gif"
    assert stream(checkpoint, "--input", str(video), "--out", str(default), "--max-frames", "5") == 0
    assert stream(checkpoint, "--input", str(video), "--out", str(plain), "--max-frames", "5", "--no-optimize") == 0
    a, b = (np.stack(read_video(p)).astype(int) for p in (default, plain))
    assert a.shape == b.shape and np.abs(a - b).max() <= 2
