"""`mcvd sample`: every task end to end on a tiny checkpoint, output files, overwriting, errors."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import DIGIT, SIZE, F, K, P, encode_video, moving_square
from official_fixtures import FIXTURES, needs_fixtures
from PIL import Image

from mcvd.cli import main
from mcvd.data import StochasticMovingMNIST
from mcvd.metrics.psnr_ssim import psnr
from mcvd.nn.optimize import TOLERANCE
from mcvd.video import BAR, BORDER, GAP, HEADER, load_clip, read_video

# The model as it is, eager (the CPU's default lays its weights out channels_last; one test below takes it).
FAST = ["--steps", "2", "--no-progress", "--no-optimize"]


def sample(checkpoint, out, *args):
    return main(["sample", "--checkpoint", str(checkpoint), "--out", str(out), *FAST, *args])


def gif_frames(path) -> tuple[int, tuple[int, int]]:
    with Image.open(path) as gif:
        return gif.n_frames, gif.size


def test_predict_smmnist_clips(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert sample(checkpoint, out, "--data", "smmnist", "--index", "3", "0", "--frames", "3", "--samples", "2",
                  "--threads", "1") == 0
    assert torch.get_num_threads() == 1  # the cli tests' fixture restores it
    text = capsys.readouterr().out
    assert "predict, 2 sample(s) of 2 clip(s)" in text and "PSNR" in text and "SSIM" in text
    assert sorted(p.name for p in out.iterdir()) == ["frames.npz", "sample.gif", "sample.mp4"]
    # The clips are the test split's (seed 0) drawn with the checkpoint's digit size.
    clips = StochasticMovingMNIST(P + 3, split="test", seed=0, image_size=SIZE, digit_size=DIGIT)
    expected = torch.stack([clips[3], clips[0]])
    with np.load(out / "frames.npz") as z:
        assert sorted(z.files) == ["method", "past", "prediction", "seed", "steps", "task", "truth"]
        assert z["prediction"].shape == (2, 2, 3, 1, SIZE, SIZE) and z["prediction"].dtype == np.float32
        np.testing.assert_array_equal(z["past"], expected[:, :P].numpy())
        np.testing.assert_array_equal(z["truth"], expected[:, P:].numpy())
        assert np.abs(z["prediction"]).max() <= 1.0 and str(z["task"]) == "predict"
        # The printed PSNR is the mean over clips and samples of each prediction's clip PSNR.
        value = psnr(torch.from_numpy(z["prediction"]), torch.from_numpy(z["truth"])).mean()
    assert f"PSNR {value:.2f} dB" in text
    # One image per frame of the timeline; rows: 2 clips x 2 samples; columns condition | prediction | truth.
    cell = SIZE * 4 + 2 * BORDER  # 16 x 16 frames are shown 4x
    assert gif_frames(out / "sample.gif") == (P + 3, (3 * cell + 4 * GAP, HEADER + 4 * cell + 5 * GAP + BAR))
    assert len(read_video(out / "sample.mp4")) == P + 3


def test_same_seed_same_samples(checkpoint, tmp_path):
    for name in ("a", "b"):
        assert sample(checkpoint, tmp_path / name, "--data", "smmnist", "--method", "ddpm", "--seed", "3") == 0
    with np.load(tmp_path / "a" / "frames.npz") as a, np.load(tmp_path / "b" / "frames.npz") as b:
        np.testing.assert_array_equal(a["prediction"], b["prediction"])


def test_interpolate_fills_the_k_frames_between_past_and_future(checkpoint, tmp_path):
    out = tmp_path / "out"
    assert sample(checkpoint, out, "--data", "smmnist", "--task", "interpolate", "--method", "dpm++") == 0
    clip = StochasticMovingMNIST(P + K + F, split="test", seed=0, image_size=SIZE, digit_size=DIGIT)[0]
    with np.load(out / "frames.npz") as z:
        assert z["prediction"].shape == (1, 1, K, 1, SIZE, SIZE)
        np.testing.assert_array_equal(z["future"][0], clip[P + K:].numpy())
        np.testing.assert_array_equal(z["truth"][0], clip[P:P + K].numpy())
    assert gif_frames(out / "sample.gif")[0] == P + K + F


def test_generate_without_input(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert sample(checkpoint, out, "--task", "generate", "--frames", "2", "--samples", "3") == 0
    with np.load(out / "frames.npz") as z:
        assert z["prediction"].shape == (3, 1, 2, 1, SIZE, SIZE)
        assert "past" not in z.files and "truth" not in z.files
    assert gif_frames(out / "sample.gif")[0] == 2
    # The tiny checkpoint never masked the past in training (prob_mask_cond 0): it never learnt to generate.
    err = capsys.readouterr().err
    assert ("mcvd sample: warning: --task generate: this model never saw the past and future masked in training "
            "(its run config: training.prob_mask_cond 0.0, prob_mask_future 0.5, prob_mask_sync False)") in err


def test_a_task_the_model_trained_for_gets_no_warning(checkpoint, guided_checkpoint, tmp_path, capsys):
    assert sample(guided_checkpoint, tmp_path / "gen", "--task", "generate", "--frames", "2") == 0
    assert sample(checkpoint, tmp_path / "pred", "--data", "smmnist") == 0
    assert "warning" not in capsys.readouterr().err


def test_predict_from_a_video_file(checkpoint, tmp_path, capsys):
    video = tmp_path / "square.mp4"
    encode_video(video, moving_square(8))
    out = tmp_path / "out"
    assert sample(checkpoint, out, "--input", str(video), "--start", "1", "--frames", "4") == 0
    clip = load_clip(video, SIZE, 1, start=1, max_frames=P + 4)
    with np.load(out / "frames.npz") as z:
        np.testing.assert_allclose(z["past"][0], clip[:P].numpy())
        np.testing.assert_allclose(z["truth"][0], clip[P:].numpy())
    assert f"{video} from frame 1" in capsys.readouterr().out


def test_a_video_shorter_than_the_truth_predicts_without_it(checkpoint, tmp_path, capsys):
    video = tmp_path / "short.mp4"
    encode_video(video, moving_square(P + 1))
    out = tmp_path / "out"
    assert sample(checkpoint, out, "--input", str(video), "--frames", "2") == 0
    assert "no truth to compare with" in capsys.readouterr().out
    with np.load(out / "frames.npz") as z:
        assert "truth" not in z.files and z["prediction"].shape == (1, 1, 2, 1, SIZE, SIZE)


def test_never_overwrites_without_force(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sample.gif").write_bytes(b"keep me")
    (out / "notes.txt").write_text("mine")
    assert sample(checkpoint, out, "--data", "smmnist") == 2
    err = capsys.readouterr().err
    assert "mcvd sample: error: --out:" in err and "already holds sample.gif" in err and "--force" in err
    assert (out / "sample.gif").read_bytes() == b"keep me" and sorted(p.name for p in out.iterdir()) == [
        "notes.txt", "sample.gif"]
    assert sample(checkpoint, out, "--data", "smmnist", "--force") == 0
    assert gif_frames(out / "sample.gif")[0] == P + K and (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("args, message", [
    (["--data", "smmnist", "--frames", "0"], "--frames: expected >= 1, got 0"),
    (["--data", "smmnist", "--steps", "0"], "--steps: expected >= 1, got 0"),
    (["--task", "generate", "--data", "smmnist"], "the task 'generate' samples without condition frames"),
    ([], "--input or --data: the task 'predict' needs condition frames"),
    (["--data", "smmnist", "--task", "interpolate", "--frames", "3"],
     "--frames: interpolation fills exactly the model's k=2 frames, got 3"),
    (["--data", "smmnist", "--index", "256"], r"--index: the smmnist test split has clips 0..255, got \[256\]"),
    (["--data", "smmnist", "--index", "-1"], r"--index: expected >= 0, got -1"),
    (["--data", "smmnist", "--start", "2"], "--start: selects the first frame of --input"),
    (["--data", "smmnist", "--fps", "0"], "--fps: expected a number from 0.01 to 50, got '0'"),
    (["--data", "smmnist", "--device", "mps"], "--device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 'mps'"),
    (["--data", "smmnist", "--device", "meta"], "--device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 'meta'"),
])
def test_bad_arguments_fail_with_a_message(checkpoint, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert sample(checkpoint, out, *args) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()


def test_missing_or_foreign_checkpoint(tmp_path, capsys):
    assert sample(tmp_path / "none.pt", tmp_path / "out", "--data", "smmnist") == 2
    assert "--checkpoint: no such file: " in capsys.readouterr().err
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    assert sample(other, tmp_path / "out", "--data", "smmnist") == 2
    assert "is not an mcvd model file, training checkpoint or reference-code checkpoint" in capsys.readouterr().err


def test_input_errors(checkpoint, tmp_path, capsys):
    short = tmp_path / "short.mp4"
    encode_video(short, moving_square(1))
    assert sample(checkpoint, tmp_path / "out", "--input", str(short)) == 2
    assert f"has 1 frames from frame 0; the model needs {P} condition frames" in capsys.readouterr().err
    assert sample(checkpoint, tmp_path / "out", "--input", str(short), "--task", "interpolate") == 2
    assert f"interpolation needs {P + K + F}" in capsys.readouterr().err
    assert sample(checkpoint, tmp_path / "out", "--input", str(tmp_path / "none.mp4")) == 2
    assert "input: no such file" in capsys.readouterr().err
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("hello")
    assert sample(checkpoint, tmp_path / "out", "--input", str(not_video)) == 2
    assert "cannot decode" in capsys.readouterr().err


def test_an_output_name_that_is_a_folder_is_refused_even_with_force(checkpoint, tmp_path, capsys):
    (tmp_path / "out" / "sample.mp4").mkdir(parents=True)
    assert sample(checkpoint, tmp_path / "out", "--data", "smmnist", "--force") == 2
    assert f"--out: {tmp_path / 'out' / 'sample.mp4'} is a folder, where this command writes a file" \
        in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sample.mp4"]


def test_a_file_that_is_no_model_is_named_by_the_flag(checkpoint, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a model")
    assert sample(tmp_path / "notes.txt", tmp_path / "out", "--data", "smmnist") == 2
    err = capsys.readouterr().err
    assert "mcvd sample: error: --checkpoint: " in err and "notes.txt is not a readable torch file" in err
    from mcvd.train import read_checkpoint

    damaged = read_checkpoint(checkpoint)
    del damaged["ema"]["conv_out.bias"]
    torch.save(damaged, tmp_path / "damaged.pt")
    assert sample(tmp_path / "damaged.pt", tmp_path / "out", "--data", "smmnist") == 2
    assert "mcvd sample: error: --checkpoint: " in (err := capsys.readouterr().err)
    assert "damaged.pt: its 'ema' weights do not fit its model config" in err


def test_input_and_data_are_exclusive(checkpoint, tmp_path, capsys):
    assert sample(checkpoint, tmp_path / "out", "--input", "a.mp4", "--data", "smmnist") == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("fps", ["nan", "inf", "0.001", "1000"])
def test_fps_outside_what_gif_and_mp4_can_show_is_refused(checkpoint, tmp_path, capsys, fps):
    # GIF frame delays are whole centiseconds and players show delays under 2 cs slower: above 50 fps the
    # GIF would play at another speed than asked.
    assert sample(checkpoint, tmp_path / "out", "--data", "smmnist", "--fps", fps) == 2
    assert "argument --fps: expected a number from 0.01 to 50" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_more_steps_than_the_models_timesteps_are_refused_before_sampling(checkpoint, tmp_path, capsys):
    assert main(["sample", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"), "--data", "smmnist",
                 "--steps", "5000", "--no-progress"]) == 2
    assert "--steps: expected 1 to 1000 (the model's num_timesteps), got 5000" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def guided_checkpoint(tmp_path_factory):
    """The tiny model trained with masked conditioning (past and future), so that it has an unconditional eps."""
    from cli_helpers import TINY_RUN

    from mcvd.train import RunConfig, train

    run = {**TINY_RUN, "training": {**TINY_RUN["training"], "prob_mask_cond": 0.5}}
    return train(RunConfig.from_dict(run), tmp_path_factory.mktemp("guided"), progress=False).checkpoint


def test_guidance_samples_the_guided_prediction(guided_checkpoint, tmp_path, capsys):
    import mcvd

    out = tmp_path / "out"
    assert sample(guided_checkpoint, out, "--data", "smmnist", "--guidance", "2.5", "--seed", "1") == 0
    assert "guidance 2.5" in capsys.readouterr().out
    model, _ = mcvd.load(guided_checkpoint)
    past = StochasticMovingMNIST(P + K, split="test", seed=0, image_size=SIZE, digit_size=DIGIT)[0][None, :P]
    expected = mcvd.predict(model, past, K, steps=2, guidance=2.5, generator=torch.Generator().manual_seed(1))
    unguided = mcvd.predict(model, past, K, steps=2, generator=torch.Generator().manual_seed(1))
    with np.load(out / "frames.npz") as z:
        np.testing.assert_array_equal(z["prediction"][0], expected.numpy())
        assert float(z["guidance"]) == 2.5
        assert not np.array_equal(z["prediction"][0], unguided.numpy())


def test_guidance_interval_guides_only_its_steps(guided_checkpoint, tmp_path, capsys):
    import mcvd
    from mcvd.diffusion import SamplerConfig

    model, _ = mcvd.load(guided_checkpoint)
    last = SamplerConfig(steps=2).make_scheduler(model).timesteps.tolist()[-1]  # the second of the two steps
    out = tmp_path / "out"
    assert sample(guided_checkpoint, out, "--data", "smmnist", "--guidance", "2.5", "--guidance-interval", "0",
                  str(last), "--seed", "1") == 0
    assert f"guidance 2.5 at 0 <= t <= {last}" in capsys.readouterr().out
    past = StochasticMovingMNIST(P + K, split="test", seed=0, image_size=SIZE, digit_size=DIGIT)[0][None, :P]

    def run(**kw):
        return mcvd.predict(model, past, K, steps=2, generator=torch.Generator().manual_seed(1), **kw).numpy()
    with np.load(out / "frames.npz") as z:
        np.testing.assert_array_equal(z["prediction"][0], run(guidance=2.5, guidance_interval=(0, last)))
        assert z["guidance_interval"].tolist() == [0, last]
        assert not np.array_equal(z["prediction"][0], run(guidance=2.5))
        assert not np.array_equal(z["prediction"][0], run())


def test_guidance_interval_needs_guidance_and_an_order(guided_checkpoint, tmp_path, capsys):
    assert sample(guided_checkpoint, tmp_path / "out", "--data", "smmnist", "--guidance-interval", "0", "5") == 2
    assert "--guidance-interval: limits --guidance to some steps; give --guidance W too" in capsys.readouterr().err
    assert sample(guided_checkpoint, tmp_path / "out", "--data", "smmnist", "--guidance", "2",
                  "--guidance-interval", "5", "0") == 2
    assert "--guidance-interval: expected LO <= HI, got 5 0" in capsys.readouterr().err
    assert sample(guided_checkpoint, tmp_path / "out", "--data", "smmnist", "--guidance", "2",
                  "--guidance-interval", "-1", "5") == 2
    assert "--guidance-interval: " in (err := capsys.readouterr().err) and "-1" in err
    # An interval that holds none of the sampler's steps would guide nothing: refused, not run unguided.
    assert sample(guided_checkpoint, tmp_path / "out", "--data", "smmnist", "--guidance", "2",
                  "--guidance-interval", "2000", "3000") == 2
    assert "--guidance-interval: 2000 3000 holds none of the sampler's timesteps (" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_guidance_is_refused_for_a_model_never_trained_unconditionally(checkpoint, tmp_path, capsys):
    # The tiny checkpoint masks the future but never the past (prob_mask_cond 0): its "unconditional" eps,
    # with everything masked, was never trained.
    assert sample(checkpoint, tmp_path / "out", "--data", "smmnist", "--guidance", "2") == 2
    err = capsys.readouterr().err
    assert "--guidance: needs a model trained with masked conditioning" in err
    assert "never saw its condition frames all masked in training (its run config: training.prob_mask_cond 0.0," in err
    assert sample(checkpoint, tmp_path / "out", "--task", "generate", "--guidance", "2") == 2
    assert "--guidance: guides on condition frames; the task 'generate' has none" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_guidance_of_a_model_file_without_a_run_config_warns(guided_checkpoint, tmp_path, capsys):
    import mcvd
    from mcvd.nn import save_model

    model, _ = mcvd.load(guided_checkpoint)
    path = save_model(tmp_path / "model.pt", model)
    assert sample(path, tmp_path / "out", "--data", "smmnist", "--guidance", "2") == 0
    assert "warning: --guidance: " in capsys.readouterr().err


def test_guidance_of_the_shipped_model_file_follows_the_run_config_it_carries(tmp_path, capsys):
    """The shipped model file carries its last stage's run config, which masked the past: no warning."""
    from mcvd import pretrained

    assert sample(pretrained.path("smmnist-demo-cpu"), tmp_path / "out", "--data", "smmnist", "--guidance", "2",
                  "--frames", "2") == 0
    assert "warning" not in capsys.readouterr().err


def test_a_shipped_model_by_name_samples_as_its_file(tmp_path, capsys):
    """--checkpoint NAME, where no file of that name exists, reads the shipped model's file: the same samples."""
    from mcvd import pretrained

    args = ("--data", "smmnist", "--index", "3", "--frames", "2", "--seed", "5")
    assert sample("smmnist-demo-cpu", tmp_path / "by_name", *args) == 0
    assert sample(pretrained.path("smmnist-demo-cpu"), tmp_path / "by_path", *args) == 0
    with np.load(tmp_path / "by_name" / "frames.npz") as a, np.load(tmp_path / "by_path" / "frames.npz") as b:
        assert a["prediction"].shape == (1, 1, 2, 1, 32, 32)
        np.testing.assert_array_equal(a["prediction"], b["prediction"])
        np.testing.assert_array_equal(a["past"], b["past"])


def test_a_shipped_model_by_name_samples_as_it_samples_best(tmp_path):
    """With no sampler flag given, the shipped model samples as mcvd.pretrained records it (the demo's way);
    one flag given, the command's usual defaults fill the others."""
    from mcvd import pretrained

    entry = pretrained.MODELS["smmnist-demo-cpu"]
    base = ["sample", "--checkpoint", "smmnist-demo-cpu", "--data", "smmnist", "--frames", "2", "--no-progress",
            "--no-optimize"]
    assert main([*base, "--out", str(tmp_path / "best")]) == 0
    with np.load(tmp_path / "best" / "frames.npz") as z:
        assert (str(z["method"]), int(z["steps"]), float(z["guidance"])) == ("ddpm", entry.sample_steps,
                                                                           entry.guidance)
        assert tuple(z["guidance_interval"]) == entry.guidance_interval == (0, 700)
    assert main([*base, "--steps", "3", "--out", str(tmp_path / "given")]) == 0
    with np.load(tmp_path / "given" / "frames.npz") as z:
        assert (str(z["method"]), int(z["steps"])) == ("ddim", 3)
        assert "guidance" not in z.files and "guidance_interval" not in z.files


def test_the_cpu_default_samples_the_shipped_network_as_the_model_itself(tmp_path, capsys):
    """The README's command on the real (shipped) network, with the CPU's default: eager, its weights laid out
    channels_last, not compiled; the prediction that of --no-optimize (the model as it is) to float32 rounding."""
    base = ["sample", "--checkpoint", "smmnist-demo-cpu", "--data", "smmnist", "--index", "0", "1", "--frames", "4",
            "--steps", "4", "--no-progress"]
    predictions = []
    for name, flags in (("default", []), ("as_is", ["--no-optimize"])):
        assert main([*base, "--out", str(tmp_path / name), *flags]) == 0
        assert "mcvd.optimize" not in capsys.readouterr().err
        with np.load(tmp_path / name / "frames.npz") as z:
            predictions.append(torch.from_numpy(z["prediction"]).double())
    default, as_is = predictions
    assert default.shape == (1, 2, 4, 1, 32, 32)
    assert ((default - as_is).norm() / as_is.norm()).item() <= 1e-5


def test_a_checkpoint_file_samples_with_the_commands_defaults(checkpoint, tmp_path):
    assert main(["sample", "--checkpoint", str(checkpoint), "--data", "smmnist", "--index", "0", "--frames", "2",
                 "--no-progress", "--no-optimize", "--out", str(tmp_path / "out")]) == 0
    with np.load(tmp_path / "out" / "frames.npz") as z:
        assert (str(z["method"]), int(z["steps"])) == ("ddim", 100) and "guidance" not in z.files


def test_a_name_that_is_neither_a_file_nor_a_shipped_model(tmp_path, capsys):
    assert sample("smmnist-demo", tmp_path / "out", "--data", "smmnist") == 2
    assert ("mcvd sample: error: --checkpoint: no such file: smmnist-demo (nor the name of a shipped model: "
            "smmnist-demo-cpu)") in capsys.readouterr().err


def test_a_damaged_shipped_model_is_refused_by_name(tmp_path, capsys, monkeypatch):
    import shutil

    from mcvd import pretrained

    damaged = tmp_path / "weights"
    damaged.mkdir()
    shutil.copyfile(pretrained.path("smmnist-demo-cpu"), damaged / pretrained.MODELS["smmnist-demo-cpu"].file)
    data = bytearray((damaged / "smmnist_demo_cpu.mcvd").read_bytes())
    data[len(data) // 2] ^= 0x10
    (damaged / "smmnist_demo_cpu.mcvd").write_bytes(bytes(data))
    monkeypatch.setattr(pretrained, "WEIGHTS", damaged)
    assert sample("smmnist-demo-cpu", tmp_path / "out", "--data", "smmnist") == 2
    err = capsys.readouterr().err
    assert "mcvd sample: error: --checkpoint: " in err and "smmnist_demo_cpu.mcvd has SHA-256" in err
    assert "damaged or was replaced" in err
    assert not (tmp_path / "out" / "frames.npz").exists()


def test_a_file_of_the_name_comes_before_the_shipped_model(checkpoint, tmp_path, capsys, monkeypatch):
    import shutil

    shutil.copyfile(checkpoint, tmp_path / "smmnist-demo-cpu")
    monkeypatch.chdir(tmp_path)
    assert sample("smmnist-demo-cpu", tmp_path / "out", "--data", "smmnist") == 0
    with np.load(tmp_path / "out" / "frames.npz") as z:
        assert z["prediction"].shape[-1] == SIZE  # the tiny model's frames, not the shipped model's 32


@needs_fixtures
def test_guidance_of_a_reference_checkpoint_follows_its_config(tmp_path, capsys):
    import shutil

    shutil.copy(FIXTURES / "concat_small" / "checkpoint.pt", tmp_path / "checkpoint.pt")
    config = (FIXTURES / "concat_small" / "config.yml").read_text()
    assert "  prob_mask_cond: 0.0\n" in config
    (tmp_path / "config.yml").write_text(config)  # the reference's own config: the past never masked
    assert sample(tmp_path / "checkpoint.pt", tmp_path / "out", "--data", "smmnist", "--guidance", "2") == 2
    err = capsys.readouterr().err
    assert "training.prob_mask_cond 0.0," in err and "warning" not in err
    (tmp_path / "config.yml").write_text(config.replace("  prob_mask_cond: 0.0\n", "  prob_mask_cond: 0.5\n"))
    assert sample(tmp_path / "checkpoint.pt", tmp_path / "out", "--data", "smmnist", "--guidance", "2") == 0
    assert "warning" not in capsys.readouterr().err


def test_predict_from_a_folder_of_frames(checkpoint, tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    square = moving_square(8)
    for t, image in enumerate(square):  # natural order: 2.png before 10.png
        Image.fromarray(image).save(frames / f"{t}.png")
    (frames / "notes.txt").write_text("not a frame")
    video = tmp_path / "square.mp4"
    encode_video(video, square)
    out = tmp_path / "out"
    assert sample(checkpoint, out, "--input", str(frames), "--start", "1", "--frames", "4") == 0
    assert f"{frames} from frame 1" in capsys.readouterr().out
    from mcvd.data.video_folder import frames_to_clip

    clip = frames_to_clip(list(square[1:1 + P + 4]), SIZE, 1)
    with np.load(out / "frames.npz") as z:
        np.testing.assert_array_equal(z["past"][0], clip[:P].numpy())
        np.testing.assert_array_equal(z["truth"][0], clip[P:].numpy())
    empty = tmp_path / "empty"
    empty.mkdir()
    assert sample(checkpoint, tmp_path / "out2", "--input", str(empty)) == 2
    assert f"input: {empty} holds no frames" in capsys.readouterr().err


@pytest.mark.slow  # compiles the network (about a minute on two cores)
def test_the_cpu_samples_eagerly_by_default_and_optimize_compiles(checkpoint, tmp_path, capsys):
    """On the CPU the command samples with the eager network by default (compiling there costs more than it
    saves), its weights laid out channels_last: the prediction of --no-optimize, the model as it is, to float32
    rounding. --optimize samples with mcvd.optimize's compiled network, which says so on stderr while it
    compiles; its prediction equals the eager network's (same seed) within mcvd.optimize's float32 bound."""
    common = ["sample", "--checkpoint", str(checkpoint), "--data", "smmnist", "--index", "0", "1", "--steps", "2",
              "--no-progress"]
    predictions = {}
    for name, flags in (("default", []), ("eager", ["--no-optimize"]), ("fast", ["--optimize"])):
        assert main([*common, "--out", str(tmp_path / name), *flags]) == 0
        compiled = "mcvd.optimize: compiling the network for cpu float32" in capsys.readouterr().err
        assert compiled == (name == "fast")
        with np.load(tmp_path / name / "frames.npz") as z:
            predictions[name] = torch.from_numpy(z["prediction"]).double()
    eager = predictions["eager"]
    assert ((predictions["default"] - eager).norm() / eager.norm()).item() <= 1e-6
    assert ((predictions["fast"] - eager).norm() / eager.norm()).item() <= TOLERANCE[torch.float32]


def test_precision_needs_the_optimized_network_and_fp16_a_gpu(checkpoint, tmp_path, capsys):
    assert sample(checkpoint, tmp_path / "a", "--data", "smmnist", "--precision", "bf16") == 2  # FAST: --no-optimize
    assert "--precision bf16: runs in mcvd.optimize's network; drop --no-optimize" in capsys.readouterr().err
    common = ["sample", "--checkpoint", str(checkpoint), "--data", "smmnist", "--steps", "2", "--no-progress",
              "--device", "cpu", "--precision", "fp16", "--out", str(tmp_path / "b")]
    assert main(common) == 2
    assert "--precision fp16: needs a CUDA device, got cpu; use bf16 on a CPU" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


@pytest.mark.slow  # compiles the network in bfloat16 (about a minute on two cores)
def test_bf16_samples_as_the_eager_network_within_its_tolerance(checkpoint, tmp_path, capsys):
    """--precision bf16 compiles the network in bfloat16; with the same seed its
    prediction stays within mcvd.optimize's bfloat16 bound of the eager float32 one."""
    common = ["sample", "--checkpoint", str(checkpoint), "--data", "smmnist", "--index", "0", "1", "--steps", "2",
              "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "bf16"), "--precision", "bf16"]) == 0
    assert "mcvd.optimize: compiling the network for cpu bfloat16" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "eager"), "--no-optimize"]) == 0
    with np.load(tmp_path / "bf16" / "frames.npz") as fast, np.load(tmp_path / "eager" / "frames.npz") as eager:
        a, b = torch.from_numpy(fast["prediction"]).double(), torch.from_numpy(eager["prediction"]).double()
    err = ((a - b).norm() / b.norm()).item()
    assert 0 < err <= TOLERANCE[torch.bfloat16]


def test_a_folder_named_like_a_shipped_model_does_not_hide_it(tmp_path, monkeypatch):
    """An earlier `--out smmnist-demo-cpu` leaves such a folder in the working directory."""
    from mcvd.cli._common import read_model_arg

    monkeypatch.chdir(tmp_path)
    (tmp_path / "smmnist-demo-cpu").mkdir()
    assert read_model_arg("--checkpoint", Path("smmnist-demo-cpu")).path.name == "smmnist_demo_cpu.mcvd"


def test_an_input_is_read_with_the_models_training_frame_stride(checkpoint, tmp_path, capsys):
    """A model trained on a video folder's frames 2 apart (data.frame_stride 2) is given frames 2 apart, the
    motion it learnt; --frame-stride sets another stride."""
    from mcvd.data.video_folder import frames_to_clip

    state = torch.load(checkpoint, weights_only=True)
    state["run_config"]["data"].update(dataset="video_folder", root="videos", frame_stride=2)
    strided = tmp_path / "strided.pt"
    torch.save(state, strided)
    frames = tmp_path / "frames"
    frames.mkdir()
    square = moving_square(12)
    for t, image in enumerate(square):
        Image.fromarray(image).save(frames / f"{t}.png")
    for stride, args, said in ((2, [], "one frame in 2 (the model's training stride)"),
                               (3, ["--frame-stride", "3"], "one frame in 3 (--frame-stride)"),
                               (1, ["--frame-stride", "1"], f"{frames} from frame 1)")):
        out = tmp_path / f"out{stride}"
        assert sample(strided, out, "--input", str(frames), "--start", "1", "--frames", "2", *args) == 0
        assert said in capsys.readouterr().out
        clip = frames_to_clip(list(square[1::stride][:P + 2]), SIZE, 1)
        with np.load(out / "frames.npz") as z:
            np.testing.assert_array_equal(z["past"][0], clip[:P].numpy())
            np.testing.assert_array_equal(z["truth"][0], clip[P:].numpy())
            assert z["frame_stride"] == stride
    assert sample(checkpoint, tmp_path / "x", "--data", "smmnist", "--frame-stride", "2") == 2
    assert "--frame-stride: selects the frames of --input; it does not apply to --data" in capsys.readouterr().err


@pytest.mark.parametrize("p, f", [(2, 0), (2, 1), (0, 1)])
@pytest.mark.parametrize("pc, pf, sync", [(0.0, 0.0, False), (0.3, 0.0, False), (0.0, 0.3, False), (0.3, 0.3, False),
                                          (0.3, 0.3, True), (1.0, 0.5, False), (0.2, 1.0, False)])
def test_the_task_warning_knows_the_conditionings_that_training_draws(p, f, pc, pf, sync):
    """Which (past given?, future given?) pairs the trainer's own mask draws produce, against what the
    warning of an untrained task assumes."""
    from types import SimpleNamespace

    from mcvd.cli._common import _trained_with
    from mcvd.train.objective import draw_step_randomness

    if (pc > 0 and p == 0) or (sync and pf == 0):
        pytest.skip("not a valid training config")
    cfg = SimpleNamespace(num_frames_cond=p, num_frames_future=f, num_frames=1, channels=1, image_size=2,
                          num_timesteps=10)
    rnd = draw_step_randomness(cfg, 4000, prob_mask_cond=pc, prob_mask_future=pf, prob_mask_sync=sync,
                               random_flip=False, generator=torch.Generator().manual_seed(0), device="cpu")
    drawn = {tuple(row) for row in rnd.cond_mask.tolist()}  # (past given, future given)
    training = {"prob_mask_cond": pc, "prob_mask_future": pf, "prob_mask_sync": sync}
    for past in (True, False):
        for future in (True, False):
            seen = any((p == 0 or a == past) and (f == 0 or b == future) for a, b in drawn)
            assert _trained_with(training, cfg, past, future) == seen, (past, future, drawn)


def test_the_task_warning_names_the_cause(capsys):
    from types import SimpleNamespace

    from mcvd.cli._common import warn_untrained_task

    cfg = SimpleNamespace(num_frames_cond=2, num_frames_future=1, num_frames=2)
    synced = {"training": {"prob_mask_cond": 0.3, "prob_mask_future": 0.3, "prob_mask_sync": True}}
    warn_untrained_task("predict", 2, synced, cfg, "sample")
    err = capsys.readouterr().err
    assert "--task predict: this model never saw the past given and the future masked in training" in err
    assert "prob_mask_sync masks the future only together with the past, so set it false;" in err
    warn_untrained_task("interpolate", 2, synced, cfg, "sample")
    warn_untrained_task("generate", 2, synced, cfg, "sample")
    assert capsys.readouterr().err == ""
    # Generating more than k frames of a model with past frames predicts after the first block.
    warn_untrained_task("generate", 6, synced, cfg, "eval")
    assert "mcvd eval: warning: --task generate: this model never saw the past given and the future masked" in \
        capsys.readouterr().err
    always = {"training": {"prob_mask_cond": 1.0, "prob_mask_future": 0.5, "prob_mask_sync": False}}
    warn_untrained_task("interpolate", 2, always, cfg, "sample")
    err = capsys.readouterr().err
    assert "never saw the past and future given in training" in err and "prob_mask_sync" not in err.split(";")[1]
    assert "each masked in some clips but not all" in err
    warn_untrained_task("generate", 2, {}, cfg, "sample")  # no run config: nothing to tell
    assert capsys.readouterr().err == ""
