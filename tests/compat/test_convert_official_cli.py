"""`mcvd convert-official`: converts, never overwrites without --force, fails with a message; the
other commands read a reference checkpoint directly (through mcvd.load)."""
from pathlib import Path

import numpy as np
import pytest
import torch

from mcvd import load_official
from mcvd.cli import main
from mcvd.nn import load_model

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "official"
CKPT = FIXTURES / "spatin_small" / "checkpoint.pt"

pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"fixtures not found at {FIXTURES}")


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("flags, use_ema", [([], True), (["--no-ema"], False)])
def test_converts_ema_or_raw_weights(tmp_path, capsys, flags, use_ema):
    out = tmp_path / "model.pt"
    assert main(["convert-official", str(CKPT), "--out", str(out), *flags]) == 0
    assert f"wrote {out}: spatin MCVD" in capsys.readouterr().out
    expected, cfg = load_official(CKPT, use_ema=use_ema)
    converted = load_model(out)
    assert converted.config == cfg and same_weights(converted, expected)


def test_keeps_an_existing_output_without_force(tmp_path, capsys):
    out = tmp_path / "model.pt"
    out.write_bytes(b"keep me")
    assert main(["convert-official", str(CKPT), "--out", str(out)]) == 2
    assert "--out: " in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert main(["convert-official", str(CKPT), "--out", str(out), "--force"]) == 0
    assert load_model(out).config.conditioning == "spatin"


def test_a_missing_output_folder_is_created(tmp_path, capsys):
    out = tmp_path / "models" / "v1" / "model.pt"
    assert main(["convert-official", str(CKPT), "--out", str(out)]) == 0
    assert load_model(out).config.conditioning == "spatin"


def test_explicit_config(tmp_path):
    out = tmp_path / "model.pt"
    config = FIXTURES / "concat_small" / "config.yml"
    assert main(["convert-official", str(FIXTURES / "concat_small" / "checkpoint.pt"), "--config", str(config),
                 "--out", str(out)]) == 0
    assert load_model(out).config.conditioning == "concat"


def test_errors_exit_nonzero_with_a_message(tmp_path, capsys):
    out = tmp_path / "model.pt"
    assert main(["convert-official", str(tmp_path / "none.pt"), "--out", str(out)]) == 2
    assert "checkpoint: no such file" in capsys.readouterr().err
    (tmp_path / "clip.mp4").write_bytes(b"")
    assert main(["convert-official", str(CKPT), "--out", str(tmp_path / "clip.mp4" / "m.pt")]) == 2
    assert f"--out: {tmp_path / 'clip.mp4'} exists and is not a folder" in capsys.readouterr().err
    assert main(["convert-official", str(tmp_path / "none.pt"), "--out", str(tmp_path / "new" / "m.pt")]) == 2
    assert not (tmp_path / "new").exists()  # a failed conversion leaves no folder behind
    wrong = FIXTURES / "concat_small" / "config.yml"
    assert main(["convert-official", str(CKPT), "--config", str(wrong), "--out", str(out)]) == 2
    assert "does not match the network" in capsys.readouterr().err
    assert not out.exists()
    # The config's own errors are named by the flag that gave it.
    assert main(["convert-official", str(CKPT), "--config", str(tmp_path / "nope.yml"), "--out", str(out)]) == 2
    assert f"mcvd convert-official: error: --config: no such file: {tmp_path / 'nope.yml'}" in capsys.readouterr().err
    (tmp_path / "bare.yml").write_text("model: {}\n")
    assert main(["convert-official", str(CKPT), "--config", str(tmp_path / "bare.yml"), "--out", str(out)]) == 2
    assert f"mcvd convert-official: error: --config: {tmp_path / 'bare.yml'}: " in capsys.readouterr().err


@pytest.mark.parametrize("flags", [[], ["--no-ema"]], ids=["ema", "raw"])
def test_sample_reads_a_reference_checkpoint_as_its_conversion(tmp_path, capsys, flags):
    """mcvd sample on the reference checkpoint samples what it samples from the converted model file."""
    converted = tmp_path / "model.pt"
    assert main(["convert-official", str(CKPT), "--out", str(converted), *flags]) == 0
    common = ["sample", "--task", "generate", "--steps", "2", "--seed", "4", "--no-progress"]
    assert main([*common, "--checkpoint", str(CKPT), "--out", str(tmp_path / "direct"), *flags]) == 0
    assert f"{'raw' if flags else 'EMA'} weights" in capsys.readouterr().out
    assert main([*common, "--checkpoint", str(converted), "--out", str(tmp_path / "converted")]) == 0
    with np.load(tmp_path / "direct" / "frames.npz") as a, np.load(tmp_path / "converted" / "frames.npz") as b:
        np.testing.assert_array_equal(a["prediction"], b["prediction"])


def test_force_never_replaces_a_folder(tmp_path, capsys):
    out = tmp_path / "models"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    for flags in ([], ["--force"]):
        assert main(["convert-official", str(CKPT), "--out", str(out), *flags]) == 2
        assert f"--out: {out} is a folder; expected the path of the model file to write" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
