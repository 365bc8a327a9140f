"""stream_video: what is predicted when (always from frames before the time shown), the rates, errors."""
import re

import pytest
import torch
from diffusion_toys import STEP, OracleModel, frame_labels, labelled_video, toy_config

import mcvd
from mcvd.diffusion import stream_video
from mcvd.video import KIND_COLOURS

C, SIZE = 1, 4
FAST = mcvd.SamplerConfig(method="dpm++", steps=2)


def clip(T):
    """T constant frames [C, H, W], frame t labelled -0.8 + 0.1 t."""
    labels = -0.8 + 0.1 * torch.arange(T, dtype=torch.float64)
    return list(labelled_video(labels[None], C, SIZE)[0]), labels.float()


@pytest.mark.parametrize("every", [1, 2, 3])
def test_the_prediction_shown_at_t_is_made_from_frames_before_t(every):
    # The oracle predicts label(newest past frame) + STEP * j for the j-th frame after it: the prediction shown
    # at t, h frames after the newest frame it was made from, is label(t - h) + STEP * h.
    k, p, T = 3, 2, 10
    frames, labels = clip(T)
    run = stream_video(OracleModel(toy_config(k=k, p=p, channels=C, size=SIZE)), iter(frames), sampler=FAST,
                       every=every)
    assert run.frames == T and (run.p, run.k, run.every) == (p, k, every)
    torch.testing.assert_close(run.observed, torch.stack(frames), rtol=0, atol=0)
    assert run.shown.tolist() == [False] * p + [True] * (T - p)
    assert (run.predicted[:p] == 0).all()
    for t in range(p, T):
        h = (t - p) % every + 1  # 1 .. every frames ahead
        expected = labels[t - h] + STEP * h
        assert frame_labels(run.predicted[t]).item() == pytest.approx(expected.item(), abs=1e-5), t
    # One prediction after frame p - 1, then one every `every` frames, the last after frame T - 1.
    assert len(run.latencies) == (T - p) // every + 1
    # The last is past the video's end where it was made after the last frame: (T - p) % every == 0.
    assert run.past_end == {1: True, 2: True, 3: False}[every]


def test_rates_and_whether_it_keeps_up():
    frames, _ = clip(8)
    model = OracleModel(toy_config(k=2, p=2, channels=C, size=SIZE))
    run = stream_video(model, frames, sampler=FAST, source_fps=1e-3)
    assert len(run.latencies) == 4 and run.steady == run.latencies[1:]
    assert run.fps == pytest.approx(2 * 3 / sum(run.latencies[1:]))
    assert min(run.steady) <= run.latency(0.5) <= run.latency(0.9) <= max(run.steady)
    assert run.budget == pytest.approx(2 / 1e-3) and run.keeps_up is True
    s = run.summary()
    assert s["predictions"] == 4 and s["frames_in"] == 8 and s["latency_per_frame"] == pytest.approx(
        run.latency(0.5) / 2) and s["first_latency"] == run.latencies[0]
    assert stream_video(model, frames, sampler=FAST, source_fps=1e9).keeps_up is False
    assert stream_video(model, frames, sampler=FAST).keeps_up is None


def test_panels_show_input_beside_prediction():
    frames, _ = clip(5)
    run = stream_video(OracleModel(toy_config(k=2, p=2, channels=C, size=SIZE)), frames, sampler=FAST)
    inp, pred = run.panels()
    assert (inp.title, pred.title) == ("input", "prediction")
    assert inp.kinds == ("given", "given", "real", "real", "real")
    assert pred.kinds == ("blank", "blank", "sampled", "sampled", "sampled") and "blank" in KIND_COLOURS
    assert (pred.frames[0, :2] == -1).all()  # no prediction yet: black
    torch.testing.assert_close(pred.frames[0, 2:], run.predicted[2:], rtol=0, atol=0)


def test_errors_name_the_problem():
    model = OracleModel(toy_config(k=2, p=3, channels=C, size=SIZE))
    frames, _ = clip(3)
    with pytest.raises(ValueError, match=r"3 arrived; streaming needs at least p \+ 1 = 4"):
        stream_video(model, frames, sampler=FAST)
    for every in (0, 3, 1.0, True):
        with pytest.raises(ValueError, match="every: expected an int from 1 to k=2"):
            stream_video(model, frames, sampler=FAST, every=every)
    for fps in (0, True):
        with pytest.raises(ValueError, match="source_fps: expected a finite number > 0"):
            stream_video(model, frames, sampler=FAST, source_fps=fps)
    with pytest.raises(TypeError, match="progress: expected a bool, got str 'no'"):
        stream_video(model, frames, sampler=FAST, progress="no")
    for total in (-3, "x"):
        with pytest.raises(ValueError, match=r"total: expected the number of frames \(an int >= 0\) or None"):
            stream_video(model, frames, sampler=FAST, total=total)
    for bad, got in ((frames[0].numpy(), "ndarray"), (frames[0][None], f"torch.float32 of shape {[1, C, SIZE, SIZE]}")):
        with pytest.raises(ValueError, match=rf"frames: expected float tensors {re.escape(str([C, SIZE, SIZE]))} "
                                             rf"\[C, H, W\], one frame each .*; frame 1 is {re.escape(got)}"):
            stream_video(model, [frames[0], bad], sampler=FAST)
