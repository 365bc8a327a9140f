"""training.compile: the tiny MCVD compiled with inductor, forward and backward.

Compiling costs tens of seconds on a 2-core CPU, so the runs are made once,
by the first test that asks for them, and shared; dynamo reuses the compiled
network across the runs' model instances, so only the first run compiles.
Dropout is 0 (inductor draws dropout masks with its own generator, so they
cannot match eager's); masks and flips are on.
"""
import pytest
import torch
from torch._dynamo.utils import counters

from mcvd.train import load_checkpoint, read_checkpoint, train

KW = dict(data={"random_flip": True}, training={"prob_mask_cond": 0.5, "steps": 4})
_RUNS: dict = {}


def _make(tiny_run, steps: int, compile: bool):
    return tiny_run(**{**KW, "training": {**KW["training"], "steps": steps, "compile": compile}})


@pytest.fixture
def runs(tiny_run, tmp_path_factory):
    """{"straight": 4 compiled steps, "first"/"second": 2 + 2 compiled steps (resumed), "eager": 4 steps}."""
    if not _RUNS:
        root = tmp_path_factory.mktemp("compile")
        graphs = counters["stats"]["unique_graphs"]
        _RUNS["straight"] = train(_make(tiny_run, 4, True), root / "straight", progress=False)
        _RUNS["graphs"] = counters["stats"]["unique_graphs"] - graphs
        _RUNS["first"] = train(_make(tiny_run, 2, True), root / "resumed", progress=False)
        _RUNS["second"] = train(_make(tiny_run, 4, True), root / "resumed", progress=False)
        _RUNS["eager"] = train(_make(tiny_run, 4, False), root / "eager", progress=False)
    return _RUNS


def test_compiled_run_resumes_bit_for_bit(runs):
    straight, first, second = runs["straight"], runs["first"], runs["second"]
    assert runs["graphs"] >= 1  # the network did go through dynamo
    assert (first.step, second.step) == (2, 4)
    assert first.losses + second.losses == straight.losses  # exact float equality
    a, b = read_checkpoint(straight.checkpoint), read_checkpoint(second.checkpoint)
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for k, v in a[part].items():
            torch.testing.assert_close(v, b[part][k], rtol=0, atol=0, msg=f"{part} {k}")
    assert torch.equal(a["rng"]["generator"], b["rng"]["generator"])


def test_compiled_checkpoint_is_the_eager_format(runs):
    compiled, eager = read_checkpoint(runs["straight"].checkpoint), read_checkpoint(runs["eager"].checkpoint)
    for part in ("model", "ema"):
        assert list(compiled[part]) == list(eager[part])  # same keys, same order: no `_orig_mod.` prefix
    assert compiled["run_config"]["training"]["compile"] is True
    # The EMA averaged the trained parameters themselves, not copies held by a wrapper.
    name = "conv_out.weight"
    assert not torch.equal(compiled["ema"][name], compiled["model"][name])
    model, _ = load_checkpoint(runs["straight"].checkpoint, use_ema=False)
    assert list(model.state_dict()) == list(eager["model"])


def test_compiled_losses_agree_with_eager(runs):
    # Not bit for bit: inductor fuses and reorders float32 operations (sums in another order, a * b + c
    # in one rounding or two), so each op differs from eager by a few ulps (~1e-7 relative), and Adam
    # (lr 1e-3) carries that into the next steps' weights. The per-sample loss is a sum of 128 squared
    # errors; 1e-4 is ~1000x the rounding of one step's loss and far below the 10-30% the loss moves
    # per step at this learning rate, so a wrong gradient or a missed update would fail it.
    compiled, eager = torch.tensor(runs["straight"].losses), torch.tensor(runs["eager"].losses)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=0)
    a, b = read_checkpoint(runs["straight"].checkpoint)["model"], read_checkpoint(runs["eager"].checkpoint)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-5, msg=k)


@pytest.mark.gpu
def test_compiled_bf16_run_on_cuda_resumes_bit_for_bit(tiny_run, tmp_path):
    """training.compile with bfloat16 autocast on a CUDA device (forward and
    backward through the CUDA ops): 4 steps straight and 2 + 2 resumed give
    the same losses and weights bit for bit, and the loss is finite."""
    def make(steps):
        return tiny_run(**{**KW, "training": {**KW["training"], "steps": steps, "compile": True,
                                              "precision": "bf16", "device": "cuda"}})
    straight = train(make(4), tmp_path / "straight", progress=False)
    first = train(make(2), tmp_path / "resumed", progress=False)
    second = train(make(4), tmp_path / "resumed", progress=False)
    assert all(torch.isfinite(torch.tensor(straight.losses)))
    assert first.losses + second.losses == straight.losses
    a, b = read_checkpoint(straight.checkpoint), read_checkpoint(second.checkpoint)
    for part in ("model", "ema"):
        for k, v in a[part].items():
            torch.testing.assert_close(v, b[part][k], rtol=0, atol=0, msg=f"{part} {k}")


@pytest.mark.parametrize("cuda_graphs, mode", [(False, None), (True, "reduce-overhead")])
def test_compile_for_training_asks_inductor_for_cuda_graphs_when_told(monkeypatch, cuda_graphs, mode):
    """The trainer's compile: inductor's default mode, or "reduce-overhead" (CUDA
    graphs of the forward and backward) when asked, as train asks on one CUDA device."""
    from mcvd import MCVD, ModelConfig
    from mcvd.train.trainer import compile_for_training

    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append(kw) or fn)
    model = MCVD(ModelConfig(image_size=8, ngf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(),
                             n_head_channels=8, num_frames=1, num_frames_cond=1))
    compile_for_training(model, cuda_graphs=cuda_graphs)
    assert seen == [{"dynamic": False, "mode": mode}]
