"""`mcvd demo` on the cpu size scores the shipped model beside the one it trains."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mcvd
from mcvd import pretrained
from mcvd.cli import main
from mcvd.cli.demo_config import SIZES
from mcvd.data import StochasticMovingMNIST
from mcvd.metrics.digits import digit_recall, load_digit_classifier
from mcvd.train.config import load_run_config

from test_demo_cli import psnr_of

REPO_ROOT = Path(__file__).resolve().parents[2]
CPU = SIZES["cpu"]
ARGS = ["--size", "cpu", "--device", "cpu", "--no-progress", "--no-optimize", "--train-steps", "2", "--clips", "3",
        "--pred-frames", "2", "--sample-steps", "3", "--seed", "4"]


def test_the_shipped_model_predicts_the_cpu_sizes_clips_with_its_objective():
    """The shipped model is a wider network than the cpu size's, trained longer, on the same
    frames, data and objective, so that the demo scores both on the same clips."""
    shipped = load_run_config(REPO_ROOT / pretrained.MODELS[CPU.pretrained].configs[-1])
    cpu = mcvd.ModelConfig(**CPU.model)
    same = ("image_size", "channels", "num_frames", "num_frames_cond", "num_frames_future", "conditioning",
            "prediction", "schedule", "num_timesteps")
    assert {k: getattr(shipped.model, k) for k in same} == {k: getattr(cpu, k) for k in same}
    assert shipped.training.loss_weighting == CPU.loss_weighting and shipped.data.digit_size == CPU.digit_size
    assert shipped.data.dataset == "smmnist" and shipped.data.num_digits == 2


def test_cpu_demo_scores_the_shipped_model_beside(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *ARGS]) == 0
    text = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert list(m["scores"]) == ["MCVD", "MCVD, shipped", "copy last frame", "empty frame"]
    assert list(m["comparisons"]) == ["MCVD", "MCVD, shipped"]
    assert m["shipped"]["name"] == CPU.pretrained and m["stream"]["model"] == "shipped"
    # The shipped model predicts and streams before training, with the threads training runs with.
    assert text.index("first the shipped model") < text.index("mcvd demo: trained 2 steps")
    assert m["stream"]["threads"] == m["threads"] and m["shipped"]["seconds"] > 0
    assert "the shipped model" in m["verdict"] and "Against the empty frame" in m["verdict"]
    assert "mcvd demo: On PSNR the shipped model" in text and "frames with the shipped model (dpm++" in text
    report = (out / "report.md").read_text()
    assert f"`mcvd stream --checkpoint {CPU.pretrained} --input VIDEO` streams" in report
    assert "## The shipped model" in report and "| MCVD, shipped - copy last frame (paired) |" in report
    # --sample-steps sets both models' steps; the shipped model keeps its guidance and the steps it guides.
    assert m["shipped"]["sample_steps"] == 3 and m["shipped"]["guidance"] == 2.0
    assert m["shipped"]["guidance_interval"] == [0, 700]
    assert ("ddpm, 3 steps per block, classifier-free guidance w = 2 at the steps with 0 <= t <= 700 (the others "
            "unguided).") in report
    with Image.open(out / "demo.gif") as gif:  # condition | trained here | shipped | truth
        assert gif.size[0] > 4 * 32

    # Its scores are those of the shipped model predicting the same held-out clips with the demo's sampler,
    # guided as recorded for it (3 steps: t = 999 unguided, 666 and 333 guided).
    clips = StochasticMovingMNIST(4, split="test", seed=0, length=3, image_size=32, digit_size=CPU.digit_size)
    x = torch.stack([clips[i] for i in range(3)])
    model, _ = pretrained.load(CPU.pretrained)
    pred = mcvd.predict(model, x[:, :2], 2, method=CPU.method, steps=3, guidance=2.0, guidance_interval=(0, 700),
                        generator=torch.Generator().manual_seed(4))
    per_clip, _ = psnr_of((x[:, 2:].double().numpy() + 1) / 2, (pred.double().numpy() + 1) / 2)
    assert np.allclose(m["scores"]["MCVD, shipped"]["psnr_per_clip"], per_clip, rtol=1e-6)
    assert list(m["digits"]) == ["truth", "MCVD, shipped", "MCVD", "copy last frame", "empty frame"]
    labels = torch.tensor([clips.labels(i) for i in range(3)])
    assert m["digits"]["MCVD, shipped"] == pytest.approx(digit_recall(load_digit_classifier(), pred, labels).tolist())

    assert main(["demo", "--out", str(out), "--force", "--no-pretrained", *ARGS]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert list(m["scores"]) == ["MCVD", "copy last frame", "empty frame"] and "shipped" not in m
