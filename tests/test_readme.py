"""The README's Python examples run as written.

The ```python blocks are read from README.md when the test runs (not copied
here), and each runs as a user would paste it, in a folder holding a tiny model as `checkpoint.pt`:
a name a block uses without defining it fails the test.
"""
import re
from pathlib import Path

import pytest
import torch

import mcvd
from mcvd.nn import save_model

README = Path(__file__).resolve().parents[1] / "README.md"

TINY = mcvd.ModelConfig(image_size=8, channels=1, num_frames=2, num_frames_cond=2, num_frames_future=0, ngf=8,
                        ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), n_head_channels=8, dropout=0.0,
                        num_timesteps=100)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


@pytest.fixture
def one_thread():
    """Thousands of calls of a tiny network, where a thread pool costs more than the work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_readme_has_python_examples():
    assert python_blocks(README.read_text()), "README.md has no ```python block"


@pytest.mark.parametrize("index", range(len(python_blocks(README.read_text()))))
def test_python_example_runs(index, tmp_path, monkeypatch, one_thread):
    code = python_blocks(README.read_text())[index]
    save_model(tmp_path / "checkpoint.pt", mcvd.MCVD(TINY).eval())
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, f"README.md, python block {index + 1}", "exec"), namespace)  # noqa: S102
    assert check_results(namespace) > 0, f"python block {index + 1} defines none of the names checked here"


def check_results(ns: dict) -> int:
    """Check what a block computed, by the names the README gives its results; returns how many were checked.
    The shapes follow from the model's config and the block's arguments, not from the functions called."""
    cfg, checked = ns.get("cfg"), 0
    frame = (cfg.channels, cfg.image_size, cfg.image_size) if cfg is not None else None

    def frames(name, count=None):
        v = ns[name]
        assert v.dim() == 5 and v.shape[0] == 1 and tuple(v.shape[2:]) == frame, (name, tuple(v.shape))
        assert count is None or v.shape[1] == count, (name, tuple(v.shape))
        assert torch.isfinite(v).all() and v.abs().max() <= 1, f"{name}: values outside [-1, 1]"

    if "video" in ns:
        frames("video")
        checked += 1
    if "gen" in ns:
        frames("gen", cfg.num_frames)
        checked += 1
    if "nxt" in ns:
        frames("nxt", cfg.num_frames)
        checked += 1
    if "eps" in ns:
        assert ns["eps"].shape == ns["x_t"].shape and torch.isfinite(ns["eps"]).all()
        checked += 1
    if "x" in ns:
        assert tuple(ns["x"].shape) == (2, 3) and torch.isfinite(ns["x"]).all()  # the README samples (2, 3)
        checked += 1
    if "fast" in ns and not isinstance(ns["fast"], mcvd.SamplerConfig):
        assert ns["fast"].config == cfg
        checked += 1
    return checked
