"""load_official against checkpoints and outputs produced by the paper's public code."""
import functools

import pytest
import torch
import yaml
from official_fixtures import FIXTURES, needs_fixtures

import mcvd
from mcvd import ModelConfig, load_official
from mcvd.compat import read_official_config
from mcvd.schedule import Schedule

NAMES = ["concat_small", "spatin_small"]

pytestmark = needs_fixtures


def io(name):
    return torch.load(FIXTURES / name / "io.pt", weights_only=True)


@functools.cache
def loaded(name, use_ema=True):
    """The fixture's model, loaded once per test session (tests only read it and set its backend)."""
    return load_official(FIXTURES / name / "checkpoint.pt", use_ema=use_ema)


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("use_ema", [True, False], ids=["ema", "raw"])
@pytest.mark.parametrize("name", NAMES)
def test_same_function_as_the_reference(name, use_ema, backend):
    model, cfg = loaded(name, use_ema)
    model.set_backend(backend)
    d = io(name)
    t = cfg.num_timesteps - 1 - d["t_official"]  # the reference indexes time from the noisiest step
    with torch.no_grad():
        out = model(d["x"], t, d["cond"])
    expected = d["out_ema" if use_ema else "out_raw"]
    # float32 network, ~30 layers; both sides round differently (op order, fused norms).
    assert rel_err(out, expected) <= 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_same_function_on_a_gpu(name, backend_device):
    """The fused GPU backends compute the reference's function (float32, TF32 off)."""
    backend, device = backend_device
    if device != "cuda":
        pytest.skip("the CPU backends are covered above")
    model, cfg = load_official(FIXTURES / name / "checkpoint.pt")  # a fresh copy: loaded() stays on the CPU
    model = model.to(device).set_backend(backend)
    d = {k: v.to(device) if torch.is_tensor(v) else v for k, v in io(name).items()}
    t = cfg.num_timesteps - 1 - d["t_official"]
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            out = model(d["x"], t, d["cond"])
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    assert rel_err(out.cpu(), d["out_ema"].cpu()) <= 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_reference_time_index_is_not_the_ddpm_step(name):
    """Feeding the reference index as if it were DDPM t must not match: the test above can fail."""
    model, _ = loaded(name)
    d = io(name)
    with torch.no_grad():
        out = model.set_backend(None)(d["x"], d["t_official"], d["cond"])
    assert rel_err(out, d["out_ema"]) > 1e-2


def test_ema_and_raw_weights_differ():
    d = io("concat_small")
    assert rel_err(d["out_ema"], d["out_raw"]) > 1e-2


@pytest.mark.parametrize("name, params", [("concat_small", 0.99e6), ("spatin_small", 1.71e6)])
def test_parameter_count_equals_the_reference(name, params):
    model, _ = loaded(name)
    ema = torch.load(FIXTURES / name / "checkpoint.pt", weights_only=True)[4]
    ours = sum(p.numel() for p in model.parameters())
    assert ours == sum(v.numel() for v in ema.values())
    assert abs(ours - params) < 0.005e6  # the fixtures' README


def test_read_official_config():
    cfg = read_official_config(FIXTURES / "spatin_small" / "config.yml")
    assert cfg == ModelConfig(image_size=32, channels=1, num_frames=2, num_frames_cond=2, num_frames_future=1,
                              ngf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), n_head_channels=16,
                              dropout=0.1, conditioning="spatin", spade_dim=32, cond_emb=False, num_timesteps=1000)
    assert read_official_config(FIXTURES / "concat_small" / "config.yml").conditioning == "concat"


def test_top_level_exports():
    assert mcvd.load_official is load_official and mcvd.ModelConfig is ModelConfig


# --- variants of the checkpoint format ---------------------------------------

def copy_fixture(tmp_path, name, edit_states=None, edit_config=None):
    """The fixture `name` copied into tmp_path, optionally edited."""
    states = torch.load(FIXTURES / name / "checkpoint.pt", weights_only=True)
    config = yaml.safe_load((FIXTURES / name / "config.yml").read_text())
    if edit_states:
        states = edit_states(states)
    if edit_config:
        edit_config(config)
    torch.save(states, tmp_path / "checkpoint.pt")
    (tmp_path / "config.yml").write_text(yaml.safe_dump(config))
    return tmp_path / "checkpoint.pt"


def outputs_match(model, name, use_ema=True):
    d = io(name)
    with torch.no_grad():
        out = model(d["x"], model.config.num_timesteps - 1 - d["t_official"], d["cond"])
    return rel_err(out, d["out_ema" if use_ema else "out_raw"]) <= 1e-5


def test_checkpoint_without_module_prefix(tmp_path):
    def strip(states):
        states[0] = {k.removeprefix("module."): v for k, v in states[0].items()}
        return states

    model, _ = load_official(copy_fixture(tmp_path, "concat_small", strip), use_ema=False)
    assert outputs_match(model, "concat_small", use_ema=False)


def test_older_final_norm_names(tmp_path):
    """Early checkpoints keep the final GroupNorm's affine as all_modules.<n>.weight (no Norm_0)."""
    def rename(states):
        for d, prefix in ((states[0], "module.unet.all_modules.16"), (states[4], "unet.all_modules.16")):
            for p in ("weight", "bias"):
                d[f"{prefix}.{p}"] = d.pop(f"{prefix}.Norm_0.{p}")
        return states

    model, _ = load_official(copy_fixture(tmp_path, "concat_small", rename))
    assert outputs_match(model, "concat_small")


def test_explicit_config_path(tmp_path):
    (tmp_path / "ckpt").mkdir()
    ckpt = copy_fixture(tmp_path / "ckpt", "spatin_small")
    moved = tmp_path / "elsewhere.yml"
    (tmp_path / "ckpt" / "config.yml").rename(moved)
    with pytest.raises(FileNotFoundError, match=r"config: .* is a checkpoint of the reference code, .* there is "
                                                r"none: .*ckpt/config.yml; put it there, or give its path"):
        load_official(ckpt)
    with pytest.raises(FileNotFoundError, match=r"config: no such file: .*nope.yml"):  # a path given: named
        load_official(ckpt, config_path=tmp_path / "nope.yml")
    model, cfg = load_official(ckpt, config_path=moved)
    assert cfg.conditioning == "spatin" and outputs_match(model, "spatin_small")


# --- errors --------------------------------------------------------------------

def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint: no such file: .*nope.pt"):
        load_official(tmp_path / "nope.pt")


def test_corrupt_checkpoint(tmp_path):
    path = copy_fixture(tmp_path, "concat_small")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"checkpoint: .*checkpoint.pt is not a readable torch checkpoint"):
        load_official(path)


def test_not_a_reference_checkpoint(tmp_path):
    path = copy_fixture(tmp_path, "concat_small", lambda states: states[0])
    with pytest.raises(ValueError, match=r"is not a checkpoint of the reference code \(expected a list "
                                         r"\[model_state, optimizer_state, epoch, step, ema_shadow\], got dict\)"):
        load_official(path)


def test_mcvd_model_file_is_pointed_to_mcvd_load(tmp_path):
    model, _ = loaded("concat_small")
    mcvd.nn.save_model(tmp_path / "checkpoint.pt", model)
    (tmp_path / "config.yml").write_text((FIXTURES / "concat_small" / "config.yml").read_text())
    with pytest.raises(ValueError, match=r"is an mcvd model file, not the reference code's: load it with mcvd.load"):
        load_official(tmp_path / "checkpoint.pt")
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    torch.save({**payload, "ema": payload["model"]}, tmp_path / "checkpoint.pt")  # as mcvd train writes one
    with pytest.raises(ValueError, match=r"is a training checkpoint of mcvd train, not the reference code's"):
        load_official(tmp_path / "checkpoint.pt")


def test_checkpoint_of_another_architecture(tmp_path):
    """SPATIN weights with a concat config."""
    ckpt = copy_fixture(tmp_path, "spatin_small")
    (tmp_path / "config.yml").write_text((FIXTURES / "concat_small" / "config.yml").read_text())
    with pytest.raises(ValueError, match=r"does not match the network described by its config .*"
                                         r"unexpected keys: unet.all_modules.10.actnorm0.Norm_0.mlp_beta.bias"):
        load_official(ckpt)


def test_missing_key(tmp_path):
    def drop(states):
        del states[0]["module.unet.all_modules.6.NIN_2.W"]
        return states

    with pytest.raises(ValueError, match=r"missing keys: unet.all_modules.6.NIN_2.W"):
        load_official(copy_fixture(tmp_path, "concat_small", drop), use_ema=False)


def test_shape_mismatch(tmp_path):
    with pytest.raises(ValueError, match=r"shape mismatch: unet.all_modules.2.weight \[32, 4, 3, 3\] "
                                         r"\(expected \[32, 6, 3, 3\] for conv_in.weight\)"):
        load_official(copy_fixture(tmp_path, "concat_small",
                                   edit_config=lambda c: c["data"].update(num_frames_cond=4)))


def test_no_ema_weights(tmp_path):
    ckpt = copy_fixture(tmp_path, "concat_small", lambda states: states[:4])
    with pytest.raises(ValueError, match=r"holds no EMA weights .* load it with use_ema=False"):
        load_official(ckpt)
    model, _ = load_official(ckpt, use_ema=False)
    assert outputs_match(model, "concat_small", use_ema=False)


def test_ema_lacking_a_parameter(tmp_path):
    def drop(states):
        del states[4]["unet.all_modules.17.bias"]
        return states

    with pytest.raises(ValueError, match=r"EMA weights lack unet.all_modules.17.bias"):
        load_official(copy_fixture(tmp_path, "concat_small", drop))


@pytest.mark.parametrize("section, key, value, match", [
    ("model", "arch", "unetmore3d", r"model.arch = 'unetmore3d' is not supported \(only 'unetmore'\)"),
    ("model", "noise_in_cond", True, r"model.noise_in_cond = True is not supported \(only False\)"),
    ("model", "output_all_frames", True, r"model.output_all_frames = True is not supported"),
    ("model", "ngf", None, r"missing model.ngf"),
    ("data", "rescaled", False, r"data.rescaled = False is not supported \(only True\)"),
    ("data", "logit_transform", True, r"data.logit_transform = True is not supported \(only False\)"),
    ("model", "n_head_channels", 24, r"n_head_channels: 24 does not divide the 64 channels"),
])
def test_bad_config_is_named(tmp_path, section, key, value, match):
    def edit(config):
        if value is None:
            del config[section][key]
        else:
            config[section][key] = value

    with pytest.raises(ValueError, match=match):
        load_official(copy_fixture(tmp_path, "concat_small", edit_config=edit))


def test_unreached_attention_resolutions_are_dropped(tmp_path):
    """The reference code ignores attention resolutions its network never reaches."""
    ckpt = copy_fixture(tmp_path, "concat_small",
                        edit_config=lambda c: c["model"].update(attn_resolutions=[8, 16, 64]))
    model, cfg = load_official(ckpt)
    assert cfg.attn_resolutions == (16,) and outputs_match(model, "concat_small")


def test_invalid_yaml(tmp_path):
    ckpt = copy_fixture(tmp_path, "concat_small")
    (tmp_path / "config.yml").write_text("data: [unclosed\n")
    with pytest.raises(ValueError, match=r"config: .*config.yml is not valid YAML"):
        load_official(ckpt)


def test_other_noise_settings_are_reported(tmp_path, caplog):
    ckpt = copy_fixture(tmp_path, "concat_small", edit_config=lambda c: c["model"].update(sigma_dist="geometric"))
    with caplog.at_level("WARNING", logger="mcvd.compat"):
        _, cfg = load_official(ckpt)
    assert "'sigma_dist': 'geometric'" in caplog.text and "sample with the matching schedule" in caplog.text
    assert cfg.schedule == "linear"


def test_gamma_noise_is_reported_as_no_samplers(tmp_path, caplog):
    ckpt = copy_fixture(tmp_path, "concat_small", edit_config=lambda c: c["model"].update(gamma=True))
    with caplog.at_level("WARNING", logger="mcvd.compat"):
        model, _ = load_official(ckpt)
    assert "model.gamma is true: the network was trained on Gamma noise, which no sampler" in caplog.text
    assert outputs_match(model, "concat_small")  # the network itself is the same


def test_a_tuple_that_the_reference_code_dumped_is_read(tmp_path):
    """The reference's --config_mod evaluates values in Python: `model.ch_mult=(1,2)` is dumped as a
    !!python/tuple, which its own loader reads back; so does this one (and no other Python tag)."""
    ckpt = copy_fixture(tmp_path, "concat_small")
    text = (tmp_path / "config.yml").read_text()
    config = yaml.safe_load(text)
    config["model"]["ch_mult"] = tuple(config["model"]["ch_mult"])
    (tmp_path / "config.yml").write_text(yaml.dump(config))
    assert "!!python/tuple" in (tmp_path / "config.yml").read_text()
    model, cfg = load_official(ckpt)
    assert cfg.ch_mult == (1, 2) and outputs_match(model, "concat_small")
    (tmp_path / "config.yml").write_text("model: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ValueError, match=r"config: .*config.yml is not valid YAML"):
        load_official(ckpt)


def test_the_cosine_schedule_is_the_models(tmp_path, caplog):
    """The reference's sigma_dist: cosine (its sigma_begin and sigma_end unused) is ModelConfig's cosine schedule,
    so the samplers' default schedule is the one the network was trained with: the same abar_t as the
    reference's get_sigmas (written out here), read at its reversed time index."""
    import math

    T = 1000
    f = [math.cos(((T - i) / T + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(T + 1)]
    reference = torch.tensor([f[i] / f[T] for i in range(T)], dtype=torch.float64)  # noisiest first

    def cosine_buffers(states):  # what the reference's UNetMore_DDPM registers for sigma_dist: cosine
        states[0]["module.alphas"] = reference.float()
        return states

    ckpt = copy_fixture(tmp_path, "concat_small", cosine_buffers,
                        edit_config=lambda c: c["model"].update(sigma_dist="cosine", sigma_begin=0.5))
    with caplog.at_level("WARNING", logger="mcvd.compat"):
        _, cfg = load_official(ckpt)
    assert cfg.schedule == "cosine" and "noise settings" not in caplog.text and cfg.num_timesteps == T
    ours = Schedule.named(cfg.schedule, T).alphas_cumprod.flip(0)
    torch.testing.assert_close(ours[1:], reference[1:], rtol=1e-6, atol=0)  # step T-1: ours clips beta at 0.999


@pytest.mark.parametrize("edit", [dict(num_classes=500), dict(sigma_dist="cosine"), dict(sigma_end=0.001)],
                         ids=["steps", "cosine", "linear-end"])
def test_a_config_of_another_run_is_refused(tmp_path, edit):
    """The network's weights fit any number of steps and any schedule; the checkpoint's schedule buffers
    (linear, 1,000 steps) tell which run it is of."""
    ckpt = copy_fixture(tmp_path, "concat_small", edit_config=lambda c: c["model"].update(**edit))
    with pytest.raises(ValueError, match=r"checkpoint .*: its noise schedule \(1000 steps, .* is not the one "
                                         r".*config.yml describes"):
        load_official(ckpt)


@pytest.mark.parametrize("alphas, steps", [(torch.tensor(0.5), "1 steps, abar from 0.5 to 0.5"),
                                           (torch.zeros(0), "0 steps")], ids=["0-d", "empty"])
def test_a_damaged_schedule_buffer_is_named(tmp_path, alphas, steps):
    def damage(states):
        states[0]["module.alphas"] = alphas
        return states

    ckpt = copy_fixture(tmp_path, "concat_small", damage)
    with pytest.raises(ValueError, match=rf"its noise schedule \({steps}\) is not the one .*config.yml describes "
                                         r"\(1000 steps, abar from"):
        load_official(ckpt)


@pytest.mark.parametrize("where", [0, 4], ids=["model-state", "ema"])
@pytest.mark.parametrize("bad", [None, [1.0], "x"], ids=["none", "list", "str"])
def test_entries_that_are_not_tensors_are_named(tmp_path, where, bad):
    def damage(states):
        key = next(k for k in states[where] if "all_modules.3" in k)
        states[where][key] = bad
        return states

    with pytest.raises(ValueError, match=r"checkpoint: .*: its (model state|EMA weights) holds entries that are "
                                         r"not named tensors \(damaged\?\): '.*all_modules.3"):
        load_official(copy_fixture(tmp_path, "concat_small", damage))
