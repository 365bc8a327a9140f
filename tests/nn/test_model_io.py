"""mcvd.nn.save_model / load_model: round trip, no silent overwrite, clear errors, no training checkpoints."""
import os

import pytest
import torch

from mcvd import MCVD, ModelConfig
from mcvd.nn import load_model, save_model

CFG = ModelConfig(image_size=8, channels=1, num_frames=1, num_frames_cond=1, ngf=4, ch_mult=(1, 2),
                  num_res_blocks=1, attn_resolutions=(4,), n_head_channels=4, conditioning="spatin", spade_dim=4)


def test_round_trip(tmp_path):
    model = MCVD(CFG).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    path = save_model(tmp_path / "m.pt", model)
    assert os.listdir(tmp_path) == ["m.pt"]  # no temporary file left behind
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "mcvd" and payload["version"] == 1 and payload["model_config"] == CFG.to_dict()
    loaded = load_model(path)
    assert loaded.config == CFG and not loaded.training
    x, cond, t = torch.randn(2, 1, 1, 8, 8), torch.rand(2, 1, 1, 8, 8) * 2 - 1, torch.tensor([3, 700])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, cond), model(x, t, cond), rtol=0, atol=0)


def test_existing_file_is_kept_without_overwrite(tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match=r"path: .*m.pt exists; pass overwrite=True"):
        save_model(path, MCVD(CFG))
    assert path.read_bytes() == b"precious"
    save_model(path, MCVD(CFG), overwrite=True)
    assert load_model(path).config == CFG


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"path: no such file: .*nothing.pt"):
        load_model(tmp_path / "nothing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"path: .*junk.pt is not a readable torch file"):
        load_model(tmp_path / "junk.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"path: .*other.pt is not an mcvd model file .*use mcvd.load or "
                                         r"mcvd.load_official"):
        load_model(tmp_path / "other.pt")
    torch.save({"format": "mcvd", "version": 7}, tmp_path / "future.pt")
    with pytest.raises(ValueError, match=r"path: .*future.pt has mcvd format version 7; this mcvd reads version 1"):
        load_model(tmp_path / "future.pt")
    torch.save({"format": "mcvd", "version": 1, "model": {}}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"partial.pt lacks the key 'model_config'"):
        load_model(tmp_path / "partial.pt")


def test_save_model_needs_an_mcvd_model(tmp_path):
    with pytest.raises(TypeError, match="model: expected a mcvd.MCVD, got Linear"):
        save_model(tmp_path / "m.pt", torch.nn.Linear(2, 2))


def test_the_run_config_that_trained_it_is_kept(tmp_path):
    """A model file may carry the run config of its training (what `mcvd sample --guidance` asks of it)."""
    from mcvd.loader import MODEL_FILE, read

    run_config = {"training": {"prob_mask_cond": 0.2, "steps": 6000}, "data": {"dataset": "smmnist"}}
    path = save_model(tmp_path / "m.pt", MCVD(CFG), run_config=run_config)
    source = read(path)
    assert source.kind == MODEL_FILE and source.run_config == run_config
    assert read(save_model(tmp_path / "bare.pt", MCVD(CFG))).run_config == {}
    with pytest.raises(TypeError, match=r"run_config: expected None or a dict \(RunConfig.to_dict\(\)\), got str"):
        save_model(tmp_path / "bad.pt", MCVD(CFG), run_config="training.yml")
    assert not (tmp_path / "bad.pt").exists()


def test_a_training_checkpoint_is_refused_not_read_as_its_raw_weights(tmp_path):
    """Its raw and EMA weights differ; load_model would have to pick one: it points to mcvd.load instead."""
    model = MCVD(CFG)
    path = save_model(tmp_path / "m.pt", model)
    payload = torch.load(path, weights_only=True)
    payload["ema"] = {k: v + 1 for k, v in payload["model"].items()}
    torch.save(payload, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"checkpoint.pt is a training checkpoint, with raw and EMA weights; load it "
                                         r"with mcvd.load\(path\) \(EMA weights\) or mcvd.load\(path, use_ema=False\)"):
        load_model(tmp_path / "checkpoint.pt")


def test_a_missing_folder_is_named_not_a_temporary_file(tmp_path):
    model = MCVD(ModelConfig(image_size=8, channels=1, num_frames=1, num_frames_cond=1, ngf=8, ch_mult=(1,),
                             num_res_blocks=1, attn_resolutions=(), n_head_channels=8, num_timesteps=10))
    with pytest.raises(FileNotFoundError, match=rf"^{tmp_path / 'nodir' / 'x.pt'}: no such folder "
                                                rf"{tmp_path / 'nodir'} to write it in$"):
        save_model(tmp_path / "nodir" / "x.pt", model)


def test_weights_that_are_not_finite_are_refused_at_load(tmp_path):
    model = MCVD(CFG)
    with torch.no_grad():
        next(model.parameters())[0].fill_(float("nan"))
        list(model.parameters())[-1][0] = float("inf")
    path = save_model(tmp_path / "diverged.pt", model)
    with pytest.raises(ValueError, match=r"path: .*diverged.pt: its 'model' weights hold NaN or infinite values, "
                                         r"in 2 tensor\(s\): "):
        load_model(path)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_model_saved_in_another_dtype_loads_in_it(tmp_path, dtype):
    model = MCVD(CFG).to(dtype).eval()
    loaded = load_model(save_model(tmp_path / "m.pt", model))
    assert all(p.dtype == dtype for p in loaded.parameters())
    x, cond, t = torch.randn(2, 1, 1, 8, 8, dtype=dtype), torch.rand(2, 1, 1, 8, 8, dtype=dtype) * 2 - 1, \
        torch.tensor([3, 700])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, cond), model(x, t, cond), rtol=0, atol=0)
