"""The reference code's own network, built from a checkout of its repository, for the benchmarks.

    from official_model import OfficialCode
    code = OfficialCode("/path/to/mcvd-pytorch")       # a checkout of github.com/voletiv/mcvd-pytorch
    net = code.network(config_dict)                    # its UNetMore_DDPM, CPU, float32
    code.save_checkpoint(net, "/tmp/x/checkpoint.pt")  # its checkpoint format; mcvd.load reads it

Nothing of that code is copied here: its modules are imported from the
checkout (models.better.ncsnpp_more, models.ema, losses.dsm and
models.ddim_sampler). Its `models` package imports scipy, tqdm and its PNDM
module at import time; they are present here, so nothing is stubbed. The
checkout's directory goes on sys.path for the import, since the code imports
itself as the top-level packages `models` and `losses`.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch
import yaml


def namespace(d: dict) -> argparse.Namespace:
    """The reference code's dict2namespace: nested dicts as attribute namespaces."""
    ns = argparse.Namespace()
    for key, value in d.items():
        setattr(ns, key, namespace(value) if isinstance(value, dict) else value)
    return ns


class OfficialCode:
    """The network, EMA helper, loss and DDIM sampler of the reference code at `repo`."""

    def __init__(self, repo: str | Path):
        repo = Path(repo).resolve()
        if not (repo / "models" / "better" / "ncsnpp_more.py").is_file():
            raise FileNotFoundError(f"--official-repo: {repo} holds no models/better/ncsnpp_more.py "
                                    f"(expected a checkout of github.com/voletiv/mcvd-pytorch)")
        loaded = sys.modules.get("models")
        if loaded is not None and not str(getattr(loaded, "__file__", "")).startswith(str(repo)):
            raise RuntimeError(f"another package named 'models' is already imported ({loaded.__file__})")
        sys.path.insert(0, str(repo))
        try:
            self.ncsnpp_more = importlib.import_module("models.better.ncsnpp_more")
            self.models = importlib.import_module("models")
            self.ema = importlib.import_module("models.ema")
            self.dsm = importlib.import_module("losses.dsm")
        finally:
            sys.path.remove(str(repo))
        self.repo = repo

    @staticmethod
    def read_config(path: str | Path) -> dict:
        with open(path) as f:
            return yaml.safe_load(f)

    def network(self, config: dict, device: str = "cpu") -> torch.nn.Module:
        """UNetMore_DDPM(config) as its runner builds it (config.device set)."""
        ns = namespace(config)
        ns.device = torch.device(device)
        return self.ncsnpp_more.UNetMore_DDPM(ns).to(device)

    def ema_helper(self, net: torch.nn.Module, rate: float):
        helper = self.ema.EMAHelper(mu=rate)
        helper.register(net)
        return helper

    def loss(self, net, x, cond, labels=None):
        """Its training loss: anneal_dsm_score_estimation (1/2 ||z - eps||^2 per sample, mean over the batch)."""
        return self.dsm.anneal_dsm_score_estimation(net, x, labels=labels, cond=cond)

    def ddim(self, x, net, cond, steps: int):
        """Its DDIM sampler: `steps` network calls (its final denoising call left out), x0 clipped."""
        return self.models.ddim_sampler(x, net, cond=cond, final_only=True, denoise=False, subsample_steps=steps,
                                        log=False, clip_before=True)

    @staticmethod
    def save_checkpoint(net: torch.nn.Module, path: str | Path, ema: dict | None = None) -> None:
        """Its checkpoint layout: [model_state ("module." keys, as nn.DataParallel saves them),
        optimizer_state, epoch, step, ema_shadow] (the EMA shadow `ema`, by parameter name; by default
        the weights themselves)."""
        state = {f"module.{k}": v.detach().clone() for k, v in net.state_dict().items()}
        if ema is None:
            ema = {k: v.detach().clone() for k, v in net.named_parameters()}
        torch.save([state, {}, 0, 0, ema], path)


def perturb_(module: torch.nn.Module, seed: int) -> None:
    """Add N(0, 0.02^2) to every parameter: the zero-initialised output convs of each block then
    contribute, so that outputs compared exercise every layer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
