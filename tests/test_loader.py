"""mcvd.load: every kind of model file, EMA or raw weights, clear errors."""
import os
import shutil
from pathlib import Path

import pytest
import torch
from official_fixtures import FIXTURES, needs_fixtures

import mcvd
from mcvd import MCVD, ModelConfig
from mcvd.loader import MODEL_FILE, REFERENCE_CHECKPOINT, TRAINING_CHECKPOINT, read
from mcvd.nn import load_model, save_model
from mcvd.train import RunConfig, read_checkpoint, train


CFG = ModelConfig(image_size=8, channels=1, num_frames=1, num_frames_cond=1, ngf=4, ch_mult=(1,),
                  num_res_blocks=1, attn_resolutions=(), n_head_channels=-1, dropout=0.0)


class RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def same_state(model, state) -> bool:
    ours = model.state_dict()
    return ours.keys() == state.keys() and all(torch.equal(ours[k], state[k]) for k in ours)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A training checkpoint of `mcvd train` (3 steps, EMA rate 0.5: EMA and raw weights differ)."""
    run = RunConfig.from_dict({"model": CFG.to_dict(), "data": {"digit_size": 4, "length": 16},
                               "training": {"batch_size": 2, "steps": 3, "warmup": 1, "lr": 1e-2, "ema_rate": 0.5,
                                            "ckpt_every": 3, "log_every": 1, "device": "cpu"}})
    return train(run, tmp_path_factory.mktemp("run"), progress=False).checkpoint


def test_a_training_checkpoint_gives_its_ema_weights_by_default(checkpoint):
    ckpt = read_checkpoint(checkpoint)
    assert not all(torch.equal(ckpt["ema"][k], v) for k, v in ckpt["model"].items())  # so the test can fail
    model, cfg = mcvd.load(checkpoint)
    assert cfg == CFG and model.config == CFG and not model.training
    assert same_state(model, ckpt["ema"]) and not same_state(model, ckpt["model"])
    raw, _ = mcvd.load(checkpoint, use_ema=False)
    assert same_state(raw, ckpt["model"]) and not same_state(raw, ckpt["ema"])
    assert read(checkpoint).kind == TRAINING_CHECKPOINT
    assert read(checkpoint).run_config == ckpt["run_config"]
    with pytest.raises(TypeError, match=r"use_ema: expected a bool, got str 'no'"):
        mcvd.load(checkpoint, use_ema="no")


def test_a_training_checkpoint_that_lost_its_ema_weights_is_not_taken_for_a_model_file(checkpoint, tmp_path):
    ckpt = read_checkpoint(checkpoint)
    del ckpt["ema"]
    torch.save(ckpt, tmp_path / "no_ema.pt")
    assert read(tmp_path / "no_ema.pt").kind == TRAINING_CHECKPOINT
    with pytest.raises(ValueError, match=r"path: .*no_ema.pt holds no EMA weights; pass use_ema=False"):
        mcvd.load(tmp_path / "no_ema.pt")
    raw, _ = mcvd.load(tmp_path / "no_ema.pt", use_ema=False)
    assert same_state(raw, ckpt["model"])


def test_a_model_file_loads_as_saved(tmp_path):
    model = MCVD(CFG)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    path = save_model(tmp_path / "model.pt", model)
    loaded, cfg = mcvd.load(path)
    assert cfg == CFG and same_state(loaded, model.state_dict()) and not loaded.training
    assert read(path).kind == MODEL_FILE and read(path).run_config == {}
    with pytest.raises(ValueError, match=r"use_ema=False: .*model.pt is a model file with a single set of weights"):
        mcvd.load(path, use_ema=False)
    assert same_state(load_model(path), loaded.state_dict())  # the same as the model file's own reader


@needs_fixtures
@pytest.mark.parametrize("name", ["concat_small", "spatin_small"])
@pytest.mark.parametrize("use_ema", [True, False], ids=["ema", "raw"])
def test_a_reference_checkpoint_loads_as_load_official_does(name, use_ema):
    path = FIXTURES / name / "checkpoint.pt"
    model, cfg = mcvd.load(path, use_ema=use_ema)
    expected, expected_cfg = mcvd.load_official(path, use_ema=use_ema)
    assert cfg == expected_cfg and same_state(model, expected.state_dict()) and not model.training
    # The masked-conditioning settings of its config.yml (data section there), as mcvd train names them.
    assert read(path).kind == REFERENCE_CHECKPOINT and read(path).run_config == {
        "training": {"prob_mask_cond": 0.0, "prob_mask_future": 0.0, "prob_mask_sync": False}}
    io = torch.load(FIXTURES / name / "io.pt", weights_only=True)
    with torch.no_grad():
        out = model(io["x"], cfg.num_timesteps - 1 - io["t_official"], io["cond"])
    want = io["out_ema" if use_ema else "out_raw"]
    assert ((out.double() - want.double()).norm() / want.double().norm()).item() <= 1e-5  # as tests/compat


@needs_fixtures
def test_a_reference_checkpoint_needs_its_config_beside_it(tmp_path):
    shutil.copy(FIXTURES / "concat_small" / "checkpoint.pt", tmp_path / "checkpoint.pt")
    with pytest.raises(FileNotFoundError, match=r"config: .*checkpoint.pt is a checkpoint of the reference code, "
                                                r".*config.yml; put it there, or give its path"):
        mcvd.load(tmp_path / "checkpoint.pt")


def test_map_location(checkpoint):
    model, _ = mcvd.load(checkpoint, map_location="cpu")
    assert next(model.parameters()).device == torch.device("cpu")
    model, _ = mcvd.load(checkpoint, map_location=torch.device("meta"))
    assert next(model.parameters()).device == torch.device("meta")
    if not torch.cuda.is_available():  # torch's own error would be an AssertionError about its build
        with pytest.raises(ValueError, match="map_location: cuda requested but torch sees no CUDA device"):
            mcvd.load(checkpoint, map_location="cuda")


def test_missing_corrupt_and_foreign_files_are_named(tmp_path, checkpoint):
    with pytest.raises(TypeError, match=r"path: expected the path of a model file \(str or os.PathLike\), got "
                                        r"NoneType"):
        mcvd.load(None)
    with pytest.raises(FileNotFoundError, match=r"path: no such file: .*nothing.pt"):
        mcvd.load(tmp_path / "nothing.pt")
    data = Path(checkpoint).read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"path: .*truncated.pt is not a readable torch file"):
        mcvd.load(tmp_path / "truncated.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"path: .*junk.pt is not a readable torch file \(not a torch file, or a "
                                         r"damaged one"):
        mcvd.load(tmp_path / "junk.pt")
    (tmp_path / "random.pt").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=r"path: .*random.pt is not a readable torch file \(not a torch file, or a "
                                         r"damaged one"):
        mcvd.load(tmp_path / "random.pt")
    marker = tmp_path / "ran"
    torch.save({"state_dict": RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"path: .*evil.pt is not a readable torch file \(it holds objects other "
                                         r"than tensors and plain data, which are not loaded: .*(posix|nt|os)\.system"):
        mcvd.load(tmp_path / "evil.pt")
    assert not marker.exists()
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"path: .*other.pt is not an mcvd model file, training checkpoint or "
                                         r"reference-code checkpoint .*got dict"):
        mcvd.load(tmp_path / "other.pt")
    torch.save({"format": "mcvd", "version": 7}, tmp_path / "future.pt")
    with pytest.raises(ValueError, match=r"future.pt has mcvd format version 7"):
        mcvd.load(tmp_path / "future.pt")
    torch.save([{"w": torch.zeros(1)}], tmp_path / "short_list.pt")
    with pytest.raises(ValueError, match=r"short_list.pt is not a checkpoint of the reference code"):
        mcvd.load(tmp_path / "short_list.pt")


def test_weights_or_a_config_that_do_not_fit_are_named(tmp_path, checkpoint):
    """A file of the right format whose contents are damaged: a ValueError naming it, not a bare RuntimeError."""
    payload = torch.load(save_model(tmp_path / "m.pt", MCVD(CFG)), weights_only=True)
    missing = {**payload, "model": {k: v for k, v in payload["model"].items() if k != "conv_out.bias"}}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"path: .*missing.pt: its 'model' weights do not fit its model config: "
                                         r"(?s:.*)conv_out.bias"):
        mcvd.load(tmp_path / "missing.pt")
    torch.save({**payload, "model_config": {**payload["model_config"], "ngf": "x"}}, tmp_path / "config.pt")
    with pytest.raises(ValueError, match=r"path: .*config.pt holds a model config that is not one: ngf: expected "
                                         r"an int, got 'x'"):
        mcvd.load(tmp_path / "config.pt")
    ckpt = read_checkpoint(checkpoint)
    ckpt["ema"] = {k: v[..., :1] if v.dim() else v for k, v in ckpt["ema"].items()}  # wrong shapes
    torch.save(ckpt, tmp_path / "ema.pt")
    with pytest.raises(ValueError, match=r"path: .*ema.pt: its 'ema' weights do not fit its model config"):
        mcvd.load(tmp_path / "ema.pt")


def test_top_level_export():
    assert mcvd.load is mcvd.loader.load and "load" in mcvd.__all__


def test_a_recorded_sha256_is_checked_on_the_bytes_before_anything_is_unpickled(tmp_path):
    import hashlib

    from mcvd.fileio import DigestMismatch

    path = tmp_path / "m.mcvd"
    save_model(path, MCVD(ModelConfig(image_size=8, ngf=4, ch_mult=(1,), num_res_blocks=1, attn_resolutions=())))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert read(path, sha256=digest).kind == MODEL_FILE
    with pytest.raises(DigestMismatch, match=f"path: {path} has SHA-256 {digest}, expected {'0' * 64}") as err:
        read(path, sha256="0" * 64)
    assert err.value.digest == digest
    # A file torch cannot read fails on its digest, not in torch.load.
    junk = tmp_path / "junk.mcvd"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(DigestMismatch):
        read(junk, sha256=digest)


def test_a_folder_or_a_name_is_pointed_to_what_loads_it(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=rf"path: {tmp_path} is a folder; expected a file \(its checkpoint: "
                                                rf"{tmp_path / 'checkpoint.pt'}\)"):
        mcvd.load(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no such file: smmnist-demo-cpu \(a shipped model is loaded by its "
                                                r"name with mcvd.pretrained.load\)"):
        mcvd.load("smmnist-demo-cpu")


def test_a_text_file_is_refused_without_torch_advice_to_unpickle_it(tmp_path):
    (tmp_path / "config.yml").write_text("model:\n  ngf: 8\n")
    with pytest.raises(ValueError, match=r"config.yml is not a readable torch file \(not a torch file, or a damaged "
                                         r"one") as refused:
        mcvd.load(tmp_path / "config.yml")
    assert "weights_only" not in str(refused.value)
