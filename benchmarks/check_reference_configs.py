"""Drop-in check: every video config of the reference code, as a checkpoint of that code, read by mcvd.load.

    python benchmarks/check_reference_configs.py --official-repo /path/to/mcvd-pytorch \\
        --md benchmarks/results/reference_configs.md [--configs smmnist_DDPM_big5 ...]

For each config (configs/<name>.yml of the checkout; by default its video
configs): the reference code's UNetMore_DDPM is built from it (seed 0),
every parameter perturbed (official_model.perturb_: no residual branch
starts at zero, which would hide a wrong layer), and an EMA shadow made
that differs from those raw weights. Both are saved in the reference code's
checkpoint layout beside the config (official_model.OfficialCode), read
back with mcvd.load (use_ema True and False), and the two networks are run
on the same random inputs, batch 2, at reference time indices {0, 999} and
{500, 1} (this package's DDPM step is T - 1 - index): the largest relative
error (per-sample L2) is reported, in float32 (the reference network keeps
float32 constants, its time embedding and FIR taps, so it does not run in
float64 as it is). The reference network's EMA and raw outputs differ by order 1, so a
load of the wrong weights or the wrong time step would show.

A config whose `model.arch` the reference's runner does not build as
UNetMore_DDPM (smmnist_DDPM_small5: `arch: unet`, for which that runner returns
no network) is listed as refused when mcvd.load refuses it too. The
checkpoints go to a temporary folder, one at a time (the largest config,
cityscapes_big_spade, is 432M parameters: 3.5 GB with its EMA shadow).
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import environment  # noqa: E402
from official_model import OfficialCode, perturb_  # noqa: E402

import mcvd  # noqa: E402
from mcvd.compat import read_official_config  # noqa: E402

VIDEO_CONFIGS = ("smmnist_DDPM_big5", "smmnist_DDPM_big5_spade", "smmnist_DDPM_small5", "kth64_big",
                 "kth64_big_spade", "bair_big", "bair_big_spade", "cityscapes_big", "cityscapes_big_spade",
                 "ucf101")
INDEX_PAIRS = ((0, 999), (500, 1))  # the reference's time indices (0 is its noisiest step)


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """The largest per-sample relative L2 error."""
    a, b = ours.double().flatten(1), ref.double().flatten(1)
    return ((a - b).norm(dim=1) / b.norm(dim=1)).max().item()


def inputs(config: dict, seed: int = 2) -> list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
    """(x, cond, reference time indices) per index pair: frames stacked frame-major in channels, as the
    reference network takes them."""
    d = config["data"]
    channels, size = d["channels"], d["image_size"]
    cond_frames = d["num_frames_cond"] + d.get("num_frames_future", 0)
    g = torch.Generator().manual_seed(seed)
    out = []
    for pair in INDEX_PAIRS:
        x = torch.randn(len(pair), d["num_frames"] * channels, size, size, generator=g)
        cond = torch.rand(len(pair), cond_frames * channels, size, size, generator=g) * 2 - 1 if cond_frames else None
        out.append((x, cond, torch.tensor(pair)))
    return out


def check(code: OfficialCode, name: str, folder: Path) -> dict:
    config = code.read_config(code.repo / "configs" / f"{name}.yml")
    row = {"config": name, "params": None, "loaded": None}
    start = time.perf_counter()
    if config["model"].get("arch", "ncsn") != "unetmore":  # no network to build: the config alone is read
        (folder / "config.yml").write_text(yaml.safe_dump(config))
        try:
            read_official_config(folder / "config.yml")
            row["loaded"] = "ACCEPTED (the reference's runner builds no UNetMore_DDPM for it)"
        except ValueError as err:
            row["loaded"] = f"refused: {str(err).replace(str(folder / 'config.yml'), 'its config')}"
        return row
    torch.manual_seed(0)
    net = code.network(config).eval()
    perturb_(net, 1)
    g = torch.Generator().manual_seed(3)
    ema = {k: v.detach() + torch.randn(v.shape, generator=g) * 0.02 for k, v in net.named_parameters()}
    row["params"] = sum(p.numel() for p in net.parameters())
    code.save_checkpoint(net, folder / "checkpoint.pt", ema)
    (folder / "config.yml").write_text(yaml.safe_dump(config))
    raw = copy.deepcopy(net.state_dict())
    T = config["model"]["num_classes"]
    data = inputs(config)
    for use_ema in (True, False):
        ours, _ = mcvd.load(folder / "checkpoint.pt", use_ema=use_ema)
        net.load_state_dict({**raw, **(ema if use_ema else {})})
        errors = []
        for x, cond, index in data:
            with torch.no_grad():
                errors.append(relative_error(ours(x, T - 1 - index, cond), net(x, index, cond=cond)))
        row["ema" if use_ema else "raw"] = max(errors)
        del ours
    with torch.no_grad():  # how far apart the two sets of weights are: what a wrong load would show
        x, cond, index = data[0]
        net.load_state_dict({**raw, **ema})
        with_ema = net(x, index, cond=cond)
        net.load_state_dict(raw)
        row["ema vs raw"] = relative_error(with_ema, net(x, index, cond=cond))
    row["loaded"] = "yes"
    row["seconds"] = time.perf_counter() - start
    return row


def markdown(rows: list[dict], env: str, repo: str) -> str:
    cols = ["ema", "raw"]
    lines = ["# The reference code's video configs, read by mcvd.load\n",
             f"{env}; the reference code: {repo}. `python benchmarks/check_reference_configs.py` (its docstring "
             f"says how each row is made). Largest relative error of this package's network against the "
             f"reference network, per-sample L2, batch 2, reference time indices {{0, 999}} and {{500, 1}}.\n",
             "| config | parameters | loaded | EMA weights | raw weights | reference: EMA vs raw outputs |",
             "|---" * (len(cols) + 4) + "|"]
    for r in rows:
        errs = " | ".join(f"{r[c]:.1e}" if c in r else "" for c in cols)
        params = f"{r['params'] / 1e6:.1f}M" if r["params"] else ""
        ratio = f"{r['ema vs raw']:.2f}" if "ema vs raw" in r else ""
        lines.append(f"| {r['config']} | {params} | {r['loaded']} | {errs} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official-repo", required=True, help="a checkout of github.com/voletiv/mcvd-pytorch")
    ap.add_argument("--official-commit", default=None, help="its commit, for the table's heading")
    ap.add_argument("--configs", nargs="+", default=list(VIDEO_CONFIGS), help="names under its configs/")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--md", type=Path, default=None, help="write the table here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    code = OfficialCode(args.official_repo)
    rows = []
    for name in args.configs:
        with tempfile.TemporaryDirectory() as folder:
            rows.append(check(code, name, Path(folder)))
        print({k: (f"{v:.2e}" if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    failed = [r["config"] for r in rows if r["loaded"].startswith("ACCEPTED")
              or r["loaded"] == "yes" and max(r["ema"], r["raw"]) > 1e-4]
    text = markdown(rows, environment("cpu"), "github.com/voletiv/mcvd-pytorch"
                    + (f" at {args.official_commit}" if args.official_commit else ""))
    if args.md:
        args.md.write_text(text)
    print(text)
    if failed:
        print(f"FAILED (relative error above 1e-4, or a config accepted that the reference builds no network "
              f"for): {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
