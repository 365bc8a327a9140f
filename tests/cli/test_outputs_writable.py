"""Every command that writes checks its output folder before working: an unwritable --out or --workdir,
or a full disk, is an error naming it, never a traceback after the work."""
import errno
import tempfile
from pathlib import Path

import pytest
import yaml
from cli_helpers import TINY_RUN, encode_video, moving_square

from mcvd.cli import main

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "official"


@pytest.fixture
def unwritable(tmp_path):
    """A folder in which no file can be created: a read-only folder where that binds this user (not root),
    else /sys (sysfs refuses new files, even to root)."""
    ro = tmp_path / "read_only"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for folder in (ro, Path("/sys")):
            try:
                tempfile.TemporaryFile(dir=folder).close()
            except OSError:
                yield folder
                return
        pytest.skip("no folder here refuses new files")
    finally:
        ro.chmod(0o755)


def test_sample(checkpoint, unwritable, capsys):
    out = unwritable / "out"
    assert main(["sample", "--checkpoint", str(checkpoint), "--data", "smmnist", "--steps", "2", "--no-progress",
                 "--out", str(out)]) == 2
    assert f"mcvd sample: error: --out: cannot create files in {unwritable}" in capsys.readouterr().err


def test_eval(checkpoint, unwritable, capsys):
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", "smmnist", "--steps", "2", "--no-progress",
                 "--no-fvd", "--num-clips", "1", "--out", str(unwritable / "out")]) == 2
    assert f"mcvd eval: error: --out: cannot create files in {unwritable}" in capsys.readouterr().err


def test_stream(checkpoint, unwritable, tmp_path, capsys):
    video = tmp_path / "square.mp4"
    encode_video(video, moving_square(4))
    assert main(["stream", "--checkpoint", str(checkpoint), "--input", str(video), "--steps", "2", "--no-progress",
                 "--out", str(unwritable / "out" / "side.mp4")]) == 2
    assert f"mcvd stream: error: --out: cannot create files in {unwritable}" in capsys.readouterr().err


def test_demo(unwritable, capsys):
    assert main(["demo", "--size", "tiny", "--device", "cpu", "--no-progress", "--train-steps", "1",
                 "--out", str(unwritable)]) == 2
    assert f"mcvd demo: error: --out: cannot create files in {unwritable}" in capsys.readouterr().err


def test_train(unwritable, tmp_path, capsys):
    config = tmp_path / "run.yml"
    config.write_text(yaml.safe_dump(TINY_RUN))
    assert main(["train", "--config", str(config), "--workdir", str(unwritable / "run"), "--no-progress"]) == 2
    assert f"mcvd train: error: --workdir: cannot create files in {unwritable}" in capsys.readouterr().err


@pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"fixtures not found at {FIXTURES}")
def test_convert_official(unwritable, capsys):
    assert main(["convert-official", str(FIXTURES / "spatin_small" / "checkpoint.pt"),
                 "--out", str(unwritable / "model.pt")]) == 2
    assert f"mcvd convert-official: error: --out: cannot create files in {unwritable}" in capsys.readouterr().err


def test_a_full_disk_is_reported_with_the_file(checkpoint, tmp_path, capsys, monkeypatch):
    import numpy as np

    def filling(fh, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", filling)
    out = tmp_path / "out"
    assert main(["sample", "--checkpoint", str(checkpoint), "--data", "smmnist", "--steps", "2", "--no-progress",
                 "--no-optimize", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"mcvd sample: error: no space left on the device for {out / 'frames.npz'}" in err
    assert "Traceback" not in err and not (out / "frames.npz").exists()


@pytest.mark.parametrize("value, message", [
    ("junk", "MCVD_BACKEND: 'junk' is not a backend: expected one of ('reference', 'cpu', 'cuda', 'triton') or the "
             "variable unset"),
    ("cuda", "MCVD_BACKEND: 'cuda' is not available"),
])
def test_a_bad_backend_variable_is_named_before_any_work(checkpoint, tmp_path, capsys, monkeypatch, value, message):
    monkeypatch.setenv("MCVD_BACKEND", value)
    out = tmp_path / "out"
    assert main(["sample", "--checkpoint", str(checkpoint), "--data", "smmnist", "--steps", "2", "--no-progress",
                 "--device", "cpu", "--out", str(out)]) == 2
    assert f"mcvd sample: error: {message}" in capsys.readouterr().err
    assert not out.exists()
    assert main(["demo", "--size", "tiny", "--device", "cpu", "--no-progress", "--train-steps", "1",
                 "--out", str(out)]) == 2
    assert f"mcvd demo: error: {message}" in capsys.readouterr().err
    assert not out.exists()
