"""The training loop on a tiny real MCVD: exact resume, divergence, work folders, accumulation, checkpoints."""
import csv
import logging
import math
import signal
import warnings

import pytest
import torch
import yaml

import mcvd.train.trainer as trainer_module
from mcvd.nn import MCVD, precision, save_model
from mcvd.train import (
    TrainingDiverged,
    TrainingInterrupted,
    learning_rate,
    load_checkpoint,
    make_dataset,
    read_checkpoint,
    split_clip,
    train,
)
from mcvd.train.objective import draw_step_randomness, mcvd_loss
from mcvd.train.trainer import resume_point


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k, v in a.items():
        torch.testing.assert_close(v, b[k], rtol=0, atol=0, msg=k)


def test_resume_continues_the_same_loss_curve_bit_for_bit(tmp_path, tiny_run, caplog):
    # Dropout, masks, flips and rollout training on, so that every RNG the run uses must be restored.
    kw = dict(model={"dropout": 0.3}, data={"random_flip": True},
              training={"prob_mask_cond": 0.5, "rollout_prob": 0.5, "steps": 4})
    straight = train(tiny_run(**kw), tmp_path / "straight", progress=False)
    half = tiny_run(**{**kw, "training": {**kw["training"], "steps": 2}})
    first = train(half, tmp_path / "resumed", progress=False)
    with caplog.at_level(logging.WARNING, logger="mcvd.train"):
        second = train(tiny_run(**kw), tmp_path / "resumed", progress=False)
    assert "changed training section: steps (2 -> 4)" in caplog.text

    assert len(straight.losses) == 4 and (first.step, second.step) == (2, 4)
    assert first.losses + second.losses == straight.losses  # exact float equality
    a, b = read_checkpoint(straight.checkpoint), read_checkpoint(second.checkpoint)
    assert_same_state(a["model"], b["model"])
    assert_same_state(a["ema"], b["ema"])
    assert torch.equal(a["rng"]["generator"], b["rng"]["generator"])
    assert a["data_position"] == b["data_position"] == {"epoch": 0, "batch": 4, "num_clips": 64}

    with open(tmp_path / "resumed" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["loss"]) for r in rows] == pytest.approx(straight.losses, rel=1e-5)
    assert set(rows[0]) == {"step", "loss", "lr", "grad_norm", "it_per_s"}


def test_a_finished_run_resumes_to_nothing(tmp_path, tiny_run):
    run = tiny_run(training={"steps": 2})
    train(run, tmp_path, progress=False)
    again = train(run, tmp_path, progress=False)
    assert again.step == 2 and again.losses == []


def test_time_limit_stops_early_with_the_weights_of_the_shorter_run(tmp_path, tiny_run):
    run = tiny_run(training={"steps": 4})
    stopped = train(run, tmp_path / "stopped", progress=False, time_limit=0)
    short = train(tiny_run(training={"steps": 1}), tmp_path / "short", progress=False)
    assert stopped.step == 1 and stopped.losses == short.losses
    a, b = read_checkpoint(stopped.checkpoint), read_checkpoint(short.checkpoint)
    assert a["step"] == 1
    assert_same_state(a["model"], b["model"])
    assert_same_state(a["ema"], b["ema"])
    with open(tmp_path / "stopped" / "metrics.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1]

    resumed = train(run, tmp_path / "stopped", progress=False)
    straight = train(run, tmp_path / "straight", progress=False)
    assert resumed.step == 4 and stopped.losses + resumed.losses == straight.losses


def test_time_limit_must_be_seconds(tmp_path, tiny_run):
    with pytest.raises(ValueError, match=r"time_limit: expected seconds >= 0 or None, got -1"):
        train(tiny_run(training={"steps": 1}), tmp_path, progress=False, time_limit=-1)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, tiny_run, monkeypatch):
    run = tiny_run(training={"steps": 5, "ckpt_every": 2})
    clean = train(tiny_run(training={"steps": 2}), tmp_path / "clean", progress=False)

    calls = []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = mcvd_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(trainer_module, "mcvd_loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"step 3: the loss is nan; training stopped before applying this "
                                                r"step \(.*checkpoint.pt keeps step 2\)"):
        train(run, tmp_path / "run", progress=False)
    kept = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert kept["step"] == 2
    assert_same_state(kept["model"], read_checkpoint(clean.checkpoint)["model"])


def test_nan_before_any_checkpoint_says_so(tmp_path, tiny_run, monkeypatch):
    monkeypatch.setattr(trainer_module, "mcvd_loss", lambda *a, **k: mcvd_loss(*a, **k) * float("inf"))
    with pytest.raises(TrainingDiverged, match=r"step 1: the loss is (inf|nan); .*no checkpoint was written yet"):
        train(tiny_run(), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_folder_with_other_files_is_never_written(tmp_path, tiny_run):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"workdir: .* holds files but no checkpoint.pt"):
        train(tiny_run(), tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(FileExistsError, match=r"workdir: .*notes.txt is a file; expected a folder"):
        train(tiny_run(), tmp_path / "notes.txt", progress=False)


def test_a_users_own_config_in_the_workdir_is_never_replaced(tmp_path, tiny_run):
    """A workdir holding only a config.yml counts as a run stopped before its first checkpoint only when the
    file is the YAML a run writes; the user's own (here: the run's config with a comment) is kept."""
    run = tiny_run(training={"steps": 1})
    text = "# my experiment\n" + yaml.safe_dump(run.to_dict(), sort_keys=False)
    (tmp_path / "config.yml").write_text(text)
    with pytest.raises(FileExistsError, match=r"workdir: .* holds files but no checkpoint.pt"):
        train(run, tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yml"]
    assert (tmp_path / "config.yml").read_text() == text
    (tmp_path / "config.yml").write_text(text.split("\n", 1)[1])  # as a run writes it: started over
    (tmp_path / "metrics.csv").write_text("step,loss,lr,grad_norm,it_per_s\n")
    train(run, tmp_path, progress=False)
    assert (tmp_path / "checkpoint.pt").is_file()


def test_a_log_past_the_first_checkpoint_is_kept_when_the_checkpoint_has_gone(tmp_path, tiny_run):
    """Rows past ckpt_every show that a checkpoint was written: with checkpoint.pt moved away the folder is not
    a run stopped before its first checkpoint, and its log is not started over."""
    run = tiny_run(training={"steps": 3, "ckpt_every": 2, "log_every": 1})
    train(run, tmp_path, progress=False)
    (tmp_path / "checkpoint.pt").rename(tmp_path.parent / f"{tmp_path.name}_moved.pt")
    log = (tmp_path / "metrics.csv").read_text()
    with pytest.raises(FileExistsError, match=r"workdir: .* holds the metrics.csv of a run that reached step 3, "
                                              r"past its first checkpoint \(every 2 steps\), but no checkpoint.pt"):
        train(run, tmp_path, progress=False)
    with pytest.raises(FileExistsError, match=r"reached step 3"):
        resume_point(run, tmp_path)  # what --dry-run reports
    assert (tmp_path / "metrics.csv").read_text() == log
    # Killed while writing its first checkpoint: the log reaches ckpt_every, and the run starts over.
    (tmp_path / "metrics.csv").write_text("".join(line + "\n" for line in log.splitlines()[:3]))
    train(run, tmp_path, progress=False)
    assert (tmp_path / "checkpoint.pt").is_file()
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 4  # the header and steps 1-3, anew


def test_a_workdir_another_process_trains_in_is_refused(tmp_path, tiny_run):
    """Two runs in one workdir would write over each other's checkpoints and log: the second is refused, by
    train and by the dry run, while the first holds the folder's lock."""
    import subprocess
    import sys

    run = tiny_run(training={"steps": 1})
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom mcvd.fileio import folder_lock\n"
                               f"with folder_lock({str(tmp_path)!r}, 'workdir'):\n"
                               "    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        message = r"workdir: .* is in use by another training run \(mcvd train or mcvd demo\)"
        with pytest.raises(FileExistsError, match=message):
            train(run, tmp_path, progress=False)
        with pytest.raises(FileExistsError, match=message):
            resume_point(run, tmp_path)
        assert list(tmp_path.iterdir()) == []
    finally:
        holder.communicate("", timeout=60)
    train(run, tmp_path, progress=False)  # the lock ended with its process
    assert (tmp_path / "checkpoint.pt").is_file()


def test_sigterm_stops_at_the_step_end_with_a_checkpoint_as_ctrl_c_does(tmp_path, tiny_run):
    run = tiny_run(training={"steps": 4})
    before = signal.getsignal(signal.SIGTERM)

    def send_sigterm(steps, seconds):
        if steps == 1:
            signal.raise_signal(signal.SIGTERM)
        return math.inf

    with pytest.raises(TrainingInterrupted, match=r"interrupted by SIGTERM at step 1; .*checkpoint.pt holds it") \
            as stopped:
        train(run, tmp_path / "run", progress=False, time_limit=send_sigterm)
    assert stopped.value.signum == signal.SIGTERM and stopped.value.step == 1
    assert read_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 1
    assert signal.getsignal(signal.SIGTERM) is before  # put back
    resumed = train(run, tmp_path / "run", progress=False)
    straight = train(run, tmp_path / "straight", progress=False)
    assert resumed.losses == straight.losses[1:]


def test_a_run_killed_after_a_checkpoint_logs_what_the_uninterrupted_run_logs(tmp_path, tiny_run):
    """Killed at step 4 with its checkpoint at step 3 (ckpt_every 3, log_every 2), then resumed: the log rows
    and their means are the uninterrupted run's, none of them averaging steps of both calls."""
    training = {"steps": 5, "log_every": 2, "ckpt_every": 3}
    straight = train(tiny_run(training=training), tmp_path / "straight", progress=False)
    killed = tmp_path / "killed"
    train(tiny_run(training={**training, "steps": 3}), killed, progress=False)
    with open(killed / "metrics.csv", "a") as f:
        f.write("4,9.5,0.001,1.0,10\n")  # the row the killed call wrote after its checkpoint
    train(tiny_run(training=training), killed, progress=False)

    def rows(folder):
        with open(folder / "metrics.csv") as f:
            return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]

    steps = [step for step, _ in rows(tmp_path / "straight")]
    assert steps == [2, 3, 4, 5] and [step for step, _ in rows(killed)] == steps
    assert [loss for _, loss in rows(killed)] == pytest.approx([loss for _, loss in rows(tmp_path / "straight")],
                                                                rel=1e-5)
    assert rows(killed)[2][1] == pytest.approx(straight.losses[3], rel=1e-5)  # step 4's row: step 4 alone


def test_a_young_temporary_of_an_interrupted_first_write_is_not_a_foreign_file(tmp_path, tiny_run):
    """Killed while writing its first checkpoint and started again at once: the temporary file, too young to
    remove (a write may still hold it), does not make the folder someone else's."""
    train(tiny_run(training={"steps": 1}), tmp_path / "first", progress=False)
    work = tmp_path / "work"
    work.mkdir()
    for name in ("config.yml", "metrics.csv"):
        (work / name).write_bytes((tmp_path / "first" / name).read_bytes())
    (work / ".checkpoint.pt.k1ll3d_x.tmp").write_bytes(b"half a checkpoint")
    train(tiny_run(training={"steps": 1}), work, progress=False)
    assert (work / "checkpoint.pt").is_file()
    # Holding the folder, the run removes it however young: no other process writes there.
    assert sorted(p.name for p in work.iterdir()) == ["checkpoint.pt", "config.yml", "metrics.csv"]


def test_resuming_a_damaged_checkpoint_names_it(tmp_path, tiny_run):
    train(tiny_run(training={"steps": 1}), tmp_path, progress=False)
    ckpt = read_checkpoint(tmp_path / "checkpoint.pt")
    del ckpt["model"]["conv_out.bias"]
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r".*checkpoint.pt: its saved state does not fit the run it records "
                                         r"(?s:.*)conv_out.bias"):
        train(tiny_run(training={"steps": 2}), tmp_path, progress=False)


def test_a_checkpoint_from_another_kind_of_device_resumes_with_a_warning(tmp_path, tiny_run, caplog):
    """Its random generator's state (here a CUDA generator's, 16 bytes) does not fit this device's: the run goes
    on, saying that its noise and masks are no longer those of an uninterrupted run."""
    train(tiny_run(training={"steps": 1}), tmp_path, progress=False)
    ckpt = read_checkpoint(tmp_path / "checkpoint.pt")
    ckpt["rng"]["generator"] = torch.zeros(16, dtype=torch.uint8)
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    with caplog.at_level(logging.WARNING, logger="mcvd"):
        result = train(tiny_run(training={"steps": 2}), tmp_path, progress=False)
    assert result.step == 2
    assert "written on another kind of device, on cpu: data continue exactly, the noise and masks do not" \
        in caplog.text


def test_resume_rewrites_config_yml_and_rejects_another_model(tmp_path, tiny_run):
    train(tiny_run(training={"steps": 1}), tmp_path, progress=False)
    before = (tmp_path / "config.yml").read_text()
    with pytest.raises(ValueError, match=r"config: the model section differs from the checkpoint's in .*: "
                                         r"ngf \(4 -> 8\)"):
        train(tiny_run(model={"ngf": 8}), tmp_path, progress=False)
    assert (tmp_path / "config.yml").read_text() == before  # a refused resume writes nothing
    longer = tiny_run(training={"steps": 2})
    train(longer, tmp_path, progress=False)
    assert yaml.safe_load((tmp_path / "config.yml").read_text()) == longer.to_dict()  # what the run now is


def test_a_damaged_checkpoint_is_named_with_what_to_do(tmp_path, tiny_run):
    train(tiny_run(training={"steps": 1}), tmp_path, progress=False)
    data = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"^workdir: cannot resume from .*checkpoint.pt is not a readable torch file "
                                         r".*; move it out of the way to start the run over, or choose a new workdir"):
        train(tiny_run(training={"steps": 2}), tmp_path, progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == data[:len(data) // 2]  # left as it was


def test_resume_drops_the_rows_written_past_the_checkpoint(tmp_path, tiny_run):
    """A run killed after its checkpoint at step 2 had logged steps 3 and 4, the last row cut short: resuming
    runs those steps again, and metrics.csv holds each step once."""
    run = tiny_run(training={"steps": 4})
    straight = train(run, tmp_path / "straight", progress=False)
    train(tiny_run(training={"steps": 2}), tmp_path / "killed", progress=False)
    with open(tmp_path / "killed" / "metrics.csv", "a") as f:
        f.write("3,9.5,0.001,1.0,10\n4,9.5,0.00")
    train(run, tmp_path / "killed", progress=False)
    with open(tmp_path / "killed" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["loss"]) for r in rows] == pytest.approx(straight.losses, rel=1e-5)


def test_ctrl_c_stops_at_the_step_end_with_a_checkpoint_and_the_run_resumes(tmp_path, tiny_run,
                                                                           interactive_sigint):
    run = tiny_run(training={"steps": 4})

    def press_ctrl_c(steps, seconds):  # asked after every step: Ctrl-C during the first
        if steps == 1:
            signal.raise_signal(signal.SIGINT)
        return math.inf

    with pytest.raises(TrainingInterrupted, match=r"interrupted at step 1; .*checkpoint.pt holds it") as stopped:
        train(run, tmp_path / "run", progress=False, time_limit=press_ctrl_c)
    assert stopped.value.step == 1 and read_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    resumed = train(run, tmp_path / "run", progress=False)
    straight = train(run, tmp_path / "straight", progress=False)
    assert resumed.losses == straight.losses[1:]


def test_a_second_ctrl_c_stops_at_once(tmp_path, tiny_run, interactive_sigint):
    def press_twice(steps, seconds):
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
        return math.inf

    with pytest.raises(KeyboardInterrupt) as stopped:
        train(tiny_run(training={"steps": 4}), tmp_path, progress=False, time_limit=press_twice)
    assert not isinstance(stopped.value, TrainingInterrupted)
    assert not (tmp_path / "checkpoint.pt").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tiny_run):
    one = train(tiny_run(training={"steps": 2}), tmp_path / "one", progress=False)
    acc = train(tiny_run(training={"steps": 2, "grad_accum": 2}), tmp_path / "acc", progress=False)
    torch.testing.assert_close(torch.tensor(acc.losses), torch.tensor(one.losses), rtol=1e-5, atol=0)
    a, b = read_checkpoint(one.checkpoint)["model"], read_checkpoint(acc.checkpoint)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)


def test_learning_rate_warms_up_linearly(tiny_run):
    cfg = tiny_run(training={"lr": 1e-3, "warmup": 4}).training
    assert [learning_rate(s, cfg) for s in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert learning_rate(0, tiny_run(training={"warmup": 0}).training) == 1e-3


def test_learning_rate_decays_along_a_cosine_from_its_start(tiny_run):
    cfg = tiny_run(training={"warmup": 0, "steps": 10, "lr_decay_start": 6}).training
    # constant before step 6, then 1/2 (1 + cos(pi k / 4)) for k = 0..3: 1, 0.8536, 0.5, 0.1464
    assert [learning_rate(s, cfg) for s in range(10)] == pytest.approx(
        [1e-3] * 6 + [1e-3, 8.535534e-4, 5e-4, 1.464466e-4], rel=1e-6)
    constant = tiny_run(training={"warmup": 0, "steps": 10}).training
    assert [learning_rate(s, cfg) for s in range(6)] == [learning_rate(s, constant) for s in range(6)]
    late = tiny_run(training={"warmup": 0, "steps": 10, "lr_decay_start": 10}).training
    assert [learning_rate(s, late) for s in range(10)] == [1e-3] * 10
    with pytest.raises(ValueError, match=r"training.lr_decay_start: expected >= 0, got -1"):
        tiny_run(training={"steps": 10, "lr_decay_start": -1})


def test_training_lowers_the_loss_on_a_fixed_batch(tmp_path, tiny_run):
    run = tiny_run(training={"steps": 10, "lr": 1e-2, "warmup": 3, "ckpt_every": 10, "log_every": 5})
    result = train(run, tmp_path, progress=False)
    clips = torch.stack([make_dataset(run)[i] for i in range(16)])
    rnd = draw_step_randomness(run.model, 16, prob_mask_cond=0.0, prob_mask_future=0.0, prob_mask_sync=False,
                               random_flip=False, generator=torch.Generator().manual_seed(5), device="cpu")
    from mcvd.diffusion import Schedule

    def loss(model):
        with torch.no_grad():
            return mcvd_loss(model, clips, rnd, Schedule.linear()).mean().item()

    torch.manual_seed(run.training.seed)
    initial = MCVD(run.model).eval()  # the run's initial weights (same seed)
    trained, _ = load_checkpoint(result.checkpoint, use_ema=False)
    # The output conv starts near zero (weights ~1e-6, the reference's init), so the initial loss is
    # 1/2 ||eps||^2 (about 64 for 2 x 8 x 8 pixels) to ~1e-6.
    assert loss(initial) == pytest.approx(0.5 * rnd.noise.square().sum((1, 2, 3, 4)).mean().item(), rel=1e-4)
    assert loss(trained) < 0.8 * loss(initial)


def test_load_checkpoint_gives_ema_or_raw_weights(tmp_path, tiny_run):
    run = tiny_run(training={"steps": 2, "ema_rate": 0.5})
    result = train(run, tmp_path, progress=False)
    ckpt = read_checkpoint(result.checkpoint)
    ema_model, cfg = load_checkpoint(result.checkpoint)
    raw_model, _ = load_checkpoint(result.checkpoint, use_ema=False)
    assert cfg == run.model and not ema_model.training
    assert_same_state(ema_model.state_dict(), ckpt["ema"])
    assert_same_state(raw_model.state_dict(), ckpt["model"])
    name = "conv_out.weight"
    assert not torch.equal(ckpt["ema"][name], ckpt["model"][name])
    assert ckpt["run_config"] == run.to_dict() and ckpt["world_size"] == 1

    model_file = tmp_path / "model.pt"
    save_model(model_file, raw_model)
    with pytest.raises(ValueError, match=r"path: .*model.pt holds no EMA weights; pass use_ema=False"):
        load_checkpoint(model_file)
    with pytest.raises(ValueError, match=r"model.pt is a model file, not a training checkpoint"):
        read_checkpoint(model_file)


@pytest.mark.parametrize("fast", [True, False])
def test_bf16_autocast_runs_on_the_cpu(tmp_path, tiny_run, monkeypatch, fast):
    """It runs either way; on a CPU without oneDNN bfloat16 convolutions it warns, naming the setting."""
    monkeypatch.setattr(precision, "cpu_has_fast_convolutions", lambda dtype: fast)
    run = tiny_run(training={"steps": 1, "precision": "bf16"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(run, tmp_path, progress=False)
    slow = [str(w.message) for w in caught if "slow fallback" in str(w.message)]
    assert len(result.losses) == 1 and result.losses[0] > 0
    assert len(slow) == (0 if fast else 1)
    assert fast or slow[0].startswith("training.precision: 'bf16': this CPU")


def test_fp16_needs_cuda(tmp_path, tiny_run):
    if torch.cuda.is_available():
        pytest.skip("checks the error on a machine without CUDA")
    with pytest.raises(ValueError, match=r"training.precision: 'fp16' needs a CUDA device"):
        train(tiny_run(training={"precision": "fp16"}), tmp_path, progress=False)


def test_video_folder_runs(tmp_path, tiny_run):
    import numpy as np
    from PIL import Image

    for v in range(2):
        (tmp_path / "videos" / f"v{v}").mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((10, 12), 20 * i + v, np.uint8)).save(tmp_path / "videos" / f"v{v}" / f"{i}.png")
    run = tiny_run(data={"dataset": "video_folder", "root": str(tmp_path / "videos"), "digit_size": 32,
                         "length": None}, training={"steps": 1})
    ds = make_dataset(run)
    assert len(ds) == 2 * 3 and ds[0].shape == (4, 1, 8, 8)
    x0, cond = split_clip(ds[0][None], run.model)
    assert x0.shape == cond.shape == (1, 2, 1, 8, 8)
    assert train(run, tmp_path / "run", progress=False).step == 1


def test_an_init_model_of_another_config_is_refused_before_the_workdir(tmp_path, tiny_run):
    # Same shapes, another objective: loading its weights would succeed and train the wrong thing.
    other = MCVD(tiny_run(model={"prediction": "x0"}).model)
    with pytest.raises(ValueError, match=r"init_model: the network to start from differs from the model section "
                                         r"in prediction \('x0' -> 'eps'\)"):
        train(tiny_run(), tmp_path / "work", progress=False, init_model=other)
    assert not (tmp_path / "work").exists()


def test_an_ignored_sigint_stays_ignored(tmp_path, tiny_run):
    """A run started in the background (nohup, `cmd &`) ignores SIGINT: the trainer leaves it so."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        def press_ctrl_c(steps, seconds):
            signal.raise_signal(signal.SIGINT)
            return math.inf

        result = train(tiny_run(training={"steps": 2}), tmp_path, progress=False, time_limit=press_ctrl_c)
        assert result.step == 2 and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_default_written_out_is_no_change_on_resume(tmp_path, tiny_run, caplog):
    """SMMNIST's data.length None is its train split's 60,000 clips: resuming with either says nothing."""
    train(tiny_run(data={"length": None}, training={"steps": 1}), tmp_path, progress=False)
    with caplog.at_level(logging.WARNING, logger="mcvd.train"):
        train(tiny_run(data={"length": 60000}, training={"steps": 2}), tmp_path, progress=False)
    assert "changed data section" not in caplog.text and "changed training section: steps (1 -> 2)" in caplog.text
