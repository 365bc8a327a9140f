"""`mcvd demo`: a tiny run end to end, its numbers against independent ones, overwriting, errors."""
import argparse
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import mcvd
from mcvd.cli import main
from mcvd.cli._common import inference_model
from mcvd.cli.demo import OUTPUTS, STREAM_FRAMES
from mcvd.cli.demo_config import (SIZES, demo_ema_rate, finish_work, fit_deadline, plan_budget,
                                  reproduce_command)
from mcvd.data import StochasticMovingMNIST
from mcvd.metrics.baselines import compare, verdict, wins
from mcvd.metrics.digits import digit_recall, load_digit_classifier
from mcvd.train import load_checkpoint, read_checkpoint

TINY = SIZES["tiny"]
P = TINY.model["num_frames_cond"]


def demo(out, *args):
    """The demo as a user runs it on the CPU (its eager network, channels_last), at the tiny size."""
    return main(["demo", "--out", str(out), "--size", "tiny", "--device", "cpu", "--no-progress", *args])


def held_out(clips: int, pred: int) -> np.ndarray:
    """The demo's held-out clips [N, P + pred, 1, H, W] in [0, 1], float64."""
    data = StochasticMovingMNIST(P + pred, split="test", seed=0, length=clips, image_size=TINY.model["image_size"],
                                 digit_size=TINY.digit_size)
    return np.stack([(data[i].numpy().astype(np.float64) + 1) / 2 for i in range(clips)])


def psnr_of(truth: np.ndarray, guess: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-clip and per-frame (mean over clips) PSNR of guesses [N, n, ...] in [0, 1], NumPy float64: a clip's
    PSNR from the MSE over all its predicted frames."""
    mse = ((truth - guess) ** 2).mean(axis=(2, 3, 4))
    return (10 * np.log10(1 / mse.mean(1))).tolist(), (10 * np.log10(1 / mse)).mean(0).tolist()


def ssim_of(truth: np.ndarray, guess: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-clip (mean over frames) and per-frame (mean over clips) SSIM by scikit-image, the paper's settings."""
    skm = pytest.importorskip("skimage.metrics")
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)
    s = np.array([[skm.structural_similarity(g[0], t[0], **kw) for g, t in zip(gc, tc)]
                  for gc, tc in zip(guess, truth)])
    return s.mean(1).tolist(), s.mean(0).tolist()


def baseline_psnr(clips: int, pred: int) -> dict[str, tuple[list[float], list[float]]]:
    """Per-clip and per-frame PSNR of copy-last-frame and of the empty frame on the demo's held-out clips."""
    x = held_out(clips, pred)
    truth, last = x[:, P:], np.broadcast_to(x[:, P - 1:P], x[:, P:].shape)
    return {"copy last frame": psnr_of(truth, last), "empty frame": psnr_of(truth, np.zeros_like(truth))}


def test_tiny_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo(out, "--train-steps", "3", "--clips", "5", "--pred-frames", "4", "--seed", "1") == 0
    text = capsys.readouterr().out
    assert "trained 3 steps" in text and "scored 5 held-out clips" in text
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)  # no temporary training folder left

    # The checkpoint is the trained run's: 3 steps of the tiny model, loadable by mcvd sample / eval.
    ckpt = read_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == 3 and ckpt["run_config"]["training"]["seed"] == 1
    _, cfg = load_checkpoint(out / "checkpoint.pt")
    assert cfg.image_size == TINY.model["image_size"] and cfg.ngf == TINY.model["ngf"]
    assert (out / "train_metrics.csv").read_text().splitlines()[0] == "step,loss,lr,grad_norm,it_per_s"
    assert len((out / "train_metrics.csv").read_text().splitlines()) == 1 + 3

    with Image.open(out / "demo.gif") as gif:
        assert gif.n_frames == P + 4
    # The streamed clip: input | prediction at each of its frames, and its rate printed and reported.
    with Image.open(out / "stream.gif") as gif:
        assert gif.n_frames == STREAM_FRAMES
    st = json.loads((out / "metrics.json").read_text())["stream"]
    k = TINY.model["num_frames"]
    assert (st["frames_in"], st["predictions"], st["method"], st["steps"]) == (
        STREAM_FRAMES, (STREAM_FRAMES - P) // k + 1, "dpm++", 10)
    assert re.search(rf"streamed a held-out clip of {STREAM_FRAMES} frames with the model trained here "
                     rf"\(dpm\+\+ 10 steps, {k} frames predicted "
                     rf"every {k}\): \d+\.\d predicted frames per second, latency per prediction median \d+ ms", text)
    assert "## Streaming" in (out / "report.md").read_text() and f"| {st['predicted_fps']:.1f} |" in (
        out / "report.md").read_text()
    with Image.open(out / "metrics.png") as png:  # four panels: PSNR, SSIM, digit recall, loss (three are 3.6:1)
        assert png.format == "PNG" and png.size[0] > 4.5 * png.size[1]

    # The baselines' scores equal an independent computation on the same held-out clips.
    m = json.loads((out / "metrics.json").read_text())
    assert list(m["scores"]) == ["MCVD", "copy last frame", "empty frame"]
    expected = baseline_psnr(5, 4)
    for name, (per_clip, per_frame) in expected.items():
        assert m["scores"][name]["psnr_per_clip"] == pytest.approx(per_clip, rel=1e-9)
        assert m["scores"][name]["psnr_per_frame"] == pytest.approx(per_frame, rel=1e-9)
    per_clip, per_frame = expected["copy last frame"]
    assert m["comparisons"]["MCVD"]["psnr"]["baseline"]["mean"] == pytest.approx(np.mean(per_clip), rel=1e-9)
    assert m["frames"] == [P + 1, P + 2, P + 3, P + 4]
    model_scores = m["scores"]["MCVD"]
    assert len(model_scores["psnr_per_frame"]) == 4 and len(model_scores["ssim_per_clip"]) == 5
    diffs = [a - b for a, b in zip(model_scores["psnr_per_clip"], per_clip)]
    assert m["comparisons"]["MCVD"]["psnr"]["difference"]["mean"] == pytest.approx(np.mean(diffs), rel=1e-9)
    assert m["training"]["steps"] == 3 and m["training"]["budget_seconds"] is None

    # Digit recall per predicted frame: the truth, the model and the baselines, in [0, 1]; the truth's and
    # copy-last-frame's are the classifier's on those frames of the held-out clips.
    recall = m["digits"]
    assert list(recall) == ["truth", "MCVD", "copy last frame", "empty frame"]
    assert all(len(r) == 4 and all(0 <= v <= 1 for v in r) for r in recall.values())
    clips = StochasticMovingMNIST(P + 4, split="test", seed=0, length=5, image_size=TINY.model["image_size"],
                                  digit_size=TINY.digit_size)
    frames = torch.stack([clips[i] for i in range(5)])
    labels = torch.tensor([clips.labels(i) for i in range(5)])
    classifier = load_digit_classifier()
    assert recall["truth"] == pytest.approx(digit_recall(classifier, frames[:, P:], labels).tolist())
    held = frames[:, P - 1:P].expand(-1, 4, -1, -1, -1)
    assert recall["copy last frame"] == pytest.approx(digit_recall(classifier, held, labels).tolist())
    assert "## Are the digits still there?" in (out / "report.md").read_text()
    assert "digit recall over the predicted frames" in text

    # The report shows the same numbers and how to repeat the run.
    report = (out / "report.md").read_text()
    assert f"| copy last frame | {np.mean(per_clip):.2f} ± " in report
    assert f"| empty frame | {np.mean(expected['empty frame'][0]):.2f} ± " in report
    row = (f"| {P + 1} | {model_scores['psnr_per_frame'][0]:.2f} / {model_scores['ssim_per_frame'][0]:.3f} "
           f"| {per_frame[0]:.2f} / ")
    assert row in report
    assert m["verdict"] in report and TINY.expectation in report and "3 steps of batch 4 (12 clips)" in report
    assert "mcvd demo --out " in report and "--train-steps 3" in report and "--seed 1" in report

    # SSIM too, by scikit-image; and the model's scores are those of the checkpoint's EMA weights, predicting
    # with the demo's sampler and seed.
    x = held_out(5, 4)
    truth = x[:, P:]
    for name, guess in (("copy last frame", np.broadcast_to(x[:, P - 1:P], truth.shape)),
                        ("empty frame", np.zeros_like(truth))):
        per_clip, per_frame = ssim_of(truth, guess)
        assert m["scores"][name]["ssim_per_clip"] == pytest.approx(per_clip, rel=1e-9, abs=1e-12)
        assert m["scores"][name]["ssim_per_frame"] == pytest.approx(per_frame, rel=1e-9, abs=1e-12)
    model, _ = mcvd.load(out / "checkpoint.pt")
    model = inference_model(model, True, channels_last=True)  # the demo's network on the CPU
    pred = mcvd.predict(model, torch.from_numpy(x[:, :P] * 2 - 1).float(), 4, method=TINY.method,
                        steps=TINY.sample_steps, generator=torch.Generator().manual_seed(1))
    guess = (pred.double().numpy() + 1) / 2
    for metric, of in (("psnr", psnr_of), ("ssim", ssim_of)):
        per_clip, per_frame = of(truth, guess)
        assert model_scores[f"{metric}_per_clip"] == pytest.approx(per_clip, rel=1e-6, abs=1e-9)
        assert model_scores[f"{metric}_per_frame"] == pytest.approx(per_frame, rel=1e-6, abs=1e-9)


def test_time_budget_sets_the_steps_and_force_keeps_other_files(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert demo(out, "--minutes", "0.01", "--clips", "2") == 2
    err = capsys.readouterr().err
    assert "mcvd demo: error: --out:" in err and "is not empty" in err and "--force" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]

    assert demo(out, "--minutes", "0.01", "--clips", "2", "--force") == 0
    text = capsys.readouterr().out
    found = re.search(r"one training step takes .* s with \d+ threads? on cpu: about (\d+) steps fit in 1 s", text)
    assert found and int(found.group(1)) >= 1
    m = json.loads((out / "metrics.json").read_text())
    # The time limit ends the run: at most a quarter more steps than calibrated, and everything
    # written agrees on the steps done.
    estimate, steps = int(found.group(1)), m["training"]["steps"]
    assert m["training"]["budget_seconds"] == pytest.approx(0.6) and 1 <= steps <= estimate + estimate // 4 + 1
    ckpt = read_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == ckpt["run_config"]["training"]["steps"] == steps  # not the cap
    assert (out / "train_metrics.csv").read_text().splitlines()[-1].startswith(f"{steps},")
    assert f"--train-steps {steps} " in m["command"]
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUTS, "notes.txt"])


def test_the_reported_command_repeats_a_budgeted_run_exactly(tmp_path):
    first, again = tmp_path / "first", tmp_path / "again"
    # A budget of a few steps, where the EMA rate depends on the step count.
    assert demo(first, "--minutes", "0.002", "--clips", "2", "--threads", "1") == 0
    command = json.loads((first / "metrics.json").read_text())["command"].split()
    assert command[:3] == ["mcvd", "demo", "--out"] and "--minutes" not in command
    assert command[command.index("--threads") + 1] == "1"
    torch.set_num_threads(2)  # the command must set the thread count itself
    assert main(["demo", *command[4:], "--out", str(again), "--no-progress", "--no-optimize"]) == 0
    a, b = read_checkpoint(first / "checkpoint.pt"), read_checkpoint(again / "checkpoint.pt")
    assert a["step"] == b["step"] and a["run_config"]["training"]["ema_rate"] == b["run_config"]["training"]["ema_rate"]
    for part in ("model", "ema"):
        for name, value in a[part].items():
            assert torch.equal(value, b[part][name]), (part, name)


def test_the_command_spells_out_an_ema_rate_that_the_steps_would_not_give():
    args = argparse.Namespace(out="o", device="cpu", seed=0, size="tiny", clips=None, pred_frames=None, method=None,
                              sample_steps=None, overrides=[], optimize=None)
    own = SimpleNamespace(steps=10, ema_rate=demo_ema_rate(TINY, 10))
    assert "ema_rate" not in reproduce_command(args, TINY, own) and "optimize" not in reproduce_command(args, TINY, own)
    for optimize, flag in ((True, " --optimize "), (False, " --no-optimize ")):  # the network it sampled with
        assert flag in reproduce_command(argparse.Namespace(**{**vars(args), "optimize": optimize}), TINY, own)
    calibrated = SimpleNamespace(steps=10, ema_rate=demo_ema_rate(TINY, 12))
    assert f"--set training.ema_rate={demo_ema_rate(TINY, 12)!r} --force" in reproduce_command(args, TINY, calibrated)
    args.overrides = ["training.ema_rate=0.5"]
    assert reproduce_command(args, TINY, calibrated).count("ema_rate") == 1


@pytest.mark.parametrize("args, message", [
    (["--minutes", "0"], "--minutes: expected a number > 0, got 0.0"),
    (["--train-steps", "0"], "--train-steps: expected >= 1, got 0"),
    (["--clips", "0"], "--clips: expected >= 1, got 0"),
    (["--seed", "-1"], "--seed: expected >= 0, got -1"),
    (["--set", "training.bogus=1"], "training: unknown key 'bogus'"),
    (["--set", "model.num_frames_cond=0"], "keep data.dataset smmnist and model.num_frames_cond >= 1"),
    (["--set", "training.steps=5"], "the demo sets training.steps from --train-steps or --minutes"),
    (["--started-at", "nan"], "--started-at: expected a past time in seconds since the epoch (date +%s), got nan"),
    (["--started-at", "1e12"], "--started-at: expected a past time in seconds since the epoch (date +%s), "
                               "got 1000000000000"),
])
def test_bad_arguments_fail_before_training(tmp_path, capsys, args, message):
    out = tmp_path / "demo"
    assert demo(out, *args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_minutes_and_train_steps_are_exclusive(tmp_path, capsys):
    assert demo(tmp_path / "demo", "--minutes", "1", "--train-steps", "2") == 2
    assert "not allowed with argument" in capsys.readouterr().err


def comparison(psnr_model, psnr_base, ssim_model, ssim_base):
    return compare({"psnr_per_clip": psnr_model, "ssim_per_clip": ssim_model},
                   {"psnr_per_clip": psnr_base, "ssim_per_clip": ssim_base})


def test_compare_pairs_clips():
    c = comparison([20.0, 22.0, 24.0], [19.0, 20.0, 21.0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    d = c["psnr"]["difference"]
    # differences 1, 2, 3: mean 2, sample std 1, 95% half-width 1.959964 / sqrt(3)
    assert d["mean"] == pytest.approx(2.0) and d["conf95"] == pytest.approx(1.959963984540054 / 3 ** 0.5)
    assert c["psnr"]["model"]["mean"] == pytest.approx(22.0) and c["psnr"]["baseline"]["mean"] == pytest.approx(20.0)
    assert c["ssim"]["difference"]["mean"] == 0.0


def test_verdict_says_win_loss_or_tie_by_the_interval():
    win = verdict(comparison([20.0, 22.0, 24.0], [19.0, 20.0, 21.0], [0.6, 0.7, 0.8], [0.5, 0.6, 0.7]), "cpu")
    assert win.startswith("On PSNR the model beats copy-last-frame (+2 dB") and "on SSIM the model beats" in win
    assert "train longer" not in win
    mixed = verdict(comparison([20.0, 22.0, 24.0], [19.0, 20.0, 21.0], [0.5, 0.5, 0.5], [0.6, 0.7, 0.8]), "cpu")
    assert "on SSIM the model is worse than" in mixed and "train longer, with a GPU" in mixed
    tie = verdict(comparison([20.0, 18.0, 22.0], [20.0, 20.0, 20.0], [0.5, 0.5, 0.5], [0.6, 0.7, 0.8]), "cuda")
    assert tie.startswith("On PSNR the model is not distinguishable from") and "more time (--minutes)" in tie


def test_one_clip_is_no_win():
    """One clip has no interval: however large its lead, the verdict cannot call it a win."""
    one = comparison([25.0], [20.0], [0.9], [0.5])
    assert not wins(one)
    text = verdict(one, "cpu")
    assert text.startswith("On PSNR the model is not distinguishable from copy-last-frame (+5 dB; one clip, no "
                           "interval)") and "train longer" in text


def interrupted_training_folder(out, name=".train-k1ll3d_x"):
    """What a demo killed while training leaves in --out: its temporary training folder, with the files of a
    training run (a config as a run writes it, the log's header, a torch file, a temporary file)."""
    import torch
    import yaml

    from mcvd.train.trainer import METRICS_FIELDS

    folder = out / name
    folder.mkdir(parents=True)
    (folder / "config.yml").write_text(yaml.safe_dump({"training": {"steps": 2}}, sort_keys=False))
    (folder / "metrics.csv").write_text(",".join(METRICS_FIELDS) + "\n1,9.5,0.001,1.0,10\n")
    torch.save({"step": 1}, folder / "checkpoint.pt")
    (folder / ".checkpoint.pt.a1b2c3d4.tmp").write_bytes(b"left by a killed run")
    return folder


def test_the_training_folder_of_a_killed_demo_is_removed_by_the_next_run(tmp_path, capsys):
    out = tmp_path / "demo"
    left = interrupted_training_folder(out)
    calibration = interrupted_training_folder(out, ".calibration-0abc_def")
    assert demo(out, "--train-steps", "1", "--clips", "2") == 0
    assert f"removed {left}" in capsys.readouterr().out
    assert not left.exists() and not calibration.exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)


def test_a_hidden_folder_that_is_not_the_demos_own_is_kept(tmp_path, capsys):
    import fcntl
    import os

    out = tmp_path / "demo"
    foreign = interrupted_training_folder(out)
    (foreign / "notes.txt").write_text("mine")
    assert demo(out, "--train-steps", "1") == 2
    assert "is not empty" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "mine" and (foreign / "checkpoint.pt").exists()
    (foreign / "notes.txt").unlink()
    # A training folder that a running demo holds (its lock) is not a leftover either.
    fd = os.open(foreign, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert demo(out, "--train-steps", "1") == 2
        assert "is not empty" in capsys.readouterr().err and (foreign / "checkpoint.pt").exists()
    finally:
        os.close(fd)


@pytest.mark.parametrize("name, text", [("config.yml", "my notes\n"), ("metrics.csv", "my,own,table\n"),
                                        ("checkpoint.pt", "not a torch file")])
def test_a_folder_named_like_a_training_folder_holding_a_users_file_is_kept(tmp_path, capsys, name, text):
    """Named as the demo names its training folders, holding only files named as a run's, but one of them
    is the user's (not what a run writes): it is no leftover, and --out counts as not empty."""
    out = tmp_path / "demo"
    folder = interrupted_training_folder(out, ".train-backup01")
    (folder / name).write_text(text)
    assert demo(out, "--train-steps", "1") == 2
    assert "is not empty" in capsys.readouterr().err
    assert (folder / name).read_text() == text and len(list(folder.iterdir())) == 4


def test_a_folder_where_the_demo_writes_a_file_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "demo"
    (out / "checkpoint.pt").mkdir(parents=True)
    (out / "checkpoint.pt" / "keep.txt").write_text("mine")
    assert demo(out, "--train-steps", "1", "--force") == 2
    assert f"--out: {out / 'checkpoint.pt'} is a folder, where this command writes a file" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["checkpoint.pt"]
    assert [p.name for p in (out / "checkpoint.pt").iterdir()] == ["keep.txt"]


def test_sample_steps_beyond_the_models_timesteps_fail_before_training(tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo(out, "--set", "model.num_timesteps=10", "--sample-steps", "20") == 2
    assert "--sample-steps: expected 1 to 10 (the model's num_timesteps), got 20" in capsys.readouterr().err
    assert not out.exists()


def test_a_slower_machine_trains_the_size_s_steps_within_the_cap():
    """The cpu size's default run: 5 minutes where they fit 4,500 steps; else
    4,500 steps, or what fits in 6.5 minutes; --minutes is a plain budget."""
    cpu = SIZES["cpu"]
    assert (cpu.minutes, cpu.min_steps, cpu.max_minutes) == (5.0, 4500, 6.5)
    assert plan_budget(cpu, None, 0.0625) == (4800, 300.0, False)  # quick: the 5-minute budget
    assert plan_budget(cpu, None, 0.078125) == (4500, 390.0, True)  # 3,840 fit in 5 min: 4,500 in at most 6.5
    assert plan_budget(cpu, None, 0.125) == (4500, 390.0, True)  # 4,500 take 9.4 min: the time limit ends it
    assert plan_budget(cpu, 1.0, 0.125) == (480, 60.0, False)
    assert plan_budget(SIZES["tiny"], None, 0.5) == (6, 3.0, False)  # no floor


def test_the_deadline_shortens_a_default_budget():
    """The cpu size ends within 9.5 minutes of its start: the training budget leaves room for the work after
    it (400 steps' worth at the given speed, for the size's own sampling) and keeps at least a minute."""
    cpu = SIZES["cpu"]
    assert (cpu.total_minutes, cpu.finish_steps) == (9.5, 400)
    # 0.0625 s per step: 25 s of work after training; 325 s left hold the 300 s budget, 300 s left 275 s.
    assert fit_deadline(cpu, 300.0, 0.0625, 325.0, 400) == 300.0
    assert fit_deadline(cpu, 300.0, 0.0625, 300.0, 400) == 275.0
    # 0.125 s per step under the floor: 50 s after training; 440 s left hold the 390 s limit, 400 s cut it to 350.
    assert fit_deadline(cpu, 390.0, 0.125, 440.0, 400) == 390.0
    assert fit_deadline(cpu, 390.0, 0.125, 400.0, 400) == 350.0
    assert fit_deadline(cpu, 390.0, 0.125, 100.0, 400) == 60.0  # past the deadline: a minute
    assert fit_deadline(SIZES["tiny"], 3.0, 0.5, 0.0, 400) == 3.0  # no deadline


def test_the_work_after_training_scales_with_the_sampling():
    """finish_steps is for the size's own 192 clips, 6 frames in blocks of 2, 25 sampler steps (75 network
    calls per clip) and batch 16; other runs scale its sampling part, four fifths, by their calls."""
    cpu = SIZES["cpu"]
    assert (cpu.clips, cpu.pred_frames, cpu.model["num_frames"], cpu.sample_steps, cpu.batch_size) == \
        (192, 6, 2, 25, 16)

    def work(**changes):
        return finish_work(cpu, **{"block_frames": 2, "clips": 192, "pred_frames": 6, "sample_steps": 25,
                                   "batch_size": 16, **changes})

    assert work() == pytest.approx(400)
    assert work(clips=96, sample_steps=50) == pytest.approx(400)
    assert work(pred_frames=5) == pytest.approx(400)  # still 3 blocks
    assert work(block_frames=1, clips=48) == pytest.approx(240)  # half the calls (6 blocks of 1): 80 + 320 / 2
    assert work(clips=384, pred_frames=8, sample_steps=10) == pytest.approx(80 + 320 * 16 / 15)  # 16/15 the calls
    assert work(clips=1, pred_frames=1, sample_steps=1) > 80  # never below the fixed part
    # A smaller batch: quicker steps, the same work, so more of them; a larger one keeps the figure (safe side).
    assert work(batch_size=8) == pytest.approx(800)
    assert work(batch_size=32) == pytest.approx(400)


def test_a_late_start_shortens_the_training_and_the_report_says_so(tmp_path, capsys, monkeypatch):
    """--started-at an hour ago: the tiny size given a 1.5-minute total trains only its minimum time, says
    so, and records it; --minutes is the user's budget and is kept."""
    import dataclasses
    import time

    import mcvd.cli.demo as demo_cli
    import mcvd.cli.demo_config as demo_config

    monkeypatch.setitem(demo_cli.SIZES, "tiny", dataclasses.replace(TINY, total_minutes=1.5, finish_steps=10))
    monkeypatch.setattr(demo_config, "MIN_TRAIN_SECONDS", 0.5)
    assert demo(tmp_path / "late", "--clips", "2", "--started-at", str(time.time() - 3600)) == 0
    said = capsys.readouterr().out
    assert re.search(r"training stops at about 0 s \(about \d+ steps; the speed measured while training sets it\) "
                     r"so that the demo ends within 1.5 minutes of its start", said)
    m = json.loads((tmp_path / "late" / "metrics.json").read_text())
    assert (m["training"]["budget_seconds"], m["training"]["deadline_minutes"]) == (0.5, 1.5)
    report = (tmp_path / "late" / "report.md").read_text()
    assert "(shortened so that the demo ends within 1.5 minutes of its start; time limit 0 s)" in report

    assert demo(tmp_path / "asked", "--clips", "2", "--minutes", "0.01", "--started-at", str(time.time() - 3600)) == 0
    m = json.loads((tmp_path / "asked" / "metrics.json").read_text())
    assert (m["training"]["budget_seconds"], m["training"]["deadline_minutes"]) == (0.6, None)


def test_the_step_floor_sets_the_steps_of_a_default_run(tmp_path, capsys, monkeypatch):
    """A size whose minutes fit fewer than its min_steps trains min_steps
    steps (the time limit well above them here), and says so; a time limit
    that comes first ends the run."""
    import dataclasses

    import mcvd.cli.demo as demo_cli

    monkeypatch.setitem(demo_cli.SIZES, "tiny", dataclasses.replace(TINY, minutes=1e-4, min_steps=3, max_minutes=2.0))
    assert demo(tmp_path / "demo", "--clips", "2") == 0
    said = capsys.readouterr().out
    assert re.search(r"fewer than 3 steps fit in 0 s, so the demo trains 3 steps or 0 s, whichever is longer "
                     r"\(the steps take about \d+ s\), stopping at 120 s", said)
    m = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert (m["training"]["steps"], m["training"]["step_floor"], m["training"]["budget_seconds"]) == (3, 3, 120.0)
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "3 steps of batch" in report
    assert "(at least the size's step floor of 3 steps, as fewer fitted in the size's minutes" in report

    monkeypatch.setitem(demo_cli.SIZES, "tiny", dataclasses.replace(TINY, minutes=1e-4, min_steps=10**6,
                                                                    max_minutes=0.01))
    assert demo(tmp_path / "cut", "--clips", "2") == 0
    m = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert 1 <= m["training"]["steps"] < 10**6 and m["training"]["step_floor"] == 10**6
    assert read_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == m["training"]["steps"]


def test_the_step_floor_trains_on_to_the_minutes_when_training_beats_its_calibration(tmp_path, capsys, monkeypatch):
    """A calibration slower than training sets the step floor; the run then trains
    the size's minutes or its min_steps, whichever is longer: here past min_steps to
    the cap for a machine faster than its calibration. The deadline (far off here)
    does not count as having shortened it."""
    import dataclasses

    import mcvd.cli.demo as demo_cli

    monkeypatch.setitem(demo_cli.SIZES, "tiny", dataclasses.replace(TINY, minutes=0.5, min_steps=8, max_minutes=2.0,
                                                                    total_minutes=60.0))
    monkeypatch.setattr(demo_cli, "calibrate", lambda run, parent, try_one_thread: {1: 10.0})
    assert demo(tmp_path / "demo", "--clips", "2") == 0
    said = capsys.readouterr().out
    assert "so the demo trains 8 steps or 30 s, whichever is longer" in said
    assert "training ended at its cap of 11 steps" in said
    m = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert (m["training"]["steps"], m["training"]["step_floor"], m["training"]["deadline_minutes"]) == (11, 8, None)
    assert read_checkpoint(tmp_path / "demo" / "checkpoint.pt")["step"] == 11


def test_the_minutes_train_on_to_the_step_floor_when_training_is_slower_than_its_calibration(tmp_path, capsys,
                                                                                           monkeypatch):
    """A calibration quicker than training (a host that slows down) plans the size's minutes for more than
    min_steps; when training then reaches the minutes first, it trains on to min_steps, the size's minutes or
    its min_steps, whichever is longer, and the report says the floor set the steps."""
    import dataclasses

    import mcvd.cli.demo as demo_cli

    monkeypatch.setitem(demo_cli.SIZES, "tiny", dataclasses.replace(TINY, minutes=1e-4, min_steps=6, max_minutes=2.0,
                                                                    total_minutes=60.0))
    monkeypatch.setattr(demo_cli, "calibrate", lambda run, parent, try_one_thread: {1: 1e-7})
    assert demo(tmp_path / "demo", "--clips", "2") == 0
    said = capsys.readouterr().out
    assert "steps fit in 0 s (training stops when the budget is spent, or at 6 steps if training runs slower" in said
    m = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert (m["training"]["steps"], m["training"]["step_floor"], m["training"]["deadline_minutes"]) == (6, 6, None)
    assert read_checkpoint(tmp_path / "demo" / "checkpoint.pt")["step"] == 6
    assert "(at least the size's step floor of 6 steps" in (tmp_path / "demo" / "report.md").read_text()
