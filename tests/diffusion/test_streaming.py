"""StreamingPredictor: the past window between calls, agreement with predict, errors (CPU path)."""
import re

import pytest
import torch
from diffusion_toys import STEP, OracleModel, ZeroEpsModel, frame_labels, labelled_video, toy_config

import mcvd

C, SIZE = 2, 5


def dpm(steps):
    return mcvd.SamplerConfig(method="dpm++", steps=steps)


def frames(labels):
    """[B, T] labels -> [B, T, C, H, W]."""
    return labelled_video(torch.as_tensor(labels, dtype=torch.float64), C, SIZE)


def test_predicts_after_p_frames_from_the_newest_ones():
    k, p = 3, 2
    stream = mcvd.StreamingPredictor(OracleModel(toy_config(k=k, p=p, channels=C, size=SIZE)), dpm(3))
    observed = [0.10, 0.12, 0.30, 0.31]
    outputs = [stream(frames([[v]])[:, 0]) for v in observed]  # one [B, C, H, W] frame per call
    assert outputs[0] is None and stream.ready
    for i in range(1, len(observed)):
        expected = observed[i] + STEP * torch.arange(1, k + 1)
        torch.testing.assert_close(frame_labels(outputs[i])[0], expected.float(), rtol=0, atol=1e-5)
    torch.testing.assert_close(frame_labels(stream.window)[0], torch.tensor(observed[-p:]), rtol=0, atol=1e-6)


def test_predictions_are_not_fed_back():
    model = OracleModel(toy_config(k=2, p=2, channels=C, size=SIZE))
    stream = mcvd.StreamingPredictor(model, dpm(2))
    stream.push(frames([[0.1, 0.2]]))
    first = stream.predict_next()
    torch.testing.assert_close(stream.predict_next(), first, rtol=0, atol=1e-6)
    assert frame_labels(stream.window)[0].tolist() == pytest.approx([0.1, 0.2])


def test_matches_predict_with_the_same_seed():
    model = ZeroEpsModel(toy_config(k=2, p=3, channels=C, size=SIZE))
    past = torch.rand(2, 3, C, SIZE, SIZE) * 2 - 1
    stream = mcvd.StreamingPredictor(model, mcvd.SamplerConfig(method="ddpm", steps=4),
                                     generator=torch.Generator().manual_seed(5))
    stream.push(past)
    expected = mcvd.predict(model, past, 2, method="ddpm", steps=4, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(stream.predict_next(), expected, rtol=0, atol=0)


def test_a_reused_frame_buffer_does_not_rewrite_the_frames_kept():
    """A source that fills one buffer for every frame: each push is kept as it was when pushed."""
    stream = mcvd.StreamingPredictor(OracleModel(toy_config(k=2, p=2, channels=C, size=SIZE)), dpm(2))
    buffer = frames([[0.1]])[:, 0]
    stream.push(buffer)
    buffer.copy_(frames([[0.2]])[:, 0])
    stream.push(buffer)
    buffer.copy_(frames([[0.9]])[:, 0])  # after the last push
    assert frame_labels(stream.window)[0].tolist() == pytest.approx([0.1, 0.2])


def test_reset_starts_a_new_stream():
    stream = mcvd.StreamingPredictor(OracleModel(toy_config(k=2, p=2, channels=C, size=SIZE)), dpm(2))
    stream.push(frames([[0.1, 0.2]]))
    stream.reset()
    assert stream.window is None and not stream.ready
    stream.push(frames([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]))  # another batch size is fine after reset
    assert stream.predict_next().shape == (3, 2, C, SIZE, SIZE)


def test_errors_name_the_problem():
    model = OracleModel(toy_config(k=2, p=2, channels=C, size=SIZE))
    stream = mcvd.StreamingPredictor(model, dpm(2))
    with pytest.raises(RuntimeError, match=r"push at least p=2 frames \(num_frames_cond\) before predicting; have 0"):
        stream.predict_next()
    stream.push(frames([[0.1]]))
    with pytest.raises(RuntimeError, match=r"have 1"):
        stream.predict_next()
    with pytest.raises(ValueError, match=r"frames: expected batch 1, torch.float32 on cpu \(as the frames pushed "
                                         r"before; reset\(\) starts a new stream\), got batch 2"):
        stream.push(frames([[0.1], [0.2]]))
    for bad in ((1, 1, C, SIZE + 1, SIZE), (1, SIZE + 1, SIZE), (1, C, SIZE, SIZE + 1)):  # named as given
        given = re.escape(str(list(bad)))
        with pytest.raises(ValueError, match=rf"frames: expected \[B, 2, 5, 5\] \(one frame of each of B streams\) "
                                             rf"or \[B, n, 2, 5, 5\] \(n frames\), .*; got {given}"):
            stream.push(torch.zeros(bad))
    with pytest.raises(ValueError, match=r"model: streaming prediction needs past frames \(num_frames_cond >= 1\)"):
        mcvd.StreamingPredictor(OracleModel(toy_config(p=0)))
    with pytest.raises(ValueError, match=r"frames: expected frames in \[-1, 1\] \(up to 0.001 beyond, float "
                                         r"rounding\), got values in \[0, 255\]"):
        stream.push(frames([[0.0, 255.0]]))
    with pytest.raises(ValueError, match=r"frames: expected at least one video \(B >= 1\), got shape "
                                         r"\[0, 1, 2, 5, 5\]"):
        mcvd.StreamingPredictor(model).push(frames([[0.1]])[:0])
    with pytest.raises(TypeError, match=r"cuda_graph: expected a bool, got str 'yes'"):
        mcvd.StreamingPredictor(model, cuda_graph="yes")
    with pytest.raises(TypeError, match=r"sampler: expected an mcvd.SamplerConfig, got dict"):
        mcvd.StreamingPredictor(model, dict(method="ddim", steps=2))
    # Named in the forms push takes; a bad generator is refused when built, not at the first prediction.
    with pytest.raises(TypeError, match=r"frames: expected a float tensor \[B, 2, 5, 5\] or \[B, n, 2, 5, 5\] with "
                                        r"values in \[-1, 1\], got dtype torch.uint8"):
        stream.push(torch.zeros(1, C, SIZE, SIZE, dtype=torch.uint8))
    for bad, kind in ((123, "int 123"), ("cpu", "str 'cpu'")):
        with pytest.raises(TypeError, match=rf"generator: expected a torch.Generator or None, got {kind}"):
            mcvd.StreamingPredictor(model, generator=bad)


def test_default_sampler_is_ten_dpm_steps():
    stream = mcvd.StreamingPredictor(OracleModel(toy_config(k=2, p=2, channels=C, size=SIZE)))
    assert stream.sampler == mcvd.SamplerConfig(method="dpm++", steps=10)
    stream.push(frames([[0.1, 0.2]]))
    stream.predict_next()
    assert stream._block.scheduler.num_inference_steps == 10


def test_cuda_graph_on_a_cpu_model_is_refused_when_built():
    """The model's device is known at construction: no need to wait for the first prediction."""
    model = OracleModel(toy_config(k=2, p=2, channels=C, size=SIZE))  # a CPU buffer
    with pytest.raises(ValueError, match=r"cuda_graph: needs a model on a CUDA device, got one on cpu"):
        mcvd.StreamingPredictor(model, cuda_graph=True)
    # A model without tensors runs on any device: the frames' device decides, at the first prediction.
    stream = mcvd.StreamingPredictor(ZeroEpsModel(toy_config(k=2, p=2, channels=C, size=SIZE)), cuda_graph=True)
    stream.push(frames([[0.1, 0.2]]))
    with pytest.raises(ValueError, match=r"cuda_graph: needs a CUDA device, got cpu"):
        stream.predict_next()


def test_frames_must_have_the_networks_dtype_and_device():
    cfg = mcvd.ModelConfig(image_size=8, channels=1, num_frames=2, num_frames_cond=2, ngf=8, ch_mult=(1, 2),
                           num_res_blocks=1, attn_resolutions=(4,), n_head_channels=8, dropout=0.0, num_timesteps=100)
    stream = mcvd.StreamingPredictor(mcvd.MCVD(cfg).eval(), dpm(2))
    clip = torch.rand(1, 2, 1, 8, 8) * 2 - 1
    with pytest.raises(TypeError, match=r"frames: expected dtype torch.float32 \(the model's\), got torch.float64"):
        stream.push(clip.double())
    with pytest.raises(ValueError, match=r"frames: expected device cpu \(the model's\), got meta"):
        stream.push(clip.to("meta"))
