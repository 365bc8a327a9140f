"""Run configs: strict keys, typed values, overrides, cross-section checks, the example config."""
from pathlib import Path

import pytest
import yaml

from mcvd.nn import ModelConfig
from mcvd.train import DataConfig, RunConfig, TrainConfig, load_run_config
from mcvd.train.config import ignored_data_keys
from mcvd.train.trainer import make_dataset

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_defaults_are_the_reference_codes():
    t = TrainConfig()
    # configs/smmnist_DDPM_big5.yml of the reference code: optim and model.ema_rate
    assert (t.lr, t.beta1, t.beta2, t.eps, t.weight_decay) == (2e-4, 0.9, 0.999, 1e-8, 0.0)
    assert (t.warmup, t.grad_clip, t.ema_rate, t.batch_size) == (1000, 1.0, 0.999, 64)
    assert (t.prob_mask_cond, t.prob_mask_future, t.prob_mask_sync) == (0.0, 0.0, False)


@pytest.mark.parametrize("d,match", [
    ({"training": {"lr_max": 1.0}}, r"training: unknown key 'lr_max' \(known keys: batch_size, steps, lr,"),
    ({"data": {"dataset": "smmnist", "fps": 3}}, r"data: unknown key 'fps'"),
    ({"model": {"ngff": 3}}, r"model: unknown key 'ngff' \(known keys: preset, image_size,"),
    ({"optim": {}}, r"config: unknown section 'optim' \(known sections: model, data, training\)"),
])
def test_unknown_keys_are_named(d, match):
    with pytest.raises(ValueError, match=match):
        RunConfig.from_dict(d)


@pytest.mark.parametrize("section,key,value,match", [
    ("training", "batch_size", "8", r"training.batch_size: expected an int, got '8'"),
    ("training", "batch_size", 8.0, r"training.batch_size: expected an int, got 8.0"),
    ("training", "lr", "fast", r"training.lr: expected a number, got 'fast'"),
    ("training", "prob_mask_sync", 1, r"training.prob_mask_sync: expected true or false, got 1"),
    ("data", "root", 3, r"data.root: expected a string, got 3"),
    ("model", "ch_mult", 2, r"model.ch_mult: expected a list, got 2"),
])
def test_values_are_type_checked(section, key, value, match):
    with pytest.raises(TypeError, match=match):
        RunConfig.from_dict({section: {key: value}})


def test_numbers_are_coerced():
    # PyYAML reads 1e-4 (no dot) as a string; ints are fine where floats are expected.
    t = RunConfig.from_dict(yaml.safe_load("training: {lr: 1e-4, grad_clip: 2, ema_rate: 0}")).training
    assert (t.lr, t.grad_clip, t.ema_rate) == (1e-4, 2.0, 0.0) and isinstance(t.grad_clip, float)
    assert RunConfig.from_dict({"model": {"ch_mult": [1, 2], "attn_resolutions": [32]}}).model.ch_mult == (1, 2)


@pytest.mark.parametrize("kwargs,match", [
    (dict(prob_mask_cond=1.5), r"training.prob_mask_cond: expected >= 0.0 and <= 1.0, got 1.5"),
    (dict(rollout_prob=-0.1), r"training.rollout_prob: expected >= 0.0 and <= 1.0, got -0.1"),
    (dict(ema_rate=1.0), r"training.ema_rate: expected >= 0.0 and < 1.0, got 1.0"),
    (dict(lr=0.0), r"training.lr: expected > 0.0, got 0.0"),
    (dict(batch_size=0), r"training.batch_size: expected >= 1, got 0"),
    (dict(batch_size=6, grad_accum=4), r"training.grad_accum: expected a divisor of batch_size 6, got 4"),
    (dict(prob_mask_sync=True), r"training.prob_mask_sync: needs prob_mask_future > 0"),
    (dict(prob_mask_sync=True, prob_mask_future=0.5), r"training.prob_mask_sync: needs prob_mask_cond > 0 \(the "
                                                       r"future is masked exactly when the past is"),
    (dict(precision="fp8"), r"training.precision: expected one of \('fp32', 'bf16', 'fp16'\), got 'fp8'"),
    (dict(loss_weighting="snr"), r"training.loss_weighting: expected one of \('none', 'min_snr'\), got 'snr'"),
    (dict(min_snr_gamma=0), r"training.min_snr_gamma: expected > 0.0, got 0"),
    (dict(device="tpu"), r"training.device: expected one of \('auto', 'cpu', 'cuda'\), got 'tpu'"),
    (dict(grad_clip=float("nan")), r"training.grad_clip: expected > 0.0, got nan"),
])
def test_training_ranges(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(dataset="kinetics"), r"data.dataset: expected one of \('smmnist', 'video_folder'\), got 'kinetics'"),
    (dict(dataset="video_folder"), r"data.root: expected the video folder for dataset 'video_folder'"),
    (dict(root="/videos"), r"data.root: .* got dataset 'smmnist' with root '/videos'"),
    (dict(frame_stride=0), r"data.frame_stride: expected >= 1, got 0"),
    (dict(dataset="video_folder", root="/videos", length=100), r"data.length: smmnist only .* got 100"),
])
def test_data_checks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(**kwargs)


@pytest.mark.parametrize("kwargs,message", [
    (dict(frame_stride=2), "data.frame_stride: video_folder only; dataset 'smmnist' ignores it (got 2)"),
    (dict(clip_step=3), "data.clip_step: video_folder only; dataset 'smmnist' ignores it (got 3)"),
    (dict(dataset="video_folder", root="/v", digit_size=16),
     "data.digit_size: smmnist only; dataset 'video_folder' ignores it (got 16)"),
    (dict(dataset="video_folder", root="/v", num_digits=3),
     "data.num_digits: smmnist only; dataset 'video_folder' ignores it (got 3)"),
    (dict(num_digits=3, digit_size=16), None),  # the data set's own keys
    (dict(dataset="video_folder", root="/v", frame_stride=2, clip_step=3), None),
])
def test_a_key_the_data_set_does_not_read_is_named(kwargs, message):
    assert ignored_data_keys(DataConfig(**kwargs)) == ([] if message is None else [message])


def test_the_training_data_set_warns_of_a_key_it_ignores_once():
    """Warned where the data set is built (once a run, after any --set), not where a config is."""
    run = RunConfig.from_dict({"data": {"frame_stride": 2, "length": 4}})
    with pytest.warns(UserWarning, match=r"data.frame_stride: video_folder only") as got:
        make_dataset(run)
    assert len(got) == 1


@pytest.mark.parametrize("d,match", [
    ({"model": {"channels": 3}}, r"model.channels: Stochastic Moving MNIST has 1 channel, got 3"),
    ({"model": {"image_size": 32}}, r"data.digit_size: expected < model.image_size \(32\), got 32"),
    ({"model": {"num_frames_cond": 0}, "training": {"prob_mask_cond": 0.5}},
     r"training.prob_mask_cond: the model has no past frames"),
    ({"training": {"prob_mask_future": 0.5}}, r"training.prob_mask_future: the model has no future frames"),
    ({"model": {"num_frames_cond": 0}, "training": {"rollout_prob": 0.5}},
     r"training.rollout_prob: needs a prediction model .* got p = 0, f = 0"),
    ({"model": {"num_frames_future": 1}, "training": {"rollout_prob": 0.5}},
     r"training.rollout_prob: needs a prediction model .* got p = \d+, f = 1"),
])
def test_sections_are_checked_together(d, match):
    with pytest.raises(ValueError, match=match):
        RunConfig.from_dict(d)


@pytest.mark.parametrize("d,error,match", [
    ({"model": {"preset": 3}}, ValueError, r"model.preset: expected one of \['bair', .*\], got 3"),
    ({"model": {"preset": None}}, ValueError, r"model.preset: expected one of .*, got None"),
    ({"training": []}, TypeError, r"training: expected a mapping of keys to values, got list"),
    ({"training": 0}, TypeError, r"training: expected a mapping of keys to values, got int"),
    ({"data": ""}, TypeError, r"data: expected a mapping of keys to values, got str"),
    ({"model": False}, TypeError, r"model: expected a mapping of keys to values, got bool"),
])
def test_a_section_or_preset_that_is_not_one_is_named(d, error, match):
    with pytest.raises(error, match=match):
        RunConfig.from_dict(d)


def test_an_empty_section_takes_the_defaults():
    assert RunConfig.from_dict({"model": None, "data": None, "training": None}) == RunConfig()


def test_preset_then_overrides():
    cfg = RunConfig.from_dict({"model": {"preset": "kth", "ngf": 32, "n_head_channels": 32}, "data":
                               {"dataset": "video_folder", "root": "/kth"}})
    expected = ModelConfig.preset("kth")
    assert cfg.model.ngf == 32 and cfg.model.num_frames_cond == expected.num_frames_cond == 10
    assert cfg.model.ch_mult == expected.ch_mult


def test_set_overrides_are_typed_and_strict():
    base = RunConfig()
    cfg = base.with_overrides(["training.lr=3e-4", "model.attn_resolutions=[16]", "training.grad_clip=null",
                               "data.num_workers = 2"])
    assert cfg.training.lr == 3e-4 and cfg.model.attn_resolutions == (16,)
    assert cfg.training.grad_clip is None and cfg.data.num_workers == 2
    assert base.training.lr == 2e-4  # configs are immutable
    with pytest.raises(ValueError, match=r"training: unknown key 'stepz'"):
        base.with_overrides(["training.stepz=3"])
    with pytest.raises(TypeError, match=r"training.steps: expected an int, got 'many'"):
        base.with_overrides(["training.steps=many"])
    with pytest.raises(ValueError, match=r"--set: expected section.key=value, got 'lr=3'"):
        base.with_overrides(["lr=3"])
    with pytest.raises(ValueError, match=r"--set optim.lr=3: unknown section 'optim'"):
        base.with_overrides(["optim.lr=3"])


def test_yaml_round_trip(tmp_path):
    cfg = RunConfig.from_dict({"model": {"ngf": 16, "num_frames_future": 2},
                               "training": {"prob_mask_cond": 0.5, "prob_mask_future": 0.5, "prob_mask_sync": True}})
    path = tmp_path / "run.yml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_run_config(path) == cfg
    assert load_run_config(path, ["training.seed=4"]).training.seed == 4
    with pytest.raises(FileNotFoundError, match=r"config: no such file: .*nope.yml"):
        load_run_config(tmp_path / "nope.yml")


def test_an_empty_config_is_refused_and_a_seed_must_fit_torch(tmp_path):
    for text in ("", "# model: {ngf: 16}\n"):
        (tmp_path / "empty.yml").write_text(text)
        with pytest.raises(ValueError, match=r"config: .*empty.yml holds no settings \(empty, or comments only\); "
                                             r"a run config has the sections model, data, training"):
            load_run_config(tmp_path / "empty.yml")
    (tmp_path / "defaults.yml").write_text("{}\n")
    assert load_run_config(tmp_path / "defaults.yml") == RunConfig.from_dict({})
    assert RunConfig.from_dict({"training": {"seed": 2**63 - 1}}).training.seed == 2**63 - 1
    with pytest.raises(ValueError, match=rf"training.seed: expected >= 0 and <= {2**63 - 1}, got {2**64}"):
        RunConfig.from_dict({"training": {"seed": 2**64}})


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_run_config(path)
    assert cfg.training.steps >= 1
