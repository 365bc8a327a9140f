"""ModelConfig: strict keys, validated ranges, presets, dict round trip."""
import dataclasses

import pytest

from mcvd import MCVD, ModelConfig


def test_defaults_are_the_smmnist_setting():
    cfg = ModelConfig()
    assert (cfg.image_size, cfg.channels, cfg.num_frames, cfg.num_frames_cond, cfg.num_frames_future) == (64, 1, 5, 5, 0)
    assert (cfg.ngf, cfg.ch_mult, cfg.num_res_blocks, cfg.attn_resolutions) == (64, (1, 2, 3, 4), 2, (8, 16, 32))
    assert (cfg.n_head_channels, cfg.dropout, cfg.conditioning, cfg.num_timesteps) == (64, 0.1, "concat", 1000)
    assert cfg == ModelConfig.preset("smmnist")


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match=r"ModelConfig: unknown key 'ngff' \(known keys: image_size, .*ngf"):
        ModelConfig.from_dict({"ngff": 32})
    with pytest.raises(TypeError, match="ngff"):
        ModelConfig(ngff=32)
    with pytest.raises(TypeError, match="ngff"):
        dataclasses.replace(ModelConfig(), ngff=32)


def test_dict_round_trip_uses_plain_types():
    cfg = ModelConfig(image_size=32, ch_mult=[1, 2], attn_resolutions=[16], conditioning="spatin", cond_emb=True)
    d = cfg.to_dict()
    assert d["ch_mult"] == [1, 2] and d["attn_resolutions"] == [16]
    assert ModelConfig.from_dict(d) == cfg
    assert cfg.ch_mult == (1, 2)  # lists become tuples


@pytest.mark.parametrize("changes, error, match", [
    (dict(image_size=60), ValueError, r"image_size: expected a multiple of 2\*\*\(len\(ch_mult\) - 1\) = 8, got 60"),
    (dict(attn_resolutions=(4,)), ValueError, r"attn_resolutions: 4 is not a resolution .*\[64, 32, 16, 8\]"),
    (dict(n_head_channels=40), ValueError, r"n_head_channels: 40 does not divide the 128 channels"),
    (dict(n_head_channels=0), ValueError, r"n_head_channels: expected -1 \(one head\) or >= 1, got 0"),
    (dict(dropout=1.0), ValueError, r"dropout: expected a float in \[0, 1\), got 1.0"),
    (dict(conditioning="film"), ValueError, r"conditioning: expected one of \('concat', 'spatin'\), got 'film'"),
    (dict(conditioning="spatin", num_frames_cond=0), ValueError, r"conditioning: 'spatin' needs condition frames"),
    (dict(ngf=2), ValueError, r"ngf: expected >= 4, got 2"),
    (dict(num_frames=0), ValueError, r"num_frames: expected >= 1, got 0"),
    (dict(num_frames_future=-1), ValueError, r"num_frames_future: expected >= 0, got -1"),
    (dict(channels=True), TypeError, r"channels: expected an int, got True"),
    (dict(ch_mult=()), ValueError, r"ch_mult: expected a non-empty list of positive ints, got \[\]"),
    (dict(ch_mult=8), TypeError, r"ch_mult: expected a list of ints, got int"),
    (dict(cond_emb=1), TypeError, r"cond_emb: expected a bool, got 1"),
])
def test_bad_values_are_named(changes, error, match):
    with pytest.raises(error, match=match):
        ModelConfig(**changes)


def test_heads_follow_the_reference_rule():
    cfg = ModelConfig(n_head_channels=64)
    assert [cfg.heads(c) for c in (32, 64, 128, 256)] == [1, 1, 2, 4]
    assert ModelConfig(n_head_channels=-1).heads(256) == 1


# The paper's settings, read off the public code's configs/*.yml and training scripts.
PAPER = {
    "smmnist": (64, 1, 5, 5, 64, (1, 2, 3, 4), 64),
    "kth": (64, 1, 5, 10, 96, (1, 2, 3, 4), 96),
    "bair": (64, 3, 5, 1, 192, (1, 2, 3, 4), 192),
    "cityscapes": (128, 3, 5, 2, 192, (1, 1, 2, 3, 4), 192),
    "ucf101": (64, 3, 4, 4, 288, (1, 2, 3, 4), 288),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_presets_hold_the_paper_settings(name):
    cfg = ModelConfig.preset(name)
    got = (cfg.image_size, cfg.channels, cfg.num_frames, cfg.num_frames_cond, cfg.ngf, cfg.ch_mult,
           cfg.n_head_channels)
    assert got == PAPER[name]
    assert cfg.num_res_blocks == 2 and cfg.attn_resolutions == (8, 16, 32) and cfg.num_timesteps == 1000


def test_smmnist_preset_builds_both_conditionings():
    cfg = ModelConfig.preset("smmnist")
    for c in (cfg, dataclasses.replace(cfg, conditioning="spatin")):
        model = MCVD(c)
        assert sum(p.numel() for p in model.parameters()) > 10_000_000


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match=r"name: expected one of \['bair', 'cityscapes', .*got 'mnist'"):
        ModelConfig.preset("mnist")
