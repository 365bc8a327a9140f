"""`mcvd train`: dry run, overrides, errors, a run and its resume."""
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mcvd.cli import main
from mcvd.nn import MCVD

SMALL = Path(__file__).resolve().parents[2] / "configs" / "smmnist_small.yml"
FOLDER = Path(__file__).resolve().parents[2] / "configs" / "video_folder.yml"


@pytest.fixture
def config(tmp_path, tiny_run):
    path = tmp_path / "run.yml"
    path.write_text(yaml.safe_dump(tiny_run(training={"steps": 2}).to_dict()))
    return path


def test_dry_run_prints_the_resolved_config_and_model_size(tmp_path, capsys):
    work = tmp_path / "work"
    assert main(["train", "--config", str(SMALL), "--workdir", str(work), "--dry-run",
                 "--set", "model.ngf=8", "--set", "training.lr=5e-4"]) == 0
    out = capsys.readouterr().out
    printed = yaml.safe_load(out)
    assert printed["model"]["ngf"] == 8 and printed["training"]["lr"] == 5e-4
    from mcvd.train import load_run_config

    cfg = load_run_config(SMALL, ["model.ngf=8"])
    assert f"# model parameters: {sum(p.numel() for p in MCVD(cfg.model).parameters()):,}" in out
    # 300 steps of 16 clips over SMMNIST's 60,000 clips of p + k = 4 frames
    assert "# data: 60,000 clips of 4 frames per epoch; 0.08 epochs in training.steps" in out
    assert not work.exists()


def test_dry_run_opens_the_video_folder(tmp_path, capsys):
    """A missing data.root is named before any training; a folder's clips are counted (7 frames with a
    stride of 2: clips of 2 + 2 frames span 7, so one clip per video)."""
    work = tmp_path / "work"
    root = tmp_path / "videos"
    assert main(["train", "--config", str(FOLDER), "--workdir", str(work), "--dry-run",
                 "--set", f"data.root={root}"]) == 2
    assert f"mcvd train: error: data.root: no such folder: {root}" in capsys.readouterr().err
    from PIL import Image

    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for t in range(7):
            Image.new("RGB", (64, 64)).save(root / name / f"{t}.png")
    assert main(["train", "--config", str(FOLDER), "--workdir", str(work), "--dry-run",
                 "--set", f"data.root={root}", "--set", "data.frame_stride=2"]) == 0
    assert "# data: 2 clips of 4 frames from 2 video(s) per epoch; 1,600,000.0 epochs" in capsys.readouterr().out
    assert not work.exists()


@pytest.mark.parametrize("args,match", [
    (["--set", "training.bogus=1"], "mcvd train: error: training: unknown key 'bogus'"),
    (["--set", "training.steps=1.5"], "mcvd train: error: training.steps: expected an int, got 1.5"),
    (["--set", "steps=3"], "mcvd train: error: --set: expected section.key=value, got 'steps=3'"),
])
def test_bad_overrides_exit_2_naming_the_key(config, tmp_path, capsys, args, match):
    assert main(["train", "--config", str(config), "--workdir", str(tmp_path / "w"), "--dry-run", *args]) == 2
    assert match in capsys.readouterr().err


def test_the_video_folder_config_trains_on_a_folder_then_samples_and_streams_its_videos(tmp_path, capsys):
    """configs/video_folder.yml as the README uses it, its network shrunk: one training step on a folder of
    frames with a frame stride of 2; sample and stream then read the video with that stride."""
    import numpy as np
    from PIL import Image

    clip = tmp_path / "videos" / "a"
    clip.mkdir(parents=True)
    for t in range(12):
        Image.fromarray(np.roll(np.eye(24, dtype=np.uint8) * 255, 2 * t, axis=1)[..., None].repeat(3, -1)).save(
            clip / f"{t}.png")
    work = tmp_path / "run"
    small = ["model.ngf=8", "model.ch_mult=[1]", "model.num_res_blocks=1", "model.attn_resolutions=[]",
             "model.image_size=16", "data.num_workers=0", "data.frame_stride=2", "training.batch_size=2",
             "training.steps=1", "training.warmup=1", f"data.root={tmp_path / 'videos'}"]
    sets = [a for item in small for a in ("--set", item)]
    assert main(["train", "--config", str(FOLDER), "--workdir", str(work), "--no-progress", *sets]) == 0
    assert "step 1, checkpoint" in capsys.readouterr().out
    assert yaml.safe_load((work / "config.yml").read_text())["data"]["dataset"] == "video_folder"
    fast = ["--steps", "2", "--no-progress", "--no-optimize"]
    assert main(["sample", "--checkpoint", str(work / "checkpoint.pt"), "--input", str(clip), "--frames", "2",
                 "--out", str(tmp_path / "s"), *fast]) == 0
    assert "one frame in 2 (the model's training stride)" in capsys.readouterr().out
    assert main(["stream", "--checkpoint", str(work / "checkpoint.pt"), "--input", str(clip), "--out",
                 str(tmp_path / "side.gif"), "--steps", "2", "--no-progress"]) == 0
    assert "6 frames in at 10 fps (assumed), one in 2 (the model's training stride): 5 fps" in capsys.readouterr().out


def test_a_folder_of_video_files_without_pyav_is_named(tmp_path, capsys, monkeypatch):
    import numpy as np

    root = tmp_path / "videos"
    root.mkdir()
    import av

    with av.open(str(root / "a.mp4"), mode="w") as container:  # a real video file, which VideoFolder demuxes
        stream = container.add_stream("mpeg4", rate=5)
        stream.width = stream.height = 16
        for _ in range(6):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")))
        container.mux(stream.encode(None))
    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError
    args = ["train", "--config", str(FOLDER), "--workdir", str(tmp_path / "w"), "--set", f"data.root={root}"]
    for extra in (["--dry-run"], ["--no-progress"]):
        assert main([*args, *extra]) == 1
        assert "mcvd train: error: decoding video files needs PyAV: pip install av" in capsys.readouterr().err


def test_missing_config_file(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "none.yml"), "--workdir", str(tmp_path / "w")]) == 2
    assert "mcvd train: error: config: no such file" in capsys.readouterr().err


def test_train_then_resume(config, tmp_path, capsys):
    work = tmp_path / "work"
    assert main(["train", "--config", str(config), "--workdir", str(work), "--no-progress"]) == 0
    assert "step 2, checkpoint" in capsys.readouterr().out
    assert sorted(p.name for p in work.iterdir()) == ["checkpoint.pt", "config.yml", "metrics.csv"]
    assert main(["train", "--config", str(config), "--workdir", str(work), "--no-progress",
                 "--set", "training.steps=3"]) == 0
    assert "step 3, checkpoint" in capsys.readouterr().out
    assert len((work / "metrics.csv").read_text().splitlines()) == 1 + 3
    assert main(["train", "--config", str(config), "--workdir", str(work), "--set", "model.ngf=8"]) == 2
    assert "the model section differs from the checkpoint's" in capsys.readouterr().err


def test_no_progress_logs_each_metrics_row_and_the_resume(config, tmp_path, caplog):
    """Without the bar (a run in the background, its output to a file) each metrics row is a line, and a
    resume says where it starts."""
    import logging

    work = tmp_path / "work"
    command = ["train", "--config", str(config), "--workdir", str(work), "--no-progress", "--set",
               "training.log_every=1"]
    assert logging.getLogger().level == logging.WARNING  # the root logger's, as a plain process has it
    assert main(command) == 0
    assert [r.getMessage()[:8] for r in caplog.records if r.name == "mcvd.train"] == ["step 1: ", "step 2: "]
    assert "loss " in caplog.records[0].getMessage() and "steps/s" in caplog.records[0].getMessage()
    caplog.clear()
    assert main([*command, "--set", "training.steps=3"]) == 0
    messages = [r.getMessage() for r in caplog.records if r.name == "mcvd.train" and r.levelname == "INFO"]
    assert messages[0] == f"resuming {work / 'checkpoint.pt'} at step 2" and messages[1].startswith("step 3: ")
    assert logging.getLogger("mcvd.train").level == logging.NOTSET  # put back
    caplog.clear()
    assert main([*command[:-3], "--set", "training.steps=4"]) == 0  # with the bar: no lines
    assert not [r for r in caplog.records if r.name == "mcvd.train" and r.levelname == "INFO"]


def test_dry_run_says_whether_it_resumes_and_checks_the_checkpoint(config, tmp_path, capsys):
    work = tmp_path / "work"
    command = ["train", "--config", str(config), "--workdir", str(work)]
    assert main([*command, "--dry-run"]) == 0
    assert f"# workdir: a new run in {work}" in capsys.readouterr().out
    assert main([*command, "--no-progress"]) == 0
    capsys.readouterr()
    assert main([*command, "--dry-run", "--set", "training.steps=5"]) == 0
    assert f"# workdir: resumes {work / 'checkpoint.pt'} at step 2 of 5" in capsys.readouterr().out
    assert main([*command, "--dry-run", "--set", "model.ngf=8"]) == 2
    assert "the model section differs from the checkpoint's" in capsys.readouterr().err
    assert main([*command, "--dry-run", "--set", "training.steps=2"]) == 0
    assert f"# workdir: nothing to train: {work / 'checkpoint.pt'} is at step 2 and training.steps is 2" in \
        capsys.readouterr().out


def test_dry_run_refuses_a_workdir_the_run_would_refuse(config, tmp_path, capsys):
    """As the run itself, and before it writes anything: a file, or a folder of other files."""
    (tmp_path / "a_file").write_text("mine")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    for workdir, message in ((tmp_path / "a_file", "is a file; expected a folder"),
                             (tmp_path / "mine", "exists and holds files but no checkpoint.pt")):
        assert main(["train", "--config", str(config), "--workdir", str(workdir), "--dry-run"]) == 2
        assert f"mcvd train: error: --workdir: {workdir} {message}" in capsys.readouterr().err
    assert (tmp_path / "a_file").read_text() == "mine" and os.listdir(tmp_path / "mine") == ["notes.txt"]


def test_a_finished_run_says_there_is_nothing_to_train(config, tmp_path, capsys):
    work = tmp_path / "work"
    command = ["train", "--config", str(config), "--workdir", str(work), "--no-progress"]
    assert main(command) == 0
    capsys.readouterr()
    config_yml = (work / "config.yml").read_text()
    assert main([*command, "--set", "training.steps=1"]) == 0
    assert f"mcvd train: nothing to train: {work / 'checkpoint.pt'} is at step 2 and training.steps is 1" in \
        capsys.readouterr().out
    assert (work / "config.yml").read_text() == config_yml  # the run did not change: neither do its files


def test_ctrl_c_exits_130_with_the_checkpoint_written(config, tmp_path, capfd, monkeypatch, interactive_sigint):
    import signal

    import mcvd.train.trainer as trainer_module

    def press_ctrl_c(*args):
        signal.raise_signal(signal.SIGINT)
        return False

    monkeypatch.setattr(trainer_module, "_time_is_up", press_ctrl_c)
    work = tmp_path / "work"
    assert main(["train", "--config", str(config), "--workdir", str(work), "--no-progress", "--minutes", "60"]) == 130
    err = capfd.readouterr().err
    assert "Ctrl-C: stopping at the end of this step to write the checkpoint" in err
    assert f"mcvd train: interrupted at step 1; {work / 'checkpoint.pt'} holds it: run the same command to resume" \
        in err
    assert torch.load(work / "checkpoint.pt", weights_only=True)["step"] == 1


def test_a_data_folder_without_videos_writes_no_workdir(config, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    work = tmp_path / "work"
    assert main(["train", "--config", str(config), "--workdir", str(work), "--set", "data.dataset=video_folder",
                 "--set", f"data.root={tmp_path / 'empty'}", "--set", "model.channels=3",
                 "--set", "data.length=null"]) == 2
    assert "mcvd train: error: data.root: no readable video" in capsys.readouterr().err
    assert not work.exists()


def test_model_errors_name_the_section(config, tmp_path, capsys):
    assert main(["train", "--config", str(config), "--workdir", str(tmp_path / "w"), "--dry-run",
                 "--set", "model.conditioning=foo"]) == 2
    assert "mcvd train: error: model.conditioning: expected one of ('concat', 'spatin'), got 'foo'" in \
        capsys.readouterr().err


def test_minutes_stops_early_and_the_same_command_resumes(config, tmp_path, capsys):
    work = tmp_path / "work"
    command = ["train", "--config", str(config), "--workdir", str(work), "--no-progress"]
    assert main([*command, "--minutes", "1e-9"]) == 0
    assert "step 1 of 2 (time limit; run again to resume), checkpoint" in capsys.readouterr().out
    assert main(command) == 0
    assert "step 2, checkpoint" in capsys.readouterr().out
    assert len((work / "metrics.csv").read_text().splitlines()) == 1 + 2


@pytest.mark.parametrize("minutes", ["0", "-1", "nan"])
def test_minutes_must_be_positive(config, tmp_path, capsys, minutes):
    assert main(["train", "--config", str(config), "--workdir", str(tmp_path / "w"), "--minutes", minutes]) == 2
    assert "mcvd train: error: argument --minutes: expected a number > 0, got" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_refuses_a_folder_with_other_files(config, tmp_path, capsys):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "keep.txt").write_text("x")
    assert main(["train", "--config", str(config), "--workdir", str(tmp_path / "work")]) == 2
    assert "holds files but no checkpoint.pt" in capsys.readouterr().err


def test_invalid_yaml_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yml"
    bad.write_text("model:\n  ngf: 8\ntraining: {steps: 2\n")
    assert main(["train", "--config", str(bad), "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert f"mcvd train: error: config: {bad} is not valid YAML: line 4" in err
    assert main(["train", "--config", str(bad), "--workdir", str(tmp_path / "w"), "--dry-run"]) == 2
    assert not (tmp_path / "w").exists()


def test_an_invalid_yaml_override_is_named(config, tmp_path, capsys):
    assert main(["train", "--config", str(config), "--workdir", str(tmp_path / "w"), "--dry-run",
                 "--set", "model.ch_mult=[1, 2"]) == 2
    assert "mcvd train: error: --set model.ch_mult=[1, 2: the value is not valid YAML" in capsys.readouterr().err


@pytest.mark.parametrize("value, message", [
    ("junk", "MCVD_BACKEND: 'junk' is not a backend: expected one of ('reference', 'cpu', 'cuda', 'triton') or the "
             "variable unset"),
    ("cuda", "MCVD_BACKEND: 'cuda' is not available"),
])
def test_a_bad_backend_variable_fails_before_the_workdir_is_made(config, tmp_path, capsys, monkeypatch, value,
                                                                  message):
    monkeypatch.setenv("MCVD_BACKEND", value)
    work = tmp_path / "work"
    assert main(["train", "--config", str(config), "--workdir", str(work), "--no-progress",
                 "--set", "training.device=cpu"]) == 2
    assert message in capsys.readouterr().err
    assert not work.exists()


def test_a_run_stopped_before_its_first_checkpoint_starts_over(config, tmp_path, capsys, monkeypatch):
    import os

    from mcvd.train import trainer as trainer_module
    from mcvd.train.objective import mcvd_loss

    work = tmp_path / "work"
    command = ["train", "--config", str(config), "--workdir", str(work), "--no-progress"]
    with monkeypatch.context() as patch:
        patch.setattr(trainer_module, "mcvd_loss", lambda *a, **k: mcvd_loss(*a, **k) * float("nan"))
        assert main(command) == 1
    err = capsys.readouterr().err
    assert "no checkpoint was written yet" in err and "the same command starts the run over" in err
    # As a write killed mid-way leaves it.
    stale = work / ".checkpoint.pt.k1ll3d_x.tmp"
    stale.write_bytes(b"half a checkpoint")
    os.utime(stale, (1e9, 1e9))
    assert sorted(p.name for p in work.iterdir()) == [".checkpoint.pt.k1ll3d_x.tmp", "config.yml", "metrics.csv"]
    assert main(command) == 0
    assert "step 2, checkpoint" in capsys.readouterr().out
    assert sorted(p.name for p in work.iterdir()) == ["checkpoint.pt", "config.yml", "metrics.csv"]
    assert [row.split(",")[0] for row in (work / "metrics.csv").read_text().splitlines()] == ["step", "1", "2"]


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_which_file(config, tmp_path, capsys, monkeypatch):
    import errno

    import torch

    from mcvd.train import read_checkpoint

    work = tmp_path / "work"
    save, calls = torch.save, []

    def filling(obj, fh, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            fh.write(b"x" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, fh, *args, **kwargs)

    monkeypatch.setattr(torch, "save", filling)
    assert main(["train", "--config", str(config), "--workdir", str(work), "--no-progress",
                 "--set", "training.steps=4", "--set", "training.ckpt_every=2"]) == 1
    err = capsys.readouterr().err
    checkpoint = work / "checkpoint.pt"
    assert f"mcvd train: error: step 4: no space left on the device for {checkpoint}" in err
    assert "1,000 bytes of it were written" in err and f"{checkpoint} keeps step 2" in err
    assert "Traceback" not in err
    assert read_checkpoint(checkpoint)["step"] == 2
    assert sorted(p.name for p in work.iterdir()) == ["checkpoint.pt", "config.yml", "metrics.csv"]
    monkeypatch.setattr(torch, "save", save)
    assert main(["train", "--config", str(config), "--workdir", str(work), "--no-progress",
                 "--set", "training.steps=4", "--set", "training.ckpt_every=2"]) == 0  # resumes from step 2
    assert read_checkpoint(checkpoint)["step"] == 4


def test_init_from_starts_a_new_run_from_the_files_weights(config, tmp_path, capsys):
    import mcvd
    from mcvd.train.checkpoint import read_checkpoint

    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["train", "--config", str(config), "--workdir", str(first), "--no-progress"]) == 0
    start, _ = mcvd.load(first / "checkpoint.pt")  # the EMA weights
    # A rate so small that one Adam step (about lr per weight) leaves the weights where they started.
    assert main(["train", "--config", str(config), "--workdir", str(second), "--no-progress",
                 "--init-from", str(first / "checkpoint.pt"), "--set", "training.steps=1",
                 "--set", "training.lr=1e-9", "--set", "training.seed=7"]) == 0
    ckpt = read_checkpoint(second / "checkpoint.pt")
    expected = start.state_dict()
    for key, value in ckpt["model"].items():
        assert torch.allclose(value, expected[key], atol=1e-6), key
    for key, value in ckpt["ema"].items():
        assert torch.allclose(value, expected[key], atol=1e-6), key
    # Without --init-from the same run starts elsewhere (seed 7's random weights).
    third = tmp_path / "third"
    assert main(["train", "--config", str(config), "--workdir", str(third), "--no-progress",
                 "--set", "training.steps=1", "--set", "training.lr=1e-9", "--set", "training.seed=7"]) == 0
    fresh = read_checkpoint(third / "checkpoint.pt")["model"]
    assert any(not torch.allclose(fresh[k], expected[k], atol=1e-3)
               for k in expected if expected[k].is_floating_point())


def test_init_from_refuses_another_network_or_a_missing_file(config, tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["train", "--config", str(config), "--workdir", str(first), "--no-progress"]) == 0
    capsys.readouterr()
    work = tmp_path / "second"
    assert main(["train", "--config", str(config), "--workdir", str(work), "--no-progress",
                 "--init-from", str(first / "checkpoint.pt"), "--set", "model.ngf=8"]) == 2
    err = capsys.readouterr().err
    assert f"mcvd train: error: --init-from {first / 'checkpoint.pt'}: the network to start from differs from " \
           "the model section in ngf (4 -> 8)" in err
    assert not work.exists()
    assert main(["train", "--config", str(config), "--workdir", str(work), "--no-progress",
                 "--init-from", str(tmp_path / "none.pt")]) == 2
    err = capsys.readouterr().err
    assert "mcvd train: error: --init-from:" in err and "none.pt" in err
    assert not work.exists()
    # --dry-run checks it as the run would, and says where a new run starts from.
    assert main(["train", "--config", str(config), "--workdir", str(work), "--dry-run",
                 "--init-from", str(first / "checkpoint.pt"), "--set", "model.ngf=8"]) == 2
    assert "the network to start from differs from the model section in ngf (4 -> 8)" in capsys.readouterr().err
    assert main(["train", "--config", str(config), "--workdir", str(work), "--dry-run",
                 "--init-from", str(tmp_path / "none.pt")]) == 2
    assert "--init-from:" in capsys.readouterr().err
    assert main(["train", "--config", str(config), "--workdir", str(work), "--dry-run",
                 "--init-from", str(first / "checkpoint.pt")]) == 0
    assert f"# workdir: a new run in {work}, from the weights of {first / 'checkpoint.pt'}" in capsys.readouterr().out
    assert not work.exists()


def test_init_from_a_shipped_model_by_name(config, tmp_path, capsys):
    """--init-from NAME, where no file of that name exists, starts from the shipped model (its SHA-256 checked);
    its network must still be the config's."""
    from mcvd import pretrained
    from mcvd.train.checkpoint import read_checkpoint

    shipped, _ = pretrained.load("smmnist-demo-cpu")
    stage = Path(__file__).resolve().parents[2] / pretrained.MODELS["smmnist-demo-cpu"].configs[-1]
    work = tmp_path / "fine"
    assert main(["train", "--config", str(stage), "--workdir", str(work), "--no-progress",
                 "--init-from", "smmnist-demo-cpu", "--set", "training.steps=1", "--set", "training.lr=1e-9",
                 "--set", "training.batch_size=2", "--set", "training.warmup=1", "--set", "training.ckpt_every=1",
                 "--set", "data.length=4"]) == 0
    weights = read_checkpoint(work / "checkpoint.pt")["model"]
    for key, value in shipped.state_dict().items():
        assert torch.allclose(weights[key], value, atol=1e-6), key
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--workdir", str(tmp_path / "tiny"), "--no-progress",
                 "--init-from", "smmnist-demo-cpu"]) == 2
    assert "mcvd train: error: --init-from smmnist-demo-cpu: the network to start from differs from the model " \
           "section" in capsys.readouterr().err


def test_ctrl_c_anywhere_else_is_one_line_and_code_130(config, tmp_path, capsys, monkeypatch):
    import mcvd.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mcvd.train, "load_run_config", interrupted)
    assert main(["train", "--config", str(config), "--workdir", str(tmp_path / "w")]) == 130
    assert capsys.readouterr().err == "mcvd train: interrupted\n"


def test_a_dict_is_not_a_run_config(tmp_path, tiny_run):
    from mcvd.train import train

    with pytest.raises(TypeError, match=r"run: expected a mcvd.train.RunConfig \(RunConfig.from_dict makes one of a "
                                        r"dict, load_run_config of a YAML file\), got dict"):
        train(tiny_run().to_dict(), tmp_path / "w")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("signum, code", [(2, 130), (15, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_the_process_group_with_data_workers_still_writes_the_checkpoint(config, tmp_path, signum,
                                                                                     code):
    """A terminal's Ctrl-C (SIGINT), or a batch scheduler's SIGTERM, reaches the DataLoader workers too: they
    ignore it, so the main process, waiting for a (slow) batch, ends the step and writes the checkpoint instead
    of failing on a dead worker; it exits with the shell's code for the signal."""
    import os
    import signal
    import subprocess
    import sys
    import time

    work = tmp_path / "work"
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # as an interactive shell starts it\n"
        "from mcvd.data import StochasticMovingMNIST\n"
        "get = StochasticMovingMNIST.__getitem__\n"
        "StochasticMovingMNIST.__getitem__ = lambda self, i: (time.sleep(0.1), get(self, i))[1]\n"
        "from mcvd.cli import main\n"
        f"sys.exit(main(['train', '--config', {str(config)!r}, '--workdir', {str(work)!r}, '--no-progress',\n"
        "                '--set', 'data.num_workers=2', '--set', 'training.steps=1000']))\n")
    child = subprocess.Popen([sys.executable, "-c", script], start_new_session=True, stderr=subprocess.PIPE, text=True)
    def steps_logged():
        path = work / "metrics.csv"
        return len(path.read_text().splitlines()) - 1 if path.is_file() else 0

    try:
        deadline = time.monotonic() + 120
        while steps_logged() < 2:  # two steps done: the workers are running
            assert child.poll() is None, child.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the run logged no steps in 120 s"
            time.sleep(0.2)
        os.killpg(child.pid, signum)  # as a terminal (or a scheduler) sends it: to every process of the group
        err = child.communicate(timeout=120)[1]
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    assert child.returncode == code, err[-2000:]
    by = "" if signum == signal.SIGINT else " by SIGTERM"
    assert f"mcvd train: interrupted{by} at step" in err and (work / "checkpoint.pt").is_file()


def test_a_folder_whose_videos_all_fail_to_decode_is_named(config, tmp_path, capsys):
    """Frame folders are counted at the start and decoded clip by clip: when none decodes, the run stops with
    the folder named, not a traceback."""
    import numpy as np
    from PIL import Image

    (tmp_path / "bad" / "v").mkdir(parents=True)
    for t in range(10):
        side = 10 if t == 3 else 8  # one frame of another size: no clip of the video reads
        Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(tmp_path / "bad" / "v" / f"{t}.png")
    with pytest.warns(UserWarning, match="skipping .* from now on: decoding failed"):
        code = main(["train", "--config", str(config), "--workdir", str(tmp_path / "w"), "--no-progress",
                     "--set", "data.dataset=video_folder", "--set", f"data.root={tmp_path / 'bad'}",
                     "--set", "data.length=null", "--set", "model.channels=3"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "mcvd train: error: data.root: no readable video left under" in err


def test_warnings_print_as_lines_of_the_command(config, tmp_path, capsys, monkeypatch):
    import warnings

    import mcvd.train

    def warns(*args, **kwargs):
        warnings.warn("something to know", UserWarning)
        raise KeyboardInterrupt

    monkeypatch.setattr(mcvd.train, "load_run_config", warns)
    formatter = warnings.formatwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        monkeypatch.setattr(warnings, "showwarning", lambda message, category, filename, lineno, file=None,
                            line=None: print(warnings.formatwarning(message, category, filename, lineno), end="",
                                             file=sys.stderr))
        assert main(["train", "--config", str(config), "--workdir", str(tmp_path / "w")]) == 130
    assert capsys.readouterr().err == "mcvd train: UserWarning: something to know\nmcvd train: interrupted\n"
    assert warnings.formatwarning is formatter  # put back
