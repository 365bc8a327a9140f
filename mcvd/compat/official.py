"""Loading checkpoints of the paper's public code (`UNetMore_DDPM`).

Such a checkpoint is a list `[model_state, optimizer_state, epoch, step,
ema_shadow]`: `model_state` keys carry nn.DataParallel's "module." prefix and
include schedule buffers; `ema_shadow` maps parameter names (no prefix) to
EMA weights. The network's modules live in one flat list,
`unet.all_modules.<i>`, in the order the reference code builds them;
`official_layout` lists this package's modules in that same order, and
`convert_state_dict` renames (and, for attention and SPATIN, stacks) the
tensors.

Time: the reference network takes its own index s (0 = noisiest), the
converted model takes DDPM t = T - 1 - s and computes the same function.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from mcvd.fileio import load_weights_only
from mcvd.nn.blocks import AttnBlock, ResBlock
from mcvd.nn.config import ModelConfig
from mcvd.nn.network import MCVD

from .official_config import config_beside, config_from_official_dict, official_alphas, read_yaml

# Buffers of the reference model that belong to the noise schedule, not to
# the network: they are not loaded.
SCHEDULE_BUFFERS = ("betas", "alphas", "alphas_prev", "unet.sigmas", "k", "k_cum", "theta_t")


def official_layout(model: MCVD) -> list[tuple[str, str]]:
    """(kind, module name in `model`) for each entry of the reference code's
    `unet.all_modules`, in order. Kinds: "linear", "embedding", "conv",
    "res", "attn", "norm_out"."""
    layout = [("linear", "time_mlp.0"), ("linear", "time_mlp.2")]
    if model.mask_embed is not None:
        layout.append(("embedding", "mask_embed"))
    layout.append(("conv", "conv_in"))
    for i, level in enumerate(model.down):
        for j in range(len(level.blocks)):
            layout.append(("res", f"down.{i}.blocks.{j}"))
            if len(level.attn):
                layout.append(("attn", f"down.{i}.attn.{j}"))
        if level.downsample is not None:
            layout.append(("res", f"down.{i}.downsample"))
    layout += [("res", "mid.0"), ("attn", "mid.1"), ("res", "mid.2")]
    for i, level in enumerate(model.up):
        layout += [("res", f"up.{i}.blocks.{j}") for j in range(len(level.blocks))]
        if level.attn is not None:
            layout.append(("attn", f"up.{i}.attn"))
        if level.upsample is not None:
            layout.append(("res", f"up.{i}.upsample"))
    layout += [("norm_out", "norm_out"), ("conv", "conv_out")]
    return layout


def _cat(*tensors):
    return torch.cat(tensors, dim=0)


def _norm_rules(ours: str, ref: str, spatin: bool) -> list[tuple[str, list[str], callable]]:
    """SPATIN convs of one norm: ref `<ref>.mlp_shared.0`, `.mlp_gamma`, `.mlp_beta`."""
    if not spatin:
        return []
    return [(f"{ours}.spatin.shared.{p}", [f"{ref}.mlp_shared.0.{p}"], None) for p in ("weight", "bias")] + [
        (f"{ours}.spatin.gamma_beta.{p}", [f"{ref}.mlp_gamma.{p}", f"{ref}.mlp_beta.{p}"], _cat)
        for p in ("weight", "bias")]


def _rules(kind: str, ours: str, ref: str, module) -> list[tuple[str, list[str], callable]]:
    """(our key, reference keys, combine) for one module; combine=None copies the one tensor."""
    wb = ("weight", "bias")
    if kind in ("linear", "conv"):
        return [(f"{ours}.{p}", [f"{ref}.{p}"], None) for p in wb]
    if kind == "embedding":
        return [(f"{ours}.weight", [f"{ref}.weight"], None)]
    if kind == "res":
        assert isinstance(module, ResBlock)
        spatin = module.norm0.spatin is not None
        rules = []
        for n in (0, 1):
            rules += [(f"{ours}.norm{n}.emb.{p}", [f"{ref}.actnorm{n}.Dense_0.{p}"], None) for p in wb]
            rules += _norm_rules(f"{ours}.norm{n}", f"{ref}.actnorm{n}.Norm_0", spatin)
            rules += [(f"{ours}.conv{n}.{p}", [f"{ref}.Conv_{n}.{p}"], None) for p in wb]
        if module.skip is not None:
            rules += [(f"{ours}.skip.{p}", [f"{ref}.Conv_2.{p}"], None) for p in wb]
        return rules
    if kind == "attn":
        assert isinstance(module, AttnBlock)
        # NIN layers hold W as [in, out]: y = x @ W + b; nn.Linear holds [out, in].
        return [
            (f"{ours}.norm.weight", [f"{ref}.GroupNorm_0.weight"], None),
            (f"{ours}.norm.bias", [f"{ref}.GroupNorm_0.bias"], None),
            (f"{ours}.qkv.weight", [f"{ref}.NIN_{n}.W" for n in range(3)], lambda *w: _cat(*(x.t() for x in w))),
            (f"{ours}.qkv.bias", [f"{ref}.NIN_{n}.b" for n in range(3)], _cat),
            (f"{ours}.proj.weight", [f"{ref}.NIN_3.W"], lambda w: w.t()),
            (f"{ours}.proj.bias", [f"{ref}.NIN_3.b"], None),
        ]
    if kind == "norm_out":
        if module.spatin is not None:
            return _norm_rules(ours, f"{ref}.Norm_0", True)
        return [(f"{ours}.{p}", [f"{ref}.Norm_0.{p}"], None) for p in wb]
    raise AssertionError(kind)


def _list_keys(keys, limit=5) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def convert_state_dict(reference_state: dict[str, torch.Tensor], model: MCVD,
                       source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Map the reference network's state (keys without "module.") onto `model`'s
    state-dict keys. Raises ValueError naming missing keys, unexpected keys
    and shape mismatches."""
    ours = model.state_dict()
    modules = dict(model.named_modules())
    state = dict(reference_state)
    # An older layout of the reference code keeps the final GroupNorm's affine
    # directly under its get_act_norm module (no "Norm_0.").
    last_norm = f"unet.all_modules.{len(official_layout(model)) - 2}"
    for p in ("weight", "bias"):
        if f"{last_norm}.{p}" in state and f"{last_norm}.Norm_0.{p}" not in state:
            state[f"{last_norm}.Norm_0.{p}"] = state.pop(f"{last_norm}.{p}")

    out, used, missing, mismatched = {}, set(), [], []
    for idx, (kind, name) in enumerate(official_layout(model)):
        for key, ref_keys, combine in _rules(kind, name, f"unet.all_modules.{idx}", modules[name]):
            absent = [k for k in ref_keys if k not in state]
            if absent:
                missing += absent
                continue
            used.update(ref_keys)
            tensors = [state[k] for k in ref_keys]
            value = combine(*tensors) if combine is not None else tensors[0]
            if value.shape != ours[key].shape:
                shapes = ", ".join(f"{k} {list(state[k].shape)}" for k in ref_keys)
                mismatched.append(f"{shapes} (expected {list(ours[key].shape)} for {key})")
                continue
            out[key] = value
    unexpected = set(state) - used - set(SCHEDULE_BUFFERS)
    problems = []
    if missing:
        problems.append(f"missing keys: {_list_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_list_keys(unexpected)}")
    if mismatched:
        problems.append("shape mismatch: " + "; ".join(mismatched[:3]) +
                        (f" and {len(mismatched) - 3} more" if len(mismatched) > 3 else ""))
    if problems:
        raise ValueError(f"{source}: does not match the network described by its config "
                         f"(another architecture or config?): " + " | ".join(problems))
    assert set(out) == set(ours), set(ours) ^ set(out)
    return out


def read_official_checkpoint(path: str | os.PathLike, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """The reference network's state (raw or EMA weights), keys without "module."."""
    return official_state(load_weights_only(path, "checkpoint", "torch checkpoint"), path, use_ema)


def _check_tensors(state: dict, path, what: str) -> None:
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"checkpoint: {path}: its {what} holds entries that are not named tensors (damaged?): "
                         f"{', '.join(repr(k) for k in bad[:5])}{' ...' if len(bad) > 5 else ''}")


def official_state(states, path: str | os.PathLike, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """`read_official_checkpoint` of the object already read from `path` (named in errors)."""
    if isinstance(states, dict) and states.get("format") == "mcvd":
        kind = "a training checkpoint of mcvd train" if "ema" in states else "an mcvd model file"
        raise ValueError(f"checkpoint: {path} is {kind}, not the reference code's: load it with mcvd.load")
    if not isinstance(states, (list, tuple)) or len(states) < 4 or not isinstance(states[0], dict):
        raise ValueError(f"checkpoint: {path} is not a checkpoint of the reference code (expected a list "
                         f"[model_state, optimizer_state, epoch, step, ema_shadow], got {type(states).__name__})")
    _check_tensors(states[0], path, "model state")
    state = {k.removeprefix("module."): v for k, v in states[0].items()}
    if not use_ema:
        return state
    if len(states) < 5 or not isinstance(states[4], dict) or not states[4]:
        raise ValueError(f"checkpoint: {path} holds no EMA weights (model.ema was false?); "
                         f"load it with use_ema=False")
    ema = states[4]
    _check_tensors(ema, path, "EMA weights")
    extra = set(ema) - set(state)
    if extra:
        raise ValueError(f"checkpoint: {path}: EMA weights for keys the model state lacks: {_list_keys(extra)}")
    params = set(state) - set(SCHEDULE_BUFFERS)
    lacking = params - set(ema)
    if lacking:
        raise ValueError(f"checkpoint: {path}: EMA weights lack {_list_keys(lacking)}")
    state.update(ema)
    return state


def _check_schedule(state: dict, config: dict, config_path: Path, checkpoint: Path) -> None:
    """The checkpoint's schedule buffer against the one its config.yml (parsed: `config`) makes: the network's
    weights do not depend on the number of steps or the schedule, so a checkpoint given another run's config
    would load and compute another function (its time embedding indexed by other steps)."""
    have, want = state.get("alphas"), official_alphas(config)
    if have is None or want is None:
        return
    if have.shape != want.shape or not torch.allclose(have.double(), want.double(), rtol=1e-4, atol=1e-6):
        def span(abar):  # a damaged buffer may be 0-d or empty
            flat = abar.reshape(-1)
            return f"{flat.numel()} steps" + (f", abar from {flat[0].item():.3g} to {flat[-1].item():.3g}"
                                              if flat.numel() else "")
        raise ValueError(f"checkpoint {checkpoint}: its noise schedule ({span(have)}) is not the one {config_path} "
                         f"describes ({span(want)}): the two files are of different runs?")


def load_official(checkpoint: str | os.PathLike, config_path: str | os.PathLike | None = None,
                  use_ema: bool = True) -> tuple[MCVD, ModelConfig]:
    """Load a checkpoint saved by the paper's public code.

    Args:
        checkpoint: path of its checkpoint.pt (`[model_state, optimizer_state,
            epoch, step, ema_shadow]`).
        config_path: its config.yml; default: config.yml beside the checkpoint.
        use_ema: load the EMA weights (as the reference loader does) rather
            than the raw ones.
    Returns:
        (model, config): an MCVD in eval mode on the CPU, float32, with
        `model(x, T - 1 - s, cond)` equal to the reference `net(x, s, cond)`,
        and its ModelConfig.
    """
    states = load_weights_only(checkpoint, "checkpoint", "torch checkpoint")
    return official_model(states, checkpoint, config_path, use_ema)


def official_model(states, checkpoint: str | os.PathLike, config_path: str | os.PathLike | None = None,
                   use_ema: bool = True) -> tuple[MCVD, ModelConfig]:
    """`load_official` of the object already read from `checkpoint`."""
    checkpoint = Path(checkpoint)
    state = official_state(states, checkpoint, use_ema)
    if config_path is None and not config_beside(checkpoint).is_file():
        raise FileNotFoundError(f"config: {checkpoint} is a checkpoint of the reference code, whose network is "
                                f"described by the config.yml beside it, and there is none: "
                                f"{config_beside(checkpoint)}; put it there, or give its path "
                                f"(mcvd.load_official(checkpoint, config_path), or `mcvd convert-official "
                                f"{checkpoint} --config CONFIG --out MODEL` and use MODEL)")
    config_path = Path(config_path) if config_path is not None else config_beside(checkpoint)
    config = read_yaml(config_path)
    cfg = config_from_official_dict(config, source=str(config_path))
    _check_schedule(state, config, config_path, checkpoint)
    model = MCVD(cfg)
    model.load_state_dict(convert_state_dict(state, model, source=f"checkpoint {checkpoint}"))
    return model.eval(), cfg
